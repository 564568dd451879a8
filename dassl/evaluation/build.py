"""``EVALUATOR_REGISTRY`` and ``build_evaluator``."""
from typing import Any

from yacs.config import CfgNode as CN

from dassl.utils import Registry

EVALUATOR_REGISTRY = Registry("EVALUATOR")


def build_evaluator(cfg: CN, **kwargs: Any) -> Any:
    """Instantiate the evaluator registered as ``cfg.TEST.EVALUATOR`` with ``(cfg, **kwargs)``."""
    if cfg.VERBOSE:
        print(f"Loading evaluator: {cfg.TEST.EVALUATOR}")
    return EVALUATOR_REGISTRY.get(cfg.TEST.EVALUATOR)(cfg, **kwargs)
