"""train.py's config assembly (DASSL_API §2.3 merge order and quirks), the documented defaults tree (§0, §2.2)
and the one-line errors for bad input. In-process and fast: every failure here happens before training."""
import os.path as osp
import re
import sys

import pytest
import torch.nn as nn

from dassl.config import get_cfg_default
from dassl.engine import TRAINER_REGISTRY, TrainerX
from dassl.utils import UserError

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, REPO)
import train  # noqa: E402  (registers the project's datasets and trainers)


@TRAINER_REGISTRY.register()
class EngineCliProbe(TrainerX):
    """A trainer with one learned module (so --eval-only needs --model-dir)."""

    def build_model(self):
        self.model = nn.Linear(4, self.num_classes)
        self.register_model("probe", self.model)


def parse(argv):
    return train.build_parser().parse_args(argv)


def run_main(argv):
    """train.main on ``argv``; returns the UserError message it raises."""
    with pytest.raises(UserError) as info:
        train.main(parse(argv))
    return str(info.value)


@pytest.fixture
def yamls(tmp_path):
    dataset_yaml = tmp_path / "dataset.yaml"
    dataset_yaml.write_text('DATASET:\n  NAME: "ToyShapes"\n  NUM_SHOTS: 16\nOPTIM:\n  LR: 0.1\nSEED: 5\n')
    trainer_yaml = tmp_path / "trainer.yaml"
    trainer_yaml.write_text("OPTIM:\n  LR: 0.2\n  MAX_EPOCH: 3\n  EPS: 1e-3\nTEST:\n  FINAL_MODEL: last_step\n")
    return ["--dataset-config-file", str(dataset_yaml), "--config-file", str(trainer_yaml)]


def test_dassl_defaults_with_hicropl_vendored_values():
    cfg = get_cfg_default()
    assert cfg.OPTIM.EPS == 1e-8 and cfg.TEST.FINAL_MODEL == "best_val"  # DASSL_API §0
    upstream = {
        "OUTPUT_DIR": "./output", "RESUME": "", "SEED": -1, "USE_CUDA": True, "VERBOSE": True,
        "INPUT.SIZE": (224, 224), "INPUT.INTERPOLATION": "bilinear", "INPUT.TRANSFORMS": (),
        "INPUT.PIXEL_MEAN": [0.485, 0.456, 0.406], "INPUT.RRCROP_SCALE": (0.08, 1.0),
        "DATASET.NUM_SHOTS": -1, "DATALOADER.NUM_WORKERS": 4, "DATALOADER.TRAIN_X.SAMPLER": "RandomSampler",
        "DATALOADER.TRAIN_X.BATCH_SIZE": 32, "DATALOADER.TEST.SAMPLER": "SequentialSampler",
        "DATALOADER.TEST.BATCH_SIZE": 32, "OPTIM.NAME": "adam", "OPTIM.LR": 0.0003, "OPTIM.WEIGHT_DECAY": 5e-4,
        "OPTIM.MOMENTUM": 0.9, "OPTIM.SGD_DAMPNING": 0, "OPTIM.ADAM_BETA1": 0.9, "OPTIM.ADAM_BETA2": 0.999,
        "OPTIM.LR_SCHEDULER": "single_step", "OPTIM.STEPSIZE": (-1,), "OPTIM.GAMMA": 0.1, "OPTIM.MAX_EPOCH": 10,
        "OPTIM.WARMUP_EPOCH": -1, "OPTIM.WARMUP_TYPE": "linear", "OPTIM.WARMUP_CONS_LR": 1e-5,
        "OPTIM.WARMUP_RECOUNT": True, "TRAIN.CHECKPOINT_FREQ": 0, "TRAIN.PRINT_FREQ": 10,
        "TEST.EVALUATOR": "Classification", "TEST.SPLIT": "test", "TEST.NO_TEST": False, "TRAINER.NAME": "",
    }
    for key, value in upstream.items():
        node = cfg
        for part in key.split("."):
            node = node[part]
        assert node == value and type(node) is type(value), key


def test_every_default_key_is_documented():
    """Each leaf assignment in defaults.py belongs to a block of assignments that starts under a comment."""
    with open(osp.join(REPO, "dassl", "config", "defaults.py")) as f:
        lines = [line.rstrip("\n") for line in f]
    assignment = re.compile(r"^_C(\.\w+)+ = ")
    for i, line in enumerate(lines):
        if not assignment.match(line) or line.endswith("CN()"):
            continue
        j = i - 1
        while j >= 0 and assignment.match(lines[j]) and not lines[j].endswith("CN()"):
            j -= 1
        while j >= 0 and lines[j].endswith("CN()"):
            j -= 1
        assert j >= 0 and lines[j].startswith("# ") and not lines[j].startswith("##"), f"undocumented: {line}"


def test_config_merge_order_and_flag_quirks(yamls, tmp_path):
    cfg = train.setup_cfg(parse(yamls + ["--output-dir", str(tmp_path / "o"), "OPTIM.MAX_EPOCH", "4",
                                         "DATASET.SUBSAMPLE_CLASSES", "base"]))
    assert cfg.OPTIM.LR == 0.2  # trainer yaml after dataset yaml
    assert cfg.OPTIM.MAX_EPOCH == 4  # KEY VALUE pairs last
    assert cfg.OPTIM.EPS == 0.001 and cfg.TEST.FINAL_MODEL == "last_step" and cfg.DATASET.NUM_SHOTS == 16
    assert cfg.OUTPUT_DIR == str(tmp_path / "o") and cfg.DATASET.SUBSAMPLE_CLASSES == "base"
    assert cfg.SEED == -1  # the default --seed -1 is truthy and overrides the yaml's SEED 5 (CoOp quirk)
    assert cfg.is_frozen()
    assert train.setup_cfg(parse(yamls + ["--seed", "0"])).SEED == 5  # --seed 0 is falsy: ignored (quirk)
    assert train.setup_cfg(parse(yamls + ["--seed", "3"])).SEED == 3
    defaults = train.setup_cfg(parse([]))
    assert defaults.DATASET.SUBSAMPLE_CLASSES == "all" and "HICROPL" in defaults.TRAINER  # extend_cfg
    assert train.setup_cfg(parse(["--transforms", "random_flip", "normalize"])).INPUT.TRANSFORMS == [
        "random_flip", "normalize"]


def test_wrong_types_and_unknown_keys_name_the_key(yamls, tmp_path):
    assert run_main(yamls + ["OPTIM.LR", "1"]) == (
        "config key 'OPTIM.LR' from the command line expects float (default 0.2), got int 1 (write 1.0)")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("OPTIM:\n  MAX_EPOCH: 2.5\n")
    assert run_main(["--config-file", str(bad_yaml)]) == (
        f"config key 'OPTIM.MAX_EPOCH' from {bad_yaml} expects int (default 10), got float 2.5")
    bad_yaml.write_text("TRAINER:\n  HICROPL:\n    N_CTXX: 4\n")
    assert run_main(["--config-file", str(bad_yaml)]) == (
        f"unknown config key 'TRAINER.HICROPL.N_CTXX' from {bad_yaml}; did you mean 'TRAINER.HICROPL.N_CTX'?")
    missing = tmp_path / "nope.yaml"
    assert run_main(["--config-file", str(missing)]) == f"config file not found: {missing}"
    assert "KEY VALUE pairs" in run_main(["OPTIM.LR"])


def test_unknown_trainer_or_dataset_lists_names_and_closest(yamls):
    message = run_main(yamls + ["--trainer", "EngineCliProb"])
    assert message.startswith("unknown trainer 'EngineCliProb'; available: ")
    assert "HiCroPL" in message and message.endswith("Did you mean 'EngineCliProbe'?")
    message = run_main(yamls + ["--trainer", "EngineCliProbe", "DATASET.NAME", "ToyShape"])
    assert message.startswith("unknown dataset 'ToyShape'; available: ") and "OxfordPets" in message
    assert message.endswith("Did you mean 'ToyShapes'?")
    assert run_main(["--trainer", "EngineCliProbe"]).startswith("no dataset given: pass --dataset-config-file")


def test_eval_only_and_model_dir_checks(yamls, tmp_path, monkeypatch):
    common = yamls + ["--trainer", "EngineCliProbe", "--root", str(tmp_path / "data"), "--eval-only"]
    model_dir = tmp_path / "run"
    assert run_main(common + ["--model-dir", str(model_dir)]) == f"--model-dir {model_dir} does not exist"
    (model_dir / "probe").mkdir(parents=True)
    assert "holds no checkpoints" in run_main(common + ["--model-dir", str(model_dir)])
    (model_dir / "probe" / "model.pth.tar-2").write_bytes(b"")
    assert run_main(common + ["--model-dir", str(model_dir)]) == (
        f"--model-dir {model_dir} has no <model name>/model-best.pth.tar; it has model.pth.tar-2 "
        "(pick one with --load-epoch N)")
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert run_main(common + ["--model-dir", str(model_dir), "--load-epoch", "2", "--output-dir",
                              str(blocker / "out")]).startswith(f"cannot write to the output dir {blocker / 'out'}")

    # A trainer with learned weights cannot be evaluated without them (checked once it is built).
    monkeypatch.setattr(sys, "stdout", sys.stdout)  # train.main tees stdout into the log; undo that afterwards
    monkeypatch.setattr(train, "collect_env_info", lambda: "(skipped)")
    message = run_main(common + ["--output-dir", str(tmp_path / "out"), "DATALOADER.NUM_WORKERS", "0"])
    assert message.startswith("--eval-only needs --model-dir DIR") and "(probe)" in message


def test_list_flags_and_argparse_errors(capsys):
    train.main(parse(["--list-trainers"]))
    names = capsys.readouterr().out.split()
    assert "EngineCliProbe" in names and "HiCroPL" in names and names == sorted(names)
    train.main(parse(["--list-datasets"]))
    assert "ToyShapes" in capsys.readouterr().out.split()
    with pytest.raises(SystemExit) as info:
        parse(["--load-epoch", "five"])
    assert info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: argument --load-epoch: invalid int value: 'five' (see "
        f"{train.build_parser().prog} --help)"]
