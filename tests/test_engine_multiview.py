"""Multi-view training batches (DATALOADER.K_TRANSFORMS) and the RandAugment transform, against their definitions
(../shared/DASSL_API.md §6.4-6.5, ../shared/methods/COPROMPT.md §6.2)."""
import random

import numpy as np
import pytest
import torch
from PIL import Image

from dassl.data import DataManager
from dassl.data.transforms import build_transform
from dassl.data.transforms import randaugment as ra
from dassl.utils import UserError
from test_engine_data import EngineTestImages, clip_cfg  # noqa: F401 (registers the dataset)


def gradient_image(w=40, h=30):
    x = np.arange(w)[None, :, None] * 6 + np.arange(h)[:, None, None] * 2 + np.array([0, 40, 80])
    return Image.fromarray((x % 256).astype(np.uint8))


def test_op_values_at_magnitude_10_are_a_third_of_each_range():
    values = {op.__name__: ra.magnitude_value(10, lo, hi) for op, lo, hi in ra.AUGMENT_LIST}
    assert len(ra.AUGMENT_LIST) == 16
    expected = {"rotate": 10, "solarize": 256 / 3, "solarize_add": 110 / 3, "color": 0.7, "contrast": 0.7,
                "brightness": 0.7, "sharpness": 0.7, "shear_x": 0.1, "shear_y": 0.1, "cutout_abs": 40 / 3,
                "translate_x_abs": 100 / 3, "translate_y_abs": 100 / 3}
    for name, value in expected.items():
        assert values[name] == pytest.approx(value), name
    assert int(values["posterize"]) == 5


def test_randaugment_applies_n_drawn_ops_at_magnitude_m(monkeypatch):
    """Ops drawn with random.choices(k=n); posterize keeps the top 5 bits, solarize inverts pixels >= 256/3 and
    solarize-add adds int(110/3) = 36 below 128 (written here with numpy)."""
    ops = {op.__name__: (op, lo, hi) for op, lo, hi in ra.AUGMENT_LIST}
    drawn = []

    def choices(population, k):
        assert population is ra.AUGMENT_LIST
        drawn.append(k)
        return [ops["posterize"], ops["solarize"], ops["solarize_add"]][:k]

    monkeypatch.setattr(random, "choices", choices)
    img = gradient_image()
    x = np.array(img).astype(int)
    x = x & 0b11111000
    x = np.where(x >= 256 / 3, 255 - x, x)
    x = np.where(x < 128, np.minimum(x + 36, 255), x)
    out = ra.RandAugment(n=3, m=10)(img)
    assert drawn == [3] and np.array_equal(np.array(out), x)


@pytest.mark.parametrize("draw, shift", [(0.9, -33), (0.1, 33)])
def test_translate_flips_its_sign_with_probability_half(monkeypatch, draw, shift):
    monkeypatch.setattr(random, "random", lambda: draw)
    img = gradient_image(80, 20)
    out = np.array(ra.translate_x_abs(img, 33))
    x = np.array(img)
    if shift > 0:  # output column c shows input column c + 33
        assert np.array_equal(out[:, :-33], x[:, 33:]) and not out[:, -33:].any()
    else:
        assert np.array_equal(out[:, 33:], x[:, :-33]) and not out[:, :33].any()


def test_randaugment_in_the_train_pipeline_only():
    cfg = clip_cfg(size=16)
    cfg.INPUT.TRANSFORMS = ["random_flip", "randaugment", "normalize"]
    steps = [type(t).__name__ for t in build_transform(cfg, is_train=True).transforms]
    assert steps == ["Resize", "RandomHorizontalFlip", "RandAugment", "ToTensor", "Normalize"]
    assert "RandAugment" not in [type(t).__name__ for t in build_transform(cfg, is_train=False).transforms]
    cfg.INPUT.RANDAUGMENT_M = 31
    with pytest.raises(UserError, match="RANDAUGMENT_M"):
        build_transform(cfg, is_train=True)


def test_k_transforms_gives_k_independent_views_of_each_training_image(tmp_path):
    cfg = clip_cfg(size=16)
    cfg.DATASET.NAME = "EngineTestImages"
    cfg.DATASET.ROOT = str(tmp_path)
    cfg.DATALOADER.K_TRANSFORMS = 2
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.INPUT.TRANSFORMS = ["randaugment", "normalize"]
    cfg.INPUT.RANDAUGMENT_N = 4
    cfg.DATALOADER.TRAIN_X.BATCH_SIZE = 8
    random.seed(0)
    dm = DataManager(cfg)
    batch = next(iter(dm.train_loader_x))
    views = batch["img"]
    assert isinstance(views, list) and len(views) == 2
    assert all(v.shape == (8, 3, 16, 16) for v in views) and batch["label"].shape == (8,)
    assert not torch.equal(views[0], views[1])  # independent draws per view
    test_batch = next(iter(dm.test_loader))
    assert isinstance(test_batch["img"], torch.Tensor)  # K applies to training only
