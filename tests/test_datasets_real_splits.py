"""The published CoOp split files load with the paper's split sizes and the expected class names.

Uses ``../shared/splits/`` (public split files, never copied into the repository; skipped when absent): each file
is placed in a temp DATASET.ROOT with a tiny placeholder image at every listed path.
"""
import json
import math
import os
import random
import shutil
from pathlib import Path

import pytest
from PIL import Image

from dassl.data.datasets import build_dataset

import datasets  # noqa: F401  (registers every dataset)
from dataset_cfg import make_cfg

SHARED = Path(__file__).resolve().parents[2] / "shared"
pytestmark = pytest.mark.skipif(not (SHARED / "splits").is_dir() or not (SHARED / "classnames").is_dir(),
                                reason="../shared/splits or ../shared/classnames not present")



@pytest.fixture
def tiny_jpeg(tmp_path_factory):
    """A tiny JPEG per test (an inode takes at most ~65k hard links); the placeholders are hard links to it,
    as creating tens of thousands of real files is far slower."""
    path = tmp_path_factory.mktemp("template") / "tiny.jpg"
    Image.new("RGB", (2, 2), (30, 30, 200)).save(path, format="JPEG")
    return str(path)

# name -> (dataset dir, image dir ("" = dataset dir), train / val / test sizes of the CoOp/HiCroPL split table).
# UCF101's val size is 1,898 (DATASETS_FACTS.md, the split file itself); the HiCroPL paper's Table 10 prints 1,808,
# a transcription slip: 7,639 + 1,898 is the 80/20 split of the 9,537 trainlist01 videos.
REAL = {
    "Caltech101": ("caltech-101", "101_ObjectCategories", (4128, 1649, 2465)),
    "OxfordPets": ("oxford_pets", "images", (2944, 736, 3669)),
    "StanfordCars": ("stanford_cars", "", (6509, 1635, 8041)),
    "OxfordFlowers": ("oxford_flowers", "jpg", (4093, 1633, 2463)),
    "DescribableTextures": ("dtd", "images", (2820, 1128, 1692)),
    "EuroSAT": ("eurosat", "2750", (13500, 5400, 8100)),
    "UCF101": ("ucf101", "UCF-101-midframes", (7639, 1898, 3783)),
}




def place_split(root, name, template):
    """Copy the published split file into a temp dataset dir and put a placeholder at every listed path."""
    dirname, image_dir, _ = REAL[name]
    split_file = f"split_zhou_{name}.json"
    data_dir = os.path.join(root, dirname)
    os.makedirs(data_dir)
    shutil.copy(SHARED / "splits" / split_file, os.path.join(data_dir, split_file))
    with open(SHARED / "splits" / split_file) as f:
        split = json.load(f)
    made = set()
    for entries in split.values():
        for relpath, _, _ in entries:
            path = os.path.join(data_dir, image_dir, relpath)
            folder = os.path.dirname(path)
            if folder not in made:
                os.makedirs(folder, exist_ok=True)
                made.add(folder)
            try:
                os.link(template, path)
            except OSError:  # temp dirs on different file systems: fall back to copies
                shutil.copyfile(template, path)
    return split


def shared_names(name):
    with open(SHARED / "classnames" / f"{name}.txt") as f:
        return [line.rstrip("\n") for line in f]


@pytest.mark.parametrize("name", sorted(REAL))
def test_published_split(tmp_path, tiny_jpeg, name):
    place_split(tmp_path, name, tiny_jpeg)
    names = shared_names(name)
    dataset = build_dataset(make_cfg(tmp_path, name))
    assert (len(dataset.train_x), len(dataset.val), len(dataset.test)) == REAL[name][2]
    assert dataset.num_classes == len(names)
    assert dataset.classnames == names

    # 16 shots, seed 1: every class of these datasets has >= 16 train and >= 4 val images.
    random.seed(1)
    fewshot = build_dataset(make_cfg(tmp_path, name, shots=16, seed=1, subsample="base"))
    m = math.ceil(len(names) / 2)
    assert fewshot.classnames == names[:m]
    assert len(fewshot.train_x) == 16 * m
    assert len(fewshot.val) == 4 * m
    assert len(fewshot.test) == sum(1 for d in dataset.test if d.label < m)
    assert os.path.isfile(os.path.join(tmp_path, REAL[name][0], "split_fewshot", "shot_16-seed_1.pkl"))
