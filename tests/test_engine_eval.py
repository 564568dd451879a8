"""Evaluator, metrics, meters, registries, checkpoint files and the results.json writer."""
import json
import os

import numpy as np
import pytest
import torch

from dassl.config import get_cfg_default
from dassl.engine.results import append_result
from dassl.evaluation import Classification, build_evaluator
from dassl.metrics import compute_accuracy
from dassl.utils import (
    AverageMeter,
    MetricMeter,
    Registry,
    UserError,
    check_availability,
    load_checkpoint,
    save_checkpoint,
    setup_logger,
)

# 10 samples, 3 classes. Confusion (rows true 0..2, cols pred 0..2): [[2, 1, 0], [0, 3, 1], [1, 0, 2]].
Y_TRUE = [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
Y_PRED = [0, 0, 1, 1, 1, 1, 2, 0, 2, 2]
# F1 per class = 2TP / (2TP + FP + FN): class 0: 4/6, class 1: 6/8, class 2: 4/6.
MACRO_F1 = 100 * (4 / 6 + 6 / 8 + 4 / 6) / 3


def logits_for(pred, n_cls=3):
    out = torch.zeros(len(pred), n_cls)
    out[torch.arange(len(pred)), torch.tensor(pred)] = 1.0
    return out


def test_compute_accuracy_topk():
    output = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    target = torch.tensor([1, 1, 0, 2])
    top1, top2 = compute_accuracy(output, target, topk=(1, 2))
    assert top1.item() == pytest.approx(25.0) and top2.item() == pytest.approx(50.0)
    assert compute_accuracy((output, None), target)[0].item() == pytest.approx(25.0)


def test_classification_result_block_and_options(tmp_path, capsys):
    cfg = get_cfg_default()
    cfg.OUTPUT_DIR = str(tmp_path)
    cfg.TEST.PER_CLASS_RESULT = True
    cfg.TEST.COMPUTE_CMAT = True
    evaluator = build_evaluator(cfg, lab2cname={0: "cat", 1: "dog", 2: "fox"})
    assert isinstance(evaluator, Classification)
    evaluator.reset()
    evaluator.process(logits_for(Y_PRED[:4]), torch.tensor(Y_TRUE[:4]))  # two batches
    evaluator.process(logits_for(Y_PRED[4:]), torch.tensor(Y_TRUE[4:]))
    results = evaluator.evaluate()
    assert list(results) == ["accuracy", "error_rate", "macro_f1", "perclass_accuracy"]
    assert results["accuracy"] == pytest.approx(70.0) and results["error_rate"] == pytest.approx(30.0)
    assert results["macro_f1"] == pytest.approx(MACRO_F1)
    assert results["perclass_accuracy"] == pytest.approx(100 * (2 / 3 + 3 / 4 + 2 / 3) / 3)
    assert (evaluator._correct, evaluator._total) == (7, 10)

    out = capsys.readouterr().out
    assert ("=> result\n* total: 10\n* correct: 7\n* accuracy: 70.00%\n* error: 30.00%\n"
            f"* macro_f1: {MACRO_F1:.2f}%\n") in out
    assert "* class: 1 (dog)\ttotal: 4\tcorrect: 3\tacc: 75.00%" in out
    cmat = torch.load(tmp_path / "cmat.pt", weights_only=True)
    expected = torch.tensor([[2, 1, 0], [0, 3, 1], [1, 0, 2]], dtype=torch.float64)
    assert torch.allclose(cmat, expected / expected.sum(1, keepdim=True))

    evaluator.reset()
    evaluator.process(logits_for([0]), torch.tensor([0]))
    assert evaluator.evaluate()["accuracy"] == 100.0
    assert "* total: 1\n" in capsys.readouterr().out


def test_thousands_separators(capsys):
    evaluator = build_evaluator(get_cfg_default())
    evaluator.process(logits_for([0] * 1234), torch.zeros(1234, dtype=torch.long))
    evaluator.evaluate()
    assert "* total: 1,234\n* correct: 1,234\n* accuracy: 100.00%" in capsys.readouterr().out


def test_meters():
    meter = AverageMeter()
    for v in (1.0, torch.tensor(2.0), 6.0):
        meter.update(v)
    assert (meter.val, meter.avg, meter.sum, meter.count) == (6.0, 3.0, 9.0, 3)
    losses = MetricMeter()
    losses.update({"loss": 0.5, "acc": torch.tensor(80.0)})
    losses.update({"loss": 1.5, "acc": 90.0})
    assert str(losses) == "loss 1.5000 (1.0000) acc 90.0000 (85.0000)"
    with pytest.raises(TypeError):
        losses.update([1.0])


def test_registry_errors_name_the_closest_match():
    registry = Registry("TRAINER")

    @registry.register()
    class HiCroPL:
        pass

    registry.register(type("ZeroshotCLIP", (), {}))
    assert registry.get("HiCroPL") is HiCroPL and registry.registered_names() == ["HiCroPL", "ZeroshotCLIP"]
    with pytest.raises(KeyError, match="already registered"):
        registry.register(type("HiCroPL", (), {}))
    with pytest.raises(UserError) as info:
        registry.get("HiCroPl")
    assert str(info.value) == "unknown trainer 'HiCroPl'; available: HiCroPL, ZeroshotCLIP. Did you mean 'HiCroPL'?"
    assert isinstance(info.value, KeyError)  # Dassl's contract for Registry.get
    with pytest.raises(ValueError, match="Did you mean 'OxfordPets'"):
        check_availability("OxfordPet", ["OxfordPets", "Food101"])


def test_checkpoints_are_atomic_weights_only_files(tmp_path, capsys):
    state = {"state_dict": {"module.w": torch.ones(2)}, "epoch": 3, "optimizer": None, "scheduler": None,
             "val_result": 81.5}
    save_checkpoint(state, str(tmp_path / "m"), is_best=True)
    assert sorted(os.listdir(tmp_path / "m")) == ["checkpoint", "model-best.pth.tar", "model.pth.tar-3"]
    assert (tmp_path / "m" / "checkpoint").read_text() == "model.pth.tar-3\n"
    loaded = torch.load(tmp_path / "m" / "model-best.pth.tar", weights_only=True)
    assert list(loaded["state_dict"]) == ["w"] and loaded["val_result"] == 81.5  # "module." stripped
    assert load_checkpoint(str(tmp_path / "m" / "model.pth.tar-3"))["epoch"] == 3
    with pytest.raises(FileNotFoundError):
        load_checkpoint(str(tmp_path / "missing"))
    out = capsys.readouterr().out
    assert f"Checkpoint saved to {tmp_path / 'm' / 'model.pth.tar-3'}" in out
    assert f'Best checkpoint saved to "{tmp_path / "m" / "model-best.pth.tar"}"' in out


def test_results_json_is_append_only(tmp_path):
    path = str(tmp_path / "results.json")
    append_result(path, {"split": "val", "epoch": 1, "checkpoint": None, "accuracy": 50.0})
    append_result(path, {"split": "test", "epoch": 1, "checkpoint": "/m/model-best.pth.tar", "accuracy": 60.0})
    append_result(path, {"split": "val", "epoch": 1, "checkpoint": None, "accuracy": 55.0})  # same key: kept both
    append_result(path, {"split": "val", "epoch": 1, "checkpoint": None, "accuracy": 50.0})  # equal record: once
    with open(path) as f:
        data = json.load(f)
    assert data["schema"] == 2
    assert [(r["split"], r["accuracy"]) for r in data["evaluations"]] == [("val", 50.0), ("test", 60.0), ("val", 55.0)]
    assert [p for p in os.listdir(tmp_path) if p != "results.json"] == []  # no temp or lock files left behind

    with open(path, "w") as f:
        f.write("{not json")
    with pytest.warns(UserWarning, match="moved it to"):
        append_result(path, {"split": "test", "epoch": None, "checkpoint": None, "accuracy": 1.0})
    assert len([p for p in os.listdir(tmp_path) if p.startswith("results.json.corrupt-")]) == 1


def test_setup_logger_tees_stdout_and_never_overwrites(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdout", __import__("sys").stdout)  # restored after the test
    setup_logger(str(tmp_path))
    print("first run")
    setup_logger(str(tmp_path))
    print("second run")
    logs = sorted(os.listdir(tmp_path))
    assert logs[0] == "log.txt" and logs[1].startswith("log.txt-") and len(logs) == 2
    assert (tmp_path / "log.txt").read_text() == "first run\n"
    assert (tmp_path / logs[1]).read_text() == "second run\n"
    assert "first run\nsecond run\n" in capsys.readouterr().out


def test_macro_f1_ignores_labels_absent_from_y_true():
    from dassl.evaluation import macro_f1_score

    # Label 3 is predicted but never true: it is not averaged (sklearn's labels=np.unique(y_true)).
    y_true, y_pred = np.array([0, 0, 1, 1]), np.array([0, 3, 1, 1])
    assert macro_f1_score(y_true, y_pred) == pytest.approx((2 / 3 + 1.0) / 2)
