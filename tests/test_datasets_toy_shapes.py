"""ToyShapes: generation (format, class colours, determinism, atomicity, concurrency, generator version) and the
shared few-shot / base-new helpers."""
import hashlib
import json
import multiprocessing
import os
import random
import shutil

import numpy as np
import pytest
from PIL import Image

from dassl.config import get_cfg_default
from dassl.data.datasets import build_dataset

import datasets  # noqa: F401  (registers every dataset)
from datasets import toy_shapes
from dataset_cfg import make_cfg

EXPECTED_CLASSES = ["circle", "square", "triangle", "star", "hexagon", "cross", "ring", "crescent", "pentagon", "arrow"]




def tree_digest(folder):
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            digest.update(os.path.relpath(path, folder).encode())
            with open(path, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    build_dataset(make_cfg(root))
    return root


def test_yaml_config():
    cfg = get_cfg_default()
    cfg.merge_from_file(os.path.join(os.path.dirname(__file__), "..", "configs", "datasets", "toy_shapes.yaml"))
    assert cfg.DATASET.NAME == "ToyShapes"
    assert cfg.DATASET.NUM_SHOTS == -1


def test_generated_layout_and_split(toy_root):
    data_dir = toy_root / "toy_shapes"
    assert sorted(os.listdir(data_dir / "images")) == sorted(EXPECTED_CLASSES)
    with open(data_dir / "split_toy_shapes.json") as f:
        split = json.load(f)
    assert set(split) == {"train", "val", "test"}
    for name, per_class in (("train", 24), ("val", 8), ("test", 12)):
        entries = split[name]
        assert len(entries) == 10 * per_class
        for relpath, label, classname in entries:
            assert classname == EXPECTED_CLASSES[label]
            assert relpath.startswith(f"{classname}/") and relpath.endswith(".png")
    all_paths = [e[0] for name in split for e in split[name]]
    assert len(set(all_paths)) == 440  # the three splits are disjoint
    for cls in EXPECTED_CLASSES:
        assert len(os.listdir(data_dir / "images" / cls)) == 44
    image = Image.open(data_dir / "images" / "star" / "0000.png")
    assert image.size == (64, 64) and image.mode == "RGB"
    # No temp folder left beside the dataset.
    assert os.listdir(toy_root) == ["toy_shapes"]


def test_dataset_object(toy_root):
    dataset = build_dataset(make_cfg(toy_root))
    assert dataset.classnames == EXPECTED_CLASSES
    assert dataset.num_classes == 10
    assert (len(dataset.train_x), len(dataset.val), len(dataset.test)) == (240, 80, 120)
    assert all(os.path.isabs(d.impath) and os.path.isfile(d.impath) for d in dataset.test)


def test_generation_is_deterministic_and_leaves_global_random_alone(tmp_path, toy_root):
    random.seed(123)
    state = random.getstate()
    build_dataset(make_cfg(tmp_path))
    assert random.getstate() == state
    assert tree_digest(tmp_path / "toy_shapes") == tree_digest(toy_root / "toy_shapes")


def test_failed_generation_leaves_nothing(tmp_path, monkeypatch):
    calls = {"n": 0}
    real_draw = toy_shapes.draw_shape

    def flaky_draw(shape, rng):
        calls["n"] += 1
        if calls["n"] == 100:
            raise RuntimeError("disk full")
        return real_draw(shape, rng)

    monkeypatch.setattr(toy_shapes, "draw_shape", flaky_draw)
    with pytest.raises(RuntimeError, match="disk full"):
        build_dataset(make_cfg(tmp_path))
    assert os.listdir(tmp_path) == []


def test_losing_a_generation_race_is_harmless(tmp_path, toy_root):
    # The target appears while this run is generating: the rename fails and the winner's copy is used.
    target = str(tmp_path / "toy_shapes")
    toy_shapes.generate_toy_shapes(target, "split_toy_shapes.json")
    toy_shapes.generate_toy_shapes(target, "split_toy_shapes.json")
    assert os.listdir(tmp_path) == ["toy_shapes"]
    assert tree_digest(target) == tree_digest(toy_root / "toy_shapes")


def _build_in_child(root):
    build_dataset(make_cfg(root))


def test_concurrent_generation(tmp_path, toy_root):
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_build_in_child, args=(str(tmp_path),)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert os.listdir(tmp_path) == ["toy_shapes"]
    assert tree_digest(tmp_path / "toy_shapes") == tree_digest(toy_root / "toy_shapes")


def test_hand_made_folder_without_split_file_is_reported(tmp_path):
    (tmp_path / "toy_shapes").mkdir()
    with pytest.raises(FileNotFoundError) as info:
        build_dataset(make_cfg(tmp_path))
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "toy_shapes" / "split_toy_shapes.json") in message
    assert "DATASETS.md#toyshapes" in message


@pytest.mark.parametrize("shots", [4, 16])
def test_fewshot_and_cache(toy_root, shots):
    cache = toy_root / "toy_shapes" / "split_fewshot" / f"shot_{shots}-seed_7.pkl"
    if cache.exists():
        cache.unlink()
    random.seed(7)
    first = build_dataset(make_cfg(toy_root, shots=shots, seed=7))
    assert cache.is_file()
    # K per class for train, min(K, 4) per class for val, test untouched.
    assert len(first.train_x) == 10 * shots
    assert len(first.val) == 10 * min(shots, 4)
    assert len(first.test) == 120
    for label in range(10):
        assert sum(d.label == label for d in first.train_x) == shots
    random.seed(999)  # a different global state: the cache, not the sampler, decides
    second = build_dataset(make_cfg(toy_root, shots=shots, seed=7))
    assert [d.impath for d in second.train_x] == [d.impath for d in first.train_x]
    assert [d.impath for d in second.val] == [d.impath for d in first.val]


@pytest.mark.parametrize("subsample, names", [("base", EXPECTED_CLASSES[:5]), ("new", EXPECTED_CLASSES[5:])])
def test_base_new(toy_root, subsample, names):
    dataset = build_dataset(make_cfg(toy_root, shots=2, seed=3, subsample=subsample))
    assert dataset.num_classes == 5
    assert dataset.classnames == names
    for split in (dataset.train_x, dataset.val, dataset.test):
        assert sorted({d.label for d in split}) == [0, 1, 2, 3, 4]
        assert all(d.classname == names[d.label] for d in split)
    assert len(dataset.test) == 5 * 12
    assert len(dataset.train_x) == 5 * 2


# Colour is a class cue on purpose (datasets/toy_shapes.py docstring): hues in degrees, written here from the docs.
CLASS_HUES = {"circle": ("red", 0), "square": ("yellow", 55), "triangle": ("green", 125), "star": ("sky blue", 200),
              "hexagon": ("purple", 280), "cross": ("orange", 28), "ring": ("lime", 88), "crescent": ("teal", 165),
              "pentagon": ("blue", 235), "arrow": ("magenta", 315)}


def hsv(pixels):
    """(..., 3) uint8 RGB -> hue in degrees [0, 360), saturation and value in [0, 1] (the usual hexcone model)."""
    rgb = pixels.astype(np.float64) / 255.0
    value, low = rgb.max(-1), rgb.min(-1)
    chroma = value - low
    saturation = np.where(value > 0, chroma / np.maximum(value, 1e-12), 0.0)
    r, g, b = np.moveaxis(rgb, -1, 0)
    safe = np.maximum(chroma, 1e-12)
    hue = np.where(value == r, ((g - b) / safe) % 6, np.where(value == g, (b - r) / safe + 2, (r - g) / safe + 4))
    return 60.0 * hue % 360.0, saturation, value


def hue_distance(a, b):
    d = np.abs(np.asarray(a) - b) % 360.0
    return np.minimum(d, 360.0 - d)


def test_each_class_has_its_own_colour_on_a_grey_background(toy_root):
    images = toy_root / "toy_shapes" / "images"
    for shape, (_, class_hue) in CLASS_HUES.items():
        for name in sorted(os.listdir(images / shape)):
            pixels = np.asarray(Image.open(images / shape / name).convert("RGB"))
            hue, saturation, value = hsv(pixels)
            shape_pixels = saturation > 0.5  # the background is at most 15% saturated, the shape at least 70%
            assert shape_pixels.mean() > 0.05, (shape, name)  # the shape is clearly there
            # The shape's hue is its class hue (jitter +-5 deg, a few more for anti-aliasing and 8-bit rounding)
            # and closer to it than to any other class hue.
            shape_hue = np.median(hue[shape_pixels])
            assert hue_distance(shape_hue, class_hue) <= 8, (shape, name, shape_hue)
            nearest = min(CLASS_HUES, key=lambda other: hue_distance(shape_hue, CLASS_HUES[other][1]))
            assert nearest == shape, (shape, name, shape_hue)
            # Corners are always background (the shape keeps its circumradius away from the borders): grey-ish,
            # dark or light.
            corners = np.stack([pixels[0, 0], pixels[0, -1], pixels[-1, 0], pixels[-1, -1]])
            _, corner_saturation, corner_value = hsv(corners)
            assert (corner_saturation <= 0.16).all(), (shape, name, corner_saturation)
            assert ((corner_value <= 0.31) | (corner_value >= 0.74)).all(), (shape, name, corner_value)


def test_folder_of_an_older_generator_is_reported(tmp_path, toy_root):
    # A folder drawn by version 1 (random colours, no GENERATOR marker) must not be reused silently.
    shutil.copytree(toy_root / "toy_shapes", tmp_path / "toy_shapes")
    (tmp_path / "toy_shapes" / "GENERATOR").unlink()
    with pytest.raises(ValueError) as info:
        build_dataset(make_cfg(tmp_path))
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "toy_shapes") in message and "version 1" in message
    assert "delete the folder to regenerate it" in message and "DATASETS.md#toyshapes" in message


def test_descriptions_name_each_class_colour_and_shape():
    path = os.path.join(os.path.dirname(__file__), "..", "descriptions", "toy_shapes.json")
    with open(path, encoding="utf-8") as f:
        table = json.load(f)
    assert list(table) == EXPECTED_CLASSES
    for shape, sentences in table.items():
        colour = CLASS_HUES[shape][0]
        assert len(set(sentences)) >= 5
        assert all(shape in sentence and colour in sentence for sentence in sentences), shape
