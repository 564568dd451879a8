"""Each metric of dassl.evaluation.metrics against a hand computation on tiny inputs."""
import math

import numpy as np
import pytest
import torch
from yacs.config import CfgNode as CN

from dassl.evaluation import Classification
from dassl.evaluation import metrics as M


def test_topk_accuracy_and_ties_rank_the_lower_class_first():
    scores = np.array([[0.1, 0.5, 0.5, 0.0, 0.2, 0.3],   # tie between 1 and 2: 1 ranks first
                       [9.0, 1.0, 2.0, 3.0, 4.0, 5.0]])
    ranked = M.ranked_classes(scores, 5)
    assert ranked.tolist() == [[1, 2, 5, 4, 0], [0, 5, 4, 3, 2]]
    # sample 0: label 3 is ranked 6th -> miss; sample 1: label 2 is 5th -> hit
    assert M.topk_accuracy(ranked, np.array([3, 2]), 5) == 50.0
    assert M.topk_accuracy(ranked, np.array([1, 0]), 1) == 100.0
    with pytest.raises(ValueError):
        M.topk_accuracy(ranked[:, :3], np.array([3, 2]), 5)


def test_mean_per_class_recall_is_balanced_accuracy():
    labels = np.array([0, 0, 0, 0, 1, 2, 2])
    preds = np.array([0, 0, 0, 1, 1, 0, 2])
    # class 0: 3/4, class 1: 1/1, class 2: 1/2 -> mean 0.75; plain accuracy is 5/7
    assert M.per_class_recall(labels, preds) == {0: 75.0, 1: 100.0, 2: 50.0}
    assert M.mean_per_class_recall(labels, preds) == pytest.approx(75.0)


def test_nll_by_hand():
    logits = np.array([[2.0, 0.0], [0.0, 1.0]])
    log_p = M.log_softmax(logits)
    expected = -(math.log(math.exp(2) / (math.exp(2) + 1)) + math.log(1 / (1 + math.e))) / 2
    assert M.negative_log_likelihood(log_p[[0, 1], [0, 0]]) == pytest.approx(expected)
    # a large shift does not overflow
    assert np.allclose(M.log_softmax(logits + 1e4), log_p)


def test_perfectly_calibrated_set_has_zero_ece():
    # 10 samples at confidence 0.8 with 8 correct, 5 at 0.4 with 2 correct
    conf = np.array([0.8] * 10 + [0.4] * 5)
    correct = np.array([1] * 8 + [0] * 2 + [1] * 2 + [0] * 3)
    assert M.expected_calibration_error(conf, correct) == pytest.approx(0.0, abs=1e-9)
    assert M.maximum_calibration_error(conf, correct) == pytest.approx(0.0, abs=1e-9)


def test_over_confident_set_known_ece_mce_and_empty_bins():
    # bin (0.93, 1.0]: 4 samples at 0.99, 2 correct -> gap 0.49; bin (0.6, 0.6667]: 4 at 0.65, 3 correct -> gap 0.10
    # every other bin is empty and adds nothing
    conf = np.array([0.99] * 4 + [0.65] * 4)
    correct = np.array([1, 1, 0, 0, 1, 1, 1, 0])
    assert M.expected_calibration_error(conf, correct) == pytest.approx(100 * (0.5 * 0.49 + 0.5 * 0.10))
    assert M.maximum_calibration_error(conf, correct) == pytest.approx(49.0)
    bins = M.equal_width_bins(conf)
    assert [len(b) for b in bins].count(0) == 13


def test_bin_edges_are_right_closed():
    # 1/15 lies on the edge: it belongs to the first bin; 0 also goes to the first bin; 1.0 to the last
    edges = M.equal_width_bins(np.array([0.0, 1 / 15, 1 / 15 + 1e-9, 1.0]))
    assert edges[0].tolist() == [0, 1] and edges[1].tolist() == [2] and edges[14].tolist() == [3]


def test_adaptive_ece_uses_equal_mass_bins():
    conf = np.array([0.9, 0.2, 0.6, 0.95, 0.3, 0.7])
    correct = np.array([1, 0, 1, 0, 1, 1])
    # 3 bins of 2 by sorted confidence: {0.2, 0.3}: acc .5 conf .25; {0.6, 0.7}: acc 1 conf .65; {0.9, 0.95}: .5 .925
    expected = 100 * (abs(0.5 - 0.25) + abs(1 - 0.65) + abs(0.5 - 0.925)) / 3
    assert M.adaptive_calibration_error(conf, correct, n_bins=3) == pytest.approx(expected)
    # fewer samples than bins: one sample per bin
    assert len(M.equal_mass_bins(conf, 15)) == 6


def _evaluator(tmp_path):
    cfg = CN()
    cfg.OUTPUT_DIR = str(tmp_path)
    cfg.TEST = CN()
    cfg.TEST.PER_CLASS_RESULT = False
    cfg.TEST.COMPUTE_CMAT = False
    return Classification(cfg)


def test_evaluator_records_every_metric_and_skips_top5_below_five_classes(tmp_path, capsys):
    torch.manual_seed(0)
    logits = torch.randn(40, 7)
    labels = torch.randint(0, 7, (40,))
    ev = _evaluator(tmp_path)
    ev.process(logits[:25], labels[:25])
    ev.process(logits[25:], labels[25:])
    res = dict(ev.evaluate(), **ev.extra_metrics)
    p = torch.softmax(logits.double(), 1).numpy()
    y = labels.numpy()
    conf, pred = p.max(1), p.argmax(1)
    assert res["accuracy"] == pytest.approx(100 * np.mean(pred == y))
    assert res["acc5"] == pytest.approx(100 * np.mean([y[i] in np.argsort(-p[i])[:5] for i in range(40)]))
    assert res["nll"] == pytest.approx(-np.mean(np.log(p[np.arange(40), y])), rel=1e-5)
    ece = sum(abs((pred == y)[m].mean() - conf[m].mean()) * m.sum() / 40
              for m in [(conf > b / 15) & (conf <= (b + 1) / 15) for b in range(15)] if m.any())
    assert res["ece"] == pytest.approx(100 * ece, rel=1e-5)
    assert "=> calibration: acc5 " in capsys.readouterr().out

    ev = _evaluator(tmp_path)
    ev.process(torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2]))
    ev.evaluate()
    assert "acc5" not in ev.extra_metrics and "ece" in ev.extra_metrics
