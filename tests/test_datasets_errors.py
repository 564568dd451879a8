"""Bad input: one clear line naming the expected path and the DATASETS.md section; nothing cached by a failed read."""
import functools
import json
import os
import re
from pathlib import Path

import pytest
from PIL import Image

from dassl.data.datasets import DATASET_REGISTRY, build_dataset
from dassl.utils import UserError

import datasets  # noqa: F401  (registers every dataset)
from dataset_cfg import make_cfg

REPO = Path(__file__).resolve().parents[1]

# registered name -> folder under DATASET.ROOT
FOLDERS = {
    "ImageNet": "imagenet", "Caltech101": "caltech-101", "OxfordPets": "oxford_pets",
    "StanfordCars": "stanford_cars", "OxfordFlowers": "oxford_flowers", "Food101": "food-101",
    "FGVCAircraft": "fgvc_aircraft", "SUN397": "sun397", "DescribableTextures": "dtd", "EuroSAT": "eurosat",
    "UCF101": "ucf101", "ImageNetV2": "imagenetv2", "ImageNetSketch": "imagenet-sketch",
    "ImageNetA": "imagenet-adversarial", "ImageNetR": "imagenet-rendition",
}


# Dataset-yaml default: 16 shots.
make_cfg = functools.partial(make_cfg, shots=16)


def snapshot(root):
    """Every path under ``root`` (to prove that a failed read created or cached nothing)."""
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*"))


def load_error(root, name, expected_path, exc_type=UserError, **cfg):
    """Build the dataset, expect a one-line error naming ``expected_path`` and the DATASETS.md section."""
    before = snapshot(root)
    with pytest.raises(exc_type) as info:
        build_dataset(make_cfg(root, name, **cfg))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{name}: ")
    assert str(expected_path) in message
    assert f"DATASETS.md#{name.lower()}" in message
    assert snapshot(root) == before, "a failed read must not create or cache anything"
    return message


def write_image(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (2, 2)).save(path, format="JPEG")


def test_datasets_md_has_a_section_per_dataset():
    text = (REPO / "DATASETS.md").read_text()
    headings = set(re.findall(r"^## (\S+)$", text, flags=re.M))
    # Only the library's datasets: other test modules register their own small datasets in the same registry.
    library = {name for name in DATASET_REGISTRY.registered_names()
               if DATASET_REGISTRY.get(name).__module__.startswith("datasets.")}
    assert len(library) == 16
    assert library <= headings


@pytest.mark.parametrize("name", sorted(FOLDERS))
def test_missing_dataset_folder(tmp_path, name):
    message = load_error(tmp_path, name, tmp_path / FOLDERS[name])
    assert "dataset folder not found" in message


def test_missing_folder_is_also_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        build_dataset(make_cfg(tmp_path, "EuroSAT"))


def test_missing_image_folder(tmp_path):
    (tmp_path / "eurosat").mkdir()
    load_error(tmp_path, "EuroSAT", tmp_path / "eurosat" / "2750")


def test_missing_split_file_and_annotations(tmp_path):
    (tmp_path / "oxford_pets" / "images").mkdir(parents=True)
    message = load_error(tmp_path, "OxfordPets", tmp_path / "oxford_pets" / "annotations" / "trainval.txt")
    assert str(tmp_path / "oxford_pets" / "split_zhou_OxfordPets.json") in message


def test_missing_cars_devkit(tmp_path):
    (tmp_path / "stanford_cars").mkdir()
    message = load_error(tmp_path, "StanfordCars", tmp_path / "stanford_cars" / "devkit")
    assert "split_zhou_StanfordCars.json" in message


def test_missing_fgvc_list(tmp_path):
    data_dir = tmp_path / "fgvc_aircraft"
    (data_dir / "images").mkdir(parents=True)
    (data_dir / "variants.txt").write_text("707-320\n")
    load_error(tmp_path, "FGVCAircraft", data_dir / "images_variant_train.txt")


@pytest.mark.parametrize("shots", [-1, 16])
def test_missing_image_listed_in_split(tmp_path, shots):
    data_dir = tmp_path / "caltech-101"
    split = {"train": [["accordion/image_0001.jpg", 0, "accordion"], ["accordion/image_0002.jpg", 0, "accordion"]],
             "val": [["accordion/image_0003.jpg", 0, "accordion"]],
             "test": [["accordion/image_0004.jpg", 0, "accordion"]]}
    for key in ("train", "val"):
        for relpath, _, _ in split[key]:
            write_image(str(data_dir / "101_ObjectCategories" / relpath))
    (data_dir / "split_zhou_Caltech101.json").write_text(json.dumps(split))
    message = load_error(tmp_path, "Caltech101", data_dir / "101_ObjectCategories" / "accordion" / "image_0004.jpg",
                         shots=shots)
    assert "image listed in split_zhou_Caltech101.json not found" in message
    assert not (data_dir / "split_fewshot").exists()


def test_generation_with_a_missing_image_writes_no_split(tmp_path):
    data_dir = tmp_path / "oxford_pets"
    write_image(str(data_dir / "images" / "Abyssinian_1.jpg"))
    (data_dir / "annotations").mkdir()
    (data_dir / "annotations" / "trainval.txt").write_text("Abyssinian_1 1 1 1\nAbyssinian_2 1 1 1\n")
    (data_dir / "annotations" / "test.txt").write_text("Abyssinian_3 1 1 1\n")
    load_error(tmp_path, "OxfordPets", data_dir / "images" / "Abyssinian_2.jpg")
    assert not (data_dir / "split_zhou_OxfordPets.json").exists()


def test_imagenet_without_classnames_caches_nothing(tmp_path):
    write_image(str(tmp_path / "imagenet" / "images" / "train" / "n01440764" / "a.JPEG"))
    write_image(str(tmp_path / "imagenet" / "images" / "val" / "n01440764" / "b.JPEG"))
    load_error(tmp_path, "ImageNet", tmp_path / "imagenet" / "classnames.txt")
    assert not (tmp_path / "imagenet" / "preprocessed.pkl").exists()


def test_imagenet_folder_without_name_caches_nothing(tmp_path):
    data_dir = tmp_path / "imagenet"
    for wnid in ("n01440764", "n99999999"):
        write_image(str(data_dir / "images" / "train" / wnid / "a.JPEG"))
        write_image(str(data_dir / "images" / "val" / wnid / "b.JPEG"))
    (data_dir / "classnames.txt").write_text("n01440764 tench\n")
    message = load_error(tmp_path, "ImageNet", data_dir / "classnames.txt")
    assert "'n99999999'" in message


def test_imagenet_val_folder_missing_a_class(tmp_path):
    data_dir = tmp_path / "imagenet"
    for wnid in ("n01440764", "n01443537"):
        write_image(str(data_dir / "images" / "train" / wnid / "a.JPEG"))
    write_image(str(data_dir / "images" / "val" / "n01440764" / "b.JPEG"))
    (data_dir / "classnames.txt").write_text("n01440764 tench\nn01443537 goldfish\n")
    load_error(tmp_path, "ImageNet", data_dir / "images" / "val" / "n01443537")


def test_variant_without_classnames_says_to_copy_it(tmp_path):
    write_image(str(tmp_path / "imagenet-rendition" / "imagenet-r" / "n01443537" / "a.jpg"))
    message = load_error(tmp_path, "ImageNetR", tmp_path / "imagenet-rendition" / "classnames.txt")
    assert "copy imagenet/classnames.txt here" in message


@pytest.fixture
def toy_root(tmp_path):
    build_dataset(make_cfg(tmp_path, "ToyShapes", shots=-1))
    return tmp_path


def test_corrupt_fewshot_cache(toy_root):
    cache = toy_root / "toy_shapes" / "split_fewshot" / "shot_2-seed_1.pkl"
    cache.parent.mkdir()
    cache.write_bytes(b"not a pickle")
    message = load_error(toy_root, "ToyShapes", cache, shots=2)
    assert "delete it to rebuild it" in message


def test_stale_fewshot_cache_after_moving_the_root(toy_root, tmp_path_factory):
    build_dataset(make_cfg(toy_root, "ToyShapes", shots=2))
    moved = tmp_path_factory.mktemp("moved")
    os.rename(toy_root / "toy_shapes", moved / "toy_shapes")
    message = load_error(moved, "ToyShapes", moved / "toy_shapes" / "split_fewshot" / "shot_2-seed_1.pkl", shots=2)
    assert "was DATASET.ROOT moved?" in message


def test_invalid_split_file(toy_root):
    split = toy_root / "toy_shapes" / "split_toy_shapes.json"
    split.write_text('{"train": []}')
    load_error(toy_root, "ToyShapes", split, shots=-1)
    split.write_text("<html>quota exceeded</html>")
    load_error(toy_root, "ToyShapes", split, shots=-1)


def test_bad_subsample_value(toy_root):
    with pytest.raises(UserError, match="DATASET.SUBSAMPLE_CLASSES must be one of all, base, new"):
        build_dataset(make_cfg(toy_root, "ToyShapes", shots=-1, subsample="novel"))


def test_fgvc_list_with_unknown_variant(tmp_path):
    data_dir = tmp_path / "fgvc_aircraft"
    write_image(str(data_dir / "images" / "0000001.jpg"))
    (data_dir / "variants.txt").write_text("707-320\n")
    for split in ("train", "val", "test"):
        (data_dir / f"images_variant_{split}.txt").write_text("0000001 A340-999\n")
    message = load_error(tmp_path, "FGVCAircraft", data_dir / "images_variant_train.txt")
    assert "'A340-999', not in variants.txt" in message
