"""Failures in the middle of a run end with one line and leave a resumable run: SIGTERM (like Ctrl-C, status 143), a
full disk at a checkpoint write (status 2, the file named, earlier checkpoints intact); NUM_SHOTS larger than a class
is recorded as the real count.

Runs are ``train.py`` children of the zygote (test_reliability_zygote.py): HiCroPL, ``random:tiny``, ToyShapes base
classes, CPU, fp32, a checkpoint every epoch.
"""
import json
import signal

import pytest
import torch

from test_reliability_zygote import message_lines, zygote

MODEL = "VLPromptLearner"


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return tmp_path_factory.mktemp("failures")


def env(ws):
    return {"HICROPL_OFFLINE": "1", "CLIP_CACHE_DIR": str(ws / "clip"), "HICROPL_CACHE_DIR": str(ws / "cache")}


def command(ws, out, epochs=2, shots=2):
    return [
        "--root", ws / "data", "--seed", "1", "--trainer", "HiCroPL",
        "--dataset-config-file", "configs/datasets/toy_shapes.yaml",
        "--config-file", "configs/trainers/HiCroPL/demo_tiny.yaml", "--output-dir", out,
        "DATASET.NUM_SHOTS", shots, "DATASET.SUBSAMPLE_CLASSES", "base", "DATALOADER.TRAIN_X.BATCH_SIZE", "2",
        "OPTIM.MAX_EPOCH", epochs, "TRAIN.CHECKPOINT_FREQ", "1", "TRAIN.PRINT_FREQ", "1",
        "TRAINER.HICROPL.PREC", "fp32", "DATALOADER.NUM_WORKERS", "0", "USE_CUDA", "False",
    ]


def temp_files(out):
    return sorted(str(p.relative_to(out)) for p in out.rglob(".*") if p.is_file())


def test_sigterm_stops_like_ctrl_c_and_the_run_resumes(ws):
    out = ws / "sigterm"
    child = zygote().spawn(command(ws, out), str(ws / "logs"), env=env(ws))
    child.wait_until(lambda: "epoch [2/2] batch [1/" in child.stdout(), "epoch 2 started")
    child.kill(signal.SIGTERM)
    result = child.wait()

    assert result.rc == 143, result.stderr[-3000:]
    expected = "error: terminated (SIGTERM); run the same command again to resume from the last saved checkpoint"
    assert message_lines(result.stderr) == [expected]
    assert (out / "log.txt").read_text().splitlines()[-1] == expected  # the log says why, and is complete
    assert (out / MODEL / "checkpoint").read_text().strip() == "model.pth.tar-1"

    rerun = zygote().run(command(ws, out), str(ws / "logs"), env=env(ws))
    assert rerun.rc == 0, rerun.stderr[-3000:]
    assert "Found checkpoint at" in rerun.stdout and "epoch [1/2]" not in rerun.stdout
    assert torch.load(out / MODEL / "model.pth.tar-2", weights_only=True)["epoch"] == 2


def test_full_disk_at_a_checkpoint_write_is_one_line_and_the_run_resumes(ws):
    out = ws / "disk_full"
    result = zygote().run(command(ws, out), str(ws / "logs"), env=env(ws),
                          faults=[{"kind": "enospc_in_save", "name": "model.pth.tar-2"}])

    assert result.rc == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    (line,) = message_lines(result.stderr)
    assert line.startswith(f"error: cannot write {out / MODEL / 'model.pth.tar-2'} (No space left on device); ")
    assert "earlier checkpoints included) are intact" in line and "run the same command again to resume" in line
    # Nothing half-written: no temp file, the resume pointer still names epoch 1's complete checkpoint.
    assert temp_files(out) == []
    assert not (out / MODEL / "model.pth.tar-2").exists()
    assert (out / MODEL / "checkpoint").read_text().strip() in ("model.pth.tar-1", "model-best.pth.tar")
    assert torch.load(out / MODEL / "model.pth.tar-1", weights_only=True)["epoch"] == 1

    rerun = zygote().run(command(ws, out), str(ws / "logs"), env=env(ws))
    assert rerun.rc == 0, rerun.stderr[-3000:]
    assert "Found checkpoint at" in rerun.stdout
    assert torch.load(out / MODEL / "model.pth.tar-2", weights_only=True)["epoch"] == 2


def test_more_shots_than_images_records_the_real_count_with_a_warning(ws):
    """ToyShapes has 24 training images per class: NUM_SHOTS 100 trains on 24 and says so."""
    out = ws / "shots"
    result = zygote().run(command(ws, out, epochs=1, shots=100), str(ws / "logs"), env=env(ws))
    assert result.rc == 0, result.stderr[-3000:]
    warning = ("Warning: DATASET.NUM_SHOTS is 100, but 10 of 10 ToyShapes classes have fewer training images "
               "(fewest: 24, 'circle'); they use all of their images, and results record shots = 24")
    assert warning in result.stdout
    records = json.loads((out / "results.json").read_text())["evaluations"]
    assert records and {r["shots"] for r in records} == {24}
