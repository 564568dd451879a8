"""The engine's end-of-epoch hook (dassl/engine/trainer.py): ``end_of_epoch()`` runs once after every training
epoch, before that epoch's checkpoint is written, and its ``end_of_epoch_state()`` lives in the checkpoint, so a run
killed after any epoch and resumed ends bit-identical to the uninterrupted one."""
import pytest
import torch

from dassl.engine import TRAINER_REGISTRY, build_trainer
from dassl.utils import load_checkpoint, set_random_seed
from test_trainer_comparison_methods import cache_dir  # noqa: F401 (autouse fixture)
from train import build_parser, setup_cfg
from trainers.ivlp import IVLP


@TRAINER_REGISTRY.register(force=True)
class IVLPEpochSums(IVLP):
    """IVLP that keeps the running sum of its layer-0 text prompt at every epoch end, and can crash mid-run."""

    crash_at_epoch = None

    def __init__(self, cfg):
        self.sums, self.calls = None, []
        super().__init__(cfg)

    def run_epoch(self):
        if self.epoch == self.crash_at_epoch:
            raise KeyboardInterrupt("simulated kill")
        super().run_epoch()

    def end_of_epoch(self):
        ctx = self.model.prompt_learner.prompt_learner.ctx.detach().clone()
        self.sums = ctx if self.sums is None else self.sums + ctx
        self.calls.append(self.epoch)

    def end_of_epoch_state(self):
        return None if self.sums is None else {"sums": self.sums, "calls": list(self.calls)}

    def load_end_of_epoch_state(self, state):
        self.sums, self.calls = state["sums"].clone(), list(state["calls"])


def train_in_process(data_root, out, trainer, config_file, *opts):
    """Build and train ``trainer`` on ToyShapes (4 shots, 3 epochs, a checkpoint every epoch, no test), seed 1."""
    argv = ["--root", data_root, "--seed", "1", "--trainer", trainer, "--output-dir", str(out),
            "--config-file", config_file, "--dataset-config-file", "configs/datasets/toy_shapes.yaml",
            "USE_CUDA", "False", "OPTIM.MAX_EPOCH", "3", "TRAIN.CHECKPOINT_FREQ", "1", "DATASET.NUM_SHOTS", "4",
            "TEST.NO_TEST", "True", *map(str, opts)]
    cfg = setup_cfg(build_parser().parse_args(argv))
    set_random_seed(cfg.SEED)
    built = build_trainer(cfg)
    built.train()
    return built


def run(data_root, out, crash_at=None):
    IVLPEpochSums.crash_at_epoch = crash_at
    return train_in_process(data_root, out, "IVLPEpochSums", "configs/trainers/IVLP/demo_tiny.yaml")


def test_hook_runs_each_epoch_before_the_checkpoint_and_survives_kill_and_resume(tmp_path_factory, tmp_path):
    data_root = str(tmp_path_factory.getbasetemp() / "data")
    reference = run(data_root, tmp_path / "full")
    assert reference.calls == [0, 1, 2]
    saved = load_checkpoint(str(tmp_path / "full" / "VLPromptLearner" / "model.pth.tar-2"))
    assert saved["end_of_epoch_state"]["calls"] == [0, 1]  # written after the hook of epoch index 1
    with pytest.raises(KeyboardInterrupt):
        run(data_root, tmp_path / "killed", crash_at=2)
    resumed = run(data_root, tmp_path / "killed")  # same command: resumes at epoch index 2
    assert resumed.calls == [0, 1, 2]
    assert torch.equal(resumed.sums, reference.sums)
    for key, value in reference.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key
