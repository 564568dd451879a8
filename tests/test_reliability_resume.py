"""Kill anywhere, resume, get the same result; same seed, same result; a NaN loss stops with one line.

Every run is ``train.py`` (HiCroPL, ``random:tiny`` CLIP, ToyShapes base classes, 8 shots, batch 8 -> 5 batches per
epoch, 3 epochs, a checkpoint every epoch, fp32, CPU) in a child process (see test_reliability_zygote.py). The
independent expectation is the uninterrupted run with the same command: a run SIGKILLed at any point -- at seeded
random times, mid-epoch, half-way through writing a checkpoint, between writing a temp file and renaming it, while
writing results.json, while generating the dataset -- or stopped by Ctrl-C, and restarted with the same command,
must end with the same results.json (every record, config included), the same learned prompts, only loadable
checkpoints (``weights_only=True``) and no stray temp files.
"""
import json
import os
import random
import re
import signal
import time

import pytest
import torch

from dassl.engine.results import VOLATILE_FIELDS
from test_reliability_zygote import message_lines, zygote

MODEL = "VLPromptLearner"
EPOCHS, BATCHES = 3, 5


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return tmp_path_factory.mktemp("resume")


def env(ws):
    return {"HICROPL_OFFLINE": "1", "CLIP_CACHE_DIR": str(ws / "clip"), "HICROPL_CACHE_DIR": str(ws / "cache")}


# CPU and fp32 (what the test suite runs); HICROPL_TEST_CUDA=1 and HICROPL_TEST_PREC run the same checks on a GPU.
USE_CUDA = os.environ.get("HICROPL_TEST_CUDA", "0") == "1"
PREC = os.environ.get("HICROPL_TEST_PREC", "fp32")


def command(ws, out, seed=1, epochs=EPOCHS):
    return [
        "--root", ws / "data", "--seed", seed, "--trainer", "HiCroPL",
        "--dataset-config-file", "configs/datasets/toy_shapes.yaml",
        "--config-file", "configs/trainers/HiCroPL/demo_tiny.yaml", "--output-dir", out,
        "DATASET.NUM_SHOTS", "8", "DATASET.SUBSAMPLE_CLASSES", "base", "DATALOADER.TRAIN_X.BATCH_SIZE", "8",
        "OPTIM.MAX_EPOCH", epochs, "TRAIN.CHECKPOINT_FREQ", "1", "TRAIN.PRINT_FREQ", "1",
        "TRAINER.HICROPL.PREC", PREC, "DATALOADER.NUM_WORKERS", "0", "USE_CUDA", str(USE_CUDA),
    ]


def train(ws, out, **kwargs):
    result = zygote().run(command(ws, out, **kwargs), str(ws / "logs"), env=env(ws))
    assert result.rc == 0, result.stderr[-3000:]
    return result


def results(out):
    """results.json with the output dir replaced by a placeholder, without the records' wall times, memory and file
    names (``VOLATILE_FIELDS``: the only things allowed to differ)."""
    data = json.loads((out / "results.json").read_text().replace(str(out), "<OUT>"))
    data["evaluations"] = [{k: v for k, v in r.items() if k not in VOLATILE_FIELDS} for r in data["evaluations"]]
    return data


def learned(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def same(x, y):
    """Exact equality of nested checkpoint contents (tensors bit for bit)."""
    if isinstance(x, torch.Tensor):
        return isinstance(y, torch.Tensor) and x.dtype == y.dtype and torch.equal(x, y)
    if isinstance(x, dict):
        return isinstance(y, dict) and list(x) == list(y) and all(same(x[k], y[k]) for k in x)
    if isinstance(x, (list, tuple)):
        return type(x) is type(y) and len(x) == len(y) and all(same(u, v) for u, v in zip(x, y))
    return x == y


def assert_same_learning(a, b):
    """Same results.json; the same checkpoint files (and resume pointer) holding the same prompts, optimizer and
    scheduler states, epochs and val results."""
    assert results(a) == results(b)
    files = sorted(p.name for p in (a / MODEL).iterdir())
    assert sorted(p.name for p in (b / MODEL).iterdir()) == files
    assert (a / MODEL / "checkpoint").read_text() == (b / MODEL / "checkpoint").read_text()
    for name in files:
        if name.startswith("model"):
            x, y = learned(a / MODEL / name), learned(b / MODEL / name)
            for key in ("epoch", "val_result", "best_result", "state_dict", "optimizer", "scheduler"):
                assert same(x[key], y[key]), (name, key)


def temp_files(out):
    return sorted(str(p.relative_to(out)) for p in out.rglob(".*") if p.is_file())


def assert_checkpoints_load(out):
    """Every checkpoint on disk loads with weights_only=True; the resume pointer names one of them."""
    folder = out / MODEL
    if not folder.exists():
        return
    for path in folder.iterdir():
        if path.name.startswith("model"):
            checkpoint = learned(path)
            assert set(checkpoint) >= {"state_dict", "epoch", "optimizer", "scheduler", "rng_state"}, path
    if (folder / "checkpoint").exists():
        assert (folder / (folder / "checkpoint").read_text().strip()).is_file()


@pytest.fixture(scope="module")
def reference(ws):
    """The uninterrupted run (also generates the ToyShapes images, the few-shot split and the W cache)."""
    out = ws / "reference"
    train(ws, out)
    return out


def test_same_seed_twice_gives_identical_results_and_prompts(ws, reference):
    again = ws / "again"
    train(ws, again)
    assert_same_learning(reference, again)
    assert [r["split"] for r in results(again)["evaluations"]] == ["val"] * EPOCHS + ["test"]
    # The comparison can see a difference: another seed learns other prompts.
    other = ws / "other_seed"
    train(ws, other, seed=2, epochs=1)
    a = learned(reference / MODEL / "model.pth.tar-1")["state_dict"]
    b = learned(other / MODEL / "model.pth.tar-1")["state_dict"]
    assert any(not torch.equal(a[key], b[key]) for key in a)


def run_and_kill(ws, out, faults=(), kill_after_line=None, kill_after_s=None, sig=signal.SIGKILL,
                 expect_killed=True):
    """Run the command into ``out`` (resuming what is there), stop it as asked; check every checkpoint still loads."""
    child = zygote().spawn(command(ws, out), str(ws / "logs"), env=env(ws), faults=list(faults))
    if kill_after_line is not None:
        child.wait_until(lambda: kill_after_line in child.stdout(), what=kill_after_line)
        child.kill(sig)
    elif kill_after_s is not None:
        time.sleep(kill_after_s)
        child.kill(sig)
    result = child.wait()
    if expect_killed:
        assert result.rc == (-9 if sig == signal.SIGKILL else 130), (faults, result.rc, result.stderr[-2000:])
    else:
        assert result.rc in (0, -9), result.stderr[-2000:]
    assert_checkpoints_load(out)
    return result


def test_killed_anywhere_and_resumed_gives_the_uninterrupted_result(ws, reference):
    out = ws / "killed"
    # Each kill below is sure to land (the run still has that point ahead of it), whatever the val accuracies.
    # Half-way through writing the temp file of the first epoch's checkpoint.
    run_and_kill(ws, out, [{"kind": "kill_in_save", "name": "model.pth.tar-1", "nth": 1}])
    assert temp_files(out), "the fault should have left a half-written temp file"
    # Mid-epoch 2, by Ctrl-C: one line that says how to go on.
    interrupted = run_and_kill(ws, out, kill_after_line=f"epoch [2/{EPOCHS}] batch [2/{BATCHES}]", sig=signal.SIGINT)
    assert message_lines(interrupted.stderr) == [
        "error: interrupted; run the same command again to resume from the last saved checkpoint"
    ]
    # Mid-epoch 2.
    run_and_kill(ws, out, kill_after_line=f"epoch [2/{EPOCHS}] batch [3/{BATCHES}]")
    # Epoch 2's checkpoint fully written to its temp file, not yet renamed.
    run_and_kill(ws, out, [{"kind": "kill_before_replace", "name": "model.pth.tar-2", "nth": 1}])
    # A checkpoint renamed into place, the resume pointer not yet updated to name it.
    run_and_kill(ws, out, [{"kind": "kill_before_replace", "name": "checkpoint", "nth": 1}])
    # While writing results.json: a val record, then the final test record.
    run_and_kill(ws, out, [{"kind": "kill_before_replace", "name": "results.json", "nth": 1}])
    log = run_and_kill(ws, out, [{"kind": "kill_before_replace", "name": "results.json", "nth": 1,
                                  "when_stdout_contains": "Evaluate on the *test* set"}])
    assert "Found checkpoint at" in log.stdout
    final = run_and_kill(ws, out, expect_killed=False)
    assert final.rc == 0, final.stderr[-3000:]
    assert_same_learning(reference, out)
    assert temp_files(out) == []  # stale temp files of killed runs are cleaned up on resume


def test_killed_at_random_points_and_resumed_gives_the_uninterrupted_result(ws, reference):
    """Killed wherever seeded random delays after the start land (building, training, saving, testing)."""
    out = ws / "killed_at_random"
    rng = random.Random(9)
    for _ in range(3):
        run_and_kill(ws, out, kill_after_s=rng.uniform(0.3, 2.5), expect_killed=False)
    final = run_and_kill(ws, out, expect_killed=False)
    assert final.rc == 0, final.stderr[-3000:]
    assert_same_learning(reference, out)
    assert temp_files(out) == []


def test_nan_loss_stops_with_one_line_and_keeps_the_last_good_checkpoint(ws, reference):
    out = ws / "nan"
    fault = {"kind": "nan_input", "trainer": "HiCroPL", "epoch": 2, "batch": 3}
    result = zygote().run(command(ws, out), str(ws / "logs"), env=env(ws), faults=[fault])
    assert result.rc == 3, result.stderr[-3000:]
    lines = message_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    match = re.fullmatch(
        rf"error: Loss is infinite or NaN at epoch 2/{EPOCHS}, batch 3/{BATCHES}: loss=nan \((.+)\); (.+)", lines[0]
    )
    assert match, lines[0]
    terms = dict(term.split("=") for term in match.group(1).split(", "))
    assert list(terms) == ["ce", "text_consistency", "image_consistency"]  # the loss of SPEC §4.3, term by term
    assert terms["ce"] == "nan" and terms["image_consistency"] == "nan"  # NaN images -> NaN image features
    assert float(terms["text_consistency"]) >= 0  # the text side never sees the images
    assert (out / "log.txt").read_text().splitlines()[-1] == lines[0]  # the log says why the run stopped

    # Nothing after epoch 1 was written, and what was written is the reference's epoch-1 state.
    assert sorted(p.name for p in (out / MODEL).iterdir()) == ["checkpoint", "model-best.pth.tar", "model.pth.tar-1"]
    assert (out / MODEL / "checkpoint").read_text().strip() == "model.pth.tar-1"
    for name in ("model.pth.tar-1",):
        a, b = learned(out / MODEL / name), learned(reference / MODEL / name)
        for key in a["state_dict"]:
            assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    assert temp_files(out) == []
    # The last good checkpoint is a working resume point: without the fault the run ends like the reference.
    train(ws, out)
    assert_same_learning(reference, out)


def test_killed_while_generating_the_dataset(ws, reference):
    """ToyShapes is generated into a temp folder and renamed: a kill mid-generation leaves no half dataset behind,
    and the next run generates the same dataset as an uninterrupted one (split file and images byte-identical)."""
    root = ws / "fresh_root"
    args = ["--no-train"] + command(ws, ws / "gen_out")
    args[args.index("--root") + 1] = root
    # Killed while drawing the 200th of 440 images.
    fault = {"kind": "kill_at_call", "function": "datasets.toy_shapes.draw_shape", "nth": 200}
    assert zygote().run(args, str(ws / "logs"), env=env(ws), faults=[fault]).rc == -9
    assert [p.name.startswith(".toy_shapes-") for p in root.iterdir()] == [True]  # only the half-drawn temp folder
    assert not (root / "toy_shapes").exists()  # nothing half-generated under the real name

    result = zygote().run(args, str(ws / "logs"), env=env(ws))
    assert result.rc == 0, result.stderr[-3000:]
    generated, expected = root / "toy_shapes", ws / "data" / "toy_shapes"
    assert (generated / "split_toy_shapes.json").read_bytes() == (expected / "split_toy_shapes.json").read_bytes()
    images = sorted(p.relative_to(generated) for p in (generated / "images").rglob("*.png"))
    assert images == sorted(p.relative_to(expected) for p in (expected / "images").rglob("*.png"))
    assert all((generated / p).read_bytes() == (expected / p).read_bytes() for p in images)
