"""Files of one evaluation beside results.json (``TEST.SAVE_PREDICTIONS``, ``TEST.PER_CLASS_RESULT``,
``TEST.COMPUTE_CMAT``, ``TEST.RELIABILITY_DIAGRAM``).

Each evaluation that writes files gets its own new folder ``<OUTPUT_DIR>/evaluations/<split>-<stage>-ep<E>-<time>``
(a suffix ``-2``, ``-3``, ... if that name exists), so no file of an earlier evaluation is ever overwritten; its
results.json record names the files (``files``, paths relative to the output dir). Every file is written to a
temporary name and renamed into place.

- ``predictions.csv``: one row per evaluated image: ``impath`` (empty when the engine did not pass the paths),
  ``label``, ``pred_1..pred_k`` (the k = min(5, C) most probable classes, most probable first) and
  ``prob_1..prob_k`` (their softmax probabilities, written with full float precision; ``prob_1`` is the confidence).
- ``per_class.csv``: ``label, classname, n, correct, recall`` (recall in percent) per class present in the split.
- ``confusion_matrix.csv``: header ``true\\pred`` then the labels; one row per label; entry = number of images of
  the row's true label predicted as the column's label (raw counts; Dassl's ``cmat.pt`` is row-normalised).
- ``reliability.png``: the reliability diagram (accuracy per equal-width confidence bin against the diagonal).
"""
import csv
import os
import os.path as osp
import time
from typing import Any, Dict, List, Optional

import numpy as np

from dassl.utils.tools import atomic_write_path

__all__ = ["new_evaluation_dir", "write_evaluation_files", "plot_reliability"]


def _write_csv(path: str, header: List[Any], rows: List[List[Any]]) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)

    atomic_write_path(path, write)


def new_evaluation_dir(output_dir: str, split: str, stage: str, epoch: Optional[int]) -> str:
    """Create and return a folder for one evaluation's files that no earlier evaluation used."""
    base = osp.join(output_dir, "evaluations",
                    f"{split}-{stage}-ep{epoch if epoch is not None else 0}-{time.strftime('%Y%m%d-%H%M%S')}")
    path, n = base, 1
    while True:
        try:
            os.makedirs(path)
            return path
        except FileExistsError:
            n += 1
            path = f"{base}-{n}"


def plot_reliability(ax: Any, reliability: Dict[str, Any], title: str) -> None:
    """Draw one reliability diagram (``metrics.reliability_bins`` dict) on a matplotlib axis: bars of accuracy per
    bin, the bins' mean confidence as dots, the diagonal of perfect calibration, and the ECE of these bins."""
    bins = reliability["bins"]
    width = 100.0 / bins
    centers = [width * (m + 0.5) for m in range(bins)]
    count, acc, conf = reliability["count"], reliability["accuracy"], reliability["confidence"]
    n = sum(count)
    filled = [m for m in range(bins) if count[m]]
    ece = sum(count[m] / n * abs(acc[m] - conf[m]) for m in filled) if n else 0.0
    ax.bar([centers[m] for m in filled], [acc[m] for m in filled], width=width, edgecolor="black", alpha=0.7,
           label="accuracy")
    ax.plot([centers[m] for m in filled], [conf[m] for m in filled], "r.", label="mean confidence")
    ax.plot([0, 100], [0, 100], "k--", linewidth=1)
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.set_xlabel("confidence (%)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{title}\nECE {ece:.2f}%, n={n}", fontsize="small")


def _write_reliability_png(path: str, reliability: Dict[str, Any], title: str) -> None:
    import matplotlib  # imported here: slow, and only needed when a diagram is asked for

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4))
    plot_reliability(ax, reliability, title)
    ax.legend(fontsize="small", loc="upper left")
    fig.tight_layout()
    atomic_write_path(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)


def write_evaluation_files(evaluator: Any, directory: str, lab2cname: Optional[Dict[int, str]], predictions: bool,
                           per_class: bool, cmat: bool, diagram: bool, title: str = "") -> Dict[str, str]:
    """Write the asked-for files of the evaluation ``evaluator`` (a ``Classification`` after ``evaluate()``) into
    ``directory``; returns ``{"predictions" | "per_class" | "confusion_matrix" | "reliability_diagram": path}``."""
    written = {}
    y_true, y_pred = np.asarray(evaluator._y_true), np.asarray(evaluator._y_pred)
    if predictions:
        k = len(evaluator._topk[0]) if evaluator._topk else 0
        impaths = evaluator._impaths if len(evaluator._impaths) == len(y_true) else [""] * len(y_true)
        rows = [[path, int(label), *top, *map(repr, prob)]
                for path, label, top, prob in zip(impaths, y_true, evaluator._topk, evaluator._topk_prob)]
        written["predictions"] = osp.join(directory, "predictions.csv")
        _write_csv(written["predictions"], ["impath", "label"] + [f"pred_{i + 1}" for i in range(k)]
                   + [f"prob_{i + 1}" for i in range(k)], rows)
    if per_class:
        rows = []
        for label in np.unique(y_true):
            mask = y_true == label
            correct = int((y_pred[mask] == label).sum())
            name = (lab2cname or {}).get(int(label), "")
            rows.append([int(label), name, int(mask.sum()), correct, repr(100.0 * correct / int(mask.sum()))])
        written["per_class"] = osp.join(directory, "per_class.csv")
        _write_csv(written["per_class"], ["label", "classname", "n", "correct", "recall"], rows)
    if cmat:
        labels = sorted(set(y_true.tolist()) | set(y_pred.tolist()))
        index = {label: i for i, label in enumerate(labels)}
        counts = np.zeros((len(labels), len(labels)), dtype=np.int64)
        for t, p in zip(y_true, y_pred):
            counts[index[t], index[p]] += 1
        written["confusion_matrix"] = osp.join(directory, "confusion_matrix.csv")
        _write_csv(written["confusion_matrix"], ["true\\pred", *labels],
                   [[label, *counts[i].tolist()] for i, label in enumerate(labels)])
    if diagram and evaluator.reliability:
        written["reliability_diagram"] = osp.join(directory, "reliability.png")
        _write_reliability_png(written["reliability_diagram"], evaluator.reliability, title)
    return written
