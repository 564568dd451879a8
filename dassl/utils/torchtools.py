"""Checkpoint files, pretrained-weight loading, random-state capture and parameter counting.

Checkpoints are ``torch.save`` dicts holding only tensors and plain Python values, written atomically
(temp file + ``os.replace``), so they load with ``torch.load(weights_only=True)``. Files written by the
original Dassl embed pickled scheduler objects; those load through a trusted fallback.
"""
import os
import os.path as osp
import pickle
import random
import shutil
import types
import warnings
from collections import OrderedDict
from typing import Any, Dict, Iterable, Optional

import numpy as np
import torch
import torch.nn as nn

from .errors import UserError
from .tools import atomic_write_text, mkdir_if_missing, temp_path_beside, write_failed

__all__ = [
    "atomic_torch_save",
    "save_checkpoint",
    "load_checkpoint",
    "read_checkpoint_meta",
    "resume_from_checkpoint",
    "restore_from_checkpoint",
    "load_pretrained_weights",
    "count_num_param",
    "get_rng_state",
    "set_rng_state",
]


def atomic_torch_save(obj: Any, fpath: str) -> None:
    """``torch.save`` to a temp file beside ``fpath``, then ``os.replace`` (no half-written file ever).

    Saved through an open file (mode ``0666 & ~umask``), so a full disk surfaces as ``OSError`` (given a path, torch's
    own writer reports "unexpected pos"), turned into the one-line ``write_failed`` error.
    """
    tmp = temp_path_beside(fpath)
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
        os.replace(tmp, fpath)
    except OSError as e:
        raise write_failed(fpath, e) from None
    finally:
        if osp.exists(tmp):
            os.remove(tmp)


def save_checkpoint(
    state: Dict[str, Any],
    save_dir: str,
    is_best: bool = False,
    remove_module_from_keys: bool = True,
    model_name: str = "",
) -> str:
    """Save ``state`` to ``<save_dir>/<model_name or model.pth.tar-<state["epoch"]>>`` atomically.

    ``state`` holds ``state_dict`` plus plain values (``epoch``, ``optimizer``, ``scheduler``,
    ``val_result``, ...). ``module.`` prefixes (DataParallel/DDP) are stripped from the state-dict keys.
    The text file ``<save_dir>/checkpoint`` is rewritten to name the file just saved (the resume point);
    with ``is_best`` the file is also copied to ``model-best.pth.tar``. Returns the saved path.
    """
    mkdir_if_missing(save_dir)
    if remove_module_from_keys:
        state["state_dict"] = OrderedDict(
            (k[7:] if k.startswith("module.") else k, v) for k, v in state["state_dict"].items()
        )
    fname = model_name if model_name else f"model.pth.tar-{state['epoch']}"
    fpath = osp.join(save_dir, fname)
    atomic_torch_save(state, fpath)
    print(f"Checkpoint saved to {fpath}")
    atomic_write_text(f"{osp.basename(fpath)}\n", osp.join(save_dir, "checkpoint"))
    if is_best:
        best_fpath = osp.join(osp.dirname(fpath), "model-best.pth.tar")
        tmp = temp_path_beside(best_fpath)
        shutil.copy(fpath, tmp)
        os.replace(tmp, best_fpath)
        print(f'Best checkpoint saved to "{best_fpath}"')
    return fpath


class _PlaceholderUnpickler(pickle.Unpickler):
    """Unpickles a class that does not exist here as an empty placeholder class of the same name."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except (AttributeError, ImportError):
            return type(name, (), {"__module__": module})


_placeholder_pickle = types.ModuleType("placeholder_pickle")
_placeholder_pickle.Unpickler = _PlaceholderUnpickler
_placeholder_pickle.load = pickle.load


def _torch_load(fpath: str, map_location: Any, mmap: bool = False) -> Any:
    try:
        return torch.load(fpath, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:
        # Not tensors + plain values only: a checkpoint written by the original Dassl (its warm-up
        # scheduler state embeds pickled scheduler and optimizer objects). Unpickling runs code.
        print(f"Note: {fpath} holds pickled Python objects (e.g. written by the original Dassl); "
              "loading it with weights_only=False, only do this for files you trust")
    try:
        return torch.load(fpath, map_location=map_location, weights_only=False, mmap=mmap)
    except UnicodeDecodeError:
        # Checkpoints pickled by Python 2.
        return torch.load(fpath, map_location=map_location, weights_only=False, encoding="latin1")
    except (AttributeError, ImportError) as e:
        # Pickled objects of classes that do not exist here (e.g. the warm-up scheduler of HiCroPL's vendored
        # Dassl, SPEC F13): read them as inert placeholders so that the tensors can still be used.
        print(f"Note: {fpath} pickles objects of classes that do not exist here ({e}); reading its tensors anyway")
        return torch.load(fpath, map_location=map_location, weights_only=False, mmap=mmap,
                          pickle_module=_placeholder_pickle)


def load_checkpoint(fpath: str) -> Dict[str, Any]:
    """Load a checkpoint dict onto the GPU it was saved from if CUDA is available, else onto the CPU.

    Raises ``ValueError`` if ``fpath`` is None, ``FileNotFoundError`` if it does not exist and ``UserError`` if it
    cannot be read.
    """
    if fpath is None:
        raise ValueError("File path is None")
    if not osp.exists(fpath):
        raise FileNotFoundError(f'File is not found at "{fpath}"')
    map_location = None if torch.cuda.is_available() else "cpu"
    try:
        return _torch_load(fpath, map_location)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as e:
        # torch's message for a damaged zip is several lines long; its first line says what failed.
        reason = str(e).strip().splitlines()[0].split(". ")[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"cannot read checkpoint {fpath} ({reason}): the file is truncated or corrupt; "
            "delete it, or train again to re-create it"
        ) from None


def read_checkpoint_meta(fpath: str) -> Dict[str, Any]:
    """The non-tensor entries of a checkpoint (``epoch``, ``val_result``, ...) without reading its tensors.

    Memory-maps the file (zip format), so it costs little even for large checkpoints.
    """
    try:
        checkpoint = _torch_load(fpath, "cpu", mmap=True)
    except RuntimeError:  # legacy (non-zip) torch.save format cannot be memory-mapped
        checkpoint = _torch_load(fpath, "cpu")
    return {k: v for k, v in checkpoint.items() if k not in ("state_dict", "optimizer", "scheduler")}


def get_rng_state() -> Dict[str, Any]:
    """The states of Python's ``random``, NumPy's global generator, torch CPU and every CUDA device.

    Stored as tensors and plain values (the NumPy key array becomes a list) so that checkpoints stay
    loadable with ``weights_only=True``.
    """
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached_gaussian)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore what ``get_rng_state`` captured (CUDA states only when the device count matches)."""
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"].cpu())
    cuda_states = state.get("cuda")
    if cuda_states is not None and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])


def restore_from_checkpoint(
    fdir: str,
    model: nn.Module,
    optimizer: Optional[torch.optim.Optimizer] = None,
    scheduler: Optional[Any] = None,
) -> Dict[str, Any]:
    """Load the checkpoint that ``<fdir>/checkpoint`` names into ``model``/``optimizer``/``scheduler``.

    Returns the whole checkpoint dict (``resume_from_checkpoint`` returns only its epoch). A scheduler
    that can rebuild its lr from an epoch count (``EpochLRScheduler``) and is handed a state it does not
    understand (the original Dassl's pickled warm-up wrapper) is set to the checkpoint's epoch instead.
    """
    pointer = osp.join(fdir, "checkpoint")
    with open(pointer, "r") as f:
        model_name = f.readline().strip("\n")
    fpath = osp.join(fdir, model_name)
    if not model_name or not osp.isfile(fpath):
        raise UserError(f"cannot resume: {pointer} names {model_name!r}, which is not a file in {fdir}; put the "
                        f"file back, or delete {pointer} to train from scratch")
    print(f'Loading checkpoint from "{fpath}"')
    checkpoint = load_checkpoint(fpath)
    try:
        model.load_state_dict(checkpoint["state_dict"])
        print("Loaded model weights")
        if optimizer is not None and checkpoint.get("optimizer") is not None:
            optimizer.load_state_dict(checkpoint["optimizer"])
            print("Loaded optimizer")
    except (RuntimeError, ValueError) as e:  # UserError is a ValueError; torch's mismatch errors are multi-line
        raise UserError(
            f"cannot resume from {fpath}: {' '.join(str(e).split())}; it was written by another configuration "
            "(train into a new --output-dir to start over)"
        ) from None
    if scheduler is not None and checkpoint.get("scheduler") is not None:
        state = checkpoint["scheduler"]
        if hasattr(scheduler, "owns_state") and not scheduler.owns_state(state):
            scheduler.set_last_epoch(checkpoint["epoch"])
        else:
            scheduler.load_state_dict(state)
        print("Loaded scheduler")
    print(f"Previous epoch: {checkpoint['epoch']}")
    return checkpoint


def resume_from_checkpoint(
    fdir: str,
    model: nn.Module,
    optimizer: Optional[torch.optim.Optimizer] = None,
    scheduler: Optional[Any] = None,
) -> int:
    """Resume ``model``/``optimizer``/``scheduler`` from the file named in ``<fdir>/checkpoint``.

    Returns the stored epoch, i.e. the number of finished epochs (training continues with that index).
    """
    return restore_from_checkpoint(fdir, model, optimizer, scheduler)["epoch"]


def load_pretrained_weights(model: nn.Module, weight_path: str) -> None:
    """Copy the matching entries of a checkpoint into ``model``.

    Uses the checkpoint's ``state_dict`` entry if present, else the whole object; drops ``module.``
    prefixes; keeps only keys present in ``model`` with equal shapes and reports the discarded ones.
    """
    checkpoint = load_checkpoint(weight_path)
    state_dict = checkpoint["state_dict"] if "state_dict" in checkpoint else checkpoint
    model_dict = model.state_dict()
    new_state_dict = OrderedDict()
    matched_layers, discarded_layers = [], []
    for k, v in state_dict.items():
        if k.startswith("module."):
            k = k[7:]
        if k in model_dict and model_dict[k].size() == v.size():
            new_state_dict[k] = v
            matched_layers.append(k)
        else:
            discarded_layers.append(k)
    model_dict.update(new_state_dict)
    model.load_state_dict(model_dict)
    if not matched_layers:
        warnings.warn(f"Cannot load {weight_path} (check the key names manually)")
    else:
        print(f"Successfully loaded pretrained weights from {weight_path}")
        if discarded_layers:
            print(f"Layers discarded due to unmatched keys or size: {discarded_layers}")


def count_num_param(model: Optional[nn.Module] = None, params: Optional[Iterable[torch.Tensor]] = None) -> int:
    """Number of elements in ``model.parameters()`` or in ``params``."""
    if model is not None:
        return sum(p.numel() for p in model.parameters())
    if params is not None:
        return sum(p.numel() for p in params)
    raise ValueError("model and params must be provided")
