"""End-to-end engine tests through ``train.py`` (subprocesses, CPU, built-in ToyShapes dataset).

A small trainer defined here (a linear probe on the pixels of 16x16 crops, written exactly as a trainer
for the original Dassl would be) trains for 2 epochs. The checks: the output layout, the Dassl log lines,
results.json (counts, best-val selection with ties to the later epoch), ``--eval-only`` reproducing the
accuracy, a run killed after epoch 1 and restarted with the same command finishing bit-identical to the
uninterrupted run, and one-line errors for bad input.
"""
import glob
import json
import math
import os
import os.path as osp
import re
import runpy
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dassl.engine import TRAINER_REGISTRY, TrainerX
from dassl.metrics import compute_accuracy
from dassl.optim import build_lr_scheduler, build_optimizer

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TESTS = osp.dirname(osp.abspath(__file__))
CRASH_ENV = "ENGINE_TEST_CRASH_AFTER_EPOCH"
MODEL_NAME = "probe"
LR = 0.1


@TRAINER_REGISTRY.register()
class EngineTestProbe(TrainerX):
    """Linear classifier on flattened pixels. Exits the process after epoch ``$ENGINE_TEST_CRASH_AFTER_EPOCH``."""

    def build_model(self):
        h, w = self.cfg.INPUT.SIZE
        self.model = nn.Sequential(nn.Flatten(), nn.Linear(3 * h * w, self.num_classes)).to(self.device)
        self.optim = build_optimizer(self.model, self.cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, self.cfg.OPTIM)
        self.register_model(MODEL_NAME, self.model, self.optim, self.sched)

    def forward_backward(self, batch):
        image, label = self.parse_batch_train(batch)
        output = self.model(image)
        loss = F.cross_entropy(output, label)
        self.model_backward_and_update(loss)
        loss_summary = {"loss": loss.item(), "acc": compute_accuracy(output, label)[0].item()}
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()
        return loss_summary

    def parse_batch_train(self, batch):
        return batch["img"].to(self.device), batch["label"].to(self.device)

    def after_epoch(self):
        super().after_epoch()
        if os.environ.get(CRASH_ENV) == str(self.epoch + 1):
            sys.stdout.flush()
            os._exit(3)  # like a killed job: no clean-up, no after_train


# Runs train.py as __main__ after importing this module (which registers EngineTestProbe).
BOOTSTRAP = (
    "import runpy, sys, torch; torch.set_num_threads(1); "
    f"sys.path[:0] = [{REPO!r}, {TESTS!r}]; import test_engine_train; "
    f"sys.argv = ['train.py'] + sys.argv[1:]; runpy.run_path({osp.join(REPO, 'train.py')!r}, run_name='__main__')"
)

TRAINER_YAML = """\
INPUT:
  SIZE: (16, 16)
  INTERPOLATION: "bicubic"
  TRANSFORMS: ["random_resized_crop", "random_flip", "normalize"]
DATALOADER:
  NUM_WORKERS: 0
  TRAIN_X:
    BATCH_SIZE: 32
  TEST:
    BATCH_SIZE: 50
OPTIM:
  NAME: "sgd"
  LR: {lr}
  MAX_EPOCH: 2
  LR_SCHEDULER: "cosine"
  WARMUP_EPOCH: 1
  WARMUP_TYPE: "constant"
  WARMUP_CONS_LR: 1e-5
TRAIN:
  PRINT_FREQ: 5
USE_CUDA: False
""".format(lr=LR)

PROGRESS = re.compile(
    r"^epoch \[(\d+)/(\d+)\] batch \[(\d+)/(\d+)\] time \d+\.\d{3} \(\d+\.\d{3}\) data \d+\.\d{3} \(\d+\.\d{3}\) "
    r"(loss \d+\.\d{4} \(\d+\.\d{4}\) acc \d+\.\d{4} \(\d+\.\d{4}\)) lr (\S+) eta \d+:\d{2}:\d{2}$"
)


def run_train(args, env_extra=None, check=True):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **(env_extra or {}))
    proc = subprocess.run([sys.executable, "-c", BOOTSTRAP, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"train.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine")
    trainer_yaml = root / "probe.yaml"
    trainer_yaml.write_text(TRAINER_YAML)
    return root


def base_args(workspace, output_dir):
    return [
        "--root", str(workspace / "data"), "--seed", "1", "--trainer", "EngineTestProbe",
        "--dataset-config-file", "configs/datasets/toy_shapes.yaml", "--config-file", str(workspace / "probe.yaml"),
        "--output-dir", str(output_dir),
    ]


@pytest.fixture(scope="module")
def trained(workspace):
    """An uninterrupted 2-epoch run saving every epoch (TRAIN.CHECKPOINT_FREQ 1), with the training tqdm bar."""
    out = workspace / "full"
    proc = run_train(base_args(workspace, out) + ["TRAIN.CHECKPOINT_FREQ", "1", "TRAIN.PROGRESS_BAR", "True"])
    (out / "stderr.txt").write_text(proc.stderr)
    return out


def read_results(output_dir):
    with open(osp.join(output_dir, "results.json")) as f:
        return json.load(f)


def progress_lines(log_text, epoch):
    """(loss/acc field, lr) of every progress line of 1-based ``epoch``."""
    lines = []
    for line in log_text.splitlines():
        m = PROGRESS.match(line)
        if m and int(m.group(1)) == epoch:
            lines.append((m.group(5), m.group(6)))
    return lines


def test_train_writes_dassl_outputs(trained):
    log = (trained / "log.txt").read_text()
    for expected in ["Loading trainer: EngineTestProbe", "Loading dataset: ToyShapes",
                     "Loading evaluator: Classification",
                     "No checkpoint found, train from scratch", "Initialize tensorboard",
                     "Evaluate on the *val* set", "Evaluate on the *test* set", "Finish training",
                     "Deploy the model with the best val performance", "Elapsed: "]:
        assert expected in log, expected
    # 240 train images / batch 32 -> 7 batches (drop_last); PRINT_FREQ 5 -> one line per epoch at batch 5.
    for epoch in (1, 2):
        assert len(progress_lines(log, epoch)) == 1
    assert re.search(r"^=> result\n\* total: 120\n\* correct: \d+\n\* accuracy: \d+\.\d{2}%\n\* error: \d+\.\d{2}%\n"
                     r"\* macro_f1: \d+\.\d{2}%$", log, re.M)
    # lr: constant warm-up 1e-5 in epoch 1, then cosine restarted at step 0 -> LR in epoch 2.
    assert [lr for _, lr in progress_lines(log, 1) + progress_lines(log, 2)] == ["1.0000e-05", f"{LR:.4e}"]

    # The bars (training: TRAIN.PROGRESS_BAR; evaluation: always) go to stderr, not into the log.
    stderr = (trained / "stderr.txt").read_text()
    assert "epoch 2/2" in stderr and "Evaluate (test)" in stderr
    assert "epoch 2/2:" not in log and "Evaluate (test):" not in log

    model_dir = trained / MODEL_NAME
    assert sorted(os.listdir(model_dir)) == ["checkpoint", "model-best.pth.tar", "model.pth.tar-1", "model.pth.tar-2"]
    assert (model_dir / "checkpoint").read_text() == "model.pth.tar-2\n"
    assert glob.glob(str(trained / "tensorboard" / "events.out.tfevents.*"))
    # Checkpoints hold tensors and plain values only.
    checkpoint = torch.load(model_dir / "model.pth.tar-2", weights_only=True)
    assert checkpoint["epoch"] == 2 and checkpoint["val_result"] is None
    assert set(checkpoint["state_dict"]) == {"1.weight", "1.bias"}


def test_results_json_records_every_evaluation(trained):
    results = read_results(trained)
    assert results["schema"] == 2
    records = results["evaluations"]
    assert [(r["split"], r["epoch"]) for r in records[:2]] == [("val", 1), ("val", 2)]
    assert [(r["split"], r["stage"]) for r in records] == [("val", "epoch"), ("val", "epoch"), ("test", "final")]
    for r in records:
        assert r["n"] == (80 if r["split"] == "val" else 120)  # ToyShapes: 8 val / 12 test per class, 10 classes
        assert math.isclose(r["accuracy"], 100.0 * r["correct"] / r["n"])
        assert math.isclose(r["error"], 100.0 - r["accuracy"])
        assert 0.0 <= r["macro_f1"] <= 100.0
        assert (r["dataset"], r["subsample"], r["shots"], r["seed"], r["trainer"]) == ("ToyShapes", "all", -1, 1,
                                                                                       "EngineTestProbe")
        assert r["config"]["OPTIM"]["LR"] == LR
    val1, val2, final = records
    assert val1["checkpoint"] is None and val2["checkpoint"] is None
    # best_val keeps the later epoch on ties (>=): the final test loads that epoch's model-best.
    best_epoch = 2 if val2["accuracy"] >= val1["accuracy"] else 1
    assert final["epoch"] == best_epoch
    assert final["checkpoint"] == str(trained / MODEL_NAME / "model-best.pth.tar")
    saved = torch.load(trained / MODEL_NAME / "model-best.pth.tar", weights_only=True)
    assert saved["epoch"] == best_epoch and math.isclose(saved["val_result"], records[best_epoch - 1]["accuracy"])
    # The log's last accuracy line is the final test result.
    log_accuracies = re.findall(r"^\* accuracy: (\d+\.\d{2})%$", (trained / "log.txt").read_text(), re.M)
    assert log_accuracies[-1] == f"{final['accuracy']:.2f}"


def test_eval_only_reproduces_the_test_accuracy(workspace, trained):
    out = workspace / "eval"
    run_train(base_args(workspace, out) + ["--eval-only", "--model-dir", str(trained)])
    (record,) = read_results(out)["evaluations"]
    final = read_results(trained)["evaluations"][-1]
    assert (record["split"], record["epoch"], record["checkpoint"]) == ("test", final["epoch"], final["checkpoint"])
    assert (record["correct"], record["accuracy"]) == (final["correct"], final["accuracy"])
    assert f"* accuracy: {final['accuracy']:.2f}%" in (out / "log.txt").read_text()


def test_killed_run_resumes_exactly(workspace, trained):
    out = workspace / "resumed"
    args = base_args(workspace, out) + ["TRAIN.CHECKPOINT_FREQ", "1"]
    killed = run_train(args, env_extra={CRASH_ENV: "1"}, check=False)
    assert killed.returncode == 3, killed.stderr[-2000:]
    assert sorted(os.listdir(out / MODEL_NAME)) == ["checkpoint", "model-best.pth.tar", "model.pth.tar-1"]

    run_train(args)  # the same command again
    logs = sorted(glob.glob(str(out / "log.txt*")))
    assert len(logs) == 2  # log.txt and log.txt-<timestamp>
    resumed_log = open([p for p in logs if p != str(out / "log.txt")][0]).read()
    assert "Found checkpoint at" in resumed_log and "Previous epoch: 1" in resumed_log
    assert "epoch [1/2]" not in resumed_log

    full_log = (trained / "log.txt").read_text()
    # Same losses and lr in epoch 2 (random crops, flips and batch order continue from the saved states) ...
    assert progress_lines(resumed_log, 2) == progress_lines(full_log, 2)
    # ... the same weights and the same final result.
    for fname in ("model.pth.tar-2", "model-best.pth.tar"):
        a = torch.load(trained / MODEL_NAME / fname, weights_only=True)
        b = torch.load(out / MODEL_NAME / fname, weights_only=True)
        assert a["epoch"] == b["epoch"]
        for key in a["state_dict"]:
            assert torch.equal(a["state_dict"][key], b["state_dict"][key]), (fname, key)
    full, resumed = read_results(trained)["evaluations"], read_results(out)["evaluations"]
    strip = lambda records: [(r["split"], r["epoch"], r["correct"], r["accuracy"]) for r in records]  # noqa: E731
    assert strip(resumed) == strip(full)

    # Rerunning a finished run trains nothing and re-tests; results.json stays the same (idempotent).
    run_train(args)
    assert strip(read_results(out)["evaluations"]) == strip(full)


def test_bad_config_key_fails_with_one_line(workspace, monkeypatch, capsys):
    # train.py run as a script (in this process: the failure happens before anything is built).
    out = workspace / "bad"
    monkeypatch.setattr(sys, "argv", ["train.py"] + base_args(workspace, out) + ["OPTIM.LRR", "0.1"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(osp.join(REPO, "train.py"), run_name="__main__")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: unknown config key 'OPTIM.LRR' from the command line; did you mean 'OPTIM.LR'?"
    ]
    assert not out.exists()  # failed before creating anything
