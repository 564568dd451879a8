"""The protocol scripts (``scripts/hicropl/*.sh``) and ``scripts/parse_results.py`` end to end.

1. ``DRY_RUN=1``: every reproduce script prints the commands of the paper's protocol (SPEC §7): datasets, seeds,
   configs (ImageNet base-to-novel on the 40-epoch / batch-128 config in train and test, F3), output dirs,
   base/new subsampling, shots, ``--load-epoch 5`` for cross-dataset tests, model-best for the novel test (F2),
   a seed for every few-shot run (F12).
2. Real runs on the built-in ToyShapes dataset with a tiny random CLIP for one epoch (one seed, one K): the output
   tree of SPEC §7 exists, a rerun skips finished runs, a partial run resumes, and parse_results.py turns the
   tree into tables whose numbers are those of the results files.
3. ``scripts/launch.py`` runs the same base-to-novel and cross-dataset runs on a pool of two fake GPUs in parallel;
   interrupted mid-grid and launched again, it finishes without repeating finished runs, with the accuracies of the
   sequential drivers' runs (its other tests: test_protocols_launch.py).
"""
import csv
import io
import json
import os
import os.path as osp
import shlex
import signal
import subprocess
import sys
import time

import pytest

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
SCRIPTS = osp.join(REPO, "scripts", "hicropl")
PARSER = osp.join(REPO, "scripts", "parse_results.py")
LAUNCH = osp.join(REPO, "scripts", "launch.py")

ALL_11 = ["imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101", "fgvc_aircraft",
          "sun397", "dtd", "eurosat", "ucf101"]
DG = ["imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"]
B2N_CFG = "vit_b16_c2_ep50_batch32_16ctx"
B2N_IMAGENET_CFG = "vit_b16_c2_ep40_batch128_16ctx"
FS_CFG = "vit_b16_c2_ep50_batch32_16ctx_few_shot"
XD_CFG = "vit_b16_c2_ep5_batch32_2ctx_cross_datasets"

# Shrinks every run to seconds on a CPU (tiny random CLIP, one epoch, 2 prompt layers, 32x32 inputs).
TINY_OPTS = ("MODEL.BACKBONE.NAME random:tiny TRAINER.HICROPL.TEACHER_NAME random:tiny OPTIM.MAX_EPOCH 1 "
             "DATALOADER.NUM_WORKERS 0 TRAINER.HICROPL.PREC fp32 TRAINER.HICROPL.PROMPT_DEPTH 2 "
             "TRAINER.HICROPL.CROSS_LAYER 1 INPUT.SIZE (32,32) DATALOADER.TRAIN_X.BATCH_SIZE 32 "
             "DATALOADER.TEST.BATCH_SIZE 200 USE_CUDA False")


# Environment variables the scripts read: the caller's values must not leak into the tests.
SCRIPT_ENV = ("TRAINER", "DATASETS", "SEEDS", "SOURCE", "SHOTS", "SHOTS_LIST", "CFG", "B2N_LOAD_EPOCH", "XD_LOAD_EPOCH",
              "EXTRA_OPTS", "DRY_RUN", "DATA", "OUTPUT")


def run_script(name, env_overrides, *args, cwd=None):
    env = {k: v for k, v in os.environ.items() if k not in SCRIPT_ENV}
    env.update(PYTHON=sys.executable, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **env_overrides)
    proc = subprocess.run(["bash", osp.join(SCRIPTS, name), *args], env=env, cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def flag(argv, name):
    return argv[argv.index(name) + 1] if name in argv else None


VALUE_FLAGS = {"--root", "--seed", "--trainer", "--dataset-config-file", "--config-file", "--output-dir",
               "--model-dir", "--load-epoch"}


def opts(argv):
    """The trailing KEY VALUE pairs of a ``python train.py ...`` command line, as a dict (later pairs win)."""
    i = 2
    while i < len(argv) and argv[i].startswith("--"):
        i += 2 if argv[i] in VALUE_FLAGS else 1
    pairs = argv[i:]
    assert len(pairs) % 2 == 0, argv
    return dict(zip(pairs[::2], pairs[1::2]))


def dry_run(name, tmp_path, **env):
    out = run_script(name, {"DRY_RUN": "1", "OUTPUT": str(tmp_path / "out"), "DATA": str(tmp_path / "data"), **env})
    commands = [shlex.split(line) for line in out.splitlines() if line.strip()]
    for argv in commands:
        assert argv[:2] == [sys.executable, "train.py"], argv
        assert flag(argv, "--root") == str(tmp_path / "data")
        assert flag(argv, "--trainer") == "HiCroPL"
    assert not (tmp_path / "out").exists(), "a dry run must not create anything"
    return commands


def dataset_of(argv):
    return osp.basename(flag(argv, "--dataset-config-file"))[: -len(".yaml")]


def config_of(argv):
    return osp.basename(flag(argv, "--config-file"))[: -len(".yaml")]


# ---------------------------------------------------------------------------------------------------------------------
# DRY_RUN: the commands of the paper's protocols
# ---------------------------------------------------------------------------------------------------------------------


def test_dry_run_base2new(tmp_path):
    commands = dry_run("reproduce_base2new.sh", tmp_path)
    out = str(tmp_path / "out")
    assert len(commands) == 11 * 3 * 2
    train = [c for c in commands if "--eval-only" not in c]
    test = [c for c in commands if "--eval-only" in c]
    assert {(dataset_of(c), flag(c, "--seed")) for c in train} == {(d, s) for d in ALL_11 for s in "123"}
    assert {(dataset_of(c), flag(c, "--seed")) for c in test} == {(d, s) for d in ALL_11 for s in "123"}
    for c in commands:
        ds, seed = dataset_of(c), flag(c, "--seed")
        cfg = B2N_IMAGENET_CFG if ds == "imagenet" else B2N_CFG  # F3: ImageNet 40 epochs / batch 128, both steps
        assert config_of(c) == cfg
        assert flag(c, "--dataset-config-file") == f"configs/datasets/{ds}.yaml"
        train_dir = f"{out}/base2new/train_base/{ds}/shots_16/HiCroPL/{cfg}/seed{seed}"
        assert opts(c)["DATASET.NUM_SHOTS"] == "16"
        if "--eval-only" in c:
            assert flag(c, "--output-dir") == f"{out}/base2new/test_new/{ds}/shots_16/HiCroPL/{cfg}/seed{seed}"
            assert flag(c, "--model-dir") == train_dir
            assert "--load-epoch" not in c  # F2: the novel test loads model-best.pth.tar on purpose
            assert opts(c)["DATASET.SUBSAMPLE_CLASSES"] == "new"
        else:
            assert flag(c, "--output-dir") == train_dir
            assert "--model-dir" not in c
            assert opts(c)["DATASET.SUBSAMPLE_CLASSES"] == "base"
    # each test follows its training run
    assert [dataset_of(c) for c in commands[:2]] == ["imagenet", "imagenet"] and "--eval-only" in commands[1]


def test_dry_run_few_shot(tmp_path):
    commands = dry_run("reproduce_few_shot.sh", tmp_path)
    out = str(tmp_path / "out")
    assert len(commands) == 11 * 5 * 3
    seen = set()
    for c in commands:
        ds, seed, shots = dataset_of(c), flag(c, "--seed"), opts(c)["DATASET.NUM_SHOTS"]
        seen.add((ds, shots, seed))
        assert seed in ("1", "2", "3")  # F12: every run gets its seed
        assert config_of(c) == FS_CFG
        assert flag(c, "--output-dir") == f"{out}/{ds}/HiCroPL/{FS_CFG}_{shots}shots/seed{seed}"
        assert "--eval-only" not in c and "DATASET.SUBSAMPLE_CLASSES" not in opts(c)
    assert seen == {(d, k, s) for d in ALL_11 for k in ("1", "2", "4", "8", "16") for s in "123"}


@pytest.mark.parametrize("script,targets", [("reproduce_cross_dataset.sh", ALL_11[1:]),
                                            ("reproduce_domain_generalization.sh", DG)])
def test_dry_run_transfer(tmp_path, script, targets):
    commands = dry_run(script, tmp_path)
    out = str(tmp_path / "out")
    assert len(commands) == 3 * (1 + len(targets))
    for c in commands:
        assert config_of(c) == XD_CFG
    train = [c for c in commands if "--eval-only" not in c]
    assert [(dataset_of(c), flag(c, "--seed")) for c in train] == [("imagenet", s) for s in "123"]
    for c in train:
        assert flag(c, "--output-dir") == f"{out}/imagenet/HiCroPL/{XD_CFG}_16shots/seed{flag(c, '--seed')}"
        assert opts(c)["DATASET.NUM_SHOTS"] == "16" and "DATASET.SUBSAMPLE_CLASSES" not in opts(c)
    test = [c for c in commands if "--eval-only" in c]
    assert {(dataset_of(c), flag(c, "--seed")) for c in test} == {(d, s) for d in targets for s in "123"}
    for c in test:
        seed = flag(c, "--seed")
        assert flag(c, "--output-dir") == f"{out}/evaluation/HiCroPL/{XD_CFG}_16shots/{dataset_of(c)}/seed{seed}"
        assert flag(c, "--model-dir") == f"{out}/imagenet/HiCroPL/{XD_CFG}_16shots/seed{seed}"
        assert flag(c, "--load-epoch") == "5"  # the last epoch of the 5-epoch config, as released
        assert opts(c) == {"DATASET.NUM_SHOTS": "-1"}  # test only: no few-shot subset of the target (F23)
    # the source model of a seed is trained before its targets are tested
    assert "--eval-only" not in commands[0] and all("--eval-only" in c for c in commands[1:1 + len(targets)])


def test_dry_run_env_and_pass_through(tmp_path):
    commands = dry_run("reproduce_base2new.sh", tmp_path, SEEDS="2", DATASETS="eurosat dtd",
                       EXTRA_OPTS="OPTIM.MAX_EPOCH 3 DATALOADER.NUM_WORKERS 0")
    assert [(dataset_of(c), flag(c, "--seed"), "--eval-only" in c) for c in commands] == [
        ("eurosat", "2", False), ("eurosat", "2", True), ("dtd", "2", False), ("dtd", "2", True)]
    for c in commands:
        assert c[-4:] == ["OPTIM.MAX_EPOCH", "3", "DATALOADER.NUM_WORKERS", "0"]
    # SOURCE and XD_LOAD_EPOCH of the transfer protocols, SHOTS_LIST of few-shot
    commands = dry_run("reproduce_cross_dataset.sh", tmp_path, SEEDS="1", DATASETS="dtd", SOURCE="caltech101",
                       XD_LOAD_EPOCH="2")
    assert [dataset_of(c) for c in commands] == ["caltech101", "dtd"]
    assert flag(commands[1], "--load-epoch") == "2"
    assert flag(commands[1], "--model-dir").endswith(f"/caltech101/HiCroPL/{XD_CFG}_16shots/seed1")
    commands = dry_run("reproduce_few_shot.sh", tmp_path, SEEDS="1", DATASETS="dtd", SHOTS_LIST="4")
    assert len(commands) == 1 and opts(commands[0])["DATASET.NUM_SHOTS"] == "4"
    # trailing KEY VALUE arguments come after EXTRA_OPTS, so they win
    out = run_script("base2new_train.sh", {"DRY_RUN": "1", "OUTPUT": str(tmp_path / "out"),
                                           "EXTRA_OPTS": "OPTIM.MAX_EPOCH 3"}, "dtd", "1", "OPTIM.MAX_EPOCH", "2")
    argv = shlex.split(out)
    assert argv[-4:] == ["OPTIM.MAX_EPOCH", "3", "OPTIM.MAX_EPOCH", "2"] and opts(argv)["OPTIM.MAX_EPOCH"] == "2"


def test_bad_arguments_give_one_line_errors(tmp_path):
    for args, message in [(["few_shot.sh", "nosuchset", "1", "1"], "unknown dataset id 'nosuchset'"),
                          (["few_shot.sh", "dtd", "1", "0"], "seed must be a positive integer"),
                          (["base2new_train.sh", "dtd"], "usage:")]:
        proc = subprocess.run(["bash", osp.join(SCRIPTS, args[0]), *args[1:]], capture_output=True, text=True,
                              env={**os.environ, "DRY_RUN": "1", "OUTPUT": str(tmp_path)})
        assert proc.returncode == 2
        assert proc.stderr.startswith("error: ") and message in proc.stderr and proc.stderr.count("\n") == 1


# ---------------------------------------------------------------------------------------------------------------------
# Real runs on ToyShapes
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy_tree(tmp_path_factory):
    """All four reproduce scripts on ToyShapes (seed 1, K = 2), tiny random CLIP, one epoch."""
    root = tmp_path_factory.mktemp("protocols")
    env = {"OUTPUT": str(root / "output"), "DATA": str(root / "data"), "SEEDS": "1", "DATASETS": "toy_shapes",
           "SOURCE": "toy_shapes", "SHOTS_LIST": "2", "XD_LOAD_EPOCH": "1", "EXTRA_OPTS": TINY_OPTS}
    logs = {name: run_script(f"reproduce_{name}.sh", env)
            for name in ("base2new", "few_shot", "cross_dataset", "domain_generalization")}
    return root / "output", env, logs


def final_test(run_dir):
    with open(osp.join(run_dir, "results.json")) as f:
        records = json.load(f)["evaluations"]
    return [r for r in records if r["split"] == "test"][-1]


def b2n_dir(out, split):
    return out / "base2new" / split / "toy_shapes" / "shots_16" / "HiCroPL" / B2N_CFG / "seed1"


def test_output_tree(toy_tree):
    out, _, logs = toy_tree
    train, test = b2n_dir(out, "train_base"), b2n_dir(out, "test_new")
    fewshot = out / "toy_shapes" / "HiCroPL" / f"{FS_CFG}_2shots" / "seed1"
    source = out / "toy_shapes" / "HiCroPL" / f"{XD_CFG}_16shots" / "seed1"
    target = out / "evaluation" / "HiCroPL" / f"{XD_CFG}_16shots" / "toy_shapes" / "seed1"
    for run in (train, fewshot, source):
        for name in ("log.txt", "results.json", "VLPromptLearner/model-best.pth.tar",
                     "VLPromptLearner/model.pth.tar-1"):
            assert (run / name).is_file(), run / name
    for run in (test, target):
        assert (run / "log.txt").is_file() and (run / "results.json").is_file()
        assert not (run / "VLPromptLearner").exists()

    record = final_test(train)
    assert (record["dataset"], record["subsample"], record["shots"], record["seed"]) == ("ToyShapes", "base", 16, 1)
    assert record["checkpoint"].endswith("model-best.pth.tar")  # tested after training, on the best-val model
    record = final_test(test)
    assert (record["subsample"], record["shots"]) == ("new", 16)
    assert record["checkpoint"] == str(train / "VLPromptLearner" / "model-best.pth.tar")  # F2
    record = final_test(fewshot)
    assert (record["subsample"], record["shots"], record["seed"]) == ("all", 2, 1)
    record = final_test(target)
    assert (record["checkpoint"], record["subsample"]) == (str(source / "VLPromptLearner" / "model.pth.tar-1"), "all")
    assert record["shots"] == -1  # evaluated on the full test split without sampling a few-shot train subset
    # domain generalisation reuses the cross-dataset source model and, here, the same target run: both skipped
    assert "run:" not in logs["domain_generalization"]
    assert logs["domain_generalization"].count("skip (finished):") == 2


def test_rerun_skips_finished_and_resumes_partial(toy_tree):
    out, env, _ = toy_tree
    before = {p: os.stat(p).st_mtime_ns for p in out.rglob("results.json")}
    log = run_script("reproduce_base2new.sh", env)
    assert "run:" not in log and log.count("skip (finished):") == 2
    assert {p: os.stat(p).st_mtime_ns for p in out.rglob("results.json")} == before

    # A run interrupted after its last checkpoint but before the final test: the rerun resumes and tests.
    fewshot = out / "toy_shapes" / "HiCroPL" / f"{FS_CFG}_2shots" / "seed1"
    path = fewshot / "results.json"
    data = json.loads(path.read_text())
    expected = final_test(fewshot)["accuracy"]
    data["evaluations"] = [r for r in data["evaluations"] if r["split"] != "test"]
    path.write_text(json.dumps(data))
    log = run_script("few_shot.sh", env, "toy_shapes", "2", "1", *TINY_OPTS.split())
    assert log.startswith("run: ")
    logs = sorted(p.name for p in fewshot.iterdir() if p.name.startswith("log.txt"))
    assert len(logs) == 2  # the rerun wrote log.txt-<time>
    assert "will resume training" in (fewshot / logs[-1]).read_text()
    assert final_test(fewshot)["accuracy"] == pytest.approx(expected)
    assert "skip (finished):" in run_script("few_shot.sh", env, "toy_shapes", "2", "1")


def parse(out, *args):
    proc = subprocess.run([sys.executable, PARSER, str(out), "--datasets", "toy_shapes", "--source", "toy_shapes",
                           *args], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_parse_results_matches_results_files(toy_tree, tmp_path):
    out, _, _ = toy_tree
    base = final_test(b2n_dir(out, "train_base"))["accuracy"]
    novel = final_test(b2n_dir(out, "test_new"))["accuracy"]
    fewshot = final_test(out / "toy_shapes" / "HiCroPL" / f"{FS_CFG}_2shots" / "seed1")["accuracy"]
    source = final_test(out / "toy_shapes" / "HiCroPL" / f"{XD_CFG}_16shots" / "seed1")["accuracy"]
    target = final_test(out / "evaluation" / "HiCroPL" / f"{XD_CFG}_16shots" / "toy_shapes" / "seed1")["accuracy"]
    hm = 2 * base * novel / (base + novel)

    rows = list(csv.DictReader(io.StringIO(parse(out, "--csv"))))
    got = {(r["table"], r["dataset"], r["metric"]): r for r in rows}
    expected = {
        ("base2new", "toy_shapes", "base"): base, ("base2new", "toy_shapes", "novel"): novel,
        ("base2new", "toy_shapes", "hm"): hm, ("base2new", "average", "base"): base,
        ("base2new", "average", "novel"): novel, ("base2new", "average", "hm"): hm,
        ("fewshot", "toy_shapes", "2shots"): fewshot, ("fewshot", "average", "2shots"): fewshot,
        ("xd", "toy_shapes", "source"): source, ("xd", "toy_shapes", "target"): target,
        ("xd", "average", "target"): target, ("dg", "toy_shapes", "source"): source,
        ("dg", "toy_shapes", "target"): target,
    }
    for key, value in expected.items():
        assert float(got[key]["mean"]) == pytest.approx(value, abs=1e-4), key
    base_cell = got[("base2new", "toy_shapes", "base")]
    assert (base_cell["seeds"], base_cell["n"], base_cell["std"]) == ("1", "1", "")  # no std from one seed
    for k in ("1", "4", "8", "16"):  # K values never run: empty, not an error
        assert got[("fewshot", "toy_shapes", f"{k}shots")]["mean"] == ""

    md = parse(out, "--protocol", "base2new")
    row = next(line for line in md.splitlines() if line.startswith("| toy_shapes |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells == ["toy_shapes", f"{base:.2f}", "-", "-", f"{novel:.2f}", "-", "-", f"{hm:.2f}", "-", "-"]

    png = tmp_path / "fewshot.png"
    parse(out, "--protocol", "fewshot", "--plot", str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------------------------------
# scripts/launch.py: the same runs on a local pool of (fake) GPUs
# ---------------------------------------------------------------------------------------------------------------------


def launch_env(**overrides):
    env = {k: v for k, v in os.environ.items() if k not in SCRIPT_ENV and k != "CUDA_VISIBLE_DEVICES"}
    env.update(PYTHON=sys.executable, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **overrides)
    return env


def wait_for(predicate, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_launch_pool_interrupted_and_relaunched_matches_drivers(toy_tree, tmp_path):
    seq, env, _ = toy_tree
    source = seq / "toy_shapes" / "HiCroPL" / f"{XD_CFG}_16shots" / "seed1"
    target = seq / "evaluation" / "HiCroPL" / f"{XD_CFG}_16shots" / "toy_shapes" / "seed1"
    runs = [b2n_dir(seq, "train_base"), b2n_dir(seq, "test_new"), source, target]
    reference = {str(run.relative_to(seq)): final_test(run)["accuracy"] for run in runs}
    out = tmp_path / "pool"
    env = launch_env(**{**env, "OUTPUT": str(out)})
    command = [sys.executable, LAUNCH, "base2new,cross_dataset", "--gpus", "7,9"]  # 2 trainings, then 2 tests

    with open(tmp_path / "launch1.txt", "w") as log:
        first = subprocess.Popen(command, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: "] done " in (tmp_path / "launch1.txt").read_text(), 240, "a first finished run")
            first.send_signal(signal.SIGINT)
            assert first.wait(120) == 130
        finally:
            if first.poll() is None:
                first.kill()
    text = (tmp_path / "launch1.txt").read_text()
    assert "running 2" in text  # two runs at once, one per fake device
    assert "interrupted" in text and "launch the same command again" in text
    finished = {p: os.stat(p).st_mtime_ns for p in out.rglob("results.json")
                if "test" in [r["split"] for r in json.loads(p.read_text())["evaluations"]]}
    assert 1 <= len(finished) < 4

    proc = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{4 - len(finished)} run(s) to do, {len(finished)} already finished" in proc.stdout
    assert f"summary: {4 - len(finished)} done, 0 failed" in proc.stdout
    assert {p: os.stat(p).st_mtime_ns for p in finished} == finished  # finished runs were not run again
    got = {osp.relpath(osp.dirname(p), out): final_test(osp.dirname(p))["accuracy"]
           for p in map(str, out.rglob("results.json"))}
    assert got == pytest.approx(reference)
    logs = sorted((out / "launch_logs").iterdir())
    assert len(logs) == 4
    assert all("CUDA_VISIBLE_DEVICES=7" in p.read_text() or "CUDA_VISIBLE_DEVICES=9" in p.read_text() for p in logs)
