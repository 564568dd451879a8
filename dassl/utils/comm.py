"""Process-group helpers: under ``torchrun`` only rank 0 writes logs, checkpoints and results."""
import torch.distributed as dist

__all__ = ["get_rank", "is_main_process"]


def get_rank() -> int:
    """Rank of this process in the default process group (0 when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return 0


def is_main_process() -> bool:
    """True on rank 0 (and always when not distributed)."""
    return get_rank() == 0
