"""``check_cfg_values``: the engine's enumerated and numeric config values, checked once before any work is done.

yacs checks a merged value's type, not its value: ``TEST.FINAL_MODEL best`` (a typo) or ``OPTIM.LR -0.1`` would
otherwise be accepted and either fail late (after the data is built), or silently do something else. Each bad value
raises ``UserError`` with one line naming the key, the value and the allowed values.
"""
from typing import Any, Sequence

from yacs.config import CfgNode as CN

from ..utils.errors import UserError

__all__ = ["FINAL_MODELS", "TEST_SPLITS", "check_cfg_values"]

#: values of TEST.FINAL_MODEL and TEST.SPLIT (see defaults.py)
FINAL_MODELS = ("best_val", "last_step")
TEST_SPLITS = ("test", "val")


def _one_of(key: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise UserError(f"{key} is {value!r}; choose one of {', '.join(allowed)}")


def _at_least(key: str, value: Any, minimum: float) -> None:
    if value < minimum:
        raise UserError(f"{key} is {value}; it must be >= {minimum}")


def check_cfg_values(cfg: CN) -> None:
    """Check the enumerated and numeric values of the engine's keys (trainer nodes check their own)."""
    from ..data.samplers import AVAI_SAMPLERS  # imported here: dassl.data imports dassl.config
    from ..data.transforms.transforms import _check_choices
    from ..optim import AVAI_OPTIMS
    from ..optim.lr_scheduler import AVAI_WARMUPS, AVAI_SCHEDS

    _one_of("TEST.FINAL_MODEL", cfg.TEST.FINAL_MODEL, FINAL_MODELS)
    _one_of("TEST.SPLIT", cfg.TEST.SPLIT, TEST_SPLITS)
    _one_of("OPTIM.NAME", cfg.OPTIM.NAME, AVAI_OPTIMS)
    _one_of("OPTIM.LR_SCHEDULER", cfg.OPTIM.LR_SCHEDULER, AVAI_SCHEDS)
    _one_of("OPTIM.WARMUP_TYPE", cfg.OPTIM.WARMUP_TYPE, AVAI_WARMUPS)
    _check_choices(cfg, cfg.INPUT.TRANSFORMS)  # INPUT.TRANSFORMS and INPUT.INTERPOLATION
    for loader in ("TRAIN_X", "TEST"):
        _one_of(f"DATALOADER.{loader}.SAMPLER", cfg.DATALOADER[loader].SAMPLER, AVAI_SAMPLERS)
        _at_least(f"DATALOADER.{loader}.BATCH_SIZE", cfg.DATALOADER[loader].BATCH_SIZE, 1)
    _at_least("DATALOADER.NUM_WORKERS", cfg.DATALOADER.NUM_WORKERS, 0)
    _at_least("DATALOADER.K_TRANSFORMS", cfg.DATALOADER.K_TRANSFORMS, 1)
    for key in ("LR", "WEIGHT_DECAY"):
        _at_least(f"OPTIM.{key}", cfg.OPTIM[key], 0)
    _at_least("OPTIM.MAX_EPOCH", cfg.OPTIM.MAX_EPOCH, 0)
    size = cfg.INPUT.SIZE
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise UserError(f"INPUT.SIZE is {tuple(size)!r}; it must be two positive ints (height, width), e.g. (224, 224)")
