"""Multi-process training (torchrun, gloo on CPU) reproduces a single process with the same global batch.

End to end: HiCroPL on ToyShapes with random:tiny, deterministic transforms (``INPUT.TRANSFORMS ["normalize"]``),
2 epochs, run once as ``python train.py`` and once as ``torchrun --nproc_per_node 2 train.py``: the learned prompts
(1e-6), every evaluation record (val after each epoch, final test; counts over the whole split, each sample once)
and the logged losses must agree, and only rank 0 writes. Plus the samplers' arithmetic, checked against the
single-process batches directly.
"""
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dassl.data.samplers import GlobalBatchRandomSampler, ShardSampler
from dassl.utils import UserError

REPO = Path(__file__).resolve().parents[1]
ARGS = [
    "--seed", "1", "--trainer", "HiCroPL",
    "--dataset-config-file", str(REPO / "configs/datasets/toy_shapes.yaml"),
    "--config-file", str(REPO / "configs/trainers/HiCroPL/demo_tiny.yaml"),
    "OPTIM.MAX_EPOCH", "2", "OPTIM.LR", "0.01", "INPUT.TRANSFORMS", "['normalize']",
    "DATALOADER.NUM_WORKERS", "0", "TRAIN.PROGRESS_BAR", "False",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd, cwd):
    # one thread per process: the same float reduction order in both runs, and no oversubscription of the cores
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    root, single, multi = tmp / "data", tmp / "single", tmp / "multi"
    run([sys.executable, str(REPO / "train.py"), "--root", str(root), "--output-dir", str(single), *ARGS], tmp)
    run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
         str(REPO / "train.py"), "--root", str(root), "--output-dir", str(multi), *ARGS], tmp)
    return single, multi


def records(output_dir):
    keys = ("split", "epoch", "accuracy", "macro_f1", "n", "correct", "checkpoint")
    evaluations = json.loads((output_dir / "results.json").read_text())["evaluations"]
    return [{k: (Path(e[k]).name if k == "checkpoint" and e[k] else e[k]) for k in keys} for e in evaluations]


def test_same_learned_prompts(runs):
    single, multi = runs
    for name in ("model.pth.tar-2", "model-best.pth.tar"):
        a = torch.load(single / "VLPromptLearner" / name, weights_only=True)["state_dict"]
        b = torch.load(multi / "VLPromptLearner" / name, weights_only=True)["state_dict"]
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=1e-6, atol=1e-6, msg=key)
    # the prompts did move: the comparison is not between two untouched initialisations
    first = torch.load(single / "VLPromptLearner" / "model.pth.tar-2", weights_only=True)["state_dict"]
    assert first["prompt_learner.cross_prompts_text.1"].abs().max() > 0.1


def test_same_evaluations_counted_once_over_the_whole_split(runs):
    single, multi = runs
    assert records(multi) == records(single)
    sizes = {(r["split"], r["n"]) for r in records(multi)}
    assert sizes == {("val", 80), ("test", 120)}  # ToyShapes: 8 val / 12 test images per class, 10 classes


def test_same_logged_losses_and_only_rank0_writes(runs):
    single, multi = runs

    def losses(output_dir):
        return re.findall(r"batch \[\d+/\d+\] .* loss (\S+ \(\S+\))", (output_dir / "log.txt").read_text())

    assert losses(single) and losses(multi) == losses(single)
    assert "batch [15/15]" in (multi / "log.txt").read_text()  # global batch 16: 240 images -> 15 steps/epoch
    assert sorted(p.name for p in multi.iterdir()) == sorted(p.name for p in single.iterdir())  # one log.txt


# --- sampler arithmetic (no process group needed: rank and world size are passed in) --------------------------------


def batches_of(sampler, batch):
    indices = list(sampler)
    return [indices[i:i + batch] for i in range(0, len(indices), batch)]


@pytest.mark.parametrize("n, global_batch, world", [(50, 8, 2), (50, 12, 4), (7, 16, 2), (16, 16, 4)])
def test_global_batches_are_split_across_processes(n, global_batch, world):
    data = list(range(n))
    torch.manual_seed(0)
    single = GlobalBatchRandomSampler(data, global_batch, rank=0, world_size=1)
    ranks = []
    for rank in range(world):
        torch.manual_seed(0)  # every process draws the sampler seed from the same seeded generator
        ranks.append(GlobalBatchRandomSampler(data, global_batch, rank=rank, world_size=world))
    for epoch in (0, 3):
        for sampler in [single] + ranks:
            sampler.set_epoch(epoch)
        expected = batches_of(single, global_batch)
        assert len(expected) == (n // global_batch if n >= global_batch else 1)
        per_rank = [batches_of(s, s.local_batch) for s in ranks]
        assert all(len(b) == len(expected) for b in per_rank) and all(len(s) == len(list(s)) for s in ranks)
        for index, batch in enumerate(expected):
            assert [i for b in per_rank for i in b[index]] == batch  # rank slices, in rank order = the batch
    orders = []
    for epoch in (0, 1):
        single.set_epoch(epoch)
        orders.append(list(single))
    assert orders[0] != orders[1]  # a new permutation every epoch


def test_sampler_errors_are_one_clear_line():
    with pytest.raises(UserError, match=r"BATCH_SIZE \(10\) .* divisible by the number of processes \(4\)"):
        GlobalBatchRandomSampler(list(range(40)), 10, rank=0, world_size=4)
    with pytest.raises(UserError, match="fewer than the 3 processes"):
        ShardSampler(list(range(2)), rank=0, world_size=3)


def test_shards_cover_the_split_once():
    n, world = 23, 4
    shards = [list(ShardSampler(list(range(n)), rank=r, world_size=world)) for r in range(world)]
    assert [i for shard in shards for i in shard] == list(range(n))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
