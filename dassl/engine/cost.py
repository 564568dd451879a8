"""What an evaluation's model cost: the ``cost`` entry of every results.json record (see README "results.json").

Values measured by the engine (``SimpleTrainer``): wall times with ``time.time()``; the FLOPs of one training step
with ``torch.utils.flop_counter.FlopCounterMode`` around the first ``forward_backward`` call of the run (it only
observes the operators: the step computes and updates exactly as without it).
"""
import platform
import resource
import sys
import time
from typing import Any, Callable, Iterable, Tuple

import torch
import torch.nn as nn

__all__ = ["trainable_parameters", "peak_memory", "device_name", "count_flops"]


def trainable_parameters(models: Iterable[nn.Module]) -> int:
    """Number of scalars in the parameters with ``requires_grad`` of ``models`` (each shared tensor counted once)."""
    seen, total = set(), 0
    for model in models:
        for p in model.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
    return total


def peak_memory(device: torch.device) -> Tuple[int, str]:
    """``(bytes, kind)``: on CUDA ``torch.cuda.max_memory_allocated`` (kind ``cuda_max_allocated``; tensors only, since
    the process started), else the process's peak resident set size from ``resource.getrusage`` (``cpu_max_rss``)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024), "cpu_max_rss"  # Linux reports KiB, macOS bytes


def device_name(device: torch.device) -> str:
    """``torch.cuda.get_device_name`` on CUDA, else ``cpu (<processor or machine>)``."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()})"


def count_flops(step: Callable[[], Any]) -> Tuple[Any, int, float]:
    """Run ``step()`` under ``FlopCounterMode``; returns ``(its result, counted FLOPs, wall seconds of the call)``.

    FLOPs are PyTorch's count for the operators it has formulas for (matmuls, convolutions, attention: 2 per
    multiply-add), forward and backward; element-wise operators count 0.
    """
    from torch.utils.flop_counter import FlopCounterMode

    start = time.time()
    with FlopCounterMode(display=False) as counter:
        result = step()
    return result, int(counter.get_total_flops()), time.time() - start

