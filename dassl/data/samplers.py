"""``build_sampler``: the sampler of a data loader, chosen by name."""
from typing import List, Optional

from torch.utils.data import RandomSampler, Sampler, SequentialSampler
from yacs.config import CfgNode as CN

from dassl.utils import UserError

__all__ = ["AVAI_SAMPLERS", "build_sampler"]

# Values of DATALOADER.{TRAIN_X,TRAIN_U,TEST}.SAMPLER.
AVAI_SAMPLERS = ["RandomSampler", "SequentialSampler"]


def build_sampler(
    sampler_type: str,
    cfg: Optional[CN] = None,
    data_source: Optional[List] = None,
    batch_size: int = 32,
    n_domain: int = 0,
    n_ins: int = 16,
) -> Sampler:
    """``RandomSampler`` (a fresh permutation each epoch, drawn from torch's global generator) or
    ``SequentialSampler`` over ``data_source``. ``cfg``, ``batch_size``, ``n_domain`` and ``n_ins`` are
    accepted for Dassl compatibility (its domain/class-balanced samplers, not implemented here)."""
    if sampler_type == "RandomSampler":
        return RandomSampler(data_source)
    if sampler_type == "SequentialSampler":
        return SequentialSampler(data_source)
    raise UserError(f"unknown sampler {sampler_type!r}; available: {', '.join(AVAI_SAMPLERS)}")
