"""``build_lr_scheduler``: per-epoch lr schedules with optional warm-up, computed in closed form.

The lr of epoch ``e`` (0-based; the scheduler is stepped once at the end of each epoch) is a pure
function of ``e`` (``lr_at``), and the scheduler's state is plain numbers (``last_epoch``, base lrs and
the settings). A resumed run therefore continues the schedule exactly (the original Dassl's warm-up
wrapper pickles its successor scheduler with a private optimizer copy, so after a resume the real lr
stays frozen).

Schedules, with base lr ``b``, ``T = MAX_EPOCH``, warm-up length ``W`` and ``s = e - W`` (or ``e`` when
``WARMUP_RECOUNT`` is False):

- warm-up (``e < W``): constant -> ``WARMUP_CONS_LR``; linear -> ``WARMUP_MIN_LR`` at ``e = 0``, else ``b * e / W``;
- cosine: ``b * (1 + cos(pi * s / T)) / 2``;
- single_step: ``b * GAMMA ** (s // step)`` with ``step = STEPSIZE[-1]`` (``<= 0`` -> ``T``);
- multi_step: ``b * GAMMA ** (number of milestones in STEPSIZE that are <= s)``.

With ``WARMUP_RECOUNT = False`` the schedule keeps counting from 0 and starts from ``b`` at ``e = W``
(what torch's recursive updates do when the successor's counter is preset to W): cosine ->
``b * (1 + cos(pi*e/T)) / (1 + cos(pi*W/T))``; step schedules count only the decays after ``W``.
"""
import math
from bisect import bisect_right
from typing import Any, Dict, List

import torch
from torch.optim.lr_scheduler import LRScheduler
from yacs.config import CfgNode as CN

from dassl.utils import UserError

__all__ = ["AVAI_SCHEDS", "EpochLRScheduler", "build_lr_scheduler"]

# Values of OPTIM.LR_SCHEDULER and OPTIM.WARMUP_TYPE.
AVAI_SCHEDS = ["single_step", "multi_step", "cosine"]
AVAI_WARMUPS = ["constant", "linear"]


class EpochLRScheduler(LRScheduler):
    """A per-epoch lr schedule (``AVAI_SCHEDS``) with optional constant/linear warm-up, in closed form.

    Behaves like a torch scheduler (``step()``, ``get_last_lr()``, ``last_epoch``, ``state_dict()``);
    ``state_dict()`` holds plain Python values only, so checkpoints load with ``weights_only=True``.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        schedule: str,
        max_epoch: int,
        stepsize: List[int],
        gamma: float,
        warmup_epoch: int = 0,
        warmup_type: str = "constant",
        warmup_cons_lr: float = 1e-5,
        warmup_min_lr: float = 1e-5,
        warmup_recount: bool = True,
    ) -> None:
        self.schedule = schedule
        self.max_epoch = int(max_epoch)
        self.stepsize = [int(s) for s in stepsize]
        self.gamma = float(gamma)
        self.warmup_epoch = max(int(warmup_epoch), 0)
        self.warmup_type = warmup_type
        self.warmup_cons_lr = float(warmup_cons_lr)
        self.warmup_min_lr = float(warmup_min_lr)
        self.warmup_recount = bool(warmup_recount)
        super().__init__(optimizer)

    def _decays(self, e: int) -> int:
        """Number of GAMMA decays a step schedule has applied by schedule epoch ``e``."""
        if self.schedule == "single_step":
            step = self.stepsize[-1] if self.stepsize[-1] > 0 else self.max_epoch
            return e // step
        return bisect_right(sorted(self.stepsize), e)

    def lr_at(self, epoch: int, base_lr: float) -> float:
        """The lr of 0-based ``epoch`` for a parameter group whose base lr is ``base_lr``."""
        w = self.warmup_epoch
        if epoch < w:
            if self.warmup_type == "constant":
                return self.warmup_cons_lr
            return self.warmup_min_lr if epoch == 0 else base_lr * epoch / w
        if self.schedule == "cosine":
            t = float(self.max_epoch)
            if self.warmup_recount:
                return base_lr * (1 + math.cos(math.pi * (epoch - w) / t)) / 2
            return base_lr * (1 + math.cos(math.pi * epoch / t)) / (1 + math.cos(math.pi * w / t))
        if self.warmup_recount:
            return base_lr * self.gamma ** self._decays(epoch - w)
        return base_lr * self.gamma ** (self._decays(epoch) - self._decays(w))

    def get_lr(self) -> List[float]:
        return [self.lr_at(self.last_epoch, base_lr) for base_lr in self.base_lrs]

    # torch's step(epoch) uses this name for schedules with a closed form.
    _get_closed_form_lr = get_lr

    def _apply(self) -> None:
        for group, lr in zip(self.optimizer.param_groups, self.get_lr()):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def set_last_epoch(self, epoch: int) -> None:
        """Jump to ``epoch`` steps taken (the lr of 0-based epoch ``epoch``) and set the optimizer's lrs."""
        self.last_epoch = int(epoch)
        self._apply()

    def owns_state(self, state: Dict[str, Any]) -> bool:
        """True if ``state`` was written by this class (a scheduler of the original Dassl was not)."""
        return state.get("schedule") is not None and "successor" not in state

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restore the step count (the schedule settings come from the current config) and set the lrs."""
        self._step_count = int(state_dict.get("_step_count", self._step_count))
        self.set_last_epoch(state_dict["last_epoch"])


def build_lr_scheduler(optimizer: torch.optim.Optimizer, optim_cfg: CN) -> EpochLRScheduler:
    """The schedule of ``optim_cfg`` (``LR_SCHEDULER``, ``STEPSIZE``, ``GAMMA``, ``MAX_EPOCH``, ``WARMUP_*``).

    Stepped once per epoch by the trainer; see the module docstring for the formulas.
    """
    name = optim_cfg.LR_SCHEDULER
    stepsize = optim_cfg.STEPSIZE
    if name not in AVAI_SCHEDS:
        raise UserError(f"OPTIM.LR_SCHEDULER must be one of {', '.join(AVAI_SCHEDS)}, got {name!r}")
    if name == "single_step":
        if isinstance(stepsize, (list, tuple)):
            stepsize = stepsize[-1]
        if not isinstance(stepsize, int):
            raise UserError(f"OPTIM.STEPSIZE for single_step must be an int or a list of ints, got {stepsize!r}")
        stepsize = [stepsize]
    elif name == "multi_step":
        if not isinstance(stepsize, (list, tuple)):
            raise UserError(f"OPTIM.STEPSIZE for multi_step must be a list of epochs, got {stepsize!r}")
        stepsize = list(stepsize)
    if optim_cfg.WARMUP_EPOCH > 0 and optim_cfg.WARMUP_TYPE not in AVAI_WARMUPS:
        raise UserError(f"OPTIM.WARMUP_TYPE must be one of {', '.join(AVAI_WARMUPS)}, got {optim_cfg.WARMUP_TYPE!r}")
    return EpochLRScheduler(
        optimizer,
        schedule=name,
        max_epoch=optim_cfg.MAX_EPOCH,
        stepsize=list(stepsize),
        gamma=optim_cfg.GAMMA,
        warmup_epoch=optim_cfg.WARMUP_EPOCH,
        warmup_type=optim_cfg.WARMUP_TYPE,
        warmup_cons_lr=optim_cfg.WARMUP_CONS_LR,
        warmup_min_lr=optim_cfg.WARMUP_MIN_LR,
        warmup_recount=optim_cfg.WARMUP_RECOUNT,
    )
