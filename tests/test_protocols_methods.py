"""The protocol scripts are method-agnostic: TRAINER=<Method> runs a comparison method on its published config
(parse_results.py --default-config), in the same output layout, and parse_results.py puts the methods side by side,
each beside its own paper numbers (paper_results.json "methods", from HiCroPL's Table 1)."""
import csv
import io
import json
import shlex
import subprocess
import sys

import pytest

from test_protocols_parse import pr
from test_protocols_scripts import PARSER, REPO, run_script

# Shrinks the runs to seconds on a CPU: tiny random CLIP, one epoch, 32x32 inputs, fp32 (keys of both methods).
TINY = ("MODEL.BACKBONE.NAME random:tiny OPTIM.MAX_EPOCH 1 DATALOADER.NUM_WORKERS 0 TRAINER.COOP.PREC fp32 "
        "TRAINER.KGCOOP.PREC fp32 INPUT.SIZE (32,32) DATALOADER.TEST.BATCH_SIZE 200 USE_CUDA False")
PUBLISHED = {"CoOp": "vit_b16_ctxv1", "KgCoOp": "vit_b16_ep100_ctxv1"}


def parse(*args):
    proc = subprocess.run([sys.executable, PARSER, *args], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_default_configs_and_dry_run_commands(tmp_path):
    assert parse("--default-config", "CoOp", "base2new", "imagenet").strip() == "vit_b16_ep50_ctxv1"
    assert parse("--default-config", "TCP", "base2new", "sun397").strip() == "vit_b16_ep25_ctxv1"
    assert parse("--default-config", "HiCroPL", "base2new", "dtd").strip() == "vit_b16_c2_ep50_batch32_16ctx"
    out = run_script("base2new_train.sh", {"TRAINER": "CoCoOp", "DRY_RUN": "1", "OUTPUT": str(tmp_path)}, "dtd", "2")
    argv = shlex.split(out)
    assert argv[argv.index("--trainer") + 1] == "CoCoOp"
    assert argv[argv.index("--config-file") + 1] == "configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml"
    assert argv[argv.index("--output-dir") + 1] == str(
        tmp_path / "base2new/train_base/dtd/shots_16/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1/seed2")
    bad = subprocess.run(["bash", "scripts/hicropl/base2new_train.sh", "dtd", "1"], cwd=REPO, capture_output=True,
                         text=True, env={"PATH": "/usr/bin:/bin", "TRAINER": "NoSuchMethod", "PYTHON": sys.executable})
    assert bad.returncode == 2 and bad.stderr.startswith("error: unknown TRAINER 'NoSuchMethod'")


def test_toy_shapes_base_to_novel_of_two_methods_side_by_side(tmp_path):
    env = {"OUTPUT": str(tmp_path / "out"), "DATA": str(tmp_path / "data"), "SEEDS": "1", "DATASETS": "toy_shapes",
           "EXTRA_OPTS": TINY}
    accuracies = {}
    for method, cfg in PUBLISHED.items():
        run_script("reproduce_base2new.sh", {**env, "TRAINER": method})
        for split in ("train_base", "test_new"):
            run = tmp_path / "out" / "base2new" / split / "toy_shapes" / "shots_16" / method / cfg / "seed1"
            record = json.loads((run / "results.json").read_text())["evaluations"][-1]
            assert record["trainer"] == method
            assert record["subsample"] == {"train_base": "base", "test_new": "new"}[split]
            accuracies[method, split] = record["accuracy"]
        # the novel test loaded the training run's last epoch (CoOp family: no model-best)
        assert record["checkpoint"].endswith(f"{method}/{cfg}/seed1/prompt_learner/model.pth.tar-1")

    text = parse(str(tmp_path / "out"), "--protocol", "base2new", "--datasets", "toy_shapes")
    header = next(line for line in text.splitlines() if line.startswith("| Dataset"))
    assert "CoOp Base | CoOp Base (paper)" in header and "KgCoOp HM | KgCoOp HM (paper)" in header
    rows = {(r["trainer"], r["dataset"], r["metric"]): r for r in csv.DictReader(io.StringIO(
        parse(str(tmp_path / "out"), "--protocol", "base2new", "--datasets", "toy_shapes", "--csv")))}
    for method in PUBLISHED:
        for metric, split in (("base", "train_base"), ("novel", "test_new")):
            assert float(rows[method, "toy_shapes", metric]["mean"]) == pytest.approx(accuracies[method, split],
                                                                                      abs=1e-4)
    assert rows["KgCoOp", "average", "base"]["paper"] == ""  # toy_shapes has no paper number


def test_each_method_is_compared_with_its_own_paper_numbers():
    paper = pr.load_paper()
    assert pr.paper_for(paper, "CoOp")["base2new"]["average"] == {"base": 82.69, "novel": 63.22, "hm": 71.66}
    assert pr.paper_for(paper, "TCP")["base2new"]["dtd"] == {"base": 82.77, "novel": 58.07, "hm": 68.25}
    assert pr.paper_for(paper, "CoCoOp")["fewshot"]["average"]["16"] == 74.90
    assert pr.paper_for(paper, "HiCroPL")["base2new"]["average"]["hm"] == 81.75
    assert pr.paper_for(paper, "KgCoOp")["fewshot"] == {}  # not in Table 14
