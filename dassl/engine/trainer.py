"""Trainer classes: ``TrainerBase`` (model bookkeeping) -> ``SimpleTrainer`` (life cycle) -> ``TrainerX``.

Life cycle of ``trainer.train()``::

    before_train()                 resume from <RESUME or OUTPUT_DIR>/<model name>/checkpoint if present,
                                   open tensorboard/
    for epoch in [start, max):
        before_epoch()
        run_epoch()                TrainerX: one pass over train_loader_x -> forward_backward(batch)
        after_epoch()              end_of_epoch() hook (e.g. PromptSRC's prompt aggregation), then
                                   best_val: test("val"), keep model-best.pth.tar (ties -> later epoch);
                                   save model.pth.tar-<E> every CHECKPOINT_FREQ epochs and after the last
    after_train()                  load model-best (best_val), test(), print elapsed time

A project trainer subclasses ``TrainerX``, registers itself with ``@TRAINER_REGISTRY.register()`` and
overrides ``build_model`` (building ``self.model``/optimizer/scheduler and calling ``register_model``),
``forward_backward`` (which calls ``self.update_lr()`` after the last batch of an epoch), and usually
``parse_batch_train``, ``check_cfg`` and ``load_model``.

Every evaluation appends a record to ``<OUTPUT_DIR>/results.json`` (see ``dassl.engine.results``).
Checkpoints also carry the random-number states and the best val result, so a resumed run continues
exactly as the uninterrupted one would have.

Multi-process training (``torchrun --nproc_per_node N train.py ...``, see ``dassl.utils.comm``): after
``build_model`` every registered model with trainable parameters is wrapped in DistributedDataParallel
(``self.model`` becomes the wrapper, the registry keeps the plain module for checkpoints and modes); each
process gets ``TRAIN_X.BATCH_SIZE / N`` samples of every global batch, evaluation metrics are gathered over
the processes, only rank 0 writes files, and the replicas are checked to be identical after every epoch.
"""
import datetime
import functools
import hashlib
import os.path as osp
import shutil
import time
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader
from tqdm import tqdm
from yacs.config import CfgNode as CN

from dassl.config import cfg_to_dict
from dassl.data import DataManager
from dassl.evaluation import build_evaluator
from dassl.utils import (
    AverageMeter,
    MetricMeter,
    MissingFileError,
    NonFiniteLossError,
    all_gather_object,
    all_reduce_mean,
    all_reduce_min,
    barrier,
    broadcast_object,
    get_local_rank,
    get_rank,
    get_rng_state,
    get_world_size,
    is_distributed,
    is_main_process,
    load_checkpoint,
    mkdir_if_missing,
    read_checkpoint_meta,
    read_json,
    remove_stale_temp_files,
    restore_from_checkpoint,
    save_checkpoint,
    set_random_seed,
    set_rng_state,
    tolist_if_not,
    UserError,
    write_json,
)
from dassl.evaluation.outputs import new_evaluation_dir, write_evaluation_files

from .cost import count_flops, device_name, peak_memory, trainable_parameters
from .identity import format_diff, identity_diff, run_identity
from .results import append_result

__all__ = ["TrainerBase", "SimpleTrainer", "TrainerX"]

Names = Optional[Union[str, List[str]]]

# <OUTPUT_DIR>/identity.json: the identity of the training run that owns the output dir (see dassl.engine.identity).
IDENTITY_FILE = "identity.json"


def weights_sha256(models: Dict[str, nn.Module]) -> str:
    """Hex SHA-256 of the models' state dicts (names, keys, dtypes, shapes and bytes, in order).

    What results.json says was evaluated, by content: equal weights give equal hashes, whatever file they came from
    (checkpoint files themselves differ between saves: random-number states, torch's per-save serialization id).
    """
    digest = hashlib.sha256()
    for name, model in models.items():
        for key, value in model.state_dict().items():
            value = value.detach().cpu().contiguous()
            digest.update(f"{name}/{key}:{value.dtype}:{tuple(value.shape)}".encode())
            digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _track_loaded_model(load_model: Callable) -> Callable:
    """Wrap a subclass's ``load_model`` so the trainer knows which checkpoint it evaluates (for results.json)."""

    @functools.wraps(load_model)
    def wrapper(self: "TrainerBase", directory: str, epoch: Optional[int] = None, *args: Any, **kwargs: Any) -> Any:
        result = load_model(self, directory, epoch, *args, **kwargs)
        self._note_loaded_model(directory, epoch)
        return result

    return wrapper


class TrainerBase:
    """Registered models with their optimizers and schedulers, checkpointing and tensorboard."""

    def __init__(self) -> None:
        self._models: "OrderedDict[str, nn.Module]" = OrderedDict()
        self._optims: "OrderedDict[str, Optional[torch.optim.Optimizer]]" = OrderedDict()
        self._scheds: "OrderedDict[str, Optional[Any]]" = OrderedDict()
        self._writer = None
        # Epochs trained by the weights now in the model and the checkpoint they came from (None: not
        # loaded from a file); written into every results.json record.
        self._model_epoch: Optional[int] = None
        self._model_checkpoint: Optional[str] = None
        # What a loaded checkpoint holds and says about itself (results.json): the hash of the weights loaded, the
        # training identity and the identity changes accepted while it was trained (None / [] without metadata).
        self._weights_sha256: Optional[str] = None
        self._model_identity: Optional[Dict[str, Any]] = None
        self._model_identity_changes: List[Dict[str, Any]] = []
        # Why the model is evaluated (results.json "stage"): "epoch" (during training), "final" (after training),
        # "eval" (anything else, e.g. an --eval-only run).
        self._stage = "eval"
        # Cost of this process's training (results.json "cost"): wall seconds in run_epoch, the FLOPs of one
        # training step (counted on the first step when TRAIN.COUNT_FLOPS) and the wall seconds of that step.
        self._train_seconds: Optional[float] = None
        self._train_step_flops: Optional[int] = None
        self._flop_count_seconds: Optional[float] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Project trainers override load_model (dropping class-dependent buffers etc.); track what
        # they load without asking them to change.
        if "load_model" in cls.__dict__:
            cls.load_model = _track_loaded_model(cls.__dict__["load_model"])

    def register_model(
        self,
        name: str = "model",
        model: Optional[nn.Module] = None,
        optim: Optional[torch.optim.Optimizer] = None,
        sched: Optional[Any] = None,
    ) -> None:
        """Register ``model`` (and its optimizer/scheduler) under ``name``.

        Its checkpoints go to ``<OUTPUT_DIR>/<name>/``; registration order is the iteration order everywhere.
        """
        if self.__dict__.get("_models") is None:
            raise AttributeError("Cannot assign model before super().__init__() call")
        if self.__dict__.get("_optims") is None:
            raise AttributeError("Cannot assign optim before super().__init__() call")
        if self.__dict__.get("_scheds") is None:
            raise AttributeError("Cannot assign sched before super().__init__() call")
        assert name not in self._models, "Found duplicate model names"
        self._models[name] = model
        self._optims[name] = optim
        self._scheds[name] = sched

    def get_model_names(self, names: Names = None) -> List[str]:
        """All registered names, or ``names`` (str or list) after checking that each is registered."""
        names_real = list(self._models.keys())
        if names is not None:
            names = tolist_if_not(names)
            for name in names:
                assert name in names_real, f"model {name!r} is not registered (registered: {names_real})"
            return names
        return names_real

    def save_model(
        self,
        epoch: int,
        directory: str,
        is_best: bool = False,
        val_result: Optional[float] = None,
        model_name: str = "",
    ) -> None:
        """Save every registered model to ``<directory>/<name>/<model_name or model.pth.tar-<epoch+1>>``.

        Besides Dassl's entries (state_dict, epoch, optimizer, scheduler, val_result) the file holds
        ``rng_state`` and ``best_result`` so that a resume continues exactly (under torchrun also
        ``rng_state_per_rank``), and ``grad_scaler``: the state of the trainer's ``self.scaler`` (the
        CoOp-family name of the mixed-precision ``GradScaler``) if it has one -- a fresh loss scale after a
        resume would skip other steps than the uninterrupted run. Only rank 0 writes; every process returns
        once the files exist.
        """
        rng_states = all_gather_object(get_rng_state())
        if not is_main_process():
            barrier()
            return
        run_state = {"rng_state": rng_states[0], "best_result": getattr(self, "best_result", None)}
        run_state.update(self.checkpoint_metadata())
        if len(rng_states) > 1:
            run_state["rng_state_per_rank"] = rng_states
        scaler = getattr(self, "scaler", None)
        if scaler is not None and hasattr(scaler, "state_dict"):
            run_state["grad_scaler"] = scaler.state_dict()
        if self.end_of_epoch_state() is not None:
            run_state["end_of_epoch_state"] = self.end_of_epoch_state()
        for name in self.get_model_names():
            optim, sched = self._optims[name], self._scheds[name]
            save_checkpoint(
                {
                    "state_dict": self._models[name].state_dict(),
                    "epoch": epoch + 1,
                    "optimizer": optim.state_dict() if optim is not None else None,
                    "scheduler": sched.state_dict() if sched is not None else None,
                    "val_result": val_result,
                    **run_state,
                },
                osp.join(directory, name),
                is_best=is_best,
                model_name=model_name,
            )
        barrier()

    def resume_model_if_exist(self, directory: str) -> int:
        """Resume every registered model from ``<directory>/<name>/checkpoint``; returns the epoch to start at.

        Restores weights, optimizer, scheduler, the best val result, the random-number states and the
        ``self.scaler`` state.
        No checkpoint for some model -> ``No checkpoint found, train from scratch`` and 0.
        """
        names = self.get_model_names()
        if not names or any(not osp.exists(osp.join(directory, name, "checkpoint")) for name in names):
            print("No checkpoint found, train from scratch")
            return 0
        print(f"Found checkpoint at {directory} (will resume training)")
        for name in names:
            checkpoint = restore_from_checkpoint(
                osp.join(directory, name), self._models[name], self._optims[name], self._scheds[name]
            )
        if checkpoint.get("best_result") is not None:
            self.best_result = checkpoint["best_result"]
        scaler = getattr(self, "scaler", None)
        if checkpoint.get("grad_scaler") and scaler is not None and hasattr(scaler, "load_state_dict"):
            scaler.load_state_dict(checkpoint["grad_scaler"])
        if checkpoint.get("end_of_epoch_state") is not None:
            self.load_end_of_epoch_state(checkpoint["end_of_epoch_state"])
        per_rank = checkpoint.get("rng_state_per_rank")
        if per_rank is not None and len(per_rank) == get_world_size():
            set_rng_state(per_rank[get_rank()])
        elif checkpoint.get("rng_state") is not None:
            set_rng_state(checkpoint["rng_state"])
        self._model_epoch, self._model_checkpoint = checkpoint["epoch"], None
        return checkpoint["epoch"]

    def load_model(self, directory: str, epoch: Optional[int] = None) -> None:
        """Load ``<directory>/<name>/model-best.pth.tar`` (or ``model.pth.tar-<epoch>``) into each registered model.

        A file holding a bare state dict (no ``state_dict`` entry) loads too; a model whose ``load_state_dict``
        raises ``UserError`` (e.g. a checkpoint of another configuration) gets the file named in the message.
        """
        if not directory:
            print("Note that load_model() is skipped as no pretrained model is given")
            return
        model_file = "model-best.pth.tar" if epoch is None else f"model.pth.tar-{epoch}"
        for name in self.get_model_names():
            model_path = osp.join(directory, name, model_file)
            if not osp.exists(model_path):
                raise MissingFileError(f'model not found at "{model_path}"; check --model-dir and --load-epoch')
            checkpoint = load_checkpoint(model_path)
            state_dict = checkpoint.get("state_dict", checkpoint)
            val_result = checkpoint.get("val_result")
            shown = f"{val_result:.1f}" if val_result is not None else "None"
            print(f"Load {model_path} to {name} (epoch={checkpoint.get('epoch')}, val_result={shown})")
            self.check_checkpoint_keys(checkpoint, model_path)
            try:
                self._models[name].load_state_dict(state_dict)
            except UserError as e:
                raise UserError(f"cannot load {model_path}: {e}") from None
        self._note_loaded_model(directory, epoch)

    def _note_loaded_model(self, directory: str, epoch: Optional[int]) -> None:
        """Remember which checkpoint ``load_model(directory, epoch)`` loaded and how many epochs it had trained."""
        names = self.get_model_names()
        if not directory or not names:
            return
        model_file = "model-best.pth.tar" if epoch is None else f"model.pth.tar-{epoch}"
        path = osp.abspath(osp.join(directory, names[0], model_file))
        if osp.exists(path):
            meta = read_checkpoint_meta(path)
            self.check_checkpoint_keys(meta, path)  # also for subclasses whose own load_model skips it
            self._model_checkpoint = path
            self._model_epoch = epoch if epoch is not None else meta.get("epoch")
            self._weights_sha256 = weights_sha256(self._models)
            self._model_identity = meta.get("identity")
            self._model_identity_changes = list(meta.get("identity_changes") or [])

    def checkpoint_metadata(self) -> Dict[str, Any]:
        """Extra entries written into every checkpoint (``SimpleTrainer``: the run identity); plain values only."""
        return {}

    def check_checkpoint_keys(self, checkpoint: Dict[str, Any], path: str, action: str = "load") -> None:
        """Raise ``UserError`` (``cannot <action> <path>: ...``) if the checkpoint at ``path`` cannot mean the same
        under this config (no-op here)."""

    def set_model_mode(self, mode: str = "train", names: Names = None) -> None:
        """``"train"`` -> ``.train()``, ``"test"``/``"eval"`` -> ``.eval()`` on the registered models."""
        for name in self.get_model_names(names):
            if mode == "train":
                self._models[name].train()
            elif mode in ["test", "eval"]:
                self._models[name].eval()
            else:
                raise KeyError(f"mode must be 'train', 'test' or 'eval', got {mode!r}")

    def update_lr(self, names: Names = None) -> None:
        """Step every registered scheduler once (trainers call this after the last batch of an epoch)."""
        for name in self.get_model_names(names):
            if self._scheds[name] is not None:
                self._scheds[name].step()

    def detect_anomaly(self, loss: torch.Tensor, terms: Optional[Dict[str, Any]] = None) -> None:
        """Raise ``NonFiniteLossError`` (a ``FloatingPointError``) if ``loss`` is not finite.

        The one-line message names the epoch and batch, the loss and, if given, the ``terms`` it was summed from
        (name -> tensor or float, e.g. ``{"ce": ..., "kd": ...}``), so the culprit is visible; without ``terms``, a
        trainer's ``self.loss_terms`` dict is used if it has one (so trainers can call Dassl's one-argument
        ``detect_anomaly(loss)`` and still get the terms in the message). Call it before
        ``backward()``: then nothing has been updated and the checkpoints written so far are the last good state.
        Under torchrun every process stops when any process's loss is not finite (none waits forever in the
        gradient all-reduce).
        """
        finite = bool(torch.isfinite(loss).all())
        if all_reduce_min(float(finite)) == 1.0:
            return
        if finite:
            raise NonFiniteLossError(
                f"Loss is infinite or NaN in another process at epoch {getattr(self, 'epoch', 0) + 1}, batch "
                f"{getattr(self, 'batch_idx', 0) + 1}; training stopped before the update (see rank 0's error)"
            )

        def show(value: Any) -> str:
            value = value.detach().float().cpu() if isinstance(value, torch.Tensor) else torch.tensor(float(value))
            return f"{value.item():.4g}" if value.numel() == 1 else str([round(v, 4) for v in value.flatten().tolist()])

        epoch, batch = getattr(self, "epoch", 0) + 1, getattr(self, "batch_idx", 0) + 1
        max_epoch, num_batches = getattr(self, "max_epoch", "?"), getattr(self, "num_batches", "?")
        if terms is None:
            terms = getattr(self, "loss_terms", None)
        parts = ", ".join(f"{name}={show(value)}" for name, value in (terms or {}).items())
        raise NonFiniteLossError(
            f"Loss is infinite or NaN at epoch {epoch}/{max_epoch}, batch {batch}/{num_batches}: loss={show(loss)}"
            + (f" ({parts})" if parts else "")
            + "; training stopped before the update, checkpoints already saved are intact "
            "(lower OPTIM.LR, check the input data, or use full precision)"
        )

    def init_writer(self, log_dir: str) -> None:
        """Open a tensorboard ``SummaryWriter`` at ``log_dir`` (once; rank 0 only)."""
        if self._writer is not None or not is_main_process():
            return
        from torch.utils.tensorboard import SummaryWriter  # imported here: slow, and eval-only never needs it

        print(f"Initialize tensorboard (log_dir={log_dir})")
        self._writer = SummaryWriter(log_dir=log_dir)

    def close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()

    def write_scalar(self, tag: str, scalar_value: float, global_step: Optional[int] = None) -> None:
        """Log a tensorboard scalar (no-op while no writer is open, e.g. in eval-only runs)."""
        if self._writer is not None:
            self._writer.add_scalar(tag, scalar_value, global_step)

    def train(self, start_epoch: int, max_epoch: int) -> None:
        """``before_train``; per epoch ``before_epoch``, ``run_epoch``, ``after_epoch``; ``after_train``."""
        self.start_epoch = start_epoch
        self.max_epoch = max_epoch
        self.before_train()
        # range() is evaluated after before_train so that a resumed start epoch takes effect.
        self._stage = "epoch"
        for self.epoch in range(self.start_epoch, self.max_epoch):
            self.before_epoch()
            epoch_start = time.time()
            self.run_epoch()
            self._train_seconds = (self._train_seconds or 0.0) + time.time() - epoch_start
            self.check_replicas()
            self._model_epoch, self._model_checkpoint = self.epoch + 1, None
            self.after_epoch()
        self._stage = "final"
        self.after_train()
        self._stage = "eval"

    def check_replicas(self) -> None:
        """Under torchrun: raise if the registered models' states differ between processes.

        DistributedDataParallel keeps trainable parameters equal by averaging gradients; a model that also
        changes its state in the forward pass (HiCroPL's released mapper writes prompts in place) stays equal
        only if every process makes the same calls. This check (one float64 checksum per tensor) catches a
        violation after every epoch instead of letting the replicas drift apart silently.
        """
        if not is_distributed():
            return
        for name in self.get_model_names():
            state = self._models[name].state_dict()
            sums = {key: float(value.detach().double().sum()) for key, value in state.items()
                    if torch.is_tensor(value) and value.is_floating_point()}
            reference = broadcast_object(sums)
            differ = [key for key in sums if sums[key] != reference.get(key)]
            if all_reduce_min(0.0 if differ else 1.0) < 1.0:
                raise RuntimeError(
                    f"model {name!r} differs between processes after epoch {self.epoch + 1}"
                    + (f" (rank {get_rank()}: {', '.join(differ[:3])})" if differ else "")
                )

    def before_train(self) -> None:
        pass

    def after_train(self) -> None:
        pass

    def before_epoch(self) -> None:
        pass

    def after_epoch(self) -> None:
        pass

    # End-of-epoch hook: ``end_of_epoch()`` runs after every training epoch (``self.epoch`` is the 0-based epoch just
    # trained) and before that epoch's checkpoints are written. A method keeps its running state in
    # ``end_of_epoch_state()`` (any picklable object, None = nothing), which every checkpoint stores under
    # "end_of_epoch_state" and a resume hands back to ``load_end_of_epoch_state`` -- so kill + resume continues
    # exactly.
    def end_of_epoch(self) -> None:
        pass

    def end_of_epoch_state(self) -> Any:
        return None

    def load_end_of_epoch_state(self, state: Any) -> None:
        pass

    def run_epoch(self) -> None:
        raise NotImplementedError

    def test(self) -> Any:
        raise NotImplementedError

    def parse_batch_train(self, batch: Dict[str, Any]) -> Any:
        raise NotImplementedError

    def parse_batch_test(self, batch: Dict[str, Any]) -> Any:
        raise NotImplementedError

    def forward_backward(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        raise NotImplementedError

    def model_inference(self, input: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def model_zero_grad(self, names: Names = None) -> None:
        for name in self.get_model_names(names):
            if self._optims[name] is not None:
                self._optims[name].zero_grad()

    def model_backward(self, loss: torch.Tensor) -> None:
        self.detect_anomaly(loss)
        loss.backward()

    def model_update(self, names: Names = None) -> None:
        for name in self.get_model_names(names):
            if self._optims[name] is not None:
                self._optims[name].step()

    def model_backward_and_update(self, loss: torch.Tensor, names: Names = None) -> None:
        """Zero the gradients, check the loss is finite, backpropagate and step the optimizers."""
        self.model_zero_grad(names)
        self.model_backward(loss)
        self.model_update(names)


class SimpleTrainer(TrainerBase):
    """Data, evaluator, device, the train/val/test life cycle and the ``test()`` loop.

    Run identity and strict checkpoints (``dassl.engine.identity``), declared per trainer class:
    ``cfg_node`` (its node under ``TRAINER``; None -> ``TRAINER.NAME`` upper-cased), ``identity_excluded_keys``
    (dotted keys or "."-ended prefixes that do not change what is learned) and ``load_keys`` (keys a checkpoint
    must agree with to be loaded; a trainer lists them all, e.g. ``("MODEL.BACKBONE.NAME", "TRAINER.X.N_CTX")``, so
    that its file also imports on the real Dassl, which has none of these attributes).
    """

    cfg_node: Optional[str] = None
    identity_excluded_keys: Tuple[str, ...] = ()
    load_keys: Tuple[str, ...] = ("MODEL.BACKBONE.NAME",)

    def __init__(self, cfg: CN) -> None:
        super().__init__()
        self.check_cfg(cfg)

        if torch.cuda.is_available() and cfg.USE_CUDA:
            self.device = torch.device("cuda")
        else:
            self.device = torch.device("cpu")

        self.start_epoch = self.epoch = 0
        self.max_epoch = cfg.OPTIM.MAX_EPOCH
        self.output_dir = cfg.OUTPUT_DIR

        self.cfg = cfg
        self.build_data_loader()
        self.build_model()
        self.setup_distributed()
        self.evaluator = build_evaluator(cfg, lab2cname=self.lab2cname)
        self.best_result = -np.inf
        # Identity changes accepted on resume (ACCEPT_CONFIG_CHANGE), oldest first: [{"epoch": E, "changes":
        # {key: [old, new]}}]; inherited from the checkpoint resumed from.
        self._identity_changes: List[Dict[str, Any]] = []

    def check_cfg(self, cfg: CN) -> None:
        """Hook: check the config before anything is built (``self.cfg`` does not exist yet)."""

    def build_data_loader(self) -> None:
        """Build the ``DataManager`` (``self.dm``) and expose its loaders, ``num_classes`` and ``lab2cname``."""
        dm = DataManager(self.cfg)
        self.train_loader_x = dm.train_loader_x
        self.train_loader_u = dm.train_loader_u
        self.val_loader = dm.val_loader
        self.test_loader = dm.test_loader
        self.num_classes = dm.num_classes
        self.num_source_domains = dm.num_source_domains
        self.lab2cname = dm.lab2cname
        self.dm = dm

    def build_model(self) -> None:
        """Build ``self.model``, its optimizer and scheduler and call ``register_model`` (trainers must override)."""
        raise NotImplementedError(
            f"{type(self).__name__} must override build_model() (Dassl's generic SimpleNet is not part of this engine)"
        )

    def setup_distributed(self) -> None:
        """Under torchrun: wrap the trainable registered models in DistributedDataParallel, then seed per process.

        ``self.model`` becomes the wrapper when it is the registered module (so ``self.model(...)`` in
        ``forward_backward`` synchronises gradients); ``self._models`` keeps the plain modules (state dicts,
        ``load_state_dict`` overrides, train/eval modes). DDP broadcasts rank 0's values of what the model's
        ``state_dict()`` holds once; everything else (frozen backbones, constant buffers, rebuilt identically in
        every process from the config) is left out of all synchronisation. Every process has built the same
        model from the same seed; afterwards each one reseeds with ``SEED + rank`` so that data augmentation
        differs between processes (the data order comes from the sampler's own generator).
        """
        if not is_distributed():
            return
        from torch.nn.parallel import DistributedDataParallel

        for name in self.get_model_names():
            model = self._models[name]
            if not any(p.requires_grad for p in model.parameters()):
                continue
            synced = set(model.state_dict().keys())
            ignored = [key for key, _ in list(model.named_parameters()) + list(model.named_buffers())
                       if key not in synced]
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, ignored)
            device_ids = [get_local_rank()] if self.device.type == "cuda" else None
            wrapped = DistributedDataParallel(model, device_ids=device_ids)
            if self.__dict__.get("model") is model:
                self.model = wrapped
        if get_world_size() > 1:
            seed = self.cfg.SEED if self.cfg.SEED >= 0 else broadcast_object(torch.initial_seed() % 2**31)
            set_random_seed(seed + get_rank())

    def train(self) -> None:
        super().train(self.start_epoch, self.max_epoch)

    def before_train(self) -> None:
        if is_main_process():
            # Temp files of a run killed mid-write (checkpoints, results.json) are litter, never a resume point.
            for folder in [self.output_dir] + [osp.join(self.output_dir, name) for name in self.get_model_names()]:
                for name in remove_stale_temp_files(folder):
                    print(f"Removed {osp.join(folder, name)} (left by an interrupted run)")
        directory = self.cfg.RESUME if self.cfg.RESUME else self.cfg.OUTPUT_DIR
        self.check_resume_identity(directory)
        self.start_epoch = self.resume_model_if_exist(directory)
        self.save_missing_checkpoint(self.start_epoch)

        writer_dir = osp.join(self.output_dir, "tensorboard")
        mkdir_if_missing(writer_dir)
        self.init_writer(writer_dir)

        self.time_start = time.time()

    def run_identity(self) -> Dict[str, Any]:
        """This run's identity under ``self.cfg`` (``{dotted key: value}``, see ``dassl.engine.identity``)."""
        node = self.cfg_node or self.cfg.TRAINER.NAME.upper()
        return run_identity(self.cfg, node, self.identity_excluded_keys, self.load_keys)

    def checkpoint_metadata(self) -> Dict[str, Any]:
        return {"identity": self.run_identity(), "identity_changes": self._identity_changes}

    def save_model(self, epoch: int, directory: str, is_best: bool = False, val_result: Optional[float] = None,
                   model_name: str = "") -> None:
        """``TrainerBase.save_model``, then (rank 0) ``<directory>/identity.json``: the identity the files hold."""
        super().save_model(epoch, directory, is_best, val_result, model_name)
        if is_main_process():
            write_json({"trainer": self.cfg.TRAINER.NAME, **self.checkpoint_metadata()},
                       osp.join(directory, IDENTITY_FILE))

    def check_checkpoint_keys(self, checkpoint: Dict[str, Any], path: str, action: str = "load") -> None:
        """``UserError`` naming key, checkpoint value and config value for each ``load_keys`` entry that differs.

        Checkpoints without an identity (the released code's, or written before identities existed) pass.
        """
        stored = checkpoint.get("identity")
        if not isinstance(stored, dict):
            return
        diff = identity_diff(stored, self.run_identity(), self.load_keys)
        if diff:
            shown = "; ".join(f"{key} is {old!r} in the checkpoint but {new!r} in the config"
                              for key, (old, new) in diff.items())
            raise UserError(f"cannot {action} {path}: {shown}; set the config to the checkpoint's values, "
                            "or use a checkpoint trained with this config")

    def check_resume_identity(self, directory: str) -> None:
        """Stop unless this run's identity equals the one of the run it continues (ACCEPT_CONFIG_CHANGE accepts).

        The run continued is the checkpoint that ``<directory>/<model>/checkpoint`` names, or, without one (its
        checkpoints deleted), the run that wrote ``<OUTPUT_DIR>/identity.json``. A differing ``load_keys`` entry is
        never accepted.
        An accepted change is appended to ``self._identity_changes`` (stored in later checkpoints, identity.json
        and every results.json record of the models trained on).
        """
        names = self.get_model_names()
        pointer = osp.join(directory, names[0], "checkpoint") if names else ""
        stored, where, epoch = None, "", 0
        if pointer and osp.isfile(pointer):
            with open(pointer) as f:
                path = osp.join(directory, names[0], f.readline().strip())
            if osp.isfile(path):  # a dangling pointer is reported by the resume itself
                meta = read_checkpoint_meta(path)
                self.check_checkpoint_keys(meta, path, action="resume from")
                stored, where, epoch = meta.get("identity"), f"resume from {path}", meta.get("epoch", 0)
                self._identity_changes = list(meta.get("identity_changes") or [])
        elif osp.isfile(osp.join(self.output_dir, IDENTITY_FILE)):
            previous = read_json(osp.join(self.output_dir, IDENTITY_FILE))
            stored, where = previous.get("identity"), f"train into {self.output_dir}"
            self._identity_changes = list(previous.get("identity_changes") or [])
        if not isinstance(stored, dict):
            return
        current = self.run_identity()
        diff = identity_diff(stored, current, current)
        if not diff:
            return
        if not self.cfg.get("ACCEPT_CONFIG_CHANGE", False):
            raise UserError(
                f"cannot {where}: that run has another configuration ({format_diff(diff)}); train into a new "
                "--output-dir, or accept the change with ACCEPT_CONFIG_CHANGE True (train.py --accept-config-change; "
                "it is recorded in results.json)"
            )
        print(f"Accepted config change at epoch {epoch} (ACCEPT_CONFIG_CHANGE): {format_diff(diff)}")
        self._identity_changes = self._identity_changes + [{"epoch": epoch, "changes": diff}]

    def save_missing_checkpoint(self, epochs_done: int) -> None:
        """Write ``model.pth.tar-<epochs_done>`` if the schedule wanted it but a killed run never finished it.

        The resume pointer names the newest file, which can be ``model-best.pth.tar``: it is written just
        before the regular checkpoint of the same epoch, and a later best epoch overwrites it. The state just
        restored from it is that epoch's (weights, optimizer, scheduler, random states), so the file written
        now is the one the uninterrupted run wrote.
        """
        freq = self.cfg.TRAIN.CHECKPOINT_FREQ
        due = epochs_done > 0 and ((freq > 0 and epochs_done % freq == 0) or epochs_done == self.max_epoch)
        fname = f"model.pth.tar-{epochs_done}"
        missing = due and any(
            not osp.exists(osp.join(self.output_dir, name, fname)) for name in self.get_model_names()
        )
        if broadcast_object(missing):  # rank 0 decides: every process must take part in save_model
            print(f"Saving {fname}, which the interrupted run did not finish writing")
            self.save_model(epochs_done - 1, self.output_dir)

    def after_train(self) -> None:
        print("Finish training")
        if not self.cfg.TEST.NO_TEST:
            if self.cfg.TEST.FINAL_MODEL == "best_val":
                print("Deploy the model with the best val performance")
                self.load_model(self.output_dir)
            else:
                print("Deploy the last-epoch model")
            self.test()

        elapsed = round(time.time() - self.time_start)
        print(f"Elapsed: {datetime.timedelta(seconds=elapsed)}")
        self.close_writer()

    def after_epoch(self) -> None:
        self.end_of_epoch()
        last_epoch = (self.epoch + 1) == self.max_epoch
        do_test = not self.cfg.TEST.NO_TEST
        freq = self.cfg.TRAIN.CHECKPOINT_FREQ
        meet_checkpoint_freq = freq > 0 and (self.epoch + 1) % freq == 0

        if do_test and self.cfg.TEST.FINAL_MODEL == "best_val":
            curr_result = self.test(split="val")
            # >= (HiCroPL's copy of Dassl): on ties the later epoch becomes the best.
            if curr_result >= self.best_result:
                self.best_result = curr_result
                self.save_model(self.epoch, self.output_dir, val_result=curr_result, model_name="model-best.pth.tar")

        if meet_checkpoint_freq or last_epoch:
            self.save_model(self.epoch, self.output_dir)

    def eval_loader(self, split: Optional[str] = None) -> Tuple[str, DataLoader]:
        """``(split, loader)`` for ``test(split)``: the val loader for ``"val"`` if the dataset has one, else test."""
        if split is None:
            split = self.cfg.TEST.SPLIT
        if split == "val" and self.val_loader is not None:
            return "val", self.val_loader
        return "test", self.test_loader

    @torch.no_grad()
    def test(self, split: Optional[str] = None) -> float:
        """Evaluate on ``split`` (default ``TEST.SPLIT``), print the result block, log it; returns the accuracy."""
        self.set_model_mode("eval")
        self.evaluator.reset()
        split, data_loader = self.eval_loader(split)
        print(f"Evaluate on the *{split}* set")

        eval_start = time.time()
        for batch in tqdm(data_loader, desc=f"Evaluate ({split})", leave=False, disable=not is_main_process()):
            input, label = self.parse_batch_test(batch)
            output = self.model_inference(input)
            if hasattr(self.evaluator, "set_impaths") and "impath" in batch:
                self.evaluator.set_impaths(batch["impath"])
            self.evaluator.process(output, label)
        self._eval_seconds = time.time() - eval_start

        results = self.evaluator.evaluate()
        for k, v in results.items():
            self.write_scalar(f"{split}/{k}", v, self.epoch)
        self.record_result(split, results)
        return list(results.values())[0]

    def record_result(self, split: str, results: Dict[str, float]) -> None:
        """Append ``result_record(split, results)`` to ``<OUTPUT_DIR>/results.json`` (rank 0 only)."""
        if not is_main_process():
            return
        record = self.result_record(split, results)
        eval_dir, files = self.write_evaluation_files(split, record)
        if files:
            record["files"] = {key: osp.relpath(path, self.cfg.OUTPUT_DIR) for key, path in files.items()}
        if not append_result(osp.join(self.cfg.OUTPUT_DIR, "results.json"), record) and eval_dir is not None:
            shutil.rmtree(eval_dir)  # an equal record is there already (with its own files)

    def write_evaluation_files(self, split: str, record: Dict[str, Any]) -> Tuple[Optional[str], Dict[str, str]]:
        """Write the files TEST.SAVE_PREDICTIONS / PER_CLASS_RESULT / COMPUTE_CMAT / RELIABILITY_DIAGRAM ask for into
        a new folder (``dassl.evaluation.outputs``); returns ``(folder, {kind: path})`` (``(None, {})``: nothing
        asked for, or an evaluator without the per-sample record)."""
        test = self.cfg.TEST
        save = test.get("SAVE_PREDICTIONS", False)
        asked = dict(predictions=save, per_class=save or test.PER_CLASS_RESULT, cmat=save or test.COMPUTE_CMAT,
                     diagram=test.get("RELIABILITY_DIAGRAM", False))
        if not any(asked.values()) or not hasattr(self.evaluator, "_topk"):
            return None, {}
        directory = new_evaluation_dir(self.cfg.OUTPUT_DIR, split, record["stage"], record["epoch"])
        title = f"{record['trainer']} {record['dataset']} {split} ({record['stage']}, epoch {record['epoch']})"
        return directory, write_evaluation_files(self.evaluator, directory, self.lab2cname, title=title, **asked)

    def cost_record(self) -> Dict[str, Any]:
        """The ``cost`` entry of a results record (README "Metrics, calibration and cost" defines each field)."""
        models = list(self._models.values())
        first = next((p for m in models for p in m.parameters()), None)
        node = self.cfg.TRAINER.get(self.cfg_node or self.cfg.TRAINER.NAME.upper())
        precision = node.get("PREC") if node is not None and "PREC" in node else None
        if precision is None and first is not None:
            precision = str(first.dtype).replace("torch.", "")
        eval_seconds = getattr(self, "_eval_seconds", None)
        n = getattr(self.evaluator, "_total", None)
        memory, memory_kind = peak_memory(self.device)
        return {
            "trainable_params": trainable_parameters(models),
            "train_time_s": self._train_seconds,
            "train_step_flops": self._train_step_flops,
            "flop_count_step_s": self._flop_count_seconds,
            "eval_time_s": eval_seconds,
            "eval_images_per_s": n / eval_seconds if n and eval_seconds else None,
            "peak_memory_bytes": memory,
            "peak_memory_kind": memory_kind,
            "device": device_name(self.device),
            "precision": precision,
            "world_size": get_world_size(),
        }

    def result_record(self, split: str, results: Dict[str, float]) -> Dict[str, Any]:
        """The results.json record of this evaluation (the one place records are built; extend it here).

        What was evaluated: ``checkpoint`` (absolute path; None: the model in memory), ``weights_sha256`` (of the
        weights loaded from it, see ``weights_sha256``),
        ``epoch`` (epochs trained), ``model_identity`` (the identity of the run that trained it; None for a
        checkpoint without one) and ``model_identity_changes``. How: ``split``, ``stage`` ("epoch", "final" or
        "eval"), ``dataset``, ``subsample``, ``shots``, ``seed``, ``trainer``, ``backbone`` and the whole ``config``
        of this run.
        """
        cfg = self.cfg
        if self._model_checkpoint is not None:
            identity, changes = self._model_identity, self._model_identity_changes
        else:
            identity, changes = self.run_identity(), self._identity_changes
        record = {
            "split": split,
            "stage": self._stage,
            "epoch": self._model_epoch,
            "dataset": cfg.DATASET.NAME,
            "subsample": cfg.DATASET.get("SUBSAMPLE_CLASSES", "all"),
            "shots": cfg.DATASET.NUM_SHOTS,
            "seed": cfg.SEED,
            "trainer": cfg.TRAINER.NAME,
            "backbone": cfg.MODEL.BACKBONE.NAME,
            "accuracy": results.get("accuracy"),
            "error": results.get("error_rate"),
            "macro_f1": results.get("macro_f1"),
            "n": getattr(self.evaluator, "_total", None),
            "correct": getattr(self.evaluator, "_correct", None),
            "checkpoint": self._model_checkpoint,
            "weights_sha256": self._weights_sha256 if self._model_checkpoint is not None else None,
            "model_identity": identity,
            "model_identity_changes": changes,
            "config": cfg_to_dict(cfg),
        }
        # Probability metrics and the reliability bins (dassl.evaluation.metrics), then the cost of the model.
        record.update(getattr(self.evaluator, "extra_metrics", None) or {})
        if getattr(self.evaluator, "reliability", None):
            record["reliability"] = self.evaluator.reliability
        record["cost"] = self.cost_record()
        return record

    def model_inference(self, input: torch.Tensor) -> torch.Tensor:
        return self.model(input)

    def parse_batch_test(self, batch: Dict[str, Any]) -> Tuple[torch.Tensor, torch.Tensor]:
        input = batch["img"].to(self.device)
        label = batch["label"].to(self.device)
        return input, label

    def get_current_lr(self, names: Names = None) -> float:
        """lr of the first parameter group of the first (or first named) model's optimizer."""
        name = self.get_model_names(names)[0]
        return self._optims[name].param_groups[0]["lr"]


class TrainerX(SimpleTrainer):
    """A trainer with labelled data only: one epoch = one pass over ``train_loader_x``."""

    def run_epoch(self) -> None:
        """Call ``forward_backward`` per batch, print the Dassl progress line, log ``train/*`` scalars."""
        self.set_model_mode("train")
        losses = MetricMeter()
        batch_time = AverageMeter()
        data_time = AverageMeter()
        self.num_batches = len(self.train_loader_x)
        if hasattr(self.train_loader_x.sampler, "set_epoch"):  # the data order of this epoch (resume-safe)
            self.train_loader_x.sampler.set_epoch(self.epoch)
        print_freq = self.cfg.TRAIN.PRINT_FREQ
        show_bar = self.cfg.TRAIN.PROGRESS_BAR and is_main_process()
        batches = tqdm(
            self.train_loader_x, desc=f"epoch {self.epoch + 1}/{self.max_epoch}", leave=False, disable=not show_bar
        )

        end = time.time()
        for self.batch_idx, batch in enumerate(batches):
            data_time.update(time.time() - end)
            if self._train_step_flops is None and self.cfg.TRAIN.get("COUNT_FLOPS", False):
                loss_summary, self._train_step_flops, self._flop_count_seconds = count_flops(
                    lambda: self.forward_backward(batch))
            else:
                loss_summary = self.forward_backward(batch)
            batch_time.update(time.time() - end)
            losses.update(self.mean_over_processes(loss_summary))

            meet_freq = (self.batch_idx + 1) % print_freq == 0
            only_few_batches = self.num_batches < print_freq
            if meet_freq or only_few_batches:
                nb_remain = self.num_batches - self.batch_idx - 1
                nb_remain += (self.max_epoch - self.epoch - 1) * self.num_batches
                eta = str(datetime.timedelta(seconds=int(batch_time.avg * nb_remain)))
                info = [
                    f"epoch [{self.epoch + 1}/{self.max_epoch}]",
                    f"batch [{self.batch_idx + 1}/{self.num_batches}]",
                    f"time {batch_time.val:.3f} ({batch_time.avg:.3f})",
                    f"data {data_time.val:.3f} ({data_time.avg:.3f})",
                    f"{losses}",
                    f"lr {self.get_current_lr():.4e}",
                    f"eta {eta}",
                ]
                # tqdm.write keeps the bar intact; it prints to sys.stdout (the log tee) either way.
                tqdm.write(" ".join(info))

            n_iter = self.epoch * self.num_batches + self.batch_idx
            for name, meter in losses.meters.items():
                self.write_scalar("train/" + name, meter.avg, n_iter)
            self.write_scalar("train/lr", self.get_current_lr(), n_iter)

            end = time.time()

    @staticmethod
    def mean_over_processes(loss_summary: Dict[str, Any]) -> Dict[str, Any]:
        """Under torchrun: each value averaged over the processes (so the log shows the global batch's loss)."""
        if not is_distributed() or not loss_summary:
            return loss_summary
        keys = list(loss_summary)
        values = [float(v.detach()) if torch.is_tensor(v) else float(v) for v in loss_summary.values()]
        return dict(zip(keys, all_reduce_mean(values)))

    def parse_batch_train(self, batch: Dict[str, Any]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        input = batch["img"].to(self.device)
        label = batch["label"].to(self.device)
        domain = batch["domain"].to(self.device)
        return input, label, domain
