"""Every dataset reads a synthetic tree written in its real on-disk format.

Class names come from the shared, independently verified lists in ``../shared/classnames/`` (skipped when that
folder is absent). For the datasets that generate a split when the split file is missing, the raw annotations are
written in the official formats (txt lists, ``.mat`` files via scipy, class folders) and the expected split sizes
are computed from the generation rules of DATASETS_FACTS.md; a second test writes the split json itself.
"""
import json
import math
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from dassl.data.datasets import build_dataset

import datasets  # noqa: F401  (registers every dataset)
from dataset_cfg import make_cfg

SHARED_CLASSNAMES = Path(__file__).resolve().parents[2] / "shared" / "classnames"
pytestmark = pytest.mark.skipif(not SHARED_CLASSNAMES.is_dir(), reason="../shared/classnames not present")

TEMPLATE = {}


@pytest.fixture(autouse=True)
def tiny_jpeg(tmp_path_factory):
    """One tiny JPEG; the synthetic images are hard links to it (much faster than writing thousands of files)."""
    path = tmp_path_factory.mktemp("template") / "tiny.jpg"
    Image.new("RGB", (2, 2), (200, 30, 30)).save(path, format="JPEG")
    TEMPLATE["path"] = str(path)


def write_image(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        os.link(TEMPLATE["path"], path)
    except OSError:  # temp dirs on different file systems: fall back to a copy
        shutil.copyfile(TEMPLATE["path"], path)


def write_lines(path, lines):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("".join(line + "\n" for line in lines))


def shared_names(list_name):
    with open(SHARED_CLASSNAMES / list_name) as f:
        return [line.rstrip("\n") for line in f]


def imagenet_lines(list_name="ImageNet.txt"):
    """[(wnid, name)] of a shared ImageNet-family list."""
    return [tuple(line.split(" ", 1)) for line in shared_names(list_name)]




# Expected split sizes, straight from the generation rules (Python round = half to even).
def ratio_sizes(counts, p_trn=0.5, p_val=0.2):
    n_train = sum(round(n * p_trn) for n in counts)
    n_val = sum(round(n * p_val) for n in counts)
    return n_train, n_val, sum(counts) - n_train - n_val


def trainval_sizes(trainval_counts, test_total, p_val=0.2):
    n_val = sum(round(n * p_val) for n in trainval_counts)
    return sum(trainval_counts) - n_val, n_val, test_total


def folder_count(label):
    return 4 + label % 4  # 4..7 images: exercises round-half-to-even (5 * 0.5 = 2.5 -> 2, 7 * 0.5 = 3.5 -> 4)


def trainval_count(label):
    return 3 + label % 3  # 3..5 images: 20% rounds to 1 each time


# ------------------------------------------------------------------------------ raw trees in the official formats


def build_class_folders(image_dir, folders):
    counts = []
    for label, folder in enumerate(sorted(folders)):
        n = folder_count(label)
        for i in range(n):
            write_image(os.path.join(image_dir, folder, f"{folder}_{i:04d}.jpg"))
        counts.append(n)
    return counts


def raw_caltech101(root, names):
    folder_of = {"airplane": "airplanes", "face": "Faces", "leopard": "Leopards", "motorbike": "Motorbikes"}
    image_dir = os.path.join(root, "caltech-101", "101_ObjectCategories")
    counts = build_class_folders(image_dir, [folder_of.get(n, n) for n in names])
    for ignored in ("BACKGROUND_Google", "Faces_easy"):  # must not become classes
        for i in range(5):
            write_image(os.path.join(image_dir, ignored, f"image_{i:04d}.jpg"))
    return ratio_sizes(counts)


def raw_dtd(root, names):
    return ratio_sizes(build_class_folders(os.path.join(root, "dtd", "images"), names))


def raw_food101(root, names):
    return ratio_sizes(build_class_folders(os.path.join(root, "food-101", "images"), names))


def raw_eurosat(root, names):
    folder_of = {
        "Annual Crop Land": "AnnualCrop", "Forest": "Forest", "Herbaceous Vegetation Land": "HerbaceousVegetation",
        "Highway or Road": "Highway", "Industrial Buildings": "Industrial", "Pasture Land": "Pasture",
        "Permanent Crop Land": "PermanentCrop", "Residential Buildings": "Residential", "River": "River",
        "Sea or Lake": "SeaLake",
    }
    return ratio_sizes(build_class_folders(os.path.join(root, "eurosat", "2750"), [folder_of[n] for n in names]))


def raw_oxford_pets(root, names):
    data_dir = os.path.join(root, "oxford_pets")
    trainval, test, counts = [], [], []
    for label, breed in enumerate(names):
        # Cat breeds are capitalised in the official file names; the class name is lower-cased.
        prefix = breed.capitalize() if label % 2 == 0 else breed
        n = trainval_count(label)
        counts.append(n)
        for i in range(n + 2):
            stem = f"{prefix}_{i + 1}"
            write_image(os.path.join(data_dir, "images", stem + ".jpg"))
            (trainval if i < n else test).append(f"{stem} {label + 1} {1 + label % 2} {label // 2 + 1}")
    write_lines(os.path.join(data_dir, "annotations", "trainval.txt"), trainval)
    write_lines(os.path.join(data_dir, "annotations", "test.txt"), test)
    return trainval_sizes(counts, len(test))


def _cars_annotations(fnames, classes):
    records = np.zeros((1, len(fnames)), dtype=[(k, "O") for k in
                                                ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")])
    for i, (fname, cls) in enumerate(zip(fnames, classes)):
        records[0, i] = (np.array([[1]]), np.array([[1]]), np.array([[2]]), np.array([[2]]), np.array([[cls]]),
                         np.array([fname]))
    return {"annotations": records}


def raw_stanford_cars(root, names):
    data_dir = os.path.join(root, "stanford_cars")
    # The meta file has the year last ("AM General Hummer SUV 2000"); the class name puts it first.
    meta_names = np.empty((1, len(names)), dtype=object)
    for label, name in enumerate(names):
        year, rest = name.split(" ", 1)
        meta_names[0, label] = np.array([f"{rest} {year}"])
    os.makedirs(os.path.join(data_dir, "devkit"))
    savemat(os.path.join(data_dir, "devkit", "cars_meta.mat"), {"class_names": meta_names})
    train_f, train_c, test_f, test_c, counts = [], [], [], [], []
    for label in reversed(range(len(names))):  # file order != label order, as in the real annotations
        n = trainval_count(label)
        counts.append(n)
        for i in range(n):
            train_f.append(f"{len(train_f) + 1:05d}.jpg")
            train_c.append(label + 1)
        for i in range(2):
            test_f.append(f"{len(test_f) + 1:05d}.jpg")
            test_c.append(label + 1)
    for folder, fnames in (("cars_train", train_f), ("cars_test", test_f)):
        for fname in fnames:
            write_image(os.path.join(data_dir, folder, fname))
    savemat(os.path.join(data_dir, "devkit", "cars_train_annos.mat"), _cars_annotations(train_f, train_c))
    savemat(os.path.join(data_dir, "cars_test_annos_withlabels.mat"), _cars_annotations(test_f, test_c))
    return trainval_sizes(counts, len(test_f))


def raw_oxford_flowers(root, names):
    data_dir = os.path.join(root, "oxford_flowers")
    labels = []
    for label in reversed(range(len(names))):  # first-appearance order != label order
        labels.extend([label + 1] * folder_count(label))
    for i in range(len(labels)):
        write_image(os.path.join(data_dir, "jpg", f"image_{i + 1:05d}.jpg"))
    savemat(os.path.join(data_dir, "imagelabels.mat"), {"labels": np.array([labels], dtype=np.uint8)})
    with open(os.path.join(data_dir, "cat_to_name.json"), "w") as f:
        json.dump({str(label + 1): name for label, name in enumerate(names)}, f)
    return ratio_sizes([folder_count(label) for label in range(len(names))])


def sun_key(name):
    """Invert the SUN397 naming rule: "outdoor apartment_building" -> "a/apartment_building/outdoor"."""
    parts = name.split(" ")[::-1]
    return f"{parts[0][0]}/{'/'.join(parts)}"


def raw_sun397(root, names):
    data_dir = os.path.join(root, "sun397")
    keys = [sun_key(n) for n in names]
    assert keys == sorted(keys)  # the official ClassName.txt is sorted; so must the shared list be
    write_lines(os.path.join(data_dir, "ClassName.txt"), ["/" + k for k in keys])
    train, test, counts = [], [], []
    for label, key in enumerate(keys):
        n = trainval_count(label)
        counts.append(n)
        for i in range(n + 2):
            relpath = f"{key}/sun_{label:03d}{i:03d}.jpg"
            write_image(os.path.join(data_dir, "SUN397", relpath))
            (train if i < n else test).append("/" + relpath)
    write_lines(os.path.join(data_dir, "Training_01.txt"), train)
    write_lines(os.path.join(data_dir, "Testing_01.txt"), test)
    return trainval_sizes(counts, len(test))


def raw_ucf101(root, names):
    data_dir = os.path.join(root, "ucf101")
    actions = [n.replace("_", "") for n in names]  # "Apply_Eye_Makeup" -> "ApplyEyeMakeup"
    write_lines(os.path.join(data_dir, "ucfTrainTestlist", "classInd.txt"),
                [f"{label + 1} {a}" for label, a in enumerate(actions)])
    train, test, counts = [], [], []
    for label, (action, name) in enumerate(zip(actions, names)):
        n = trainval_count(label)
        counts.append(n)
        for i in range(n + 2):
            video = f"v_{action}_g{i + 1:02d}_c01"
            write_image(os.path.join(data_dir, "UCF-101-midframes", name, video + ".jpg"))
            if i < n:
                train.append(f"{action}/{video}.avi {label + 1}")
            else:
                test.append(f"{action}/{video}.avi")
    write_lines(os.path.join(data_dir, "ucfTrainTestlist", "trainlist01.txt"), train)
    write_lines(os.path.join(data_dir, "ucfTrainTestlist", "testlist01.txt"), test)
    return trainval_sizes(counts, len(test))


def raw_fgvc_aircraft(root, names):
    data_dir = os.path.join(root, "fgvc_aircraft")
    write_lines(os.path.join(data_dir, "variants.txt"), names)
    sizes = {"train": 2, "val": 1, "test": 1}
    image_id = 1000000
    for split, per_class in sizes.items():
        lines = []
        for name in reversed(names):  # list order != label order
            for _ in range(per_class):
                image_id += 1
                write_image(os.path.join(data_dir, "images", f"{image_id}.jpg"))
                lines.append(f"{image_id} {name}")  # names may contain spaces and "/"
        write_lines(os.path.join(data_dir, f"images_variant_{split}.txt"), lines)
    return tuple(per_class * len(names) for per_class in sizes.values())


# name -> (shared list, raw-tree builder, dataset dir, split file (None: never written))
RAW = {
    "Caltech101": ("Caltech101.txt", raw_caltech101, "caltech-101", "split_zhou_Caltech101.json"),
    "OxfordPets": ("OxfordPets.txt", raw_oxford_pets, "oxford_pets", "split_zhou_OxfordPets.json"),
    "StanfordCars": ("StanfordCars.txt", raw_stanford_cars, "stanford_cars", "split_zhou_StanfordCars.json"),
    "OxfordFlowers": ("OxfordFlowers.txt", raw_oxford_flowers, "oxford_flowers", "split_zhou_OxfordFlowers.json"),
    "Food101": ("Food101.txt", raw_food101, "food-101", "split_zhou_Food101.json"),
    "FGVCAircraft": ("FGVCAircraft.txt", raw_fgvc_aircraft, "fgvc_aircraft", None),
    "SUN397": ("SUN397.txt", raw_sun397, "sun397", "split_zhou_SUN397.json"),
    "DescribableTextures": ("DescribableTextures.txt", raw_dtd, "dtd", "split_zhou_DescribableTextures.json"),
    "EuroSAT": ("EuroSAT.txt", raw_eurosat, "eurosat", "split_zhou_EuroSAT.json"),
    "UCF101": ("UCF101.txt", raw_ucf101, "ucf101", "split_zhou_UCF101.json"),
}


def check_base_new(root, name, names):
    m = math.ceil(len(names) / 2)
    for subsample, expected in (("base", names[:m]), ("new", names[m:])):
        dataset = build_dataset(make_cfg(root, name, subsample=subsample))
        assert dataset.num_classes == len(expected)
        assert dataset.classnames == expected
        for split in (dataset.train_x, dataset.val, dataset.test):
            assert {d.label for d in split} == set(range(len(expected)))
            assert all(d.classname == expected[d.label] for d in split)


@pytest.mark.parametrize("name", sorted(RAW))
def test_raw_annotations(tmp_path, capsys, name):
    list_name, build, dirname, split_file = RAW[name]
    names = shared_names(list_name)
    expected_sizes = build(str(tmp_path), names)

    dataset = build_dataset(make_cfg(tmp_path, name))
    assert dataset.num_classes == len(names)
    assert dataset.classnames == names
    assert (len(dataset.train_x), len(dataset.val), len(dataset.test)) == expected_sizes
    for split in (dataset.train_x, dataset.val, dataset.test):
        assert all(d.classname == names[d.label] and os.path.isfile(d.impath) for d in split)
    train_paths, test_paths = {d.impath for d in dataset.train_x}, {d.impath for d in dataset.test}
    assert not train_paths & {d.impath for d in dataset.val} and not train_paths & test_paths

    split_path = os.path.join(tmp_path, dirname, split_file or "")
    if split_file is None:  # FGVCAircraft: always built from the official lists
        assert "Saved split" not in capsys.readouterr().out
        assert not [f for f in os.listdir(tmp_path / dirname) if f.endswith(".json")]
    else:
        assert f"Saved split to {split_path}" in capsys.readouterr().out
        with open(split_path) as f:
            written = json.load(f)
        assert [len(written[k]) for k in ("train", "val", "test")] == list(expected_sizes)
        assert all(not os.path.isabs(entry[0]) for entry in written["train"])
        again = build_dataset(make_cfg(tmp_path, name))  # now read from the written file
        assert f"Reading split from {split_path}" in capsys.readouterr().out
        assert [d.impath for d in again.test] == [d.impath for d in dataset.test]
        assert again.classnames == names
    check_base_new(tmp_path, name, names)


# ------------------------------------------------------------------------------ split files written by the test

# name -> (shared list, dataset dir, image dir ("" = dataset dir), split file, relative path of an image)
JSON = {
    "Caltech101": ("Caltech101.txt", "caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json",
                   lambda label, name, i: f"{name}/image_{i:04d}.jpg"),
    "OxfordPets": ("OxfordPets.txt", "oxford_pets", "images", "split_zhou_OxfordPets.json",
                   lambda label, name, i: f"{name}_{i}.jpg"),
    "StanfordCars": ("StanfordCars.txt", "stanford_cars", "", "split_zhou_StanfordCars.json",
                     lambda label, name, i: f"cars_{'train' if i < 3 else 'test'}/{label * 10 + i:05d}.jpg"),
    "OxfordFlowers": ("OxfordFlowers.txt", "oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json",
                      lambda label, name, i: f"image_{label * 10 + i + 1:05d}.jpg"),
    "Food101": ("Food101.txt", "food-101", "images", "split_zhou_Food101.json",
                lambda label, name, i: f"{name}/{label * 10 + i}.jpg"),
    "SUN397": ("SUN397.txt", "sun397", "SUN397", "split_zhou_SUN397.json",
               lambda label, name, i: f"{sun_key(name)}/sun_{i}.jpg"),
    "DescribableTextures": ("DescribableTextures.txt", "dtd", "images", "split_zhou_DescribableTextures.json",
                            lambda label, name, i: f"{name}/{name}_{i:04d}.jpg"),
    "EuroSAT": ("EuroSAT.txt", "eurosat", "2750", "split_zhou_EuroSAT.json",
                lambda label, name, i: f"class{label}/class{label}_{i}.jpg"),
    "UCF101": ("UCF101.txt", "ucf101", "UCF-101-midframes", "split_zhou_UCF101.json",
               lambda label, name, i: f"{name}/v_{name.replace('_', '')}_g{i:02d}_c01.jpg"),
}


@pytest.mark.parametrize("name", sorted(JSON))
def test_split_file(tmp_path, name):
    list_name, dirname, image_dir, split_file, relpath = JSON[name]
    names = shared_names(list_name)
    data_dir = tmp_path / dirname
    per_class = {"train": (0, 1, 2), "val": (3,), "test": (4, 5)}
    split = {key: [] for key in per_class}
    # Entries in reversed label order: labels must come from the file, not from the order of appearance.
    for label in reversed(range(len(names))):
        for key, indices in per_class.items():
            for i in indices:
                split[key].append([relpath(label, names[label], i), label, names[label]])
                write_image(str(data_dir / image_dir / split[key][-1][0]))
    with open(data_dir / split_file, "w") as f:
        json.dump(split, f)

    dataset = build_dataset(make_cfg(tmp_path, name, shots=2, seed=1))
    assert dataset.num_classes == len(names)
    assert dataset.classnames == names
    assert len(dataset.train_x) == 2 * len(names)  # 2-shot
    assert len(dataset.val) == len(names)  # min(2, 4) shots, but only 1 val image per class
    assert len(dataset.test) == 2 * len(names)
    expected_test = {str(data_dir / image_dir / e[0]) for e in split["test"]}
    assert {d.impath for d in dataset.test} == expected_test
    check_base_new(tmp_path, name, names)


# ------------------------------------------------------------------------------------------ the ImageNet family


def write_imagenet_classnames(folder, lines):
    write_lines(os.path.join(folder, "classnames.txt"), [f"{wnid} {name}" for wnid, name in lines])


def test_imagenet(tmp_path, capsys):
    lines = imagenet_lines()
    data_dir = tmp_path / "imagenet"
    write_imagenet_classnames(data_dir, reversed(lines))  # file order is irrelevant: names are looked up by wnid
    for wnid, _ in lines:
        for i in range(2):
            write_image(str(data_dir / "images" / "train" / wnid / f"{wnid}_{i}.JPEG"))
        write_image(str(data_dir / "images" / "val" / wnid / f"ILSVRC2012_val_{wnid}.JPEG"))
    names = [name for _, name in lines]
    assert names[0] == "tench" and names.count("missile") == 2  # CLIP's names, with their two duplicates

    dataset = build_dataset(make_cfg(tmp_path, "ImageNet"))
    assert dataset.num_classes == 1000
    assert dataset.classnames == names
    assert (len(dataset.train_x), len(dataset.test)) == (2000, 1000)
    assert dataset.val is dataset.test or [d.impath for d in dataset.val] == [d.impath for d in dataset.test]
    assert (data_dir / "preprocessed.pkl").is_file()

    # 1-shot: train reduced, val = test untouched; the cache holds only "train".
    fewshot = build_dataset(make_cfg(tmp_path, "ImageNet", shots=1, seed=2, subsample="base"))
    assert "SUBSAMPLE BASE CLASSES!" in capsys.readouterr().out
    assert fewshot.num_classes == 500 and fewshot.classnames == names[:500]
    assert len(fewshot.train_x) == 500 and len(fewshot.test) == 500
    assert [d.impath for d in fewshot.val] == [d.impath for d in fewshot.test]
    with open(data_dir / "split_fewshot" / "shot_1-seed_2.pkl", "rb") as f:
        assert set(pickle.load(f)) == {"train"}

    new = build_dataset(make_cfg(tmp_path, "ImageNet", shots=1, seed=2, subsample="new"))
    assert new.num_classes == 500 and new.classnames == names[500:]
    assert {d.label for d in new.test} == set(range(500))

    # preprocessed.pkl is used from now on: classnames.txt is no longer needed.
    os.remove(data_dir / "classnames.txt")
    assert build_dataset(make_cfg(tmp_path, "ImageNet")).classnames == names


def _check_test_only(dataset, names, n_images):
    assert dataset.num_classes == len(names)
    assert dataset.classnames == names
    assert len(dataset.test) == n_images
    assert not dataset.val  # no val split: model selection falls back to test
    assert [d.impath for d in dataset.train_x] == [d.impath for d in dataset.test]


def test_imagenetv2_maps_numbered_folders_to_lines(tmp_path):
    lines = imagenet_lines("ImageNetV2.txt")
    data_dir = tmp_path / "imagenetv2"
    write_imagenet_classnames(data_dir, lines)
    image_dir = data_dir / "imagenetv2-matched-frequency-format-val"
    for label in range(1000):  # folder "i" holds images of class i (i-th line of classnames.txt)
        write_image(str(image_dir / str(label) / f"{label}_img.jpeg"))
    dataset = build_dataset(make_cfg(tmp_path, "ImageNetV2", shots=16, subsample="base"))  # both ignored
    _check_test_only(dataset, [name for _, name in lines], 1000)
    for d in dataset.test:
        assert os.path.basename(os.path.dirname(d.impath)) == str(d.label)
    assert not (data_dir / "split_fewshot").exists()


def test_imagenet_sketch(tmp_path):
    lines = imagenet_lines("ImageNetSketch.txt")
    data_dir = tmp_path / "imagenet-sketch"
    write_imagenet_classnames(data_dir, lines)
    for wnid, _ in reversed(lines):
        write_image(str(data_dir / "images" / wnid / "sketch_1.JPEG"))
    dataset = build_dataset(make_cfg(tmp_path, "ImageNetSketch"))
    _check_test_only(dataset, [name for _, name in lines], 1000)
    assert sorted(os.listdir(data_dir)) == ["classnames.txt", "images"]  # nothing cached


@pytest.mark.parametrize("name, dirname, image_dir, list_name", [
    ("ImageNetA", "imagenet-adversarial", "imagenet-a", "ImageNetA.txt"),
    ("ImageNetR", "imagenet-rendition", "imagenet-r", "ImageNetR.txt"),
])
def test_imagenet_a_r_are_200_class_problems(tmp_path, name, dirname, image_dir, list_name):
    subset = imagenet_lines(list_name)
    assert len(subset) == 200
    data_dir = tmp_path / dirname
    write_imagenet_classnames(data_dir, imagenet_lines())  # the full 1000-line ImageNet file
    for wnid, _ in subset:
        for i in range(2):
            write_image(str(data_dir / image_dir / wnid / f"{i}.jpg"))
    write_lines(str(data_dir / image_dir / "README.txt"), ["not a class"])
    dataset = build_dataset(make_cfg(tmp_path, name))
    _check_test_only(dataset, [n for _, n in subset], 400)
    wnid_of_label = {d.label: os.path.basename(os.path.dirname(d.impath)) for d in dataset.test}
    assert [wnid_of_label[label] for label in range(200)] == [wnid for wnid, _ in subset]
