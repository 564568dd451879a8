"""Frozen image features of an evaluation set, computed once and reused (in memory, optionally on disk).

A frozen image encoder (HiCroPL's teacher, a zero-shot CLIP) gives the same features for an evaluation image every
time: its weights never change and the test transform is deterministic. A ``FeatureTable`` holds those features
for one evaluation set, one row per image in the loader's order (the ``"index"`` of a Dassl batch); the model asks
it for the rows of a batch and runs the encoder only when one of them is missing.

The table is keyed by ``feature_key``: a SHA-256 over everything that determines the features (encoder weights,
the ordered image files with size and modification time, the test transform, precision, device type, torch
version, the process's data shard). On disk a table is one file ``<hash>.pt`` holding the filled rows, their
indices, the key and a checksum; it is written atomically (temp file + rename, so a killed writer leaves no file
that is ever read) and verified on read (key, sizes, checksum); a damaged file is reported in one line and
recomputed. Nothing here knows a method: the trainer builds the key and hands the table to its model.
"""
import hashlib
import json
import os
import pickle
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Tuple

import torch

from common.files import atomic_write

# Bumped when the file layout or the meaning of the key changes: older files are then never read.
FORMAT_VERSION = 1


def state_digest(named_tensors: Iterable[Tuple[str, torch.Tensor]], header: str = "") -> str:
    """SHA-256 over ``header`` (e.g. the architecture, which the weights do not fix) and (name, shape, dtype, bytes)
    of the tensors, sorted by name (device-independent)."""
    digest = hashlib.sha256(header.encode())
    for name, tensor in sorted(named_tensors, key=lambda item: item[0]):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def image_list_digest(impaths: Sequence[str]) -> str:
    """SHA-256 over the ordered (path, size in bytes, modification time in ns) of every image file.

    A replaced, rewritten or touched image changes its size or mtime; a file missing now is hashed as missing (the
    evaluation will then fail on reading it, not on the cache). Content changes that keep both size and mtime
    (e.g. a copy with ``cp -p`` of a same-sized different image) are not seen.
    """
    digest = hashlib.sha256()
    for path in impaths:
        try:
            stat = os.stat(path)
            entry = f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n"
        except OSError:
            entry = f"{path}\0missing\n"
        digest.update(entry.encode())
    return digest.hexdigest()


def feature_key(parts: Mapping[str, Any]) -> str:
    """SHA-256 of the JSON of ``parts`` (plus ``FORMAT_VERSION`` and the torch version): the table's name."""
    described = {"format": FORMAT_VERSION, "torch": torch.__version__, **parts}
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()


def process_shard() -> Tuple[int, int]:
    """(rank, world size) of this process under torch.distributed, else (0, 1): evaluation data is sharded by it."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _checksum(index: torch.Tensor, features: torch.Tensor) -> str:
    digest = hashlib.sha256()
    for tensor in (index, features):
        digest.update(tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` through a temp file + rename (``common.files.atomic_write``: readers never see a half-written
    file, and the file gets the caller's umask, so a shared ``$HICROPL_CACHE_DIR`` stays readable)."""
    atomic_write(str(path), lambda f: torch.save(obj, f), binary=True)


class FeatureTable:
    """The frozen features of one evaluation set of ``size`` images: rows filled as batches are computed.

    ``path`` (optional) is the file the table was read from and is saved to; ``dim`` the feature width d. Rows
    keep the dtype and device the encoder produced them in, so a cached row is the very tensor the encoder gave.
    """

    def __init__(self, key: str, size: int, dim: int, path: Optional[Path] = None, label: str = "Frozen features"):
        self.key, self.size, self.dim, self.path, self.label = key, size, dim, path, label
        self.features: Optional[torch.Tensor] = None  # (size, d), allocated at the first stored batch
        self.filled: Optional[torch.Tensor] = None  # (size,) bool
        self.dirty = False  # rows added since the last save or load

    @property
    def num_filled(self) -> int:
        return 0 if self.filled is None else int(self.filled.sum())

    def features_for(self, index: torch.Tensor, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The rows of ``index`` (B,) from the table if all are there; else ``compute()`` (B, d), stored.

        A batch with any missing row is computed whole (same batch, same kernels as without the cache)."""
        if self.features is not None:
            index = index.to(self.features.device)
            if bool(self.filled[index].all()):
                return self.features[index]
        features = compute()
        self.store(index, features)
        return features

    def store(self, index: torch.Tensor, features: torch.Tensor) -> None:
        """Put ``features`` (B, d) at rows ``index`` (B,)."""
        if features.shape != (index.shape[0], self.dim):
            raise ValueError(f"features {tuple(features.shape)} for {index.shape[0]} rows of width {self.dim}")
        if self.features is None or self.features.dtype != features.dtype or self.features.device != features.device:
            self.features = features.new_zeros(self.size, self.dim)
            self.filled = torch.zeros(self.size, dtype=torch.bool, device=features.device)
        index = index.to(features.device)
        self.features[index] = features.detach()
        self.filled[index] = True
        self.dirty = True

    def save(self) -> None:
        """Write the filled rows to ``path`` if rows were added; a failed write only costs a recomputation."""
        if self.path is None or not self.dirty:
            return
        index = self.filled.nonzero().flatten().cpu()
        features = self.features[index.to(self.features.device)].cpu()
        payload = {"format": FORMAT_VERSION, "key": self.key, "size": self.size, "index": index,
                   "features": features, "checksum": _checksum(index, features)}
        try:
            atomic_torch_save(payload, self.path)
            self.dirty = False
            print(f"{self.label}: {len(index)}/{self.size} rows cached at {self.path}")
        except (OSError, RuntimeError) as e:  # RuntimeError: torch's writer on a full disk
            print(f"{self.label}: could not write the cache {self.path} ({e}); continuing without it")

    @classmethod
    def open(cls, key: str, size: int, dim: int, folder: Optional[Path], device: torch.device,
             label: str = "Frozen features") -> "FeatureTable":
        """The table of ``key``: read from ``<folder>/<key>.pt`` if it is there and sound, else empty.

        ``folder`` None: memory only. A file that fails any check is named in one line and recomputed (the
        next ``save`` replaces it).
        """
        path = None if folder is None else Path(folder) / f"{key}.pt"
        table = cls(key, size, dim, path, label)
        if path is None or not path.is_file():
            return table
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            problem = table._load(payload, device)
        except (RuntimeError, EOFError, OSError, ValueError, KeyError, pickle.UnpicklingError) as e:
            problem = f"cannot be read ({type(e).__name__})"
        if problem:
            print(f"{label}: the cache {path} is damaged ({problem}); recomputing it")
            table.features = table.filled = None
            table.dirty = False
        else:
            print(f"{label}: {table.num_filled}/{size} rows loaded from {path}")
        return table

    def _load(self, payload: Any, device: torch.device) -> str:
        """Fill the table from a loaded file; returns what is wrong with it ("" if nothing)."""
        if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
            return "not a feature-cache file of this version"
        if payload.get("key") != self.key or payload.get("size") != self.size:
            return "its key does not match its name"
        index, features = payload.get("index"), payload.get("features")
        if not isinstance(index, torch.Tensor) or not isinstance(features, torch.Tensor):
            return "rows missing"
        if index.dtype != torch.int64 or index.dim() != 1 or features.shape != (index.shape[0], self.dim):
            return f"rows of shape {tuple(features.shape)} for {tuple(index.shape)} indices, width {self.dim}"
        if len(index) and (int(index.min()) < 0 or int(index.max()) >= self.size or len(index.unique()) != len(index)):
            return "row indices out of range or repeated"
        if not features.is_floating_point() or payload.get("checksum") != _checksum(index, features):
            return "checksum mismatch"
        self.store(index.to(device), features.to(device))
        self.dirty = False
        return ""
