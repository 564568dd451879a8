"""``TRAINER_REGISTRY`` and ``build_trainer``."""
from typing import Any

from yacs.config import CfgNode as CN

from dassl.utils import Registry

TRAINER_REGISTRY = Registry("TRAINER")


def build_trainer(cfg: CN) -> Any:
    """Instantiate the trainer class registered as ``cfg.TRAINER.NAME`` with ``cfg``."""
    trainer_cls = TRAINER_REGISTRY.get(cfg.TRAINER.NAME)
    if cfg.VERBOSE:
        print(f"Loading trainer: {cfg.TRAINER.NAME}")
    return trainer_cls(cfg)
