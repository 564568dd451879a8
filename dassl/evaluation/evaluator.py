"""The ``Classification`` evaluator: accuracy, error, macro-F1, top-5, per-class recall, NLL and calibration errors
(definitions in ``dassl.evaluation.metrics``), optional per-class accuracy and confusion matrix."""
import os.path as osp
from collections import OrderedDict, defaultdict
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from yacs.config import CfgNode as CN

from dassl.utils import all_gather_object, atomic_torch_save, get_world_size

from . import metrics
from .build import EVALUATOR_REGISTRY

__all__ = ["EvaluatorBase", "Classification", "macro_f1_score", "confusion_matrix"]


class EvaluatorBase:
    """Accumulates model outputs over an evaluation (``reset`` -> ``process`` per batch -> ``evaluate``)."""

    def __init__(self, cfg: CN) -> None:
        self.cfg = cfg

    def reset(self) -> None:
        raise NotImplementedError

    def process(self, mo: torch.Tensor, gt: torch.Tensor) -> None:
        raise NotImplementedError

    def evaluate(self) -> Dict[str, float]:
        raise NotImplementedError


def macro_f1_score(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean over the labels present in ``y_true`` of F1 = 2TP / (2TP + FP + FN) (in [0, 1]).

    Equals ``sklearn.metrics.f1_score(y_true, y_pred, average="macro", labels=np.unique(y_true))``
    (a class never predicted has F1 0).
    """
    scores = []
    for label in np.unique(y_true):
        tp = np.sum((y_pred == label) & (y_true == label))
        fp = np.sum((y_pred == label) & (y_true != label))
        fn = np.sum((y_pred != label) & (y_true == label))
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Row-normalised confusion matrix ``(n, n)`` over the sorted labels seen in either array.

    Entry ``[i, j]`` = fraction of samples of true label ``i`` predicted as ``j`` (sklearn's
    ``confusion_matrix(..., normalize="true")``; rows of absent true labels are 0).
    """
    labels = np.unique(np.concatenate([y_true, y_pred]))
    index = {label: i for i, label in enumerate(labels)}
    cmat = np.zeros((len(labels), len(labels)), dtype=np.float64)
    for t, p in zip(y_true, y_pred):
        cmat[index[t], index[p]] += 1
    row_sums = cmat.sum(axis=1, keepdims=True)
    return np.divide(cmat, row_sums, out=np.zeros_like(cmat), where=row_sums > 0)


@EVALUATOR_REGISTRY.register()
class Classification(EvaluatorBase):
    """Top-1 classification metrics over one evaluation.

    ``evaluate()`` prints the ``=> result`` block (accuracy/error/macro_f1 with 2 decimals, as the
    HiCroPL copy of Dassl does) and returns ``{"accuracy", "error_rate", "macro_f1"[, "perclass_accuracy"]}``
    in percent. ``_correct`` and ``_total`` hold the counts. Under torchrun each process processes its own
    part of the data and ``evaluate()`` first gathers every process's predictions, so all processes return the
    metrics of the whole split.
    """

    def __init__(self, cfg: CN, lab2cname: Optional[Dict[int, str]] = None, **kwargs) -> None:
        super().__init__(cfg)
        self._lab2cname = lab2cname
        self._correct = 0
        self._total = 0
        self._per_class_res: Optional[Dict[int, List[int]]] = None
        self._y_true: List[int] = []
        self._y_pred: List[int] = []
        self._reset_scores()
        if cfg.TEST.PER_CLASS_RESULT:
            assert lab2cname is not None, "TEST.PER_CLASS_RESULT needs the class names (lab2cname)"
            self._per_class_res = defaultdict(list)

    def reset(self) -> None:
        self._correct = 0
        self._total = 0
        self._y_true = []
        self._y_pred = []
        self._reset_scores()
        if self._per_class_res is not None:
            self._per_class_res = defaultdict(list)

    def _reset_scores(self) -> None:
        # Per sample, what the probability metrics need (not the whole (n, C) matrix): the ranked top-k classes and
        # their probabilities, and log p of the true label.
        self._num_classes = 0
        self._topk: List[List[int]] = []
        self._topk_prob: List[List[float]] = []
        self._log_prob_true: List[float] = []
        self._impaths: List[str] = []  # filled through set_impaths (our engine's hook; empty under real Dassl)
        self.extra_metrics: Dict[str, float] = {}  # set by evaluate(): dassl.evaluation.metrics.summary
        self.reliability: Dict[str, Any] = {}  # set by evaluate(): dassl.evaluation.metrics.reliability_bins

    def set_impaths(self, impaths: Sequence[str]) -> None:
        """Optional hook: the image paths of the batch that the next ``process`` call receives (in its order).

        This engine's ``test()`` calls it when the evaluator has it; real Dassl does not, and then the predictions
        file has no paths. Call it for every batch or for none.
        """
        self._impaths.extend(str(p) for p in impaths)

    def process(self, mo: torch.Tensor, gt: torch.Tensor) -> None:
        """``mo``: logits ``(B, num_classes)``; ``gt``: labels ``(B,)``."""
        log_prob = torch.log_softmax(mo.detach().float(), dim=1).cpu().numpy()
        labels = gt.detach().cpu().numpy()
        self._num_classes = log_prob.shape[1]
        topk = metrics.ranked_classes(log_prob, metrics.TOPK)
        self._topk.extend(topk.tolist())
        self._topk_prob.extend(np.exp(np.take_along_axis(log_prob, topk, axis=1)).tolist())
        self._log_prob_true.extend(log_prob[np.arange(len(labels)), labels].tolist())
        pred = mo.max(1)[1]
        matches = pred.eq(gt).int()
        self._correct += int(matches.sum().item())
        self._total += gt.shape[0]
        self._y_true.extend(gt.data.cpu().numpy().tolist())
        self._y_pred.extend(pred.data.cpu().numpy().tolist())
        if self._per_class_res is not None:
            for i, label in enumerate(gt):
                self._per_class_res[int(label.item())].append(int(matches[i].item()))

    def gather(self) -> None:
        """Replace this process's predictions by those of all processes (no-op for a single process)."""
        if get_world_size() == 1:
            return
        parts = all_gather_object(
            (self._y_true, self._y_pred, dict(self._per_class_res) if self._per_class_res is not None else None,
             self._topk, self._topk_prob, self._log_prob_true, self._num_classes, self._impaths)
        )
        self._y_true = [y for part in parts for y in part[0]]
        self._y_pred = [y for part in parts for y in part[1]]
        self._topk = [y for part in parts for y in part[3]]
        self._topk_prob = [y for part in parts for y in part[4]]
        self._log_prob_true = [y for part in parts for y in part[5]]
        self._num_classes = max(part[6] for part in parts)
        self._impaths = [p for part in parts for p in part[7]]
        self._total = len(self._y_true)
        self._correct = sum(int(t == p) for t, p in zip(self._y_true, self._y_pred))
        if self._per_class_res is not None:
            self._per_class_res = defaultdict(list)
            for part in parts:
                for label, matches in part[2].items():
                    self._per_class_res[label].extend(matches)

    def evaluate(self) -> Dict[str, float]:
        self.gather()
        results = OrderedDict()
        acc = 100.0 * self._correct / self._total
        err = 100.0 - acc
        y_true, y_pred = np.asarray(self._y_true), np.asarray(self._y_pred)
        macro_f1 = 100.0 * macro_f1_score(y_true, y_pred)

        results["accuracy"] = acc
        results["error_rate"] = err
        results["macro_f1"] = macro_f1

        print(
            "=> result\n"
            f"* total: {self._total:,}\n"
            f"* correct: {self._correct:,}\n"
            f"* accuracy: {acc:.2f}%\n"
            f"* error: {err:.2f}%\n"
            f"* macro_f1: {macro_f1:.2f}%"
        )
        # Beyond Dassl's dict (whose keys and order stay Dassl's): the probability metrics, read by the engine's
        # results record.
        self.extra_metrics = metrics.summary(y_true, np.asarray(self._topk), np.asarray(self._topk_prob),
                                             np.asarray(self._log_prob_true), self._num_classes)
        print("=> calibration: " + ", ".join(
            f"{k} {v:.4f}" if k == "nll" else f"{k} {v:.2f}%" for k, v in self.extra_metrics.items()))
        topk_prob = np.asarray(self._topk_prob, dtype=np.float64)
        self.reliability = metrics.reliability_bins(topk_prob[:, 0], np.asarray(self._topk)[:, 0] == y_true)

        if self._per_class_res is not None:
            print("=> per-class result")
            accs = []
            for label in sorted(self._per_class_res.keys()):
                res = self._per_class_res[label]
                correct, total = sum(res), len(res)
                class_acc = 100.0 * correct / total
                accs.append(class_acc)
                print(
                    f"* class: {label} ({self._lab2cname[label]})\t"
                    f"total: {total:,}\tcorrect: {correct:,}\tacc: {class_acc:.2f}%"
                )
            mean_acc = float(np.mean(accs))
            print(f"* average: {mean_acc:.2f}%")
            results["perclass_accuracy"] = mean_acc

        if self.cfg.TEST.COMPUTE_CMAT:
            cmat = torch.from_numpy(confusion_matrix(y_true, y_pred))
            save_path = osp.join(self.cfg.OUTPUT_DIR, "cmat.pt")
            atomic_torch_save(cmat, save_path)
            print(f"Confusion matrix is saved to {save_path}")

        return results
