"""RandAugment as Dassl's ``randaugment`` transform (INPUT.TRANSFORMS "randaugment"; CoPrompt's augmentation).

``RandAugment(n, m)`` (INPUT.RANDAUGMENT_N / _M, defaults 2 / 10) draws n ops **with replacement** (``random.choices``)
from the 16 of ``AUGMENT_LIST`` and applies each at the value ``min + (m / 30) * (max - min)`` of its range; Rotate,
ShearX/Y and TranslateX/YAbs flip the sign with probability 0.5. At m = 10: rotate 10 deg, posterize 5 bits
(``int``), solarize threshold 85.3, solarize-add +36.7 below 128, colour / contrast / brightness / sharpness factor
0.7, shear 0.1, cutout 13.3 px (grey (125, 123, 114)), translate 33.3 px. PIL image in, PIL image out. Python's
``random`` drives every draw (seeded by ``set_random_seed``). Written from the description in
../shared/methods/COPROMPT.md §6.2 (Dassl's SolarizeAdd used ``np.int``, gone from NumPy >= 1.24; here ``int``).
"""
import random
from typing import Callable, List, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

Op = Callable[[Image.Image, float], Image.Image]


def _signed(v: float) -> float:
    return -v if random.random() > 0.5 else v


def _affine(img: Image.Image, matrix: Tuple[float, ...]) -> Image.Image:
    return img.transform(img.size, Image.AFFINE, matrix)


def auto_contrast(img: Image.Image, _: float) -> Image.Image:
    return ImageOps.autocontrast(img)


def equalize(img: Image.Image, _: float) -> Image.Image:
    return ImageOps.equalize(img)


def invert(img: Image.Image, _: float) -> Image.Image:
    return ImageOps.invert(img)


def rotate(img: Image.Image, v: float) -> Image.Image:
    return img.rotate(_signed(v))


def posterize(img: Image.Image, v: float) -> Image.Image:
    return ImageOps.posterize(img, int(v))


def solarize(img: Image.Image, v: float) -> Image.Image:
    return ImageOps.solarize(img, v)


def solarize_add(img: Image.Image, addition: float, threshold: int = 128) -> Image.Image:
    """Pixels below ``threshold`` get ``int(addition)`` added (clipped to [0, 255])."""
    pixels = np.array(img).astype(int)
    added = np.clip(pixels + int(addition), 0, 255)
    return Image.fromarray(np.where(pixels < threshold, added, pixels).astype(np.uint8))


def color(img: Image.Image, v: float) -> Image.Image:
    return ImageEnhance.Color(img).enhance(v)


def contrast(img: Image.Image, v: float) -> Image.Image:
    return ImageEnhance.Contrast(img).enhance(v)


def brightness(img: Image.Image, v: float) -> Image.Image:
    return ImageEnhance.Brightness(img).enhance(v)


def sharpness(img: Image.Image, v: float) -> Image.Image:
    return ImageEnhance.Sharpness(img).enhance(v)


def shear_x(img: Image.Image, v: float) -> Image.Image:
    return _affine(img, (1, _signed(v), 0, 0, 1, 0))


def shear_y(img: Image.Image, v: float) -> Image.Image:
    return _affine(img, (1, 0, 0, _signed(v), 1, 0))


def translate_x_abs(img: Image.Image, v: float) -> Image.Image:
    return _affine(img, (1, 0, _signed(v), 0, 1, 0))


def translate_y_abs(img: Image.Image, v: float) -> Image.Image:
    return _affine(img, (1, 0, 0, 0, 1, _signed(v)))


def cutout_abs(img: Image.Image, v: float) -> Image.Image:
    """A v x v grey (125, 123, 114) square centred at a uniformly drawn pixel, clipped to the image."""
    if v < 0:
        return img
    w, h = img.size
    x0, y0 = np.random.uniform(w), np.random.uniform(h)
    x0, y0 = int(max(0, x0 - v / 2.0)), int(max(0, y0 - v / 2.0))
    box = (x0, y0, min(w, x0 + v), min(h, y0 + v))
    img = img.copy()
    ImageDraw.Draw(img).rectangle(box, (125, 123, 114))
    return img


# (op, min, max): the value at magnitude m is min + (m / 30) * (max - min).
AUGMENT_LIST: List[Tuple[Op, float, float]] = [
    (auto_contrast, 0, 1), (equalize, 0, 1), (invert, 0, 1), (rotate, 0, 30), (posterize, 4, 8),
    (solarize, 0, 256), (solarize_add, 0, 110), (color, 0.1, 1.9), (contrast, 0.1, 1.9), (brightness, 0.1, 1.9),
    (sharpness, 0.1, 1.9), (shear_x, 0.0, 0.3), (shear_y, 0.0, 0.3), (cutout_abs, 0, 40),
    (translate_x_abs, 0.0, 100), (translate_y_abs, 0.0, 100),
]


def magnitude_value(m: float, minval: float, maxval: float) -> float:
    return minval + (m / 30) * (maxval - minval)


class RandAugment:
    """n ops drawn with replacement from AUGMENT_LIST, each at magnitude m (0 <= m <= 30)."""

    def __init__(self, n: int = 2, m: int = 10) -> None:
        if not 0 <= m <= 30:
            raise ValueError(f"RandAugment magnitude m must be in [0, 30], got {m}")
        self.n, self.m = n, m

    def __call__(self, img: Image.Image) -> Image.Image:
        for op, minval, maxval in random.choices(AUGMENT_LIST, k=self.n):
            img = op(img, magnitude_value(self.m, minval, maxval))
        return img

    def __repr__(self) -> str:
        return f"RandAugment(n={self.n}, m={self.m})"
