"""``scripts/hicropl/ablation.sh`` (the paper's ablations), ``scripts/ablations.py`` and
``parse_results.py --protocol ablation``.

1. ``DRY_RUN=1`` of every table prints the base-to-novel commands of every row in the paper's order, with the row's
   overrides (written out independently below), one output folder per row, the published row shared.
2. One row of every table end to end on ToyShapes (tiny random CLIP, one epoch, one seed): the exact commands the
   script prints are run by train.py's ``main`` in this process (no interpreter start per run; the script's real
   runs of the same base-to-novel steps are covered by test_protocols_scripts), then the script itself, not dry,
   skips them as finished. The switch reaches each run's config, and ``parse_results.py --protocol ablation``
   prints every row with the paper's number beside it.
3. The paper numbers in ``scripts/paper_results.json`` against ``../shared/paper_results.md``.
"""
import csv
import io
import json
import os
import os.path as osp
import re
import shlex
import subprocess
import sys
from unittest import mock

import pytest

import train
from test_protocols_scripts import (
    ALL_11,
    B2N_CFG,
    B2N_IMAGENET_CFG,
    PARSER,
    REPO,
    TINY_OPTS,
    config_of,
    dataset_of,
    flag,
    opts,
    run_script,
)
from test_protocols_parse import csv_cells, eval_run, markdown_row, run_parser, train_run

PAPER_MD = osp.join(REPO, "..", "shared", "paper_results.md")
H = "TRAINER.HICROPL."

# Every table's rows in the paper's order with their overrides (trainers/config.py documents the switches).
EXPECTED_ROWS = {
    "4": {"i2t": {"FLOW": "i2t"}, "t2i": {"FLOW": "t2i"}, "i2t_t2i": {"FLOW": "i2t_t2i"}, "hicropl": {}},
    "5": {"k2": {"CROSS_LAYER": "2"}, "k4": {"CROSS_LAYER": "4"}, "hicropl": {}, "k8": {"CROSS_LAYER": "8"},
          "k10": {"CROSS_LAYER": "10"}},
    "6": {"single_single": {"T2I_SCALE": "single", "I2T_SCALE": "single"}, "single_multi": {"T2I_SCALE": "single"},
          "hicropl": {}},
    "7": {"mean": {"COMPRESSION": "mean"}, "mlp": {"COMPRESSION": "mlp"}, "hicropl": {}},
    "11": {"no_bkf_no_cons": {"FLOW": "none", "LAMBD": "0.0"}, "no_bkf": {"FLOW": "none"},
           "no_cons": {"LAMBD": "0.0"}, "hicropl": {}},
    "12": {"template": {"CONSISTENCY_TARGET": "template"},
           "imagenet_templates": {"CONSISTENCY_TARGET": "imagenet_templates"},
           "random_description": {"CONSISTENCY_TARGET": "random_description"}, "hicropl": {}},
    "13": {"mse": {"CONSISTENCY_CRITERION": "mse"}, "l1": {"CONSISTENCY_CRITERION": "l1"}, "hicropl": {}},
    "depth": {**{f"depth{j}": {"PROMPT_DEPTH": str(j), "CROSS_LAYER": str(min(j, 6))} for j in range(1, 12)},
              "hicropl": {}},
    "length": {"nctx2": {"N_CTX": "2", "CTX_INIT": "''"}, "nctx4": {"N_CTX": "4", "CTX_INIT": "''"},
               "nctx8": {"N_CTX": "8", "CTX_INIT": "''"}, "hicropl": {}, "nctx32": {"N_CTX": "32", "CTX_INIT": "''"}},
}

# One row per table for the ToyShapes runs, and the config value that proves its switch reached the run.
E2E_ROWS = {"4": ("i2t_t2i", "FLOW", "i2t_t2i"), "5": ("k2", "CROSS_LAYER", 2),
            "6": ("single_single", "I2T_SCALE", "single"), "7": ("mlp", "COMPRESSION", "mlp"),
            "11": ("no_bkf_no_cons", "FLOW", "none"), "12": ("random_description", "CONSISTENCY_TARGET",
                                                              "random_description"),
            "13": ("l1", "CONSISTENCY_CRITERION", "l1"), "depth": ("depth1", "PROMPT_DEPTH", 1),
            "length": ("nctx2", "N_CTX", 2)}


def ablation_dry_run(tmp_path, table, **env):
    out = run_script("ablation.sh", {"DRY_RUN": "1", "OUTPUT": str(tmp_path / "out"), "DATA": str(tmp_path / "d"),
                                     **env}, table)
    commands = [shlex.split(line) for line in out.splitlines() if line.strip()]
    for argv in commands:
        assert argv[:2] == [sys.executable, "train.py"] and flag(argv, "--trainer") == "HiCroPL", argv
    assert not (tmp_path / "out").exists(), "a dry run must not create anything"
    return commands


def row_of(argv, out):
    """The row folder of a command: <out>/ablation/<row>/base2new/..."""
    rel = osp.relpath(flag(argv, "--output-dir"), osp.join(out, "ablation"))
    return rel.split(os.sep)[0]


@pytest.mark.parametrize("table", list(EXPECTED_ROWS))
def test_dry_run_prints_every_rows_commands(tmp_path, table):
    out = str(tmp_path / "out")
    commands = ablation_dry_run(tmp_path, table, DATASETS="imagenet dtd", SEEDS="2",
                                EXTRA_OPTS="OPTIM.MAX_EPOCH 3 TRAINER.HICROPL.CROSS_LAYER 1")
    rows = EXPECTED_ROWS[table]
    assert len(commands) == len(rows) * 2 * 2
    seen_rows = []
    for c in commands:
        row, ds, seed = row_of(c, out), dataset_of(c), flag(c, "--seed")
        if row not in seen_rows:
            seen_rows.append(row)
        cfg = B2N_IMAGENET_CFG if ds == "imagenet" else B2N_CFG
        assert config_of(c) == cfg and seed == "2"
        tail = f"{ds}/shots_16/HiCroPL/{cfg}/seed{seed}"
        train_dir = f"{out}/ablation/{row}/base2new/train_base/{tail}"
        if "--eval-only" in c:
            assert flag(c, "--output-dir") == f"{out}/ablation/{row}/base2new/test_new/{tail}"
            assert flag(c, "--model-dir") == train_dir and opts(c)["DATASET.SUBSAMPLE_CLASSES"] == "new"
        else:
            assert flag(c, "--output-dir") == train_dir and opts(c)["DATASET.SUBSAMPLE_CLASSES"] == "base"
        switches = {k[len(H):]: v for k, v in opts(c).items() if k.startswith(H)}
        # the row's overrides come after EXTRA_OPTS, so they win; EXTRA_OPTS stay where the row sets nothing
        assert switches == {"CROSS_LAYER": "1", **rows[row]}, (row, switches)
        assert opts(c)["OPTIM.MAX_EPOCH"] == "3"
    assert seen_rows == list(rows)  # the paper's row order


def test_dry_run_defaults_rows_filter_and_errors(tmp_path):
    commands = ablation_dry_run(tmp_path, "13")
    assert len(commands) == 3 * 11 * 3 * 2  # rows x the paper's 11 datasets x seeds 1, 2, 3 x (train, test)
    assert {(dataset_of(c), flag(c, "--seed")) for c in commands} == {(d, s) for d in ALL_11 for s in "123"}
    commands = ablation_dry_run(tmp_path, "4", ROWS="t2i", DATASETS="dtd", SEEDS="1")
    assert [row_of(c, str(tmp_path / "out")) for c in commands] == ["t2i", "t2i"]
    for args, env, message in [(["7"], {"ROWS": "lkp"}, "table 7 has no row 'lkp'; its rows: mean mlp hicropl"),
                               (["8"], {}, "ablation table must be one of 4, 5, 6, 7, 11, 12, 13, depth, length"),
                               ([], {}, "usage:")]:
        proc = subprocess.run(["bash", osp.join(REPO, "scripts", "hicropl", "ablation.sh"), *args],
                              capture_output=True, text=True,
                              env={**os.environ, "DRY_RUN": "1", "OUTPUT": str(tmp_path), "PYTHON": sys.executable,
                                   **env})
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith("error: ") and message in proc.stderr and proc.stderr.count("\n") == 1


# ---------------------------------------------------------------------------------------------------------------------
# One row of every table on ToyShapes
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy_ablations(tmp_path_factory):
    root = tmp_path_factory.mktemp("ablation")
    env = {"OUTPUT": str(root / "output"), "DATA": str(root / "data"), "SEEDS": "1", "DATASETS": "toy_shapes",
           "EXTRA_OPTS": TINY_OPTS, "HICROPL_CACHE_DIR": str(root / "cache")}
    stdout, cwd = sys.stdout, os.getcwd()
    try:
        os.chdir(REPO)
        # collect_env_info only prints the environment report (and starts slow subprocesses)
        with mock.patch.dict(os.environ, {"HICROPL_CACHE_DIR": env["HICROPL_CACHE_DIR"]}), \
                mock.patch.object(train, "collect_env_info", lambda: "(not collected in this test)"):
            for table, (row, _, _) in E2E_ROWS.items():
                printed = run_script("ablation.sh", {**env, "ROWS": row, "DRY_RUN": "1"}, table)
                for line in printed.splitlines():
                    argv = shlex.split(line)
                    assert argv[1] == "train.py"
                    train.main(train.build_parser().parse_args(argv[2:]))
                    sys.stdout = stdout  # train.main tees stdout into the run's log
    finally:
        sys.stdout = stdout
        os.chdir(cwd)
    rerun_log = run_script("ablation.sh", {**env, "ROWS": E2E_ROWS["13"][0]}, "13")
    return root / "output", rerun_log


def final_test(run_dir):
    records = json.loads((run_dir / "results.json").read_text())["evaluations"]
    return [r for r in records if r["split"] == "test"][-1]


def run_dirs(out, row):
    tail = osp.join("toy_shapes", "shots_16", "HiCroPL", B2N_CFG, "seed1")
    base = out / "ablation" / row / "base2new"
    return base / "train_base" / tail, base / "test_new" / tail


def test_one_row_per_table_end_to_end_and_parsed_with_the_paper_column(toy_ablations):
    out, rerun_log = toy_ablations
    assert "run: " not in rerun_log and rerun_log.count("skip (finished):") == 2  # train and test of Table 13's row
    paper = json.load(open(osp.join(REPO, "scripts", "paper_results.json")))["ablation"]
    proc = subprocess.run([sys.executable, PARSER, str(out), "--protocol", "ablation", "--datasets", "toy_shapes",
                           "--csv"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    cells = {(r["table"], r["dataset"], r["metric"]): r for r in csv.DictReader(io.StringIO(proc.stdout))}
    for table, (row, key, value) in E2E_ROWS.items():
        train_dir, test_dir = run_dirs(out, row)
        base, novel = final_test(train_dir), final_test(test_dir)
        for record in (base, novel):
            assert record["config"]["TRAINER"]["HICROPL"][key] == value, (table, row, key)
        assert (base["subsample"], novel["subsample"]) == ("base", "new")
        hm = 2 * base["accuracy"] * novel["accuracy"] / (base["accuracy"] + novel["accuracy"])
        for metric, expected in (("base", base["accuracy"]), ("novel", novel["accuracy"]), ("hm", hm)):
            cell = cells[(f"ablation_{table}", row, metric)]
            assert float(cell["mean"]) == pytest.approx(expected, abs=1e-4), (table, row, metric)
            reference = paper.get(table, {}).get(row, {}).get(metric)
            assert cell["paper"] == ("" if reference is None else f"{reference:.4f}")
            assert cell["diff"] == ""  # one toy dataset is not the paper's 11-dataset average
        # rows never run stay empty (not an error)
        others = [r for r in EXPECTED_ROWS[table] if r != row and r != "hicropl"]
        assert all(cells[(f"ablation_{table}", r, "base")]["mean"] == "" for r in others)

    md = subprocess.run([sys.executable, PARSER, str(out), "--protocol", "ablation", "--tables", "13",
                         "--datasets", "toy_shapes"], capture_output=True, text=True, cwd=REPO, timeout=120).stdout
    base = final_test(run_dirs(out, "l1")[0])["accuracy"]
    line = next(line for line in md.splitlines() if line.startswith("| L1 |"))
    assert [c.strip() for c in line.strip("|").split("|")][:4] == ["L1", f"{base:.2f}", "85.79", "-"]
    assert md.startswith("### Table 13: consistency criterion")


def test_ablation_table_average_and_difference_by_hand(tmp_path):
    """All 11 datasets of a row, seeds 1 and 2: ours = mean over datasets of the seed means, HM of the averaged
    base and novel, Δ against the paper's row; a row over fewer datasets shows the paper but no Δ."""
    out = tmp_path / "out"
    base_of = {ds: 70.0 + i for i, ds in enumerate(ALL_11)}  # seeds: base +- 1, novel +- 2 around these
    for ds in ALL_11:
        cfg = B2N_IMAGENET_CFG if ds == "imagenet" else B2N_CFG
        for seed, sign in ((1, -1), (2, 1)):
            tail = osp.join(ds, "shots_16", "HiCroPL", cfg, f"seed{seed}")
            train_run(out / "ablation" / "mse" / "base2new" / "train_base" / tail, base_of[ds] + sign)
            eval_run(out / "ablation" / "mse" / "base2new" / "test_new" / tail, base_of[ds] - 10 + 2 * sign)
    for seed in (1,):  # row l1: one dataset only
        tail = osp.join("dtd", "shots_16", "HiCroPL", B2N_CFG, f"seed{seed}")
        train_run(out / "ablation" / "l1" / "base2new" / "train_base" / tail, 80.0)
        eval_run(out / "ablation" / "l1" / "base2new" / "test_new" / tail, 60.0)
    cells = csv_cells(out, "--protocol", "ablation", "--tables", "13")
    base, novel = 75.0, 65.0  # means of 70..80 and 60..70
    hm = 2 * base * novel / (base + novel)
    for metric, ours, paper in (("base", base, 85.11), ("novel", novel, 74.39), ("hm", hm, 79.39)):
        cell = cells[("ablation_13", "mse", metric)]
        assert (float(cell["mean"]), float(cell["paper"])) == (pytest.approx(ours, abs=1e-4), pytest.approx(paper))
        assert float(cell["diff"]) == pytest.approx(ours - paper, abs=1e-4) and cell["seeds"] == "1 2"
        assert cell["n"] == "11" and cell["n_counts"] == "datasets"
    partial = cells[("ablation_13", "l1", "base")]
    assert (float(partial["mean"]), partial["n"], partial["paper"], partial["diff"]) == (80.0, "1", "85.7900", "")
    assert cells[("ablation_13", "hicropl", "base")]["mean"] == ""
    md = run_parser(out, "--protocol", "ablation", "--tables", "13").stdout
    assert markdown_row(md, "L1")[:4] == ["L1", "80.00 (1/11 datasets)", "85.79", "-"]
    assert markdown_row(md, "MSE")[1:4] == [f"{base:.2f}", "85.11", f"{base - 85.11:+.2f}"]


# ---------------------------------------------------------------------------------------------------------------------
# Paper numbers
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not osp.exists(PAPER_MD), reason="../shared/paper_results.md not available")
def test_ablation_numbers_match_paper_results_md():
    text = open(PAPER_MD).read()
    paper = json.load(open(osp.join(REPO, "scripts", "paper_results.json")))["ablation"]
    for table in ("4", "5", "6", "7", "11", "12", "13"):
        block = re.search(rf"### Table {table} .*?```csv\n(.*?)```", text, re.S).group(1)
        md_rows = [line.split(",")[-3:] for line in block.strip().splitlines()[1:]]
        ours = [paper[table][row] for row in EXPECTED_ROWS[table]]
        assert [[float(v) for v in r] for r in md_rows] == [[o["base"], o["novel"], o["hm"]] for o in ours], table
