"""Issue 22 end to end on ToyShapes (random:tiny, 1 epoch): every results.json record carries the probability
metrics, reliability bins and cost; TEST.SAVE_PREDICTIONS files reproduce the recorded numbers (recomputed here
independently); FLOP counting leaves training unchanged; redone evaluations are not recorded twice; older records
stay as they were; parse_results prints calibration and cost columns, draws the reliability diagrams of two methods
and exports CLIP_benchmark JSON."""
import csv
import importlib.util
import json
import os.path as osp
import shutil

import numpy as np
import pytest
import torch

from dassl.engine import build_trainer
from dassl.engine.results import append_result
from dassl.utils import load_checkpoint, set_random_seed
from train import build_parser, setup_cfg

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
spec = importlib.util.spec_from_file_location("parse_results", osp.join(REPO, "scripts", "parse_results.py"))
pr = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pr)

COST_KEYS = {"trainable_params", "train_time_s", "train_step_flops", "flop_count_step_s", "eval_time_s",
             "eval_images_per_s", "peak_memory_bytes", "peak_memory_kind", "device", "precision", "world_size"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("i22")
    mp = pytest.MonkeyPatch()
    mp.setenv("HICROPL_CACHE_DIR", str(root / "cache"))
    yield root
    mp.undo()


def make_trainer(root, output_dir, trainer, config, *opts):
    argv = ["--root", str(root / "data"), "--seed", "1", "--trainer", trainer, "--config-file", config,
            "--dataset-config-file", "configs/datasets/toy_shapes.yaml", "--output-dir", str(output_dir),
            "--backbone", "random:tiny"]
    cfg = setup_cfg(build_parser().parse_args(argv + ["USE_CUDA", "False", "INPUT.SIZE", "(32, 32)",
                                                      "DATALOADER.NUM_WORKERS", "0", *map(str, opts)]))
    set_random_seed(cfg.SEED)
    return build_trainer(cfg)


def hicropl(root, output_dir, *opts):
    return make_trainer(root, output_dir, "HiCroPL", "configs/trainers/HiCroPL/demo_tiny.yaml", "OPTIM.MAX_EPOCH", 1,
                        *opts)


def records(output_dir):
    return json.loads((output_dir / "results.json").read_text())["evaluations"]


@pytest.fixture(scope="module")
def tree(workspace):
    """An output tree with a HiCroPL training run (files asked for), a ZeroshotCLIP run into a folder that already
    holds a record written before this change, and a run with only such an old record."""
    b2n = workspace / "tree" / "base2new" / "train_base" / "toy_shapes" / "shots_16"
    run = b2n / "HiCroPL" / "demo_tiny" / "seed1"
    trainer = hicropl(workspace, run, "TEST.SAVE_PREDICTIONS", True, "TEST.RELIABILITY_DIAGRAM", True)
    trainer.train()

    zs = b2n / "ZeroshotCLIP" / "vit_b16" / "seed1"
    zs.mkdir(parents=True)
    old = {"split": "val", "epoch": None, "accuracy": 50.0, "dataset": "ToyShapes", "trainer": "ZeroshotCLIP"}
    (zs / "results.json").write_text(json.dumps({"schema": 1, "evaluations": [old]}))
    zs_trainer = make_trainer(workspace, zs, "ZeroshotCLIP", "configs/trainers/ZeroshotCLIP/vit_b16.yaml",
                              "TEST.RELIABILITY_DIAGRAM", True)
    zs_trainer.test()

    legacy = workspace / "tree" / "toy_shapes" / "HiCroPL" / f"{pr.CFG_FEWSHOT}_1shots" / "seed1"
    legacy.mkdir(parents=True)
    legacy_record = {"split": "test", "epoch": 1, "accuracy": 40.0, "checkpoint": "x", "dataset": "ToyShapes",
                     "trainer": "HiCroPL", "subsample": "all", "shots": 1, "seed": 1}
    (legacy / "results.json").write_text(json.dumps({"schema": 1, "evaluations": [legacy_record]}))
    return {"root": workspace / "tree", "run": run, "trainer": trainer, "zs": zs, "zs_trainer": zs_trainer, "old": old, "legacy": legacy}


def ece_15_bins(confidence, correct):
    """Hand-written ECE: bins ((m-1)/15, m/15], sum over bins of |bin| / n * |accuracy - mean confidence|."""
    total = 0.0
    for m in range(15):
        lo, hi = m / 15, (m + 1) / 15
        members = [i for i, c in enumerate(confidence) if (lo < c <= hi) or (m == 0 and c == 0)]
        if members:
            acc = sum(correct[i] for i in members) / len(members)
            conf = sum(confidence[i] for i in members) / len(members)
            total += len(members) / len(confidence) * abs(acc - conf)
    return 100 * total


def test_training_run_records_metrics_cost_and_files(tree):
    run, trainer = tree["run"], tree["trainer"]
    all_records = records(run)
    assert [r["split"] for r in all_records] == ["val", "test"]
    record = all_records[-1]
    for key in ["acc5", "mean_per_class_recall", "nll", "ece", "mce", "aece"]:
        assert isinstance(record[key], float), key
    assert record["reliability"]["bins"] == 15 and sum(record["reliability"]["count"]) == record["n"] == 120
    cost = record["cost"]
    assert set(cost) == COST_KEYS
    prompt_params = sum(p.numel() for p in trainer.model.prompt_learner.parameters() if p.requires_grad)
    assert cost["trainable_params"] == prompt_params > 0
    assert cost["train_step_flops"] > 0 and cost["train_time_s"] > 0 and cost["eval_time_s"] > 0
    assert cost["eval_images_per_s"] == pytest.approx(120 / cost["eval_time_s"])
    assert cost["peak_memory_kind"] == "cpu_max_rss" and cost["peak_memory_bytes"] > 10 * 2**20
    assert cost["device"].startswith("cpu") and cost["precision"] == "fp32" and cost["world_size"] == 1

    files = record["files"]
    assert set(files) == {"predictions", "per_class", "confusion_matrix", "reliability_diagram"}
    assert files["predictions"] != all_records[0]["files"]["predictions"]  # every evaluation has its own files
    assert (run / files["reliability_diagram"]).read_bytes()[:8] == PNG_MAGIC

    with open(run / files["predictions"]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 120 and all(osp.isfile(r["impath"]) for r in rows)
    labels = [int(r["label"]) for r in rows]
    correct = [int(r["pred_1"]) == y for r, y in zip(rows, labels)]
    confidence = [float(r["prob_1"]) for r in rows]
    assert 100 * sum(correct) / 120 == pytest.approx(record["accuracy"], abs=1e-9)
    assert ece_15_bins(confidence, correct) == pytest.approx(record["ece"], abs=1e-9)
    top5 = [y in {int(r[f"pred_{k}"]) for k in range(1, 6)} for r, y in zip(rows, labels)]
    assert 100 * sum(top5) / 120 == pytest.approx(record["acc5"])

    with open(run / files["per_class"]) as f:
        per_class = list(csv.DictReader(f))
    assert len(per_class) == 10 and sum(int(r["correct"]) for r in per_class) == record["correct"]
    assert np.mean([float(r["recall"]) for r in per_class]) == pytest.approx(record["mean_per_class_recall"])
    with open(run / files["confusion_matrix"]) as f:
        cmat = np.array([row[1:] for row in list(csv.reader(f))[1:]], dtype=int)
    assert cmat.sum() == 120 and np.trace(cmat) == record["correct"]


def test_redone_evaluation_is_not_recorded_twice(tree):
    run, trainer = tree["zs"], tree["zs_trainer"]
    before = records(run)
    trainer.test()  # the same evaluation again: equal apart from cost and file names -> not added, files removed
    after = records(run)
    assert after == before
    assert len(list((run / "evaluations").iterdir())) == 1

    path = str(run / "results.json")
    copy = dict(after[-1], cost={"train_time_s": 1e9}, files={"predictions": "elsewhere.csv"})
    assert append_result(path, copy) is False
    assert records(run) == after


def test_counting_flops_does_not_change_training(tree, workspace):
    plain = hicropl(workspace, workspace / "no_flops", "TRAIN.COUNT_FLOPS", False)
    plain.train()
    assert plain._train_step_flops is None and tree["trainer"]._train_step_flops > 0
    # the weights after the epoch (the in-memory model of the counted run has been evaluated since)
    counted = load_checkpoint(str(tree["run"] / "VLPromptLearner" / "model.pth.tar-1"))["state_dict"]
    uncounted = load_checkpoint(str(workspace / "no_flops" / "VLPromptLearner" / "model.pth.tar-1"))["state_dict"]
    assert set(counted) == set(uncounted)
    for key, value in uncounted.items():
        assert torch.equal(value, counted[key]), key


def test_zero_shot_records_and_older_records_kept(tree):
    zs_records = records(tree["zs"])
    assert zs_records[0] == tree["old"]  # the record written before this change is kept as it was
    record = zs_records[-1]
    assert record["trainer"] == "ZeroshotCLIP" and record["cost"]["trainable_params"] == 0
    assert record["cost"]["train_time_s"] is None and isinstance(record["ece"], float)
    assert set(record["files"]) == {"reliability_diagram"}


def run_parser(capsys, *argv):
    assert pr.main(list(map(str, argv))) == 0
    return capsys.readouterr().out


def test_parse_results_metrics_cost_plot_and_exports(tree, capsys, tmp_path):
    root = tree["root"]
    legacy_bytes = (tree["legacy"] / "results.json").read_bytes()
    hicropl_record = records(tree["run"])[1]  # the test after training
    zs_record = records(tree["zs"])[-1]

    rows = json.loads(run_parser(capsys, root, "--cost", "--format", "json"))
    by_method = {(r["protocol"], r["method"]): r for r in rows}
    assert set(by_method) == {("base2new", "HiCroPL"), ("base2new", "ZeroshotCLIP"), ("fewshot", "HiCroPL")}
    assert by_method["base2new", "HiCroPL"]["ece"] == pytest.approx(hicropl_record["ece"])
    assert by_method["base2new", "HiCroPL"]["gpu_h_total"] == pytest.approx(
        hicropl_record["cost"]["train_time_s"] / 3600)
    assert by_method["base2new", "ZeroshotCLIP"]["ece"] == pytest.approx(zs_record["ece"])
    assert by_method["fewshot", "HiCroPL"]["accuracy"] == 40.0 and by_method["fewshot", "HiCroPL"]["ece"] is None

    md = run_parser(capsys, root, "--metrics", "--cost", "--reliability", tmp_path / "rel.png")
    header = next(line for line in md.splitlines() if line.startswith("| protocol"))
    for column in ["ECE", "MCE", "aECE", "NLL", "acc5", "mpcr", "params", "GFLOPs/step", "GPU·h", "device"]:
        assert f" {column} |" in header, column
    legacy_line = next(line for line in md.splitlines() if line.startswith("| fewshot"))
    assert "| 40.00 | - | - |" in legacy_line
    assert f"| {hicropl_record['ece']:.2f} |" in md and f"| {zs_record['ece']:.2f} |" in md
    assert (tmp_path / "rel.png").read_bytes()[:8] == PNG_MAGIC
    assert set(pr.pooled_reliability(pr.find_runs(str(root)))) == {"HiCroPL", "ZeroshotCLIP"}

    assert run_parser(capsys, root, "--metrics", "--format", "csv").splitlines()[0].startswith(
        "protocol,dataset,classes,shots,method,seeds,acc,acc5")
    assert r"\begin{tabular}" in run_parser(capsys, root, "--metrics", "--format", "latex")
    assert r"\toprule" in run_parser(capsys, root, "--protocol", "base2new", "--format", "latex")

    out = tmp_path / "clip_benchmark"
    paths = run_parser(capsys, root, "--format", "clip_benchmark", "--export-dir", out).split()
    assert len(paths) == 3
    exported = {json.loads(open(p).read())["hicropl"]["run_dir"]: json.loads(open(p).read()) for p in paths}
    hicropl_json = exported[osp.relpath(tree["run"], root)]
    assert set(hicropl_json) >= {"dataset", "model", "pretrained", "task", "metrics"}
    assert hicropl_json["metrics"] == {"acc1": pytest.approx(hicropl_record["accuracy"] / 100),
                                       "acc5": pytest.approx(hicropl_record["acc5"] / 100),
                                       "mean_per_class_recall": pytest.approx(
                                           hicropl_record["mean_per_class_recall"] / 100)}
    assert (hicropl_json["model"], hicropl_json["pretrained"]) == ("tiny", "random")
    assert exported[osp.relpath(tree["zs"], root)]["task"] == "zeroshot_classification"
    assert (tree["legacy"] / "results.json").read_bytes() == legacy_bytes  # parsing rewrites nothing
    shutil.rmtree(out)


def test_reliability_bins_and_pooling_by_hand():
    from dassl.evaluation.metrics import reliability_bins

    # conf 0.1 -> bin 2 of 15 ((1/15, 2/15]); 0.95 -> bin 15; the others are empty
    bins = reliability_bins(np.array([0.1, 0.1, 0.95]), np.array([True, False, True]))
    assert bins["count"] == [0, 2] + [0] * 12 + [1]
    assert bins["accuracy"][1] == pytest.approx(50.0) and bins["confidence"][1] == pytest.approx(10.0)
    assert bins["accuracy"][14] == 100.0 and bins["confidence"][14] == pytest.approx(95.0)
    assert bins["accuracy"][0] is None and bins["confidence"][7] is None

    # pooling: counts add, accuracy and confidence are count-weighted means
    other = reliability_bins(np.array([0.12]), np.array([True]))
    runs = [pr.RunResult("a", "base2new", {"trainer": "M", "reliability": bins}),
            pr.RunResult("b", "base2new", {"trainer": "M", "reliability": other}),
            pr.RunResult("c", "base2new", {"trainer": "Old"})]
    pooled = pr.pooled_reliability(runs)
    assert list(pooled) == ["M"]
    assert pooled["M"]["count"][1] == 3
    assert pooled["M"]["accuracy"][1] == pytest.approx(200 / 3)
    assert pooled["M"]["confidence"][1] == pytest.approx((10 + 10 + 12) / 3)
