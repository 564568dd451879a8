"""Our trainers, datasets and configs on the original Dassl's terms, and foreign files that cannot take the CLI down.

- Every name that trainers/, datasets/, descriptions/ and common/ import from `dassl` is one the original
  Dassl.pytorch has (the list below is its public surface used by CoOp-family code, from ../shared/DASSL_API.md §1).
- The HiCroPL yaml runs with the engine's defaults set to the original Dassl's (TEST.FINAL_MODEL last_step, no
  OPTIM.EPS key) and an Adam builder that ignores OPTIM.EPS, as the original's does: it still writes model-best, the
  per-epoch checkpoint, log.txt and results.json, and trains with the yaml's Adam epsilon.
- A trainer module that fails to import, one that registers "ZeroshotCLIP" a second time and a dataset module with
  a syntax error are each reported in one line naming the file; --list-trainers and a HiCroPL run still work.
- `detect_anomaly` is called with Dassl's one-argument signature; our engine still names the loss terms.
"""
import ast
import math
from pathlib import Path

import pytest
import torch

from dassl.engine.trainer import TrainerBase
from dassl.utils import NonFiniteLossError
from scratch_repo import REPO, make_scratch_repo, run_train
from trainers.config import apply_optim_eps

DASSL_NAMES = {
    "dassl.config": {"get_cfg_default", "clean_cfg"},
    "dassl.engine": {"TRAINER_REGISTRY", "TrainerX", "build_trainer"},
    "dassl.data": {"DatasetWrapper", "DataManager"},
    "dassl.data.datasets": {"DATASET_REGISTRY", "Datum", "DatasetBase", "build_dataset"},
    "dassl.data.transforms": {"build_transform", "INTERPOLATION_MODES"},
    "dassl.optim": {"build_optimizer", "build_lr_scheduler"},
    "dassl.metrics": {"compute_accuracy"},
    "dassl.evaluation": {"build_evaluator", "EVALUATOR_REGISTRY", "Classification"},
    "dassl.utils": {"setup_logger", "set_random_seed", "collect_env_info", "load_pretrained_weights",
                    "load_checkpoint", "mkdir_if_missing", "listdir_nohidden", "read_json", "write_json",
                    "check_isfile", "Registry", "check_availability", "tolist_if_not", "save_checkpoint",
                    "resume_from_checkpoint", "read_image", "count_num_param", "MetricMeter", "AverageMeter"},
}
PROJECT_DIRS = ("trainers", "datasets", "descriptions", "common")

BROKEN_TRAINER = "import a_package_that_is_not_installed\n"
DUPLICATE_TRAINER = '''from dassl.engine import TRAINER_REGISTRY, TrainerX


@TRAINER_REGISTRY.register()
class CopyOnly(TrainerX):
    pass


@TRAINER_REGISTRY.register()
class ZeroshotCLIP(TrainerX):  # MaPLe's zsclip.py registers this name too
    pass
'''
BROKEN_DATASET = "def build(:\n"

# The engine's defaults as the original Dassl has them, and its Adam builder, which ignores OPTIM.EPS.
ORIGINAL_DASSL_PREAMBLE = '''
from dassl.config import defaults
defaults._C.OPTIM.pop("EPS")
defaults._C.TEST.FINAL_MODEL = "last_step"
import dassl.optim
_build_optimizer = dassl.optim.build_optimizer
def build_optimizer_without_eps(*args, **kwargs):
    optimizer = _build_optimizer(*args, **kwargs)
    for group in optimizer.param_groups:
        group["eps"] = 1e-8
    return optimizer
dassl.optim.build_optimizer = build_optimizer_without_eps
'''


def guarded_by_import_error(node: ast.AST, parents: dict) -> bool:
    """True if node sits in the body of a `try` that catches ImportError (an optional import)."""
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.Try) and any(
                isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                for h in node.handlers):
            return True
    return False


def dassl_imports():
    """(file, module, name) for every `from dassl... import name` / `import dassl...` in the project packages."""
    found = []
    for folder in PROJECT_DIRS:
        for path in sorted((REPO / folder).glob("*.py")):
            tree = ast.parse(path.read_text())
            parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
            for node in ast.walk(tree):
                if guarded_by_import_error(node, parents):
                    continue
                if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "dassl":
                    found += [(path.name, node.module, alias.name) for alias in node.names]
                elif isinstance(node, ast.Import):
                    found += [(path.name, alias.name, None) for alias in node.names
                              if alias.name.split(".")[0] == "dassl"]
    return found


def test_project_packages_import_only_what_the_original_dassl_has():
    imports = dassl_imports()
    assert len(imports) > 20  # the scan sees the dataset and trainer modules
    foreign = [(file, module, name) for file, module, name in imports
               if module not in DASSL_NAMES or (name is not None and name not in DASSL_NAMES[module])]
    assert foreign == []


def test_detect_anomaly_is_called_with_dassl_signature_and_still_names_the_terms():
    for path in sorted((REPO / "trainers").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "detect_anomaly":
                assert len(node.args) == 1 and not node.keywords, f"{path.name}:{node.lineno}"
    trainer = TrainerBase()
    trainer.loss_terms = {"ce": torch.tensor(float("nan")), "kd": 0.5}
    with pytest.raises(NonFiniteLossError, match=r"loss=nan \(ce=nan, kd=0\.5\)"):
        trainer.detect_anomaly(torch.tensor(float("nan")))
    trainer.detect_anomaly(torch.tensor(1.0))  # finite: nothing happens


def test_apply_optim_eps_sets_adam_epsilon_only():
    param = torch.nn.Parameter(torch.zeros(2))
    adam, sgd = torch.optim.Adam([param]), torch.optim.SGD([param], lr=0.1)
    apply_optim_eps(adam, type("Optim", (), {"NAME": "adam", "EPS": 1e-3}))
    apply_optim_eps(sgd, type("Optim", (), {"NAME": "sgd", "EPS": 1e-3}))
    assert adam.param_groups[0]["eps"] == 1e-3 and "eps" not in sgd.param_groups[0]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A scratch repository with three foreign files dropped in."""
    root = tmp_path_factory.mktemp("interchange")
    repo = make_scratch_repo(root / "repo")
    (repo / "trainers" / "broken_import.py").write_text(BROKEN_TRAINER)
    (repo / "trainers" / "aa_zsclip_copy.py").write_text(DUPLICATE_TRAINER)  # sorts before ours on purpose
    (repo / "datasets" / "broken_dataset.py").write_text(BROKEN_DATASET)
    return repo, root


def warning_lines(stderr: str):
    return [line for line in stderr.splitlines() if line.startswith("warning: skipped")]


def assert_one_line_per_bad_file(stderr: str):
    lines = {line.split()[2].rstrip(":"): line for line in warning_lines(stderr)}
    assert len(lines) == 3 and len(warning_lines(stderr)) == 3, stderr[-2000:]
    duplicate = lines["trainers/aa_zsclip_copy.py"]
    assert "ZeroshotCLIP" in duplicate and "already registered" in duplicate
    assert "a_package_that_is_not_installed" in lines["trainers/broken_import.py"]
    assert "SyntaxError" in lines["datasets/broken_dataset.py"]
    assert "Traceback" not in stderr


def test_list_trainers_survives_bad_modules(scratch):
    repo, root = scratch
    proc = run_train(repo, ["--list-trainers"], cache=root / "cache")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["CoCoOp", "CoOp", "CoPrompt", "HiCroPL", "IVLP", "KgCoOp", "LinearProbeCLIP", "MMA",
                                   "MaPLe", "PromptSRC", "TCP", "ZeroshotCLIP"]  # CopyOnly was rolled back with its module
    assert_one_line_per_bad_file(proc.stderr)


def test_hicropl_yaml_on_original_dassl_defaults_with_bad_modules_present(scratch):
    repo, root = scratch
    out = root / "out"
    proc = run_train(
        repo,
        ["--root", str(root / "data"), "--seed", "1", "--trainer", "HiCroPL", "--output-dir", str(out),
         "--dataset-config-file", "configs/datasets/toy_shapes.yaml",
         "--config-file", "configs/trainers/HiCroPL/demo_tiny.yaml",
         "OPTIM.MAX_EPOCH", "2", "DATASET.SUBSAMPLE_CLASSES", "base", "USE_CUDA", "False"],
        cache=root / "cache", preamble=ORIGINAL_DASSL_PREAMBLE,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_one_line_per_bad_file(proc.stderr)
    model_dir = out / "VLPromptLearner"
    assert (model_dir / "model-best.pth.tar").is_file()  # the base-to-novel test step loads this one
    assert (model_dir / "model.pth.tar-2").is_file()
    log = (out / "log.txt").read_text()
    assert "FINAL_MODEL: best_val" in log and "Deploy the model with the best val performance" in log
    assert "* accuracy:" in log.split("Deploy the model")[-1]
    assert (out / "results.json").is_file()
    checkpoint = torch.load(model_dir / "model.pth.tar-2", map_location="cpu", weights_only=False)
    assert math.isclose(checkpoint["optimizer"]["param_groups"][0]["eps"], 1e-3)  # the yaml's OPTIM.EPS
