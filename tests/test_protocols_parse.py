"""``scripts/parse_results.py`` on hand-written output trees, and ``scripts/paper_results.json`` vs the paper.

Expected values are computed by hand in this file (HM = 2BN/(B+N), the paper's Average rule, population std),
never captured from the parser's own output.
"""
import csv
import importlib.util
import io
import json
import math
import os.path as osp
import re
import subprocess
import sys

import pytest

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
PARSER = osp.join(REPO, "scripts", "parse_results.py")
PAPER_MD = osp.join(REPO, "..", "shared", "paper_results.md")

spec = importlib.util.spec_from_file_location("parse_results", PARSER)
pr = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pr)

B2N = "vit_b16_c2_ep50_batch32_16ctx"
B2N_IMAGENET = "vit_b16_c2_ep40_batch128_16ctx"
FS = "vit_b16_c2_ep50_batch32_16ctx_few_shot"
XD = "vit_b16_c2_ep5_batch32_2ctx_cross_datasets"


def record(split, accuracy, checkpoint=None, epoch=1, final_model="best_val", max_epoch=1):
    return {"split": split, "epoch": epoch, "accuracy": accuracy, "checkpoint": checkpoint,
            "config": {"TEST": {"FINAL_MODEL": final_model}, "OPTIM": {"MAX_EPOCH": max_epoch}}}


def write_run(run_dir, *records):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "results.json").write_text(json.dumps({"schema": 1, "evaluations": list(records)}))


def train_run(run_dir, accuracy):
    """A finished best-val training run: val records per epoch, then the test of model-best."""
    write_run(run_dir, record("val", 99.0, epoch=1), record("val", 98.0, epoch=2),
              record("test", accuracy, checkpoint=str(run_dir / "VLPromptLearner" / "model-best.pth.tar")))


def eval_run(run_dir, accuracy):
    write_run(run_dir, record("test", accuracy, checkpoint="/x/VLPromptLearner/model-best.pth.tar"))


def run_parser(*args):
    proc = subprocess.run([sys.executable, PARSER, *map(str, args)], capture_output=True, text=True, timeout=60)
    return proc


def csv_cells(*args):
    proc = run_parser(*args, "--csv")
    assert proc.returncode == 0, proc.stderr
    return {(r["table"], r["dataset"], r["metric"]): r for r in csv.DictReader(io.StringIO(proc.stdout))}


def markdown_row(text, label):
    line = next(line for line in text.splitlines() if line.startswith(f"| {label} |"))
    return [c.strip() for c in line.strip().strip("|").split("|")]


# ---------------------------------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------------------------------


def test_statistics_by_hand():
    mean, std = pr.mean_std([70.0, 72.0, 74.0])
    assert mean == pytest.approx(72.0) and std == pytest.approx(math.sqrt(8 / 3))  # population: ((4+0+4)/3)^0.5
    assert pr.mean_std([5.0]) == (5.0, 0.0)
    assert pr.harmonic_mean(80.0, 60.0) == pytest.approx(9600 / 140)
    base, novel, hm, used = pr.b2n_average([80.0, 90.0, None], [60.0, 70.0, 50.0])
    assert (base, novel, used) == (85.0, 65.0, 2)  # the third dataset has no base accuracy: left out of both
    assert hm == pytest.approx(2 * 85 * 65 / 150)


def test_average_hm_is_hm_of_averages_like_the_paper():
    paper = pr.load_paper()["base2new"]
    datasets = pr.B2N_DATASETS
    base, novel, hm, used = pr.b2n_average([paper[d]["base"] for d in datasets], [paper[d]["novel"] for d in datasets])
    assert used == 11
    # paper_results.md: Average 85.89 / 77.99 / 81.75; SPEC §7: the mean of per-dataset HMs would be 81.58
    assert (round(base, 2), round(novel, 2), round(hm, 2)) == (85.89, 77.99, 81.75)
    assert round(sum(paper[d]["hm"] for d in datasets) / 11, 2) == 81.58


# ---------------------------------------------------------------------------------------------------------------------
# Tables from hand-written trees
# ---------------------------------------------------------------------------------------------------------------------


def test_base2new_table(tmp_path):
    out = tmp_path / "output"
    b2n = out / "base2new"
    for seed, base, novel in [(1, 70.0, 60.0), (2, 72.0, 62.0), (3, 74.0, 64.0)]:
        train_run(b2n / "train_base" / "imagenet" / "shots_16" / "HiCroPL" / B2N_IMAGENET / f"seed{seed}", base)
        eval_run(b2n / "test_new" / "imagenet" / "shots_16" / "HiCroPL" / B2N_IMAGENET / f"seed{seed}", novel)
    # ImageNet under the batch-32 config (what the released train script produced, F3) is not the paper's run
    train_run(b2n / "train_base" / "imagenet" / "shots_16" / "HiCroPL" / B2N / "seed1", 1.0)
    for seed, base, novel in [(1, 80.0, 50.0), (2, 82.0, 54.0)]:
        train_run(b2n / "train_base" / "dtd" / "shots_16" / "HiCroPL" / B2N / f"seed{seed}", base)
        eval_run(b2n / "test_new" / "dtd" / "shots_16" / "HiCroPL" / B2N / f"seed{seed}", novel)
    train_run(b2n / "train_base" / "eurosat" / "shots_16" / "HiCroPL" / B2N / "seed1", 90.0)  # novel missing
    train_run(b2n / "train_base" / "toy_shapes" / "shots_16" / "HiCroPL" / B2N / "seed1", 10.0)

    args = [out, "--protocol", "base2new", "--datasets", "imagenet", "dtd", "eurosat"]
    cells = csv_cells(*args)
    sd = math.sqrt(8 / 3)
    expected = {
        "imagenet": [(72.0, sd, 3), (62.0, sd, 3), (2 * 72 * 62 / 134, None, 3)],
        "dtd": [(81.0, 1.0, 2), (52.0, 2.0, 2), (2 * 81 * 52 / 133, None, 2)],
        "eurosat": [(90.0, None, 1), (None, None, 0), (None, None, 0)],
        "average": [(76.5, None, 2), (57.0, None, 2), (2 * 76.5 * 57 / 133.5, None, 2)],
    }
    for ds, triples in expected.items():
        for metric, (mean, std, n) in zip(("base", "novel", "hm"), triples):
            cell = cells[("base2new", ds, metric)]
            assert (float(cell["mean"]) if cell["mean"] else None) == pytest.approx(mean, abs=1e-4), (ds, metric)
            assert (float(cell["std"]) if cell["std"] else None) == pytest.approx(std, abs=1e-4), (ds, metric)
            assert int(cell["n"]) == n
    # paper columns (paper_results.md): ImageNet 78.07 / 71.72 / 74.76; the Average over ImageNet and DTD only is
    # compared with the paper's numbers averaged over the same two datasets
    assert float(cells[("base2new", "imagenet", "base")]["diff"]) == pytest.approx(72.0 - 78.07, abs=1e-4)
    paper_base, paper_novel = (78.07 + 85.07) / 2, (71.72 + 67.34) / 2
    assert float(cells[("base2new", "average", "base")]["paper"]) == pytest.approx(paper_base, abs=1e-4)
    assert float(cells[("base2new", "average", "hm")]["paper"]) == pytest.approx(
        2 * paper_base * paper_novel / (paper_base + paper_novel), abs=1e-4)

    md = run_parser(*args).stdout
    assert markdown_row(md, "ImageNet") == ["ImageNet", f"72.00 ± {sd:.2f}", "78.07", f"{72 - 78.07:+.2f}",
                                            f"62.00 ± {sd:.2f}", "71.72", f"{62 - 71.72:+.2f}",
                                            f"{2 * 72 * 62 / 134:.2f}", "74.76", f"{2 * 72 * 62 / 134 - 74.76:+.2f}"]
    assert markdown_row(md, "DTD")[1] == "81.00 ± 1.00 (n=2)"
    assert markdown_row(md, "EuroSAT")[1:8] == ["90.00 (n=1)", "96.29", f"{90 - 96.29:+.2f}", "-", "80.36", "-", "-"]
    assert markdown_row(md, "**Average**")[1] == "76.50 (2/3 datasets)"
    assert "toy_shapes" in md.split("Also found")[1]  # present in the tree but not tabulated

    # the full default table: 11 rows + Average, missing cells shown as "-"
    md = run_parser(out, "--protocol", "base2new").stdout
    assert markdown_row(md, "UCF101") == ["UCF101", "-", "87.95", "-", "-", "80.91", "-", "-", "84.28", "-"]
    assert markdown_row(md, "**Average**")[1:3] == ["76.50 (2/11 datasets)", f"{paper_base:.2f}"]


def test_fewshot_and_transfer_tables(tmp_path):
    out = tmp_path / "output"
    for seed, acc in [(1, 50.0), (2, 52.0)]:
        train_run(out / "dtd" / "HiCroPL" / f"{FS}_1shots" / f"seed{seed}", acc)
    train_run(out / "dtd" / "HiCroPL" / f"{FS}_16shots" / "seed1", 70.0)
    train_run(out / "caltech101" / "HiCroPL" / f"{FS}_1shots" / "seed1", 90.0)
    for seed, acc in [(1, 70.0), (2, 71.0)]:
        train_run(out / "imagenet" / "HiCroPL" / f"{XD}_16shots" / f"seed{seed}", acc)
    eval_run(out / "evaluation" / "HiCroPL" / f"{XD}_16shots" / "dtd" / "seed1", 50.0)
    for seed, acc in [(1, 40.0), (2, 44.0)]:
        eval_run(out / "evaluation" / "HiCroPL" / f"{XD}_16shots" / "eurosat" / f"seed{seed}", acc)
    eval_run(out / "evaluation" / "HiCroPL" / f"{XD}_16shots" / "imagenet_r" / "seed1", 75.0)

    cells = csv_cells(out, "--datasets", "dtd", "caltech101", "eurosat", "--protocol", "fewshot")
    assert float(cells[("fewshot", "dtd", "1shots")]["mean"]) == pytest.approx(51.0)
    assert float(cells[("fewshot", "dtd", "1shots")]["std"]) == pytest.approx(1.0)
    assert float(cells[("fewshot", "average", "1shots")]["mean"]) == pytest.approx((51.0 + 90.0) / 2)
    assert float(cells[("fewshot", "average", "1shots")]["paper"]) == pytest.approx((59.52 + 95.85) / 2)
    assert float(cells[("fewshot", "average", "16shots")]["mean"]) == pytest.approx(70.0)
    assert cells[("fewshot", "average", "2shots")]["mean"] == ""

    cells = csv_cells(out, "--protocol", "xd")
    assert float(cells[("xd", "imagenet", "source")]["mean"]) == pytest.approx(70.5)
    assert float(cells[("xd", "imagenet", "source")]["paper"]) == pytest.approx(70.84)
    assert float(cells[("xd", "eurosat", "target")]["mean"]) == pytest.approx(42.0)
    assert float(cells[("xd", "eurosat", "target")]["std"]) == pytest.approx(2.0)
    assert float(cells[("xd", "average", "target")]["mean"]) == pytest.approx((50.0 + 42.0) / 2)
    assert float(cells[("xd", "average", "target")]["paper"]) == pytest.approx((53.19 + 49.19) / 2)
    assert cells[("xd", "ucf101", "target")]["mean"] == ""
    cells = csv_cells(out, "--protocol", "dg")
    assert float(cells[("dg", "imagenet", "source")]["paper"]) == pytest.approx(71.22)  # Table 3's source number
    assert float(cells[("dg", "imagenet_r", "target")]["mean"]) == pytest.approx(75.0)
    assert ("dg", "dtd", "target") not in cells

    md = run_parser(out, "--protocol", "xd").stdout
    assert markdown_row(md, "HiCroPL (ours)")[-1] == "46.00 (2/10 datasets)"
    assert markdown_row(md, "HiCroPL (paper)")[-1] == "51.19"  # the paper's DTD and EuroSAT, averaged
    assert markdown_row(md, "HiCroPL (ours)")[1] == "70.50 ± 0.50"


def test_partial_and_broken_trees_never_crash(tmp_path):
    out = tmp_path / "output"
    run = out / "dtd" / "HiCroPL" / f"{FS}_1shots"
    (run / "seed1").mkdir(parents=True)
    (run / "seed1" / "results.json").write_text("{not json")
    write_run(run / "seed2", record("val", 50.0))  # training not finished
    write_run(run / "seed3", {"split": "test", "accuracy": None})
    (run / "seedX").mkdir()
    (out / "evaluation").write_text("a file where a folder is expected")
    proc = run_parser(out)
    assert proc.returncode == 0, proc.stderr
    assert markdown_row(proc.stdout, "DTD")[1] == "-"
    assert proc.stdout.count("No finished runs found") == 4
    # no results at all: the paper's printed Average rows (Table 1, Table 14)
    assert markdown_row(proc.stdout, "**Average**")[1:4] == ["-", "85.89", "-"]
    assert [row[2::3] for row in [markdown_row(proc.stdout.split("Few-shot")[1], "**Average**")]] == [
        ["74.67", "76.67", "79.01", "80.96", "83.30"]]

    proc = run_parser(tmp_path / "missing")
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1


# ---------------------------------------------------------------------------------------------------------------------
# One run: results.json, Dassl logs, --finished
# ---------------------------------------------------------------------------------------------------------------------


def test_final_record_and_finished_check(tmp_path):
    cases = {
        # (run kind, records): finished?
        "only_val": ("train", [record("val", 50.0)], None),
        "best_val_final": ("train", [record("val", 50.0), record("test", 41.0, checkpoint="/r/model-best.pth.tar")],
                           41.0),
        # a dataset without val split: per-epoch tests of the in-memory model are not the final result
        "per_epoch_tests": ("train", [record("test", 30.0, epoch=1, max_epoch=2),
                                      record("test", 31.0, epoch=2, max_epoch=2)], None),
        "last_step_final": ("train", [record("test", 33.0, epoch=2, final_model="last_step", max_epoch=2)], 33.0),
        "eval": ("eval", [record("test", 60.0, checkpoint="/m/model.pth.tar-5")], 60.0),
        "eval_empty": ("eval", [], None),
    }
    for name, (kind, records, expected) in cases.items():
        write_run(tmp_path / name, *records)
        assert pr.run_accuracy(str(tmp_path / name), kind) == expected, name
        proc = run_parser("--finished", tmp_path / name, "--run-kind", kind)
        assert proc.returncode == (0 if expected is not None else 1), name
    assert run_parser("--finished", tmp_path / "nothing_here", "--run-kind", "eval").returncode == 1


TRAIN_LOG = """\
Setting fixed seed: 1
eval_only: False
epoch [1/2] batch [1/1] loss 1.0
Evaluate on the *val* set
=> result
* total: 10
* correct: 9
* accuracy: 90.00%
* error: 10.00%
* macro_f1: 88.00%
{end}
Deploy the model with the best val performance
Evaluate on the *test* set
=> result
* total: 100
* correct: 73
* accuracy: 73.25%
* error: 26.75%
* macro_f1: 70.00%
Elapsed: 0:00:10
"""


def test_accuracy_from_dassl_logs(tmp_path):
    for end in ("Finish training", "Finished training"):  # this engine / Dassl <= 0.6.0 (SPEC F11)
        assert pr.accuracy_from_log(TRAIN_LOG.format(end=end), "train") == 73.25
    interrupted = TRAIN_LOG.format(end="").split("Deploy")[0]
    assert pr.accuracy_from_log(interrupted, "train") is None  # only per-epoch val results
    assert pr.accuracy_from_log(interrupted, "eval") == 90.0
    assert pr.accuracy_from_log("* accuracy: 95.4%\n=> result\n* accuracy: 95.4%\n", "eval") == 95.4  # 1 decimal
    assert pr.accuracy_from_log("nothing\n", "eval") is None

    run = tmp_path / "seed1"
    run.mkdir()
    (run / "log.txt").write_text(TRAIN_LOG.format(end="").split("Deploy")[0])  # killed run
    (run / "log.txt-2025-01-02-03-04-05").write_text(TRAIN_LOG.format(end="Finish training"))  # its resume
    assert pr.run_accuracy(str(run), "train") == 73.25
    write_run(run, record("test", 12.5, checkpoint="/r/model-best.pth.tar"))
    assert pr.run_accuracy(str(run), "train") == 12.5  # results.json first


# ---------------------------------------------------------------------------------------------------------------------
# The paper's numbers
# ---------------------------------------------------------------------------------------------------------------------

MD_IDS = {"ImageNet": "imagenet", "Caltech101": "caltech101", "OxfordPets": "oxford_pets",
          "StanfordCars": "stanford_cars", "Flowers102": "oxford_flowers", "Food101": "food101",
          "FGVCAircraft": "fgvc_aircraft", "SUN397": "sun397", "DTD": "dtd", "EuroSAT": "eurosat", "UCF101": "ucf101",
          "ImageNet-V2": "imagenetv2", "ImageNet-Sketch": "imagenet_sketch", "ImageNet-A": "imagenet_a",
          "ImageNet-R": "imagenet_r", "Average": "average"}


def md_table(text, heading):
    """Rows of the first ```csv block after the heading that starts with ``heading``."""
    start = text.index(f"\n{heading}")
    block = re.search(r"```csv\n(.*?)```", text[start:], re.S).group(1)
    return list(csv.DictReader(io.StringIO(block)))


def number(cell):
    return None if "?" in cell else float(cell)


@pytest.mark.skipif(not osp.exists(PAPER_MD), reason="../shared/paper_results.md not available")
def test_paper_numbers_match_paper_results_md():
    text = open(PAPER_MD).read()
    paper = pr.load_paper()
    rows = [r for r in md_table(text, "## Table 1 ") if r["method"] == "HiCroPL"]
    assert len(rows) == 12
    for r in rows:
        assert paper["base2new"][MD_IDS[r["dataset"]]] == {k: float(r[k]) for k in ("base", "novel", "hm")}
    rows = [r for r in md_table(text, "## Table 14 ") if r["method"] == "HiCroPL"]
    assert len(rows) == 12
    for r in rows:
        assert paper["fewshot"][MD_IDS[r["dataset"]]] == {k: number(r[k]) for k in ("1", "2", "4", "8", "16")}
    for heading, key, n_targets in [("## Table 2 ", "cross_dataset", 10), ("## Table 3 ", "domain_generalization", 4)]:
        (r,) = [r for r in md_table(text, heading) if r["method"] == "HiCroPL"]
        assert paper[key]["source"] == {"imagenet": float(r["ImageNet(source)"])}
        assert paper[key]["average"] == float(r["Average(target)"])
        targets = {MD_IDS[k]: float(v) for k, v in r.items() if k not in ("method", "ImageNet(source)",
                                                                           "Average(target)")}
        assert paper[key]["targets"] == targets and len(targets) == n_targets
    for ds, name in paper["names"].items():
        assert MD_IDS[name] == ds
