"""The frozen teacher's image features of an evaluation set are computed once (TRAINER.HICROPL.CACHE_EVAL_FEATURES).

- Exactness: training with val every epoch and the final test give the same logits (torch.equal, fp32) with the
  cache in memory or on disk as without it, and so does an eval-only rerun in a new trainer; the teacher runs only
  on the first evaluation of each set (the rerun reads the disk cache and runs it never; a val set that is the test
  set shares the test set's features).
- Staleness: another teacher or backbone (weights), another class subset (image list), another interpolation,
  normalisation or resize (test transform), another precision, another data shard, an image file rewritten: each
  runs the teacher again; the unchanged configuration does not.
- Damage: a truncated cache file or one whose rows do not match its checksum is named in one line and recomputed;
  a writer killed mid-write (SIGKILL, in a child process) leaves no file that is ever read.
"""
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torchvision.transforms import CenterCrop, Compose, Resize, ToTensor

import clip
import trainers.hicropl
from dassl.engine import build_trainer
from dassl.utils import set_random_seed
from train import build_parser, setup_cfg
from trainers.feature_cache import FeatureTable

REPO = Path(__file__).resolve().parents[1]
CONFIG = "configs/trainers/HiCroPL/demo_tiny.yaml"
BASE = ("DATASET.SUBSAMPLE_CLASSES", "base", "DATASET.NUM_SHOTS", 4)  # 20 train, 20 val, 60 test images


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("HICROPL_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "teacher_features"


def make_trainer(data_root, output_dir, *opts):
    argv = ["--root", data_root, "--seed", "1", "--trainer", "HiCroPL", "--config-file", CONFIG,
            "--dataset-config-file", "configs/datasets/toy_shapes.yaml", "--output-dir", str(output_dir)]
    cfg = setup_cfg(build_parser().parse_args(argv + ["USE_CUDA", "False", *map(str, BASE + opts)]))
    set_random_seed(cfg.SEED)
    trainer = build_trainer(cfg)
    # Record, per evaluation, its logits and how many eval-mode teacher passes it ran.
    trainer.evaluations = []
    model, inference, test = trainer.model, trainer.model_inference, trainer.test
    teacher_features = model.teacher_features

    def counting_teacher(image):
        if not model.training:
            trainer.evaluations[-1]["teacher_calls"] += 1
        return teacher_features(image)

    def recording_inference(input):
        logits = inference(input)
        trainer.evaluations[-1]["logits"].append(logits)
        return logits

    def recording_test(split=None):
        trainer.evaluations.append({"split": split, "teacher_calls": 0, "logits": []})
        return test(split)

    model.teacher_features = counting_teacher
    trainer.model_inference, trainer.test = recording_inference, recording_test
    return trainer


def teacher_calls(trainer):
    return [e["teacher_calls"] for e in trainer.evaluations]


def assert_same_logits(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_cached_evaluations_give_the_logits_of_uncached_ones(data_root, tmp_path, cache_dir):
    runs = {}
    for mode in ("off", "memory", "disk"):
        trainer = make_trainer(data_root, tmp_path / mode, "OPTIM.MAX_EPOCH", 2,
                               "TRAINER.HICROPL.CACHE_EVAL_FEATURES", mode)
        trainer.train()
        runs[mode] = trainer
    off, memory, disk = runs["off"], runs["memory"], runs["disk"]
    assert [e["split"] for e in disk.evaluations] == ["val", "val", None]
    batches = [len(e["logits"]) for e in off.evaluations]
    assert teacher_calls(off) == batches
    for cached in (memory, disk):
        for a, b in zip(off.evaluations, cached.evaluations):
            assert_same_logits(a["logits"], b["logits"])
        assert teacher_calls(cached) == [batches[0], 0, batches[2]]  # epoch 2 reuses epoch 1's val features
    assert len(list(cache_dir.glob("*.pt"))) == 2  # val and test sets; "memory" wrote nothing
    memory.val_loader = memory.test_loader  # a dataset whose val set is its test set (ImageNet): one table
    memory.test("val")
    assert teacher_calls(memory)[-1] == 0

    rerun = make_trainer(data_root, tmp_path / "rerun", "TRAINER.HICROPL.CACHE_EVAL_FEATURES", "disk")
    rerun.load_model(str(tmp_path / "disk"))
    rerun.test()
    assert teacher_calls(rerun) == [0]  # read from disk
    assert_same_logits(rerun.evaluations[0]["logits"], off.evaluations[-1]["logits"])


def write_tiny_weights(path, scale):
    """random:tiny with its image projection scaled: a local weights file, usable as backbone or teacher."""
    model, _ = clip.load("random:tiny", device="cpu")
    state = model.state_dict()
    state["visual.proj"] = state["visual.proj"] * scale
    torch.save(state, path)
    return str(path)


def test_every_way_the_features_go_stale_recomputes(data_root, tmp_path, cache_dir, monkeypatch):
    def teacher_calls_of_test(*opts, change=None):
        trainer = make_trainer(data_root, tmp_path / "out", *opts)
        if change is not None:
            change(trainer)
        trainer.test()
        return trainer.evaluations[0]["teacher_calls"]

    assert teacher_calls_of_test() > 0  # fills the cache
    assert teacher_calls_of_test() == 0  # the same set again: read from disk
    # (the same weights as teacher and as backbone would rightly share one file: the key is the weights)
    teacher, backbone = write_tiny_weights(tmp_path / "t.pt", 2.0), write_tiny_weights(tmp_path / "b.pt", 3.0)
    stale = {
        "another teacher": teacher_calls_of_test("TRAINER.HICROPL.TEACHER_NAME", teacher),
        "another backbone": teacher_calls_of_test("MODEL.BACKBONE.NAME", backbone),
        "another class subset": teacher_calls_of_test("DATASET.SUBSAMPLE_CLASSES", "all"),
        "another interpolation": teacher_calls_of_test("INPUT.INTERPOLATION", "bilinear"),
        "another normalisation": teacher_calls_of_test("INPUT.PIXEL_MEAN", [0.5, 0.5, 0.5]),
        "another precision": teacher_calls_of_test("TRAINER.HICROPL.PREC", "bf16"),
        "another resize": teacher_calls_of_test(change=lambda t: setattr(
            t.test_loader.dataset, "transform", Compose([Resize(48), CenterCrop(32), ToTensor()]))),
    }
    with monkeypatch.context() as m:
        m.setattr(trainers.hicropl, "process_shard", lambda: (1, 2))
        stale["another DDP shard"] = teacher_calls_of_test()
    assert teacher_calls_of_test() == 0  # none of the above replaced the first set's file
    test_images = [item.impath for item in make_trainer(data_root, tmp_path / "out").dm.dataset.test]
    shutil.copyfile(test_images[1], test_images[0])  # the folder's first test image changes
    stale["an image file rewritten"] = teacher_calls_of_test()
    assert {case: calls > 0 for case, calls in stale.items()} == {case: True for case in stale}


def test_damaged_cache_file_is_recomputed_with_one_line(data_root, tmp_path, cache_dir, capsys):
    first = make_trainer(data_root, tmp_path / "a")
    first.test()
    (path,) = cache_dir.glob("*.pt")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated, as by a full disk
    capsys.readouterr()
    second = make_trainer(data_root, tmp_path / "b")
    second.test()
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Teacher features: the cache")]
    (line,) = lines
    assert re.fullmatch(rf"Teacher features: the cache {re.escape(str(path))} is damaged \(cannot be read \(\w+\)\); "
                        "recomputing it", line), line
    assert teacher_calls(second) == teacher_calls(first) and teacher_calls(first)[0] > 0
    assert_same_logits(second.evaluations[0]["logits"], first.evaluations[0]["logits"])
    third = make_trainer(data_root, tmp_path / "c")  # the recomputed file replaced the damaged one
    third.test()
    assert teacher_calls(third) == [0]


def test_rows_that_do_not_match_the_checksum_are_not_used(tmp_path, capsys):
    table = FeatureTable("k", 4, 3, tmp_path / "k.pt")
    table.store(torch.tensor([0, 2]), torch.ones(2, 3))
    table.save()
    payload = torch.load(tmp_path / "k.pt", weights_only=True)
    payload["features"][1, 0] = 2.0
    torch.save(payload, tmp_path / "k.pt")
    capsys.readouterr()
    reopened = FeatureTable.open("k", 4, 3, tmp_path, torch.device("cpu"))
    assert "damaged (checksum mismatch); recomputing it" in capsys.readouterr().out
    calls = []
    rows = reopened.features_for(torch.tensor([0, 2]), lambda: calls.append(1) or torch.zeros(2, 3))
    assert calls == [1] and torch.equal(rows, torch.zeros(2, 3))


KILLED_WRITER = textwrap.dedent("""
    import os, signal, sys
    import torch
    from trainers.feature_cache import FeatureTable

    def save_half_then_die(obj, f):
        f.write(b"PK" * 1000)  # the first bytes of a torch file, then the process is killed
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    table = FeatureTable("k", 4, 3, __import__("pathlib").Path(sys.argv[1]) / "k.pt")
    table.store(torch.tensor([0, 1, 2, 3]), torch.ones(4, 3))
    torch.save = save_half_then_die
    table.save()
""")


def test_a_writer_killed_mid_write_leaves_no_file_that_is_read(tmp_path, capsys):
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(tmp_path)], cwd=REPO, timeout=120,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == -9, proc.stderr[-2000:]
    litter = [p.name for p in tmp_path.iterdir()]
    assert len(litter) == 1 and litter[0].startswith(".k.pt.") and litter[0].endswith(".tmp")  # never read
    table = FeatureTable.open("k", 4, 3, tmp_path, torch.device("cpu"))
    assert table.num_filled == 0 and capsys.readouterr().out == ""  # nothing read, nothing reported
    calls = []
    table.features_for(torch.tensor([1, 3]), lambda: calls.append(1) or torch.full((2, 3), 5.0))
    table.save()
    rows = FeatureTable.open("k", 4, 3, tmp_path, torch.device("cpu")).features_for(torch.tensor([3, 1]), None)
    assert calls == [1] and torch.equal(rows, torch.full((2, 3), 5.0))


def test_an_unknown_cache_mode_is_one_clear_error():
    from dassl.config import get_cfg_default
    from common.errors import UserError
    from train import extend_cfg

    cfg = get_cfg_default()
    extend_cfg(cfg)
    cfg.TRAINER.HICROPL.CACHE_EVAL_FEATURES = "yes"
    message = r"^TRAINER.HICROPL.CACHE_EVAL_FEATURES is 'yes'; choose one of disk, memory, off$"
    with pytest.raises(UserError, match=message):
        trainers.hicropl.check_hicropl_cfg(cfg.TRAINER.HICROPL)
