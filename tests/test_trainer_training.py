"""The registered HiCroPL trainer end to end on CPU with random:tiny CLIP (configs/trainers/HiCroPL/demo_tiny.yaml).

- ToyShapes base-to-novel in miniature: train on base (val per epoch, model-best), test base, load the checkpoint
  for the novel classes; checkpoints hold only the prompt learner; results.json records every evaluation.
- Learning: a short training on the ToyShapes base classes lifts base test accuracy far above chance (20%), in fp32
  and under bf16 autocast. The CLIP weights are random, so what is learnt is the colour that each ToyShapes class
  has on purpose (random features keep colour, not outlines); that is enough to show that the prompts are trained.
"""
import json

import pytest
import torch

from dassl.engine import build_trainer
from dassl.utils import load_checkpoint, set_random_seed
from train import build_parser, setup_cfg

CONFIG = "configs/trainers/HiCroPL/demo_tiny.yaml"
BASE_CLASSES = ["circle", "square", "triangle", "star", "hexagon"]  # ToyShapes labels 0-4


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


@pytest.fixture(autouse=True)
def cache_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("HICROPL_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "hicropl_cache"))


def make_trainer(data_root, output_dir, *opts):
    argv = ["--root", data_root, "--seed", "1", "--trainer", "HiCroPL", "--config-file", CONFIG,
            "--dataset-config-file", "configs/datasets/toy_shapes.yaml", "--output-dir", str(output_dir)]
    cfg = setup_cfg(build_parser().parse_args(argv + ["USE_CUDA", "False", *map(str, opts)]))
    set_random_seed(cfg.SEED)
    return build_trainer(cfg)


def final_test_record(output_dir):
    records = json.loads((output_dir / "results.json").read_text())["evaluations"]
    return [r for r in records if r["split"] == "test"][-1], records


def test_toy_shapes_base_to_novel_pipeline(data_root, tmp_path):
    train_dir = tmp_path / "train_base"
    trainer = make_trainer(data_root, train_dir, "DATASET.SUBSAMPLE_CLASSES", "base", "OPTIM.MAX_EPOCH", 3)
    trainer.train()
    record, records = final_test_record(train_dir)
    assert [r["split"] for r in records] == ["val", "val", "val", "test"]
    assert record["subsample"] == "base" and record["n"] == 5 * 12
    assert record["checkpoint"].endswith("VLPromptLearner/model-best.pth.tar")

    checkpoint = load_checkpoint(str(train_dir / "VLPromptLearner" / "model.pth.tar-3"))
    assert checkpoint["epoch"] == 3
    assert set(checkpoint["state_dict"]) == set(trainer.model.state_dict())
    assert all(key.startswith("prompt_learner.") for key in checkpoint["state_dict"])

    test_dir = tmp_path / "test_new"
    novel = make_trainer(data_root, test_dir, "DATASET.SUBSAMPLE_CLASSES", "new")
    novel.load_model(str(train_dir), epoch=3)
    for key, value in checkpoint["state_dict"].items():  # class-independent: loads into the novel-class model
        assert torch.equal(novel.model.state_dict()[key], value), key
    novel.test()
    record, _ = final_test_record(test_dir)
    assert record["subsample"] == "new" and record["epoch"] == 3 and record["n"] == 5 * 12


@pytest.mark.parametrize("prec", ["fp32", "bf16"])
def test_training_lifts_base_accuracy_far_above_chance(data_root, tmp_path, prec):
    # A user's own description file, one base class left to the fallback ("a photo of a <class>.").
    descriptions = tmp_path / "shapes.json"
    descriptions.write_text(json.dumps({name: [f"a {name}.", f"a drawing of a {name}."] for name in BASE_CLASSES[1:]}))
    # 30 epochs of 7 steps: base test accuracy 72-83% over seeds 1-4 in both precisions, a few seconds each.
    trainer = make_trainer(data_root, tmp_path, "DATASET.SUBSAMPLE_CLASSES", "base", "TRAINER.HICROPL.PREC", prec,
                           "OPTIM.MAX_EPOCH", 30, "OPTIM.LR", 0.005, "TEST.FINAL_MODEL", "last_step",
                           "TRAINER.HICROPL.DESCRIPTIONS", descriptions, "TRAINER.HICROPL.DESCRIPTIONS_FALLBACK", True)
    assert trainer.dm.dataset.classnames == BASE_CLASSES
    before = trainer.test()
    trainer.train()
    after, _ = final_test_record(tmp_path)
    assert after["subsample"] == "base" and after["n"] == 5 * 12
    assert before < 40.0 and after["accuracy"] >= 50.0, (before, after["accuracy"])  # chance: 20%
