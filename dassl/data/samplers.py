"""Samplers of the data loaders, chosen by name (``build_sampler``), and the two that make multi-process runs
(``torchrun``) see exactly the data of a single process.

- ``GlobalBatchRandomSampler``: the training sampler behind "RandomSampler". Each epoch's order is one
  permutation of the whole training set, the same in every process; every global batch of TRAIN_X.BATCH_SIZE
  samples is cut into equal consecutive slices, one per process. So W processes see, batch for batch, the samples
  one process sees, and the gradient averaged by DistributedDataParallel is the single-process gradient.
- ``ShardSampler``: evaluation; each process takes one contiguous part of the data, no sample twice, no padding.
"""
from typing import Iterator, List, Optional, Sized

import torch
from torch.utils.data import RandomSampler, Sampler, SequentialSampler
from yacs.config import CfgNode as CN

from dassl.utils import UserError, broadcast_object, get_rank, get_world_size

__all__ = ["AVAI_SAMPLERS", "GlobalBatchRandomSampler", "ShardSampler", "build_sampler"]

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
    accepted for Dassl compatibility (its domain/class-balanced samplers, not implemented here).
    Training loaders use ``GlobalBatchRandomSampler`` instead (see ``build_data_loader``)."""
    if sampler_type == "RandomSampler":
        return RandomSampler(data_source)
    if sampler_type == "SequentialSampler":
        return SequentialSampler(data_source)
    raise UserError(f"unknown sampler {sampler_type!r}; available: {', '.join(AVAI_SAMPLERS)}")


def _split(n: int, parts: int, index: int) -> range:
    """The ``index``-th of ``parts`` consecutive near-equal pieces of range(n) (sizes differ by at most 1)."""
    base, extra = divmod(n, parts)
    start = index * base + min(index, extra)
    return range(start, start + base + (index < extra))


class GlobalBatchRandomSampler(RandomSampler):
    """Random training order, identical in every process; this process's slice of every global batch.

    Epoch e uses ``torch.randperm(n)`` from a generator seeded with ``seed + e`` (the engine calls ``set_epoch``),
    where ``seed`` is drawn once from torch's global generator when the sampler is built (so it follows
    ``SEED``) and, under torchrun, taken from rank 0. Like Dassl's loaders it drops the last partial batch when
    there is at least one full batch (``len(data) // global_batch`` batches per epoch), else it uses all samples
    as one batch. Process r of W yields, for each global batch, its r-th slice of ``global_batch / W`` samples
    (a load of ``local_batch`` samples per process); a single partial batch is split as evenly as possible.
    """

    def __init__(
        self,
        data_source: Sized,
        global_batch: int,
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
    ) -> None:
        super().__init__(data_source)
        self.rank = get_rank() if rank is None else rank
        self.world_size = get_world_size() if world_size is None else world_size
        n = len(data_source)
        if global_batch % self.world_size:
            raise UserError(
                f"DATALOADER.TRAIN_X.BATCH_SIZE ({global_batch}) is the global batch and must be divisible by the "
                f"number of processes ({self.world_size}); change it or --nproc_per_node"
            )
        if n < self.world_size:
            raise UserError(f"the training set has {n} samples, fewer than the {self.world_size} processes")
        self.global_batch = global_batch
        self.local_batch = global_batch // self.world_size
        seed = int(torch.empty((), dtype=torch.int64).random_().item())
        self.seed = broadcast_object(seed) if self.world_size > 1 else seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the order of epoch ``epoch`` (0-based)."""
        self.epoch = epoch

    def _indices(self) -> List[int]:
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.data_source), generator=generator).tolist()
        if len(order) < self.global_batch:  # one partial batch, split over the processes
            return [order[i] for i in _split(len(order), self.world_size, self.rank)]
        indices: List[int] = []
        for start in range(0, len(order) - self.global_batch + 1, self.global_batch):
            first = start + self.rank * self.local_batch
            indices.extend(order[first:first + self.local_batch])
        return indices

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices())

    def __len__(self) -> int:
        n = len(self.data_source)
        if n < self.global_batch:
            return len(_split(n, self.world_size, self.rank))
        return (n // self.global_batch) * self.local_batch


class ShardSampler(Sampler[int]):
    """Evaluation under torchrun: process r of W reads the r-th of W consecutive near-equal parts of the data, in
    order. Every sample is read by exactly one process (no padding), so metrics gathered over the processes
    count each sample once."""

    def __init__(self, data_source: Sized, rank: Optional[int] = None, world_size: Optional[int] = None) -> None:
        self.rank = get_rank() if rank is None else rank
        self.world_size = get_world_size() if world_size is None else world_size
        if len(data_source) < self.world_size:
            raise UserError(
                f"an evaluation split has {len(data_source)} samples, fewer than the {self.world_size} processes; "
                "use fewer processes"
            )
        self.indices = _split(len(data_source), self.world_size, self.rank)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
