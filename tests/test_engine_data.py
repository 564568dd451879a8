"""Data side of the engine: Datum (pickle compatibility), DatasetBase (few-shot sampling, label bookkeeping),
transforms of the CLIP configs, DatasetWrapper and DataManager loaders."""
import os
import os.path as osp
import pickle
import random
import sys

import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from dassl.config import get_cfg_default
from dassl.data import DataManager, DatasetWrapper
from dassl.data.datasets import DATASET_REGISTRY, DatasetBase, Datum, build_dataset
from dassl.data.transforms import build_transform
from dassl.utils import UserError

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """30 tiny RGB images; image i has label i % 3 (classes c0, c1, c2 appear in the order 0, 1, 2)."""
    folder = tmp_path_factory.mktemp("imgs")
    items = []
    for i in range(30):
        path = str(folder / f"{i:02d}.png")
        Image.new("RGB", (40, 30), color=(8 * i, 255 - 8 * i, 100)).save(path)
        items.append(Datum(impath=path, label=i % 3, classname=f"c{i % 3}"))
    return items


def test_datum_pickles_under_the_dassl_class_path(images):
    """Few-shot caches pickle Datum objects; the path and attribute names must match the original Dassl's."""
    blob = pickle.dumps(images[0], protocol=pickle.HIGHEST_PROTOCOL)
    assert b"dassl.data.datasets.base_dataset" in blob and b"Datum" in blob
    assert set(vars(images[0])) == {"_impath", "_label", "_domain", "_classname"}
    clone = pickle.loads(blob)
    assert (clone.impath, clone.label, clone.domain, clone.classname) == (images[0].impath, 0, 0, "c0")
    with pytest.raises(AssertionError), pytest.warns(UserWarning, match="No file found"):
        Datum(impath="/nonexistent/image.png")


def test_dataset_base_derives_classes_from_train_x(images):
    dataset = DatasetBase(train_x=images[3:], val=images[:3], test=images)
    assert dataset.num_classes == 3
    assert dataset.lab2cname == {0: "c0", 1: "c1", 2: "c2"}
    assert dataset.classnames == ["c0", "c1", "c2"]
    shuffled = [images[4], images[2], images[0]]  # labels 1, 2, 0
    assert list(dataset.split_dataset_by_label(shuffled)) == [1, 2, 0]  # first-appearance order


def test_fewshot_sampling_follows_the_dassl_rule(images):
    """Per label in first-appearance order, random.sample(items of that label, K), concatenated."""
    dataset = DatasetBase(train_x=images)
    source = images[1:] + images[:1]  # labels appear in the order 1, 2, 0

    random.seed(7)
    expected = []
    for label in (1, 2, 0):
        expected += random.sample([d for d in source if d.label == label], 4)
    random.seed(7)
    assert dataset.generate_fewshot_dataset(source, num_shots=4) == expected

    assert dataset.generate_fewshot_dataset(source, num_shots=-1) is source
    # Classes with fewer items than K keep all of them, unless repeat=True (sampling with replacement).
    few = images[:6]  # 2 per class
    assert dataset.generate_fewshot_dataset(few, num_shots=5) == [few[0], few[3], few[1], few[4], few[2], few[5]]
    repeated = dataset.generate_fewshot_dataset(few, num_shots=5, repeat=True)
    assert len(repeated) == 15 and [d.label for d in repeated] == [0] * 5 + [1] * 5 + [2] * 5
    train, val = dataset.generate_fewshot_dataset(images, images[:9], num_shots=2)
    assert (len(train), len(val)) == (6, 6)


def clip_cfg(size=224):
    cfg = get_cfg_default()
    cfg.INPUT.SIZE = (size, size)
    cfg.INPUT.INTERPOLATION = "bicubic"
    cfg.INPUT.PIXEL_MEAN = CLIP_MEAN
    cfg.INPUT.PIXEL_STD = CLIP_STD
    cfg.INPUT.TRANSFORMS = ("random_resized_crop", "random_flip", "normalize")
    return cfg


def test_clip_config_transforms():
    """SPEC §6.2: train = RandomResizedCrop(224, (0.08, 1), bicubic) -> flip -> ToTensor -> Normalize(CLIP);
    test = Resize(shorter side 224, bicubic) -> CenterCrop(224) -> ToTensor -> Normalize(CLIP)."""
    cfg = clip_cfg()
    train = build_transform(cfg, is_train=True).transforms
    assert [type(t) for t in train] == [T.RandomResizedCrop, T.RandomHorizontalFlip, T.ToTensor, T.Normalize]
    assert train[0].size == (224, 224) and train[0].scale == (0.08, 1.0)
    assert train[0].interpolation == T.InterpolationMode.BICUBIC and train[1].p == 0.5
    assert (train[3].mean, train[3].std) == (CLIP_MEAN, CLIP_STD)

    test = build_transform(cfg, is_train=False).transforms
    assert [type(t) for t in test] == [T.Resize, T.CenterCrop, T.ToTensor, T.Normalize]
    assert test[0].size == 224 and test[0].interpolation == T.InterpolationMode.BICUBIC
    image = Image.new("RGB", (320, 240), color=(255, 0, 0))
    out = build_transform(cfg, is_train=False)(image)
    assert out.shape == (3, 224, 224)
    red = (torch.tensor([1.0, 0.0, 0.0]) - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert torch.allclose(out[:, 0, 0], red)

    cfg.INPUT.TRANSFORMS = ("random_flip",)  # no crop -> resize to SIZE first, no normalisation
    assert [type(t) for t in build_transform(cfg, is_train=True).transforms] == [T.Resize, T.RandomHorizontalFlip,
                                                                                 T.ToTensor]
    cfg.INPUT.TRANSFORMS = ("cutout",)
    with pytest.raises(UserError, match="'cutout' is not implemented"):
        build_transform(cfg)
    cfg.INPUT.TRANSFORMS = ("random_flipp",)
    with pytest.raises(UserError, match="unknown transform 'random_flipp'"):
        build_transform(cfg)


def test_dataset_wrapper_item(images):
    cfg = clip_cfg(size=16)
    wrapper = DatasetWrapper(cfg, images, transform=build_transform(cfg, is_train=False))
    item = wrapper[4]
    assert (item["label"], item["domain"], item["impath"], item["index"]) == (1, 0, images[4].impath, 4)
    assert item["img"].shape == (3, 16, 16) and item["img"].dtype == torch.float32


@DATASET_REGISTRY.register()
class EngineTestImages(DatasetBase):
    """30 train / 6 val / 9 test images of 3 classes, written under DATASET.ROOT."""

    def __init__(self, cfg):
        folder = osp.join(cfg.DATASET.ROOT, "engine_test_images")
        os.makedirs(folder, exist_ok=True)
        items = []
        for i in range(45):
            path = osp.join(folder, f"{i:02d}.png")
            if not osp.exists(path):
                Image.new("RGB", (20, 20), color=(5 * i, 0, 0)).save(path)
            items.append(Datum(impath=path, label=i % 3, classname=f"class{i % 3}"))
        super().__init__(train_x=items[:30], val=items[30:36], test=items[36:])


def test_data_manager_builds_dassl_loaders(tmp_path, capsys):
    cfg = clip_cfg(size=16)
    cfg.DATASET.NAME = "EngineTestImages"
    cfg.DATASET.ROOT = str(tmp_path)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.DATALOADER.TRAIN_X.BATCH_SIZE = 8
    cfg.DATALOADER.TEST.BATCH_SIZE = 4
    dm = DataManager(cfg)
    # Train drops the last partial batch (30 // 8 = 3 batches); val/test keep it.
    assert (len(dm.train_loader_x), len(dm.val_loader), len(dm.test_loader)) == (3, 2, 3)
    assert isinstance(dm.train_loader_x.sampler, torch.utils.data.RandomSampler)
    assert isinstance(dm.test_loader.sampler, torch.utils.data.SequentialSampler)
    assert dm.train_loader_u is None and dm.num_classes == 3 and dm.lab2cname[2] == "class2"
    batch = next(iter(dm.train_loader_x))
    assert batch["img"].shape == (8, 3, 16, 16) and batch["label"].dtype == torch.int64
    out = capsys.readouterr().out
    for row in ("Dataset    EngineTestImages", "# classes  3", "# train_x  30", "# val      6", "# test     9"):
        assert row in out

    cfg.DATALOADER.TRAIN_X.BATCH_SIZE = 64  # fewer images than one batch -> one partial batch
    assert len(DataManager(cfg).train_loader_x) == 1

    cfg.DATASET.NAME = "EngineTestImage"
    with pytest.raises(UserError, match="unknown dataset 'EngineTestImage'.*Did you mean 'EngineTestImages'"):
        build_dataset(cfg)


def test_toy_shapes_fewshot_cache_and_val_shots(tmp_path, capsys):
    """NUM_SHOTS K: K train and min(K, 4) val images per class, cached as split_fewshot/shot_K-seed_S.pkl and
    reloaded identically (DATASETS_FACTS §2)."""
    sys.path.insert(0, REPO)
    import datasets  # noqa: F401  (registers ToyShapes)

    cfg = get_cfg_default()
    cfg.DATASET.SUBSAMPLE_CLASSES = "all"
    cfg.DATASET.NAME = "ToyShapes"
    cfg.DATASET.ROOT = str(tmp_path)
    cfg.SEED = 1
    for shots, val_shots in ((2, 2), (8, 4)):
        cfg.DATASET.NUM_SHOTS = shots
        random.seed(1)
        first = build_dataset(cfg)
        assert (len(first.train_x), len(first.val), len(first.test)) == (10 * shots, 10 * val_shots, 120)
        cache = tmp_path / "toy_shapes" / "split_fewshot" / f"shot_{shots}-seed_1.pkl"
        assert cache.is_file()
        with open(cache, "rb") as f:
            cached = pickle.load(f)
        assert [d.impath for d in cached["train"]] == [d.impath for d in first.train_x]
        random.seed(2)  # a different random state must not matter once the cache exists
        second = build_dataset(cfg)
        assert "Loading preprocessed few-shot data from" in capsys.readouterr().out
        assert [d.impath for d in second.train_x] == [d.impath for d in first.train_x]
        assert [d.impath for d in second.val] == [d.impath for d in first.val]
