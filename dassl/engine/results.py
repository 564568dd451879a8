"""``results.json``: one machine-readable record per evaluation, beside ``log.txt``. Append-only.

Format: ``{"schema": 2, "evaluations": [record, ...]}``; ``SimpleTrainer.result_record`` builds the records (what
was evaluated: ``checkpoint``, ``weights_sha256``, ``epoch``, ``model_identity``, ``model_identity_changes``;
how: ``split``, ``stage``, ``dataset``, ``subsample``, ``shots``, ``seed``, ``config``; the numbers: ``accuracy``,
``error``, ``macro_f1``, ``n``, ``correct``, the probability metrics and ``reliability`` bins; ``cost`` and, when
files were written, ``files``). Records are never removed or rewritten: a new one goes to the end,
except that a record equal to one already there is not added twice (a resumed run that redoes an epoch, or a rerun
of a finished run, re-creates identical records). Schema-1 files (written before records were append-only) are
read and extended as they are.
"""
import json
import os
import os.path as osp
import time
import warnings
from typing import Any, Dict

from dassl.utils import locked_directory, write_json

__all__ = ["RESULTS_SCHEMA", "VOLATILE_FIELDS", "append_result"]

RESULTS_SCHEMA = 2
# Record entries that differ between two runs of the same evaluation (wall times, memory, file names): the
# equality test that keeps a redone evaluation from being added twice ignores them.
VOLATILE_FIELDS = ("cost", "files")


def _stable(record: Any) -> Any:
    """``record`` without its ``VOLATILE_FIELDS`` (records are compared on this)."""
    if not isinstance(record, dict):
        return record
    return {key: value for key, value in record.items() if key not in VOLATILE_FIELDS}


def append_result(fpath: str, record: Dict[str, Any]) -> bool:
    """Add ``record`` to the results file at ``fpath`` (created if missing) unless an equal record is there
    (equal apart from ``VOLATILE_FIELDS``); returns whether it was added.

    The read-modify-write runs under an exclusive lock on the file's folder and ends with an atomic rename, so
    concurrent writers never lose each other's records and readers never see a half-written file. An unreadable
    existing file is moved aside to ``<fpath>.corrupt-<time>`` (with a warning), never overwritten.
    """
    dirname = osp.dirname(osp.abspath(fpath))
    os.makedirs(dirname, exist_ok=True)
    # A JSON round trip makes tuples lists, so that the equality test compares what the file holds.
    record = json.loads(json.dumps(record))
    with locked_directory(dirname):
        evaluations = []
        if osp.exists(fpath):
            try:
                with open(fpath, "r") as f:
                    data = json.load(f)
                if not isinstance(data, dict) or not isinstance(data.get("evaluations"), list):
                    raise ValueError("not a results file")
                evaluations = data["evaluations"]
            except ValueError as e:
                aside = f"{fpath}.corrupt-{time.strftime('%Y-%m-%d-%H-%M-%S')}"
                os.replace(fpath, aside)
                warnings.warn(f"{fpath} could not be read ({e}); moved it to {aside} and started a new one")
        if _stable(record) in [_stable(r) for r in evaluations]:
            return False
        write_json({"schema": RESULTS_SCHEMA, "evaluations": evaluations + [record]}, fpath)
        return True
