"""No rerun, resume, eval-only run or second process replaces, relabels or mixes a result (issue 12, part A).

Runs are ``train.py`` (HiCroPL, ``random:tiny`` CLIP, ToyShapes, 4 shots, batch 8, 1 epoch, fp32, CPU) in children
of the zygote (test_reliability_zygote.py). The scenarios are those a user hits: an eval-only run on the new classes
into the training dir, reruns of the training command with other classes / another seed / other hyper-parameters,
resuming with a changed schedule, a checkpoint loaded under another mapper head count, two processes on one dir.
"""
import hashlib
import json
import multiprocessing
import os
import signal

import pytest
import torch

from dassl.engine.results import append_result
from dassl.utils import DirectoryInUseError, OutputDirLock
from test_protocols_parse import pr
from test_reliability_zygote import TRAIN_PY, message_lines, wait_for, zygote

MODEL = "VLPromptLearner"


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return tmp_path_factory.mktemp("identity")


def env(ws):
    return {"HICROPL_OFFLINE": "1", "CLIP_CACHE_DIR": str(ws / "clip"), "HICROPL_CACHE_DIR": str(ws / "cache")}


def command(ws, out, *opts, seed=1, subsample="base", flags=()):
    return [
        "--root", ws / "data", "--seed", seed, "--trainer", "HiCroPL", *flags,
        "--dataset-config-file", "configs/datasets/toy_shapes.yaml",
        "--config-file", "configs/trainers/HiCroPL/demo_tiny.yaml", "--output-dir", out,
        "DATASET.NUM_SHOTS", "4", "DATASET.SUBSAMPLE_CLASSES", subsample, "DATALOADER.TRAIN_X.BATCH_SIZE", "8",
        "OPTIM.MAX_EPOCH", "1", "TRAINER.HICROPL.PREC", "fp32", "DATALOADER.NUM_WORKERS", "0", "USE_CUDA", "False",
        *opts,
    ]


def run(ws, args, rc=0, **kwargs):
    result = zygote().run(args, str(ws / "logs"), env=env(ws), **kwargs)
    assert result.rc == rc, result.stderr[-3000:]
    return result


def evaluations(out):
    return json.loads((out / "results.json").read_text())["evaluations"]


def final_records(out):
    """(stage, subsample, seed of the evaluated model, accuracy) of every test record."""
    return [(r["stage"], r["subsample"], r["model_identity"]["SEED"], r["accuracy"])
            for r in evaluations(out) if r["split"] == "test"]


def refused(ws, out, args, *fragments):
    """The run stops with exit 2 and one error line holding ``fragments`` in order; results.json is untouched."""
    before = (out / "results.json").read_bytes()
    result = run(ws, args, rc=2)
    lines = message_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    position = 0
    for fragment in fragments:
        found = lines[0].find(fragment, position)
        assert found >= 0, f"{fragment!r} not in {lines[0]!r}"
        position = found + len(fragment)
    assert (out / "results.json").read_bytes() == before
    return lines[0]


@pytest.fixture(scope="module")
def trained(ws):
    """A finished 1-epoch training run on the base classes, seed 1."""
    out = ws / "seed1"
    run(ws, command(ws, out))
    return out


def test_eval_only_into_the_training_dir_adds_a_record(ws, trained):
    base = final_records(trained)
    assert [t[:3] for t in base] == [("final", "base", 1)]
    run(ws, command(ws, trained, subsample="new", flags=["--eval-only", "--model-dir", trained]))
    after = final_records(trained)
    assert after[0] == base[0]  # the base test record is still there, unchanged
    assert [t[:3] for t in after[1:]] == [("eval", "new", 1)]
    record = evaluations(trained)[-1]
    best = trained / MODEL / "model-best.pth.tar"
    assert record["checkpoint"] == str(best) and record["epoch"] == 1
    # The hash of the weights in that file (names, dtypes, shapes, bytes in order), the same for both records.
    digest = hashlib.sha256()
    for key, value in torch.load(best, weights_only=True)["state_dict"].items():
        digest.update(f"{MODEL}/{key}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    assert record["weights_sha256"] == evaluations(trained)[1]["weights_sha256"] == digest.hexdigest()
    assert record["model_identity"]["DATASET.SUBSAMPLE_CLASSES"] == "base"  # trained on base, evaluated on new
    assert record["config"]["DATASET"]["SUBSAMPLE_CLASSES"] == "new"
    # parse_results takes each cell from its own record of the same folder.
    assert pr.run_accuracy(str(trained), "train", seed=1, subsample="base") == base[0][3]
    assert pr.run_accuracy(str(trained), "eval", seed=1, subsample="new") == after[1][3]


@pytest.mark.parametrize("change, expected", [
    ({"subsample": "new"}, ["DATASET.SUBSAMPLE_CLASSES 'base' -> 'new'"]),
    ({"seed": 2}, ["SEED 1 -> 2"]),
    ({"opts": ["OPTIM.LR", "0.5", "TRAINER.HICROPL.LAMBD", "7."]},
     ["OPTIM.LR 0.005 -> 0.5", "TRAINER.HICROPL.LAMBD 1.0 -> 7.0"]),
])
def test_rerun_with_another_identity_is_refused(ws, trained, change, expected):
    args = command(ws, trained, *change.get("opts", ()), seed=change.get("seed", 1),
                   subsample=change.get("subsample", "base"))
    refused(ws, trained, args, "error: cannot resume from", *expected, "new --output-dir", "--accept-config-change")


def test_rerun_of_the_same_command_keeps_every_record(ws, trained):
    before = evaluations(trained)
    run(ws, command(ws, trained))  # resumes at the end: tests again; an equal record is not added twice
    assert evaluations(trained) == before


def test_resume_with_a_changed_schedule_needs_the_flag_and_is_recorded(ws):
    out = ws / "schedule"
    last = ["TEST.FINAL_MODEL", "last_step"]  # the test after training evaluates the last epoch's model
    run(ws, command(ws, out, *last))
    longer = last + ["OPTIM.MAX_EPOCH", "2", "OPTIM.LR", "0.5"]
    refused(ws, out, command(ws, out, *longer), "OPTIM.LR 0.005 -> 0.5", "OPTIM.MAX_EPOCH 1 -> 2")
    result = run(ws, command(ws, out, *longer, flags=["--accept-config-change"]))
    assert "Accepted config change at epoch 1" in result.stdout
    change = [{"epoch": 1, "changes": {"OPTIM.LR": [0.005, 0.5], "OPTIM.MAX_EPOCH": [1, 2]}}]
    records = evaluations(out)
    assert [(r["split"], r["stage"], r["epoch"], r["model_identity_changes"]) for r in records] == [
        ("test", "final", 1, []), ("test", "final", 2, change)]
    assert torch.load(out / MODEL / "model.pth.tar-2", weights_only=True)["identity_changes"] == change
    assert json.loads((out / "identity.json").read_text())["identity_changes"] == change


def test_checkpoint_of_other_mapper_heads_is_refused(ws, trained):
    args = command(ws, trained, "TRAINER.HICROPL.MAPPER_HEADS", "4", subsample="new",
                   flags=["--eval-only", "--model-dir", trained])
    refused(ws, trained, args, "error: cannot load", "model-best.pth.tar",
            "TRAINER.HICROPL.MAPPER_HEADS is 8 in the checkpoint but 4 in the config")


def process_state(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def test_second_process_on_an_output_dir_is_refused_and_a_killed_owner_leaves_no_lock(ws):
    out = ws / "two"
    args = command(ws, out, "OPTIM.MAX_EPOCH", "2", "TRAIN.CHECKPOINT_FREQ", "1")
    # The first run stops itself (SIGSTOP, alive) before its third checkpoint write: epoch 1 is saved.
    first = zygote().spawn(args, str(ws / "logs"), env=env(ws),
                           faults=[{"kind": "stop_at_call", "function": "dassl.engine.trainer.save_checkpoint",
                                    "nth": 3}])
    wait_for(lambda: process_state(first.pid) == "T", timeout=120, what="the first run to stop")
    second = run(ws, args, rc=2)
    assert message_lines(second.stderr) == [
        f"error: output dir {out} is in use by process {first.pid} ({' '.join(map(str, [TRAIN_PY] + args))});"
        " wait for that run to end (or stop it), or choose another --output-dir"
    ]
    first.kill(signal.SIGKILL)
    assert first.wait().rc == -9
    again = run(ws, args)
    assert "Found checkpoint at" in again.stdout
    assert [(r["split"], r["epoch"]) for r in evaluations(out)] == [("val", 1), ("val", 2), ("test", 2)]
    assert not (out / "run.lock").exists()


def test_output_dir_lock_in_process(tmp_path):
    owner = OutputDirLock(str(tmp_path), command="train.py A")
    with pytest.raises(DirectoryInUseError, match=rf"in use by process {os.getpid()} \(train.py A\)"):
        OutputDirLock(str(tmp_path))
    owner.release()
    assert not (tmp_path / "run.lock").exists()
    OutputDirLock(str(tmp_path)).release()


def _append_many(path, writer, count):
    for i in range(count):
        append_result(path, {"split": "test", "writer": writer, "i": i})


def test_concurrent_writers_lose_no_record(tmp_path):
    path = str(tmp_path / "results.json")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(path, w, 15)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    got = sorted((r["writer"], r["i"]) for r in json.loads(open(path).read())["evaluations"])
    assert got == [(w, i) for w in range(4) for i in range(15)]


def test_parse_results_picks_each_cell_from_its_record_and_warns_on_conflicts(tmp_path, capsys):
    def rec(stage, subsample, model_seed, accuracy, seed=None):
        return {"split": "test", "stage": stage, "subsample": subsample, "seed": model_seed if seed is None else seed,
                "model_identity": {"SEED": model_seed}, "accuracy": accuracy, "checkpoint": "/m/model-best.pth.tar"}

    run_dir = tmp_path / "seed1"
    records = [
        {"split": "val", "stage": "epoch", "subsample": "base", "seed": 1, "accuracy": 99.0},
        rec("final", "base", 1, 70.0),
        rec("eval", "new", 1, 40.0),
        rec("eval", "new", 1, 40.0, seed=2),  # --eval-only --seed 2 of the seed-1 model: still the seed-1 model
        rec("eval", "base", 1, 71.0),  # eval-only on the base classes: not the training run's result
    ]
    run_dir.mkdir()
    (run_dir / "results.json").write_text(json.dumps({"schema": 2, "evaluations": records}))
    assert pr.run_accuracy(str(run_dir), "train", seed=1, subsample="base") == 70.0
    assert pr.run_accuracy(str(run_dir), "eval", seed=1, subsample="new") == 40.0
    assert capsys.readouterr().err == ""  # equal duplicates are no conflict
    records.append(rec("final", "base", 1, 72.0))  # e.g. a resume with an accepted change
    (run_dir / "results.json").write_text(json.dumps({"schema": 2, "evaluations": records}))
    assert pr.run_accuracy(str(run_dir), "train", seed=1, subsample="base") == 72.0
    assert capsys.readouterr().err == (f"warning: {run_dir}: 2 test records fit this cell with different accuracies "
                                       "(70.00, 72.00); using the latest (72.00)\n")
    # A folder named seed1 holding only another seed's model gives no number (never a mislabelled one).
    assert pr.run_accuracy(str(run_dir), "train", seed=3, subsample="base") is None
    assert "no test record of a seed-3 model" in capsys.readouterr().err
