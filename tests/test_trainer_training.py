"""The registered HiCroPL trainer end to end on CPU with random:tiny CLIP (configs/trainers/HiCroPL/demo_tiny.yaml).

- ToyShapes base-to-novel in miniature: train on base (val per epoch, model-best), test base, load the checkpoint
  for the novel classes; checkpoints hold only the prompt learner; results.json records every evaluation.
- Learning: with random CLIP weights ToyShapes is not learnable (a linear probe on random:tiny features is at
  chance), so accuracy is checked on a task whose class signal survives random features: colour-coded patches
  (fp32 and bf16 autocast), where the same trainer must go far above chance.
"""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from dassl.data.datasets import DATASET_REGISTRY, DatasetBase, Datum
from dassl.engine import build_trainer
from dassl.utils import load_checkpoint, set_random_seed
from train import build_parser, setup_cfg

CONFIG = "configs/trainers/HiCroPL/demo_tiny.yaml"
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 30),
           "purple": (150, 30, 200)}


@DATASET_REGISTRY.register(force=True)
class ColourPatches(DatasetBase):
    """5 classes of 32x32 noisy patches whose mean colour is the class (16 train / 4 val / 10 test per class)."""

    def __init__(self, cfg):
        root = os.path.join(cfg.DATASET.ROOT, "colour_patches")
        rng = np.random.default_rng(0)
        splits = {"train": [], "val": [], "test": []}
        for label, (name, colour) in enumerate(COLOURS.items()):
            for split, count in (("train", 16), ("val", 4), ("test", 10)):
                for i in range(count):
                    path = os.path.join(root, f"{name}_{split}_{i}.png")
                    if not os.path.exists(path):
                        os.makedirs(root, exist_ok=True)
                        pixels = np.clip(np.array(colour) * 0.6 + rng.uniform(0, 100, (32, 32, 3)), 0, 255)
                        Image.fromarray(pixels.astype(np.uint8)).save(path)
                    splits[split].append(Datum(impath=path, label=label, classname=name))
        super().__init__(train_x=splits["train"], val=splits["val"], test=splits["test"])


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


@pytest.fixture(autouse=True)
def cache_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("HICROPL_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "hicropl_cache"))


def make_trainer(data_root, output_dir, *opts, dataset="configs/datasets/toy_shapes.yaml", dataset_name=None):
    argv = ["--root", data_root, "--seed", "1", "--trainer", "HiCroPL", "--config-file", CONFIG,
            "--output-dir", str(output_dir)]
    argv += ["--dataset-config-file", dataset] if dataset_name is None else []
    argv += ["USE_CUDA", "False", *map(str, opts)] + ([] if dataset_name is None else ["DATASET.NAME", dataset_name])
    cfg = setup_cfg(build_parser().parse_args(argv))
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
def test_training_lifts_accuracy_far_above_chance(data_root, tmp_path, prec):
    descriptions = tmp_path / "colours.json"  # a user's own description file; one class left to the fallback
    descriptions.write_text(json.dumps({name: [f"a {name} patch.", f"noise on {name}."] for name in list(COLOURS)[1:]}))
    trainer = make_trainer(data_root, tmp_path, "TRAINER.HICROPL.PREC", prec, "TRAINER.HICROPL.DESCRIPTIONS",
                           descriptions, "TRAINER.HICROPL.DESCRIPTIONS_FALLBACK", True, "TEST.FINAL_MODEL", "last_step",
                           dataset_name="ColourPatches")
    before = trainer.test()
    trainer.train()
    after, _ = final_test_record(tmp_path)
    assert before < 40.0 and after["accuracy"] >= 80.0, (before, after["accuracy"])  # chance: 20%
