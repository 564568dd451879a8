"""``results.json``: one machine-readable record per evaluation, beside ``log.txt``.

Format: ``{"schema": 1, "evaluations": [record, ...]}``; a record holds split, epoch, dataset,
subsample, shots, seed, trainer, backbone, accuracy, error, macro_f1, n, correct, checkpoint and the
full config. A new record with the same (split, epoch, checkpoint) as an existing one replaces it and
goes to the end, so reruns and resumes are idempotent and the last record is always the latest
evaluation (consumers take the last ``split == "test"`` record as the final result).
"""
import json
import os
import os.path as osp
import time
import warnings
from typing import Any, Dict

from dassl.utils import write_json

__all__ = ["RESULTS_SCHEMA", "append_result"]

RESULTS_SCHEMA = 1


def _record_key(record: Dict[str, Any]) -> tuple:
    return record.get("split"), record.get("epoch"), record.get("checkpoint")


def append_result(fpath: str, record: Dict[str, Any]) -> None:
    """Add ``record`` to the results file at ``fpath`` (created if missing), atomically.

    An unreadable existing file is moved aside to ``<fpath>.corrupt-<time>`` (with a warning) rather than
    failing at the end of a training run.
    """
    data = {"schema": RESULTS_SCHEMA, "evaluations": []}
    if osp.exists(fpath):
        try:
            with open(fpath, "r") as f:
                data = json.load(f)
            if not isinstance(data, dict) or not isinstance(data.get("evaluations"), list):
                raise ValueError("not a results file")
        except ValueError as e:
            aside = f"{fpath}.corrupt-{time.strftime('%Y-%m-%d-%H-%M-%S')}"
            os.replace(fpath, aside)
            warnings.warn(f"{fpath} could not be read ({e}); moved it to {aside} and started a new one")
            data = {"schema": RESULTS_SCHEMA, "evaluations": []}
    key = _record_key(record)
    evaluations = [r for r in data["evaluations"] if _record_key(r) != key]
    evaluations.append(record)
    write_json({"schema": RESULTS_SCHEMA, "evaluations": evaluations}, fpath)
