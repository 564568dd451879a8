"""``build_transform``: the image pipelines of CLIP prompt-learning configs."""
from typing import Optional, Sequence

from torchvision.transforms import (
    CenterCrop,
    Compose,
    InterpolationMode,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    RandomResizedCrop,
    Resize,
    ToTensor,
)
from yacs.config import CfgNode as CN

from dassl.utils import UserError

from .randaugment import RandAugment

__all__ = ["INTERPOLATION_MODES", "AVAI_CHOICES", "build_transform"]

# Values of INPUT.INTERPOLATION.
INTERPOLATION_MODES = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}

# Values of INPUT.TRANSFORMS implemented here ("center_crop" only matters for the test pipeline, which
# always center-crops).
AVAI_CHOICES = ["random_flip", "random_resized_crop", "random_crop", "center_crop", "normalize", "randaugment"]

# Accepted by the original Dassl but not implemented by this engine (no CLIP config uses them).
_NOT_IMPLEMENTED = [
    "instance_norm", "random_translation", "cutout", "imagenet_policy", "cifar10_policy", "svhn_policy",
    "randaugment_fixmatch", "randaugment2", "gaussian_noise", "colorjitter",
    "randomgrayscale", "gaussian_blur",
]


def _check_choices(cfg: CN, choices: Sequence[str]) -> None:
    for choice in choices:
        if choice in _NOT_IMPLEMENTED:
            raise UserError(
                f"INPUT.TRANSFORMS: {choice!r} is not implemented by this engine; available: {', '.join(AVAI_CHOICES)}"
            )
        if choice not in AVAI_CHOICES:
            raise UserError(f"INPUT.TRANSFORMS: unknown transform {choice!r}; available: {', '.join(AVAI_CHOICES)}")
    if cfg.INPUT.INTERPOLATION not in INTERPOLATION_MODES:
        raise UserError(
            f"INPUT.INTERPOLATION must be one of {', '.join(INTERPOLATION_MODES)}, got {cfg.INPUT.INTERPOLATION!r}"
        )


def build_transform(cfg: CN, is_train: bool = True, choices: Optional[Sequence[str]] = None) -> Optional[Compose]:
    """The train or test image pipeline (PIL image -> float tensor ``(3, H, W)`` with ``(H, W) = INPUT.SIZE``).

    ``choices`` defaults to ``INPUT.TRANSFORMS``; the order of the steps is fixed, not the list order.
    Train: [resize to SIZE unless a crop is chosen] -> [random_crop] -> [random_resized_crop]
    -> [random_flip] -> [randaugment: RandAugment(INPUT.RANDAUGMENT_N, INPUT.RANDAUGMENT_M), randaugment.py]
    -> to tensor -> [normalize]. Test: resize the shorter side to max(SIZE) ->
    center crop SIZE -> to tensor -> [normalize]. ``INPUT.NO_TRANSFORM`` -> None.
    """
    if cfg.INPUT.NO_TRANSFORM:
        print("Note: no transform is applied!")
        return None
    if choices is None:
        choices = cfg.INPUT.TRANSFORMS
    _check_choices(cfg, choices)
    normalize = Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD)
    if is_train:
        return _build_transform_train(cfg, choices, normalize)
    return _build_transform_test(cfg, choices, normalize)


def _build_transform_train(cfg: CN, choices: Sequence[str], normalize: Normalize) -> Compose:
    print("Building transform_train")
    tfm_train = []
    interp_mode = INTERPOLATION_MODES[cfg.INPUT.INTERPOLATION]
    input_size = tuple(cfg.INPUT.SIZE)

    if "random_crop" not in choices and "random_resized_crop" not in choices:
        print(f"+ resize to {input_size[0]}x{input_size[1]}")
        tfm_train += [Resize(input_size, interpolation=interp_mode)]
    if "random_crop" in choices:
        print(f"+ random crop (padding = {cfg.INPUT.CROP_PADDING})")
        tfm_train += [RandomCrop(input_size, padding=cfg.INPUT.CROP_PADDING)]
    if "random_resized_crop" in choices:
        scale = tuple(cfg.INPUT.RRCROP_SCALE)
        print(f"+ random resized crop (size={input_size}, scale={scale})")
        tfm_train += [RandomResizedCrop(input_size, scale=scale, interpolation=interp_mode)]
    if "random_flip" in choices:
        print("+ random flip")
        tfm_train += [RandomHorizontalFlip()]
    if "randaugment" in choices:
        n, m = cfg.INPUT.RANDAUGMENT_N, cfg.INPUT.RANDAUGMENT_M
        if not 0 <= m <= 30 or n < 0:
            raise UserError(f"INPUT.RANDAUGMENT_N must be >= 0 and INPUT.RANDAUGMENT_M in [0, 30]; got {n}, {m}")
        print(f"+ randaugment (n={n}, m={m})")
        tfm_train += [RandAugment(n, m)]
    print("+ to torch tensor of range [0, 1]")
    tfm_train += [ToTensor()]
    if "normalize" in choices:
        print(f"+ normalization (mean={cfg.INPUT.PIXEL_MEAN}, std={cfg.INPUT.PIXEL_STD})")
        tfm_train += [normalize]
    return Compose(tfm_train)


def _build_transform_test(cfg: CN, choices: Sequence[str], normalize: Normalize) -> Compose:
    print("Building transform_test")
    interp_mode = INTERPOLATION_MODES[cfg.INPUT.INTERPOLATION]
    input_size = tuple(cfg.INPUT.SIZE)

    print(f"+ resize the smaller edge to {max(input_size)}")
    tfm_test = [Resize(max(input_size), interpolation=interp_mode)]
    print(f"+ {input_size[0]}x{input_size[1]} center crop")
    tfm_test += [CenterCrop(input_size)]
    print("+ to torch tensor of range [0, 1]")
    tfm_test += [ToTensor()]
    if "normalize" in choices:
        print(f"+ normalization (mean={cfg.INPUT.PIXEL_MEAN}, std={cfg.INPUT.PIXEL_STD})")
        tfm_test += [normalize]
    return Compose(tfm_test)
