"""Classification and calibration metrics of one evaluation, each defined once, here.

Every function takes plain arrays of one whole evaluation (``n`` samples, ``C`` classes) and returns a float.
Notation: ``p_i`` is the softmax of sample i's logits (the logits the method predicts with: HiCroPL's fused
logits, CoCoOp's per-image logits, ...), ``y_i`` its true label, ``ŷ_i = argmax_c p_ic`` (ties: the lowest class
index), ``conf_i = max_c p_ic`` its confidence and ``correct_i = [ŷ_i == y_i]``. Accuracy-like values and the
calibration errors are in percent, the NLL in nats.

Calibration bins (``M = 15`` by default, as in the calibration literature):

* equal width: bin ``m`` holds the samples with ``conf ∈ ((m-1)/M, m/M]`` (bin 1 also holds ``conf = 0``);
* equal mass ("adaptive"): the samples sorted by confidence, cut into ``M`` consecutive groups whose sizes differ
  by at most one (``numpy.array_split``; fewer than ``M`` samples give ``n`` one-sample bins).

For a bin ``B``: ``acc(B) = mean correct_i`` and ``conf(B) = mean conf_i`` over ``i ∈ B``. Empty bins add nothing.
"""
from typing import List, Sequence

import numpy as np

__all__ = [
    "DEFAULT_BINS",
    "TOPK",
    "summary",
    "ranked_classes",
    "topk_accuracy",
    "mean_per_class_recall",
    "per_class_recall",
    "negative_log_likelihood",
    "expected_calibration_error",
    "maximum_calibration_error",
    "adaptive_calibration_error",
    "equal_width_bins",
    "equal_mass_bins",
    "reliability_bins",
    "log_softmax",
]

DEFAULT_BINS = 15
TOPK = 5  # the top-k list kept per sample (top-5 accuracy, the predictions file)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """``log p``: row-wise log-softmax of ``logits (n, C)`` in float64 (shifted by the row max, so exact for large logits)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def ranked_classes(scores: np.ndarray, k: int) -> np.ndarray:
    """``(n, min(k, C))`` class indices by descending score; equal scores rank the lower class index first."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), axis=1, kind="stable")
    return order[:, :k]


def topk_accuracy(topk: np.ndarray, labels: np.ndarray, k: int) -> float:
    """``100 · mean_i [y_i ∈ first k of topk_i]`` — ``topk (n, >=k)`` ranked class indices, ``labels (n,)``.

    Callers record top-k only where there are at least ``k`` classes (with fewer it is trivially 100).
    """
    topk, labels = np.asarray(topk), np.asarray(labels)
    if topk.shape[1] < k:
        raise ValueError(f"top-{k} accuracy needs {k} ranked classes per sample, got {topk.shape[1]}")
    return float(100.0 * np.mean((topk[:, :k] == labels[:, None]).any(axis=1)))


def per_class_recall(labels: np.ndarray, preds: np.ndarray) -> dict:
    """``{c: 100 · |{i: y_i = c, ŷ_i = c}| / |{i: y_i = c}|}`` for every class ``c`` present in ``labels``."""
    labels, preds = np.asarray(labels), np.asarray(preds)
    return {int(c): float(100.0 * np.mean(preds[labels == c] == c)) for c in np.unique(labels)}


def mean_per_class_recall(labels: np.ndarray, preds: np.ndarray) -> float:
    """Balanced accuracy: the unweighted mean of :func:`per_class_recall` over the classes present in ``labels``
    (CLIP_benchmark's ``mean_per_class_recall``, in percent)."""
    return float(np.mean(list(per_class_recall(labels, preds).values())))


def negative_log_likelihood(log_prob_true: np.ndarray) -> float:
    """``NLL = -(1/n) Σ_i log p_{i,y_i}`` (nats) from ``log_prob_true (n,)`` = each sample's log-probability of its label."""
    return float(-np.mean(np.asarray(log_prob_true, dtype=np.float64)))


def equal_width_bins(confidence: np.ndarray, n_bins: int = DEFAULT_BINS) -> List[np.ndarray]:
    """Sample indices of each equal-width confidence bin (see the module docstring); empty bins are empty arrays."""
    confidence = np.asarray(confidence, dtype=np.float64)
    # bin m (0-based) holds conf in (m/M, (m+1)/M]; ceil(conf*M)-1 gives m, and conf = 0 goes to bin 0
    index = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    return [np.flatnonzero(index == m) for m in range(n_bins)]


def equal_mass_bins(confidence: np.ndarray, n_bins: int = DEFAULT_BINS) -> List[np.ndarray]:
    """Sample indices of each equal-mass bin: sorted by confidence (stable), cut by ``numpy.array_split``."""
    order = np.argsort(np.asarray(confidence, dtype=np.float64), kind="stable")
    return [part for part in np.array_split(order, min(n_bins, len(order))) if len(part)]


def _bin_gaps(confidence: np.ndarray, correct: np.ndarray, bins: Sequence[np.ndarray]) -> List[tuple]:
    """``(|B|, |acc(B) - conf(B)|)`` for each non-empty bin."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    return [(len(b), abs(correct[b].mean() - confidence[b].mean())) for b in bins if len(b)]


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = DEFAULT_BINS) -> float:
    """``ECE = 100 · Σ_B (|B|/n) · |acc(B) - conf(B)|`` over the equal-width bins."""
    n = len(confidence)
    return float(100.0 * sum(size / n * gap for size, gap in _bin_gaps(confidence, correct,
                                                                        equal_width_bins(confidence, n_bins))))


def maximum_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = DEFAULT_BINS) -> float:
    """``MCE = 100 · max_B |acc(B) - conf(B)|`` over the non-empty equal-width bins."""
    return float(100.0 * max(gap for _, gap in _bin_gaps(confidence, correct, equal_width_bins(confidence, n_bins))))


def adaptive_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = DEFAULT_BINS) -> float:
    """Adaptive ECE: ``100 · Σ_B (|B|/n) · |acc(B) - conf(B)|`` over the equal-mass bins."""
    n = len(confidence)
    return float(100.0 * sum(size / n * gap for size, gap in _bin_gaps(confidence, correct,
                                                                        equal_mass_bins(confidence, n_bins))))


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, n_bins: int = DEFAULT_BINS) -> dict:
    """The reliability diagram of one evaluation: per equal-width bin ``m`` (``m = 1..M``), ``count`` = ``|B_m|``,
    ``accuracy`` = ``100 · acc(B_m)`` and ``confidence`` = ``100 · conf(B_m)`` (None for empty bins).

    Pooling several evaluations: sum the counts and average accuracy and confidence weighted by the counts; ECE is
    ``Σ_m count_m / n · |accuracy_m - confidence_m|`` of the pooled bins.
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    bins = equal_width_bins(confidence, n_bins)
    return {
        "bins": n_bins,
        "count": [int(len(b)) for b in bins],
        "accuracy": [float(100.0 * correct[b].mean()) if len(b) else None for b in bins],
        "confidence": [float(100.0 * confidence[b].mean()) if len(b) else None for b in bins],
    }


def summary(labels: np.ndarray, topk: np.ndarray, topk_prob: np.ndarray, log_prob_true: np.ndarray,
            num_classes: int, n_bins: int = DEFAULT_BINS) -> dict:
    """Every metric of one evaluation from the compact per-sample record an evaluator keeps.

    ``labels (n,)``; ``topk (n, min(TOPK, C))`` ranked class indices and ``topk_prob`` their probabilities;
    ``log_prob_true (n,)``. Returns ``acc5`` (only when ``C >= 5``), ``mean_per_class_recall``, ``nll``, ``ece``,
    ``mce`` and ``aece``.
    """
    labels, topk, topk_prob = np.asarray(labels), np.asarray(topk), np.asarray(topk_prob, dtype=np.float64)
    confidence, preds = topk_prob[:, 0], topk[:, 0]
    correct = preds == labels
    out = {}
    if num_classes >= TOPK:
        out["acc5"] = topk_accuracy(topk, labels, TOPK)
    out["mean_per_class_recall"] = mean_per_class_recall(labels, preds)
    out["nll"] = negative_log_likelihood(log_prob_true)
    out["ece"] = expected_calibration_error(confidence, correct, n_bins)
    out["mce"] = maximum_calibration_error(confidence, correct, n_bins)
    out["aece"] = adaptive_calibration_error(confidence, correct, n_bins)
    return out
