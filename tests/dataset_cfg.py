"""Shared by the dataset tests: a minimal config that builds one dataset through DATASET_REGISTRY."""
from yacs.config import CfgNode

from dassl.config import get_cfg_default


def make_cfg(root, name: str = "ToyShapes", shots: int = -1, seed: int = 1, subsample: str = "all") -> CfgNode:
    cfg = get_cfg_default()
    cfg.DATASET.SUBSAMPLE_CLASSES = subsample  # the key train.py's extend_cfg adds
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.NAME = name
    cfg.DATASET.NUM_SHOTS = shots
    cfg.SEED = seed
    return cfg
