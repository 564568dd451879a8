"""Run identity: the config values that define what a training run learns.

A training run's identity is a flat ``{dotted config key: value}`` dict taken from the config:

- every key under a prefix of ``IDENTITY_PREFIXES`` (the data it learns from, the model, the optimiser and schedule,
  the seed, which model is kept) and the whole node of its trainer (``TRAINER.<NAME upper-cased>``, or the trainer
  class's ``cfg_node``), so methods added later are covered without listing their keys;
- minus ``IDENTITY_EXCLUDED`` (paths and evaluation-only keys) and the trainer class's ``identity_excluded_keys``
  (keys of its node that change how, not what, it computes, e.g. activation checkpointing);
- plus the trainer's ``load_keys`` (shape- or meaning-defining keys, e.g. the backbone or the prompt length).

Not part of it: paths (``OUTPUT_DIR``, ``RESUME``, ``DATASET.ROOT``), worker counts, printing and progress options,
checkpoint frequency, ``USE_CUDA``, evaluation settings other than ``TEST.FINAL_MODEL``.

Every checkpoint stores the identity of the run that wrote it (``identity``, plus ``identity_changes``: the changes
accepted on resume, see ``ACCEPT_CONFIG_CHANGE``), and so does ``<OUTPUT_DIR>/identity.json``. Resuming with another
identity stops with one line naming each differing key; loading a checkpoint whose ``load_keys`` differ from the
config stops with one line naming key, checkpoint value and config value.
"""
from typing import Any, Dict, Iterable, List, Mapping, Sequence

from yacs.config import CfgNode as CN

from dassl.config import cfg_to_dict

__all__ = ["IDENTITY_PREFIXES", "IDENTITY_EXCLUDED", "run_identity", "identity_diff", "format_diff"]

# Keys (exact) or prefixes (ending in ".") of a training run's identity.
IDENTITY_PREFIXES = (
    "SEED",
    "DATASET.",
    "INPUT.",
    "DATALOADER.TRAIN_X.",
    "DATALOADER.K_TRANSFORMS",
    "DATALOADER.RETURN_IMG0",
    "MODEL.",
    "OPTIM.",
    "TEST.FINAL_MODEL",
    "TRAINER.NAME",
)
# Keys (exact) or prefixes under IDENTITY_PREFIXES that are not part of the identity.
IDENTITY_EXCLUDED = ("DATASET.ROOT", "DATASET.TARGET_DOMAINS")


def _matches(key: str, patterns: Iterable[str]) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in patterns)


def _flatten(node: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    flat = {}
    for k, v in node.items():
        if isinstance(v, Mapping):
            flat.update(_flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def run_identity(cfg: CN, trainer_node: str, excluded: Sequence[str] = (), load_keys: Sequence[str] = ()) -> Dict[
        str, Any]:
    """The identity of a training run under ``cfg``: ``{dotted key: JSON value}`` in config order.

    ``trainer_node``: the trainer's config node name under ``TRAINER`` (its keys all belong to the identity unless
    ``excluded``); ``load_keys`` are always included.
    """
    flat = _flatten(cfg_to_dict(cfg))
    include = IDENTITY_PREFIXES + (f"TRAINER.{trainer_node}.",)
    return {
        key: value for key, value in flat.items()
        if key in load_keys
        or (_matches(key, include) and not _matches(key, IDENTITY_EXCLUDED) and not _matches(key, excluded))
    }


def identity_diff(old: Mapping[str, Any], new: Mapping[str, Any], keys: Iterable[str]) -> Dict[str, List[Any]]:
    """``{key: [old value, new value]}`` for the ``keys`` present in both identities whose values differ.

    A key missing on one side (a checkpoint written before that key existed) is not compared.
    """
    return {key: [old[key], new[key]] for key in keys if key in old and key in new and old[key] != new[key]}


def format_diff(diff: Mapping[str, Sequence[Any]]) -> str:
    """``KEY old -> new, KEY old -> new`` (values in repr form, so strings show their quotes)."""
    return ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in diff.items())
