"""Process-group helpers for multi-process training under ``torchrun`` (DistributedDataParallel).

``torchrun --nproc_per_node N train.py ...`` starts N processes with RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and
MASTER_PORT set; ``init_distributed`` turns that into a process group (nccl on CUDA, gloo on CPU). Without those
variables everything here acts as a single process: rank 0 of 1, collectives are no-ops.
Only rank 0 writes logs, tensorboard, checkpoints and results.json.
"""
import os
from typing import Any, List, Sequence

import torch
import torch.distributed as dist

__all__ = [
    "all_gather_object",
    "all_reduce_mean",
    "all_reduce_min",
    "barrier",
    "broadcast_object",
    "cleanup_distributed",
    "get_local_rank",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_distributed",
    "is_main_process",
]

# Environment variables that torchrun sets for every process it starts.
TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def is_distributed() -> bool:
    """True inside an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """Rank of this process in the default process group (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """Number of processes in the default process group (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def get_local_rank() -> int:
    """Rank of this process on its machine (torchrun's LOCAL_RANK; 0 when not distributed)."""
    return int(os.environ.get("LOCAL_RANK", 0)) if is_distributed() else 0


def is_main_process() -> bool:
    """True on rank 0 (and always when not distributed)."""
    return get_rank() == 0


def init_distributed(use_cuda: bool) -> bool:
    """Join the process group described by torchrun's environment variables; returns whether one was joined.

    Backend nccl when CUDA is used (each process on GPU LOCAL_RANK), else gloo. Without torchrun's variables (a
    plain ``python train.py``) nothing happens. Idempotent.
    """
    if is_distributed():
        return True
    if not all(name in os.environ for name in TORCHRUN_VARIABLES) or not dist.is_available():
        return False
    cuda = use_cuda and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return True


def cleanup_distributed() -> None:
    """Leave the process group (at the end of a torchrun process; no-op otherwise)."""
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every process gets here (no-op when not distributed)."""
    if not is_distributed():
        return
    if dist.get_backend() == "nccl":  # name this process's GPU (else nccl guesses and warns)
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def all_gather_object(obj: Any) -> List[Any]:
    """[obj of rank 0, obj of rank 1, ...] on every process (picklable objects; [obj] when not distributed)."""
    if not is_distributed():
        return [obj]
    gathered: List[Any] = [None] * get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s obj on every process (obj itself when not distributed)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def _all_reduce(values: Sequence[float], op: "dist.ReduceOp") -> List[float]:
    # nccl reduces CUDA tensors only
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=op)
    return tensor.tolist()


def all_reduce_min(value: float) -> float:
    """Minimum of ``value`` over all processes (value itself when not distributed)."""
    if not is_distributed():
        return value
    return _all_reduce([value], dist.ReduceOp.MIN)[0]


def all_reduce_mean(values: Sequence[float]) -> List[float]:
    """Element-wise mean of ``values`` over all processes (the values themselves when not distributed)."""
    if not is_distributed():
        return list(values)
    return [v / get_world_size() for v in _all_reduce(values, dist.ReduceOp.SUM)]
