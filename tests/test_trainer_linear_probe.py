"""Linear-probe CLIP (trainers/linear_probe.py): the published C search step by step on a synthetic accuracy
curve, the fit on a tiny feature set, and a ToyShapes few-shot run recorded in results.json like every run."""
import json
import math
import sys

import numpy as np
import pytest

from dassl.engine import build_trainer
from dassl.utils import load_checkpoint, set_random_seed
from train import build_parser, setup_cfg
from common.errors import UserError
from trainers.linear_probe import fit_linear_probe, logistic_regression, search_c


def test_c_search_follows_the_published_rule():
    # val accuracy peaked at C = 10 ** 0.3: coarse peak 1 -> [0.1, 10]; moves right only if acc(lo) < acc(hi)
    chosen, picked = search_c(lambda c: -abs(math.log10(c) - 0.3), num_step=4)
    expected = [10, 1, 10 ** 0.5, 10 ** 0.25]
    assert picked == pytest.approx(expected) and chosen == pytest.approx(10 ** 0.25)
    # ties: the coarse sweep keeps the first (largest) C, every round keeps the lower end
    chosen, picked = search_c(lambda c: 0.5, num_step=3)
    assert picked == pytest.approx([1e5, 1e5, 1e5]) and chosen == pytest.approx(1e5)


def test_missing_scikit_learn_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "sklearn.linear_model", None)
    with pytest.raises(UserError, match="needs scikit-learn: pip install scikit-learn"):
        logistic_regression(1.0)


def test_fit_on_a_tiny_feature_set_separates_the_classes():
    pytest.importorskip("sklearn")
    rng = np.random.default_rng(0)
    centres = 4 * rng.standard_normal((3, 8))

    def sample(n):
        labels = np.repeat(np.arange(3), n)
        return centres[labels] + rng.standard_normal((3 * n, 8)), labels

    classifier, c = fit_linear_probe(sample(4), sample(2), num_step=2)
    test_x, test_y = sample(20)
    assert (classifier.predict(test_x) == test_y).mean() == 1.0
    assert 1e-7 < c < 1e7


def test_toy_shapes_few_shot_run(tmp_path, monkeypatch):
    pytest.importorskip("sklearn")
    monkeypatch.setenv("HICROPL_CACHE_DIR", str(tmp_path / "cache"))
    argv = ["--root", str(tmp_path / "data"), "--seed", "1", "--trainer", "LinearProbeCLIP",
            "--config-file", "configs/trainers/LinearProbeCLIP/vit_b16.yaml",
            "--dataset-config-file", "configs/datasets/toy_shapes.yaml", "--output-dir", str(tmp_path / "out"),
            "USE_CUDA", "False", "MODEL.BACKBONE.NAME", "random:tiny", "INPUT.SIZE", "(32,32)",
            "DATALOADER.NUM_WORKERS", "0", "DATASET.NUM_SHOTS", "4", "TRAINER.LP.NUM_STEP", "2"]
    cfg = setup_cfg(build_parser().parse_args(argv))
    set_random_seed(1)
    trainer = build_trainer(cfg)
    trainer.train()
    record = json.loads((tmp_path / "out" / "results.json").read_text())["evaluations"][-1]
    assert record["split"] == "test" and record["trainer"] == "LinearProbeCLIP" and record["shots"] == 4
    assert record["accuracy"] > 30.0  # 10 classes: chance 10%; random features keep each class's colour
    assert record["checkpoint"].endswith("linear_probe/model.pth.tar-1") and record["epoch"] == 1
    checkpoint = load_checkpoint(str(tmp_path / "out" / "linear_probe" / "model.pth.tar-1"))
    assert set(checkpoint["state_dict"]) == {"weight", "bias"}
    assert len(list((tmp_path / "cache" / "linear_probe").glob("*.npz"))) == 2  # train and val features cached
