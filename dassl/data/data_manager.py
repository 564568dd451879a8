"""``DataManager`` (dataset + train/val/test loaders) and ``DatasetWrapper`` (Datum list -> torch Dataset)."""
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset
from torchvision.transforms import Compose, Normalize, Resize, ToTensor
from yacs.config import CfgNode as CN

from dassl.utils import UserError, get_world_size, read_image

from .datasets import DatasetBase, Datum, build_dataset
from .samplers import GlobalBatchRandomSampler, ShardSampler, build_sampler
from .transforms import INTERPOLATION_MODES, build_transform

__all__ = ["DataManager", "DatasetWrapper", "build_data_loader"]

Transform = Union[Callable, Sequence[Callable], None]


def build_data_loader(
    cfg: CN,
    sampler_type: str = "SequentialSampler",
    data_source: Optional[List[Datum]] = None,
    batch_size: int = 64,
    n_domain: int = 0,
    n_ins: int = 2,
    tfm: Transform = None,
    is_train: bool = True,
    dataset_wrapper: Optional[type] = None,
) -> DataLoader:
    """A ``DataLoader`` over ``dataset_wrapper(cfg, data_source, tfm, is_train)``.

    Training loaders drop the last partial batch when there is at least one full batch, so an epoch
    has ``len // batch_size`` batches (or 1 partial batch when ``len < batch_size``).

    ``batch_size`` is global: under torchrun with W processes a training loader ("RandomSampler") yields
    this process's ``batch_size / W`` slice of every global batch (``GlobalBatchRandomSampler``) and an
    evaluation loader reads this process's 1/W of the data in batches of ``ceil(batch_size / W)``
    (``ShardSampler``). A single process reads everything in batches of ``batch_size``.
    """
    world_size = get_world_size()
    drop_last = is_train and len(data_source) >= batch_size
    if is_train and sampler_type == "RandomSampler":
        sampler = GlobalBatchRandomSampler(data_source, batch_size)
        batch_size, drop_last = sampler.local_batch, False  # the sampler already dropped the partial batch
    elif is_train and world_size > 1:
        raise UserError(f"training sampler {sampler_type!r} is not supported under torchrun; use RandomSampler")
    elif world_size > 1:
        sampler = ShardSampler(data_source)
        batch_size = -(-batch_size // world_size)
    else:
        sampler = build_sampler(
            sampler_type, cfg=cfg, data_source=data_source, batch_size=batch_size, n_domain=n_domain, n_ins=n_ins
        )
    if dataset_wrapper is None:
        dataset_wrapper = DatasetWrapper
    data_loader = DataLoader(
        dataset_wrapper(cfg, data_source, transform=tfm, is_train=is_train),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        drop_last=drop_last,
        pin_memory=(torch.cuda.is_available() and cfg.USE_CUDA),
    )
    assert len(data_loader) > 0, "the data loader is empty"
    return data_loader


def _print_table(rows: List[List[str]]) -> None:
    """Print a borderless two-column table framed by dashed rules."""
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    rule = "  ".join("-" * w for w in widths)
    print(rule)
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    print(rule)


class DataManager:
    """Builds the dataset named by ``DATASET.NAME``, the transforms and the loaders.

    Loaders: ``train_loader_x`` (TRAIN_X sampler/batch size, train transform), ``train_loader_u`` (only if
    the dataset has ``train_u``), ``val_loader`` (only if it has a val split) and ``test_loader`` (TEST
    sampler/batch size, test transform).
    """

    def __init__(
        self,
        cfg: CN,
        custom_tfm_train: Transform = None,
        custom_tfm_test: Transform = None,
        dataset_wrapper: Optional[type] = None,
    ) -> None:
        dataset = build_dataset(cfg)

        if custom_tfm_train is None:
            tfm_train = build_transform(cfg, is_train=True)
        else:
            print("* Using custom transform for training")
            tfm_train = custom_tfm_train
        if custom_tfm_test is None:
            tfm_test = build_transform(cfg, is_train=False)
        else:
            print("* Using custom transform for testing")
            tfm_test = custom_tfm_test

        train_loader_x = build_data_loader(
            cfg,
            sampler_type=cfg.DATALOADER.TRAIN_X.SAMPLER,
            data_source=dataset.train_x,
            batch_size=cfg.DATALOADER.TRAIN_X.BATCH_SIZE,
            n_domain=cfg.DATALOADER.TRAIN_X.N_DOMAIN,
            n_ins=cfg.DATALOADER.TRAIN_X.N_INS,
            tfm=tfm_train,
            is_train=True,
            dataset_wrapper=dataset_wrapper,
        )

        train_loader_u = None
        if dataset.train_u:
            u_cfg = cfg.DATALOADER.TRAIN_X if cfg.DATALOADER.TRAIN_U.SAME_AS_X else cfg.DATALOADER.TRAIN_U
            train_loader_u = build_data_loader(
                cfg,
                sampler_type=u_cfg.SAMPLER,
                data_source=dataset.train_u,
                batch_size=u_cfg.BATCH_SIZE,
                n_domain=u_cfg.N_DOMAIN,
                n_ins=u_cfg.N_INS,
                tfm=tfm_train,
                is_train=True,
                dataset_wrapper=dataset_wrapper,
            )

        val_loader = None
        if dataset.val:
            val_loader = build_data_loader(
                cfg,
                sampler_type=cfg.DATALOADER.TEST.SAMPLER,
                data_source=dataset.val,
                batch_size=cfg.DATALOADER.TEST.BATCH_SIZE,
                tfm=tfm_test,
                is_train=False,
                dataset_wrapper=dataset_wrapper,
            )

        test_loader = build_data_loader(
            cfg,
            sampler_type=cfg.DATALOADER.TEST.SAMPLER,
            data_source=dataset.test,
            batch_size=cfg.DATALOADER.TEST.BATCH_SIZE,
            tfm=tfm_test,
            is_train=False,
            dataset_wrapper=dataset_wrapper,
        )

        self._num_classes = dataset.num_classes
        self._num_source_domains = len(cfg.DATASET.SOURCE_DOMAINS)
        self._lab2cname = dataset.lab2cname
        self.dataset: DatasetBase = dataset
        self.train_loader_x = train_loader_x
        self.train_loader_u = train_loader_u
        self.val_loader = val_loader
        self.test_loader = test_loader

        if cfg.VERBOSE:
            self.show_dataset_summary(cfg)

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @property
    def num_source_domains(self) -> int:
        return self._num_source_domains

    @property
    def lab2cname(self) -> Dict[int, str]:
        return self._lab2cname

    def show_dataset_summary(self, cfg: CN) -> None:
        """Print dataset name, domains, number of classes and split sizes (thousands separators)."""
        rows = [["Dataset", cfg.DATASET.NAME]]
        if cfg.DATASET.SOURCE_DOMAINS:
            rows.append(["Source", str(cfg.DATASET.SOURCE_DOMAINS)])
        if cfg.DATASET.TARGET_DOMAINS:
            rows.append(["Target", str(cfg.DATASET.TARGET_DOMAINS)])
        rows.append(["# classes", f"{self.num_classes:,}"])
        rows.append(["# train_x", f"{len(self.dataset.train_x):,}"])
        if self.dataset.train_u:
            rows.append(["# train_u", f"{len(self.dataset.train_u):,}"])
        if self.dataset.val:
            rows.append(["# val", f"{len(self.dataset.val):,}"])
        rows.append(["# test", f"{len(self.dataset.test):,}"])
        _print_table(rows)


class DatasetWrapper(TorchDataset):
    """A torch ``Dataset`` over a list of ``Datum``.

    ``__getitem__`` returns ``{"label": int, "domain": int, "impath": str, "index": int, "img": ...}``;
    ``img`` is the transformed image (a list of K tensors if ``DATALOADER.K_TRANSFORMS`` = K > 1 at train
    time; ``img``, ``img2``, ... if ``transform`` is a list; the PIL image if ``transform`` is None) and
    ``img0`` (if ``DATALOADER.RETURN_IMG0``) the resized, un-augmented image.
    """

    def __init__(self, cfg: CN, data_source: List[Datum], transform: Transform = None, is_train: bool = False) -> None:
        self.cfg = cfg
        self.data_source = data_source
        self.transform = transform
        self.is_train = is_train
        # Augmenting an image K times only makes sense while training.
        self.k_tfm = cfg.DATALOADER.K_TRANSFORMS if is_train else 1
        self.return_img0 = cfg.DATALOADER.RETURN_IMG0

        if self.k_tfm > 1 and transform is None:
            raise ValueError(f"Cannot augment the image {self.k_tfm} times because transform is None")

        interp_mode = INTERPOLATION_MODES[cfg.INPUT.INTERPOLATION]
        to_tensor: List[Callable] = [Resize(tuple(cfg.INPUT.SIZE), interpolation=interp_mode), ToTensor()]
        if "normalize" in cfg.INPUT.TRANSFORMS:
            to_tensor.append(Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD))
        self.to_tensor = Compose(to_tensor)

    def __len__(self) -> int:
        return len(self.data_source)

    def __getitem__(self, idx: int) -> Dict[str, Any]:
        item = self.data_source[idx]
        output: Dict[str, Any] = {"label": item.label, "domain": item.domain, "impath": item.impath, "index": idx}
        img0 = read_image(item.impath)

        if self.transform is None:
            output["img"] = img0
        elif isinstance(self.transform, (list, tuple)):
            for i, tfm in enumerate(self.transform):
                output["img" if i == 0 else f"img{i + 1}"] = self._transform_image(tfm, img0)
        else:
            output["img"] = self._transform_image(self.transform, img0)

        if self.return_img0:
            output["img0"] = self.to_tensor(img0)
        return output

    def _transform_image(self, tfm: Callable, img0: Any) -> Any:
        img_list = [tfm(img0) for _ in range(self.k_tfm)]
        return img_list[0] if len(img_list) == 1 else img_list
