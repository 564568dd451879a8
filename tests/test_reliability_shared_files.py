"""Shared data is written once, safely: parallel seeds on a fresh folder agree on one split (and one few-shot file per
seed), and every file or folder that the library creates gets the modes the caller's umask gives (a lab-mate can read
a shared DATA folder), not tempfile's private 0600/0700.
"""
import multiprocessing
import os
import stat
import time

import pytest
import torch

import clip
import datasets  # noqa: F401  (registers every dataset)
from common import files
from common.errors import UserError
from common.files import atomic_write, folder_lock
from dassl.data.datasets import build_dataset
from dassl.utils import atomic_torch_save, atomic_write_text
from datasets import common
from dataset_cfg import make_cfg
from trainers import hicropl

CLASSES = ("banded", "dotted", "striped")
IMAGES_PER_CLASS = 10


def dtd_layout(root):
    """A fresh DTD folder (``dtd/images/<category>/*.jpg``) without its split file."""
    from PIL import Image

    for category in CLASSES:
        folder = root / "dtd" / "images" / category
        folder.mkdir(parents=True)
        for i in range(IMAGES_PER_CLASS):
            Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(folder / f"{category}_{i:04d}.jpg")


def build_in_child(root, seed, barrier, queue):
    """Child process: wait for the sibling, then build DTD with a slow split generation (a wide race window)."""
    real = common.read_and_split_data

    def slow_read_and_split_data(*args, **kwargs):
        time.sleep(0.5)
        return real(*args, **kwargs)

    common.read_and_split_data = slow_read_and_split_data
    import datasets.dtd

    datasets.dtd.read_and_split_data = slow_read_and_split_data
    barrier.wait(timeout=30)
    dataset = build_dataset(make_cfg(root, name="DescribableTextures", shots=2, seed=seed))
    queue.put((seed, sorted(d.impath for d in dataset.test), sorted(d.impath for d in dataset.train_x)))


def test_parallel_seeds_on_a_fresh_folder_use_one_split(tmp_path):
    dtd_layout(tmp_path)
    context = multiprocessing.get_context("fork")
    barrier, queue = context.Barrier(2), context.Queue()
    children = [context.Process(target=build_in_child, args=(tmp_path, seed, barrier, queue)) for seed in (1, 2)]
    for child in children:
        child.start()
    results = {}
    for _ in children:
        seed, test, train = queue.get(timeout=120)
        results[seed] = (test, train)
    for child in children:
        child.join(timeout=30)
        assert child.exitcode == 0

    dataset_dir = tmp_path / "dtd"
    # One split file and nothing else (no temp files, no lock files); both seeds tested on the same images.
    assert sorted(p.name for p in dataset_dir.iterdir()) == ["images", "split_fewshot",
                                                            "split_zhou_DescribableTextures.json"]
    assert results[1][0] == results[2][0]
    assert len(results[1][0]) == len(CLASSES) * (IMAGES_PER_CLASS - 5 - 2)  # 10 -> 5 train, 2 val, 3 test
    # Each seed its own few-shot file, drawn from that same split's train part.
    assert sorted(p.name for p in (dataset_dir / "split_fewshot").iterdir()) == ["shot_2-seed_1.pkl",
                                                                                 "shot_2-seed_2.pkl"]
    assert not set(results[1][1]) & set(results[1][0]) and not set(results[2][1]) & set(results[1][0])


def test_folder_lock_excludes_a_second_holder_until_released(tmp_path):
    """A second process blocks on the lock while the first holds it, and gets it once the holder dies."""
    context = multiprocessing.get_context("fork")
    holding, release = context.Event(), context.Event()

    def hold():
        with folder_lock(str(tmp_path)):
            holding.set()
            release.wait(timeout=30)
            os._exit(0)  # dies holding the lock: the OS must release it

    holder = context.Process(target=hold)
    holder.start()
    assert holding.wait(timeout=30)
    import fcntl

    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        release.set()
        holder.join(timeout=30)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free now
    finally:
        os.close(fd)
    assert os.listdir(tmp_path) == []  # the lock leaves nothing behind


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(params=[0o022, 0o027])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_created_files_and_folders_honour_the_umask(tmp_path, umask, monkeypatch):
    file_mode, dir_mode = 0o666 & ~umask, 0o777 & ~umask

    # ToyShapes (a generated folder), its split file and a few-shot cache.
    build_dataset(make_cfg(tmp_path / "data", shots=1))
    toy = tmp_path / "data" / "toy_shapes"
    assert mode(toy) == dir_mode
    assert mode(toy / "images") == mode(toy / "images" / "circle") == dir_mode
    assert mode(toy / "split_toy_shapes.json") == mode(toy / "images" / "circle" / "0000.png") == file_mode
    assert mode(toy / "split_fewshot") == dir_mode
    assert mode(toy / "split_fewshot" / "shot_1-seed_1.pkl") == file_mode

    # A generated split file (DTD).
    dtd_layout(tmp_path / "dtd_root")
    build_dataset(make_cfg(tmp_path / "dtd_root", name="DescribableTextures"))
    assert mode(tmp_path / "dtd_root" / "dtd" / "split_zhou_DescribableTextures.json") == file_mode

    # The W cache of HiCroPL.
    monkeypatch.setenv(hicropl.CACHE_ENV, str(tmp_path / "cache"))
    model, _ = clip.load("random:tiny", device="cpu")
    hicropl.frozen_text_features(model, [["a red circle."], ["a yellow square."]])
    (cached,) = (tmp_path / "cache" / "text_features").iterdir()
    assert mode(cached) == file_mode and mode(cached.parent) == dir_mode

    # The engine's own atomic writes (checkpoints, pointer/results files).
    atomic_torch_save({"epoch": 1}, str(tmp_path / "model.pth.tar-1"))
    atomic_write_text("model.pth.tar-1\n", str(tmp_path / "checkpoint"))
    assert mode(tmp_path / "model.pth.tar-1") == mode(tmp_path / "checkpoint") == file_mode


def test_atomic_write_leaves_nothing_when_the_writer_fails(tmp_path):
    target = tmp_path / "file.bin"
    target.write_bytes(b"old")

    def fail(f):
        f.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic_write(str(target), fail, binary=True)
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"] and target.read_bytes() == b"old"
    atomic_write(str(target), lambda f: torch.save(torch.ones(2), f), binary=True)
    assert torch.equal(torch.load(target, weights_only=True), torch.ones(2))


def test_a_data_folder_that_cannot_take_a_cache_is_one_line(tmp_path, monkeypatch):
    """A read-only shared data folder (or a full disk) when a few-shot cache must be written: UserError, no litter."""
    build_dataset(make_cfg(tmp_path))  # ToyShapes, no few-shot cache yet

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(files.tempfile, "mkstemp", refuse)
    cache = tmp_path / "toy_shapes" / "split_fewshot" / "shot_1-seed_1.pkl"
    with pytest.raises(UserError) as error:
        build_dataset(make_cfg(tmp_path, shots=1))
    assert str(error.value) == (f"cannot write {cache} (Permission denied); make the dataset folder writable (or copy "
                                "the dataset to one you can write to), or free some space")
    assert list(cache.parent.iterdir()) == []

