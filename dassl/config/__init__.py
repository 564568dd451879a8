"""Config: ``get_cfg_default()`` returns a fresh copy of the default tree in ``defaults.py``."""
from yacs.config import CfgNode as CN

from .checked import all_keys, cfg_to_dict, merge_from_file_checked, merge_from_list_checked
from .defaults import _C as cfg_default
from .values import check_cfg_values


def get_cfg_default() -> CN:
    """A clone of the default config tree (safe to modify)."""
    return cfg_default.clone()


def clean_cfg(cfg: CN, trainer: str) -> None:
    """Remove every ``TRAINER.<X>`` sub-node except the one of ``trainer`` (upper-cased), in place.

    The config must not be frozen. Only changes what ``print(cfg)`` shows.
    """
    keep = trainer.upper()
    for key in list(cfg.TRAINER.keys()):
        if key != "NAME" and key != keep and isinstance(cfg.TRAINER[key], CN):
            cfg.TRAINER.pop(key)
