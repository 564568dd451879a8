"""Running averages for the training progress line."""
from collections import defaultdict
from typing import Any, Dict, Optional

import torch

__all__ = ["AverageMeter", "MetricMeter"]


class AverageMeter:
    """Last value and running average of a scalar.

    Fields: ``val`` (last value), ``avg``, ``sum``, ``count``. With ``ema=True``, ``avg`` is an
    exponential moving average (momentum 0.9; the first value initialises it) instead of the mean.
    """

    def __init__(self, ema: bool = False) -> None:
        self.ema = ema
        self.reset()

    def reset(self) -> None:
        self.val = 0.0
        self.avg = 0.0
        self.sum = 0.0
        self.count = 0

    def update(self, val: Any, n: int = 1) -> None:
        if isinstance(val, torch.Tensor):
            val = val.item()
        self.val = val
        self.sum += val * n
        self.count += n
        if self.ema:
            self.avg = val if self.count == n else 0.9 * self.avg + 0.1 * val
        else:
            self.avg = self.sum / self.count


class MetricMeter:
    """A dict of ``AverageMeter`` keyed by metric name, printed as ``name val (avg)`` with 4 decimals.

    Example::

        losses = MetricMeter()
        losses.update({"loss": 0.5, "acc": 80.0})
        print(losses)  # "loss 0.5000 (0.5000) acc 80.0000 (80.0000)"
    """

    def __init__(self, delimiter: str = " ") -> None:
        self.meters: Dict[str, AverageMeter] = defaultdict(AverageMeter)
        self.delimiter = delimiter

    def update(self, input_dict: Optional[Dict[str, Any]]) -> None:
        if input_dict is None:
            return
        if not isinstance(input_dict, dict):
            raise TypeError("Input to MetricMeter.update() must be a dictionary")
        for k, v in input_dict.items():
            if isinstance(v, torch.Tensor):
                v = v.item()
            self.meters[k].update(v)

    def __str__(self) -> str:
        return self.delimiter.join(f"{name} {meter.val:.4f} ({meter.avg:.4f})" for name, meter in self.meters.items())
