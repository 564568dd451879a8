"""Few-shot / preprocessed caches: interchangeable with real Dassl's pickles, reproducible, written atomically."""
import json
import os
import pickle
import random
import struct

import pytest

from dassl.data.datasets import Datum, build_dataset

import datasets  # noqa: F401  (registers every dataset)
from common.errors import UserError
from datasets import common
from dataset_cfg import make_cfg

DATUM_ATTRS = {"_impath", "_label", "_domain", "_classname"}




def dassl_pickle(splits):
    """Hand-assembled pickle (protocol 2) of ``{split: [Datum, ...]}`` as real Dassl writes it.

    Each Datum is the opcode sequence that pickling an instance of ``dassl.data.datasets.base_dataset.Datum``
    produces: GLOBAL class path, EMPTY_TUPLE, NEWOBJ, then its ``__dict__`` (``_impath``, ``_label``,
    ``_domain``, ``_classname``) applied with BUILD. Written by hand so that it does not depend on our classes.
    """
    out = bytearray(b"\x80\x02")  # PROTO 2

    def put(value):
        if isinstance(value, int):
            out.extend(b"J" + struct.pack("<i", value))  # BININT
        else:
            data = value.encode("utf-8")
            out.extend(b"X" + struct.pack("<I", len(data)) + data)  # BINUNICODE

    out.extend(b"}(")  # EMPTY_DICT, MARK
    for split, records in splits.items():
        put(split)
        out.extend(b"](")  # EMPTY_LIST, MARK
        for record in records:
            out.extend(b"cdassl.data.datasets.base_dataset\nDatum\n)\x81}(")  # GLOBAL, EMPTY_TUPLE, NEWOBJ, {, MARK
            for key, value in record.items():
                put(key)
                put(value)
            out.extend(b"ub")  # SETITEMS, BUILD
        out.extend(b"e")  # APPENDS
    out.extend(b"u.")  # SETITEMS, STOP
    return bytes(out)


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    build_dataset(make_cfg(root))
    return root


def toy_images(root, classname, indices):
    return [str(root / "toy_shapes" / "images" / classname / f"{i:04d}.png") for i in indices]


def test_hand_built_dassl_pickle_unpickles_into_our_datum(toy_root):
    impath = toy_images(toy_root, "star", [0])[0]
    data = pickle.loads(dassl_pickle({"train": [
        {"_impath": impath, "_label": 3, "_domain": 0, "_classname": "star"}]}))
    (item,) = data["train"]
    assert isinstance(item, Datum)
    assert (item.impath, item.label, item.domain, item.classname) == (impath, 3, 0, "star")


def test_dassl_fewshot_pickle_is_used_as_is(toy_root, capsys):
    classnames = ["circle", "square", "triangle", "star", "hexagon", "cross", "ring", "crescent", "pentagon", "arrow"]
    # A 2-shot cache as the CoOp-family code would have written it (train: images 5 and 9, val: images 25 and 30).
    records = {
        split: [{"_impath": path, "_label": label, "_domain": 0, "_classname": name}
                for label, name in enumerate(classnames) for path in toy_images(toy_root, name, picks)]
        for split, picks in (("train", [5, 9]), ("val", [25, 30]))
    }
    cache = toy_root / "toy_shapes" / "split_fewshot" / "shot_2-seed_5.pkl"
    cache.parent.mkdir(exist_ok=True)
    cache.write_bytes(dassl_pickle(records))

    dataset = build_dataset(make_cfg(toy_root, shots=2, seed=5, subsample="new"))
    assert f"Loading preprocessed few-shot data from {cache}" in capsys.readouterr().out
    new = classnames[5:]
    assert dataset.classnames == new
    assert [d.impath for d in dataset.train_x] == [p for name in new for p in toy_images(toy_root, name, [5, 9])]
    assert [d.impath for d in dataset.val] == [p for name in new for p in toy_images(toy_root, name, [25, 30])]
    assert [d.label for d in dataset.train_x] == [label for label in range(5) for _ in range(2)]


class _Recorded:
    """Stand-in for whatever class a pickle names (no __setstate__: BUILD fills __dict__)."""


def test_our_pickle_names_dassls_class_and_attributes(toy_root):
    build_dataset(make_cfg(toy_root, shots=3, seed=4))
    names = set()

    class Recorder(pickle.Unpickler):
        def find_class(self, module, name):
            names.add((module, name))
            return _Recorded

    with open(toy_root / "toy_shapes" / "split_fewshot" / "shot_3-seed_4.pkl", "rb") as f:
        data = Recorder(f).load()
    assert names == {("dassl.data.datasets.base_dataset", "Datum")}
    assert set(data) == {"train", "val"}
    assert len(data["train"]) == 30 and len(data["val"]) == 30
    for item in data["train"] + data["val"]:
        assert set(vars(item)) == DATUM_ATTRS
        assert os.path.isabs(item._impath)


def test_imagenet_preprocessed_pickle_from_dassl(tmp_path, toy_root):
    # A preprocessed.pkl written elsewhere replaces the folder scan (images/ and classnames.txt are not needed).
    images = toy_images(toy_root, "circle", [0, 1]) + toy_images(toy_root, "ring", [0, 1])
    record = lambda path, label, name: {"_impath": path, "_label": label, "_domain": 0, "_classname": name}  # noqa
    train = [record(images[0], 0, "tench"), record(images[2], 1, "goldfish")]
    test = [record(images[1], 0, "tench"), record(images[3], 1, "goldfish")]
    (tmp_path / "imagenet").mkdir()
    (tmp_path / "imagenet" / "preprocessed.pkl").write_bytes(dassl_pickle({"train": train, "test": test}))
    dataset = build_dataset(make_cfg(tmp_path, "ImageNet"))
    assert dataset.classnames == ["tench", "goldfish"]
    assert [d.impath for d in dataset.test] == [images[1], images[3]]
    assert [d.impath for d in dataset.val] == [images[1], images[3]]


@pytest.mark.parametrize("shots, seed", [(1, 1), (4, 2), (16, 3)])
def test_fewshot_sampling_matches_reference(tmp_path_factory, shots, seed):
    """Same subsets as the reference procedure: per class in json order, random.sample(train, K), then val."""
    root = tmp_path_factory.mktemp("toy")
    build_dataset(make_cfg(root))  # generate first; generation does not touch the global random

    with open(root / "toy_shapes" / "split_toy_shapes.json") as f:
        split = json.load(f)
    random.seed(seed)
    expected = {}
    for key, k in (("train", shots), ("val", min(shots, 4))):
        groups = {}
        for relpath, label, _ in split[key]:
            groups.setdefault(label, []).append(relpath)
        expected[key] = [p for items in groups.values()
                         for p in (random.sample(items, k) if len(items) >= k else items)]

    random.seed(seed)
    dataset = build_dataset(make_cfg(root, shots=shots, seed=seed))
    image_dir = str(root / "toy_shapes" / "images") + os.sep
    assert [d.impath.replace(image_dir, "") for d in dataset.train_x] == expected["train"]
    assert [d.impath.replace(image_dir, "") for d in dataset.val] == expected["val"]


def test_cache_write_is_atomic(toy_root, monkeypatch):
    def failing_dump(obj, f, protocol=None):
        f.write(b"\x80\x05partial")
        raise OSError("no space left on device")

    monkeypatch.setattr(common.pickle, "dump", failing_dump)
    with pytest.raises(UserError, match=r"cannot write .*shot_5-seed_11.pkl \(no space left on device\)"):
        build_dataset(make_cfg(toy_root, shots=5, seed=11))
    cache_dir = toy_root / "toy_shapes" / "split_fewshot"
    assert not (cache_dir / "shot_5-seed_11.pkl").exists()
    assert not [name for name in os.listdir(cache_dir) if name.endswith(".tmp")]


def test_no_seed_cache_name(toy_root):
    build_dataset(make_cfg(toy_root, shots=1, seed=-1))
    assert (toy_root / "toy_shapes" / "split_fewshot" / "shot_1-seed_-1.pkl").is_file()
