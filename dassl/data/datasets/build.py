"""``DATASET_REGISTRY`` and ``build_dataset``."""
from yacs.config import CfgNode as CN

from dassl.utils import Registry

from .base_dataset import DatasetBase

DATASET_REGISTRY = Registry("DATASET")


def build_dataset(cfg: CN) -> DatasetBase:
    """Instantiate the dataset class registered as ``cfg.DATASET.NAME`` with ``cfg``."""
    if cfg.VERBOSE:
        print(f"Loading dataset: {cfg.DATASET.NAME}")
    return DATASET_REGISTRY.get(cfg.DATASET.NAME)(cfg)
