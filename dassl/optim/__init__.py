"""Optimizers and per-epoch lr schedules built from the ``OPTIM`` config node."""
from .lr_scheduler import AVAI_SCHEDS, EpochLRScheduler, build_lr_scheduler
from .optimizer import AVAI_OPTIMS, build_optimizer
