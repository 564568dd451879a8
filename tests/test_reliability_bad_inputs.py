"""A catalogue of bad inputs to ``train.py``: each fails fast with one ``error: ...`` line, status 2, no traceback, and
leaves nothing half-written (no new data, split, cache, weights or checkpoint files; in the output dir at most the
log of the failed run).

Every case is a ``train.py`` child process (see test_reliability_zygote.py) of a tiny HiCroPL command
(``random:tiny``, ToyShapes base classes, 1 shot, 1 epoch, CPU). The expected messages are written here from what a
user needs to read (what is wrong, where, how to fix it), not captured from the code. The README "Troubleshooting"
section lists the same first words.
"""
import json
import shutil
from pathlib import Path

import pytest
import torch

from test_reliability_zygote import message_lines, zygote

MODEL = "VLPromptLearner"


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """Shared setup: ToyShapes generated, a 1-epoch HiCroPL run (N_CTX 8) to take checkpoints from, bad files."""
    ws = tmp_path_factory.mktemp("bad_inputs")
    result = zygote().run(base_args(ws, ws / "trained"), str(ws / "logs"), env=env(ws))
    assert result.rc == 0, result.stderr[-3000:]

    (ws / "empty").mkdir()
    (ws / "misnamed" / "OxfordPets" / "images").mkdir(parents=True)
    (ws / "pets_no_split" / "oxford_pets" / "images").mkdir(parents=True)
    (ws / "toy_no_split" / "toy_shapes" / "images").mkdir(parents=True)
    (ws / "a_file").write_text("not a folder")

    # A copy of ToyShapes with the first training image overwritten by garbage.
    shutil.copytree(ws / "data" / "toy_shapes", ws / "corrupt_data" / "toy_shapes",
                    ignore=shutil.ignore_patterns("split_fewshot"))
    split = json.loads((ws / "data" / "toy_shapes" / "split_toy_shapes.json").read_text())
    (ws / "corrupt_data" / "toy_shapes" / "images" / split["train"][0][0]).write_bytes(b"\x89PNG\r\n garbage")

    descriptions = json.loads((Path(__file__).resolve().parents[1] / "descriptions" / "toy_shapes.json").read_text())
    (ws / "missing_square.json").write_text(json.dumps({k: v for k, v in descriptions.items() if k != "square"}))
    too_long = dict(descriptions, circle=descriptions["circle"] + ["a round " + "round " * 80 + "shape."])
    (ws / "too_long.json").write_text(json.dumps(too_long))

    (ws / "garbage.pt").write_bytes(b"these bytes are not a checkpoint")
    (ws / "wrong_sum").mkdir()
    (ws / "wrong_sum" / "ViT-B-16.pt").write_bytes(b"a file with the wrong SHA256")
    (ws / "bad.yaml").write_text("OPTIM:\n  LR: [0.1\n")

    truncated = ws / "truncated"
    shutil.copytree(ws / "trained", truncated)
    best = truncated / MODEL / "model-best.pth.tar"
    best.write_bytes(best.read_bytes()[: best.stat().st_size // 2])
    shutil.copytree(ws / "trained", ws / "pointer_dangling")
    (ws / "pointer_dangling" / MODEL / "model.pth.tar-1").unlink()
    return ws


def env(ws):
    # Offline, so that no case can reach the network; caches inside the workspace so that they are checked too.
    return {"HICROPL_OFFLINE": "1", "CLIP_CACHE_DIR": str(ws / "clip_cache"), "HICROPL_CACHE_DIR": str(ws / "cache")}


def base_args(ws, out, root=None, dataset="toy_shapes", flags=(), opts=()):
    return [
        "--root", root or ws / "data", "--seed", "1", "--trainer", "HiCroPL",
        "--dataset-config-file", f"configs/datasets/{dataset}.yaml",
        "--config-file", "configs/trainers/HiCroPL/demo_tiny.yaml", "--output-dir", out, *flags,
        "DATASET.NUM_SHOTS", "1", "DATASET.SUBSAMPLE_CLASSES", "base", "OPTIM.MAX_EPOCH", "1",
        "TRAINER.HICROPL.PREC", "fp32", "DATALOADER.NUM_WORKERS", "0", "USE_CUDA", "False", *opts,
    ]


def replace_flag(args, flag, value):
    args = list(args)
    args[args.index(flag) + 1] = value
    return args


# name -> (args(ws, out), extra env(ws), what the single error line must contain, in order)
CASES = {
    "dataset root missing": (
        lambda ws, out: base_args(ws, out, root=ws / "empty", dataset="oxford_pets"), None,
        ["error: OxfordPets: dataset folder not found: ", "empty/oxford_pets", "DATASETS.md#oxfordpets"]),
    "dataset root misnamed": (
        lambda ws, out: base_args(ws, out, root=ws / "misnamed", dataset="oxford_pets"), None,
        ["error: OxfordPets: dataset folder not found: ", "found 'OxfordPets' instead: rename it to 'oxford_pets'"]),
    "split file missing (generated dataset)": (
        lambda ws, out: base_args(ws, out, root=ws / "toy_no_split"), None,
        ["error: ToyShapes: split file not found: ", "toy_shapes/split_toy_shapes.json", "to regenerate it"]),
    "split file and annotations missing": (
        lambda ws, out: base_args(ws, out, root=ws / "pets_no_split", dataset="oxford_pets"), None,
        ["error: OxfordPets: ", "not found", "split_zhou_OxfordPets.json"]),
    "image unreadable": (
        lambda ws, out: base_args(ws, out, root=ws / "corrupt_data", opts=["DATASET.NUM_SHOTS", "-1"]), None,
        ["error: cannot read image ", "circle/0000.png", "replace the file"]),
    "image unreadable in a DataLoader worker": (
        lambda ws, out: base_args(ws, out, root=ws / "corrupt_data",
                                  opts=["DATASET.NUM_SHOTS", "-1", "DATALOADER.NUM_WORKERS", "1"]), None,
        ["error: cannot read image ", "circle/0000.png", "replace the file"]),
    "config key unknown": (
        lambda ws, out: base_args(ws, out, opts=["OPTIM.LRR", "0.1"]), None,
        ["error: unknown config key 'OPTIM.LRR' from the command line; did you mean 'OPTIM.LR'?"]),
    "config value of the wrong type": (
        lambda ws, out: base_args(ws, out, opts=["OPTIM.MAX_EPOCH", "ten"]), None,
        ["error: config key 'OPTIM.MAX_EPOCH' from the command line expects int", "'ten'"]),
    "config file missing": (
        lambda ws, out: replace_flag(base_args(ws, out), "--config-file", "configs/trainers/HiCroPL/typo.yaml"), None,
        ["error: config file not found: configs/trainers/HiCroPL/typo.yaml"]),
    "config file not YAML": (
        lambda ws, out: replace_flag(base_args(ws, out), "--config-file", str(ws / "bad.yaml")), None,
        ["error: config file ", "bad.yaml is not valid YAML"]),
    "CROSS_LAYER > PROMPT_DEPTH": (
        lambda ws, out: base_args(ws, out, opts=["TRAINER.HICROPL.CROSS_LAYER", "5"]), None,
        ["error: TRAINER.HICROPL.CROSS_LAYER (5) must lie in [0, PROMPT_DEPTH] = [0, 4]"]),
    "PROMPT_DEPTH deeper than the backbone": (
        lambda ws, out: base_args(ws, out, opts=["TRAINER.HICROPL.PROMPT_DEPTH", "5"]), None,
        ["error: TRAINER.HICROPL.PROMPT_DEPTH (5) exceeds the backbone's depth (4 layers)"]),
    "N_CTX too long for the context": (
        lambda ws, out: base_args(ws, out, opts=["TRAINER.HICROPL.N_CTX", "80"]), None,
        ["error: TRAINER.HICROPL.N_CTX=80: the prompt does not fit CLIP's 77-token context", "lower N_CTX"]),
    "PREC fp16 on CPU": (
        lambda ws, out: base_args(ws, out, opts=["TRAINER.HICROPL.PREC", "fp16"]), None,
        ["error: TRAINER.HICROPL.PREC fp16 needs a CUDA device; on CPU use PREC fp32 or bf16"]),
    "description file missing classes": (
        lambda ws, out: base_args(ws, out, opts=["TRAINER.HICROPL.DESCRIPTIONS", str(ws / "missing_square.json")]),
        None, ["error: ", "missing_square.json has no descriptions for 1 of 5 classes: 'square'",
               "TRAINER.HICROPL.DESCRIPTIONS_FALLBACK"]),
    "description too long for 77 tokens": (
        lambda ws, out: base_args(ws, out, opts=["TRAINER.HICROPL.DESCRIPTIONS", str(ws / "too_long.json")]), None,
        ["error: ", "too_long.json: 1 sentence(s) do not fit CLIP's 77-token context (shorten them): 'circle': "]),
    "description file missing": (
        lambda ws, out: base_args(ws, out, opts=["TRAINER.HICROPL.DESCRIPTIONS", str(ws / "nope.json")]), None,
        ["error: description file ", "nope.json does not exist"]),
    "weights file corrupt": (
        lambda ws, out: base_args(ws, out, opts=["MODEL.BACKBONE.NAME", str(ws / "garbage.pt")]), None,
        ["error: could not read CLIP weights from ", "garbage.pt"]),
    "weights file of another model": (
        lambda ws, out: base_args(ws, out, opts=["MODEL.BACKBONE.NAME",
                                                 str(ws / "trained" / MODEL / "model-best.pth.tar")]), None,
        ["error: ", "model-best.pth.tar does not hold OpenAI CLIP weights"]),
    "weights with the wrong checksum": (
        lambda ws, out: base_args(ws, out, opts=["MODEL.BACKBONE.NAME", "ViT-B/16"]),
        lambda ws: {"CLIP_CACHE_DIR": str(ws / "wrong_sum")},
        ["error: the cached ViT-B/16 weights ", "wrong_sum/ViT-B-16.pt have SHA256 ",
         "expected 5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f; replace the file"]),
    "offline without weights": (
        lambda ws, out: base_args(ws, out, opts=["MODEL.BACKBONE.NAME", "ViT-B/16"]), None,
        ["error: CLIP ViT-B/16 weights are not cached and offline mode is on (HICROPL_OFFLINE=1): download ",
         "place it at ", "clip_cache/ViT-B-16.pt"]),
    "backbone name unknown": (
        lambda ws, out: base_args(ws, out, opts=["MODEL.BACKBONE.NAME", "ViT-B/17"]), None,
        ["error: CLIP spec 'ViT-B/17' is not a model name (RN50, "]),
    "--model-dir without checkpoints": (
        lambda ws, out: base_args(ws, out, flags=["--eval-only", "--model-dir", ws / "empty"]), None,
        ["error: --model-dir ", "empty holds no checkpoints"]),
    "--load-epoch that was not saved": (
        lambda ws, out: base_args(ws, out, flags=["--eval-only", "--model-dir", ws / "trained", "--load-epoch", "7"]),
        None, ["error: --model-dir ", "has no <model name>/model.pth.tar-7; ",
               "it has model-best.pth.tar, model.pth.tar-1"]),
    "checkpoint from another configuration (--eval-only)": (
        lambda ws, out: base_args(ws, out, flags=["--eval-only", "--model-dir", ws / "trained"],
                                  opts=["TRAINER.HICROPL.N_CTX", "4"]), None,
        ["error: cannot load ", "trained/VLPromptLearner/model-best.pth.tar: TRAINER.HICROPL.N_CTX is 8 in the "
         "checkpoint but 4 in the config"]),
    "checkpoint from another configuration (--resume)": (
        lambda ws, out: base_args(ws, out, flags=["--resume", ws / "trained"], opts=["TRAINER.HICROPL.N_CTX", "4"]),
        None, ["error: cannot resume from ", "trained/VLPromptLearner/model.pth.tar-1: ",
               "TRAINER.HICROPL.N_CTX is 8 in the checkpoint but 4 in the config"]),
    "resume pointer names a missing checkpoint": (
        lambda ws, out: base_args(ws, out, flags=["--resume", ws / "pointer_dangling"]), None,
        ["error: cannot resume: ", "pointer_dangling/VLPromptLearner/checkpoint names 'model.pth.tar-1', which is "
         "not a file", "delete "]),
    "checkpoint truncated": (
        lambda ws, out: base_args(ws, out, flags=["--eval-only", "--model-dir", ws / "truncated"]), None,
        ["error: cannot read checkpoint ", "truncated/VLPromptLearner/model-best.pth.tar",
         "the file is truncated or corrupt"]),
    "output dir unwritable": (
        lambda ws, out: base_args(ws, ws / "a_file" / "out"), None,
        ["error: cannot write to the output dir ", "a_file/out", "choose another --output-dir"]),
    "--eval-only without --model-dir": (
        lambda ws, out: base_args(ws, out, flags=["--eval-only"]), None,
        ["error: --eval-only needs --model-dir DIR"]),
    "trainer unknown": (
        lambda ws, out: replace_flag(base_args(ws, out), "--trainer", "HiCroPLL"), None,
        ["error: unknown trainer 'HiCroPLL'; available: ", "Did you mean 'HiCroPL'?"]),
    "dataset unknown": (
        lambda ws, out: base_args(ws, out, opts=["DATASET.NAME", "ToyShape"]), None,
        ["error: unknown dataset 'ToyShape'; available: ", "Did you mean 'ToyShapes'?"]),
    "command-line flag unknown": (
        lambda ws, out: ["--epochs", "3"] + base_args(ws, out), None,
        ["error: unrecognized arguments: --epochs (see train.py --help)"]),
}

# Output-dir entries a failed run may leave: its log (and the config and training curves of a run that failed
# mid-epoch).
LOGS = {"log.txt"}
TRAINING_LOGS = {"log.txt", "tensorboard", "config.yaml"}
STARTED_TRAINING = {"image unreadable", "image unreadable in a DataLoader worker"}


def snapshot(ws, skip):
    """Every path under the workspace, files with size and mtime (the ``skip`` folders excluded)."""
    return {
        str(p.relative_to(ws)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else "dir"
        for p in ws.rglob("*")
        if not any(p == s or s in p.parents for s in skip)
    }


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_fails_fast_with_one_line(ws, case):
    make_args, make_env, expected = CASES[case]
    out = ws / "out" / case.replace(" ", "_").replace("/", "_")
    skip = [ws / "logs", ws / "out"]
    before = snapshot(ws, skip)

    result = zygote().run(make_args(ws, out), str(ws / "logs"), env={**env(ws), **(make_env(ws) if make_env else {})},
                          timeout=60)

    assert result.rc == 2, f"status {result.rc}:\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = message_lines(result.stderr)
    assert len(lines) == 1, result.stderr[-3000:]
    position = 0
    for fragment in expected:  # in order
        found = lines[0].find(fragment, position)
        assert found >= 0, f"{fragment!r} not in {lines[0]!r}"
        position = found + len(fragment)
    assert lines[0].startswith(expected[0])

    # Nothing half-written: no new or changed file anywhere; in the output dir at most the log of this run.
    assert snapshot(ws, skip) == before
    if out.exists():
        left = {p.name for p in out.iterdir()}
        assert left <= (TRAINING_LOGS if case in STARTED_TRAINING else LOGS), left
        assert (out / "log.txt").read_text().splitlines()[-1] == lines[0]


def test_damaged_text_feature_cache_is_recomputed(ws):
    """Not an input error: a damaged cache of the frozen text features W is rebuilt, with a note, to the same W."""
    (cached,) = (ws / "cache" / "text_features").glob("*.pt")
    expected = torch.load(cached, weights_only=True)
    cached.write_bytes(cached.read_bytes()[:100])
    result = zygote().run(["--no-train"] + base_args(ws, ws / "out" / "damaged_cache"), str(ws / "logs"),
                          env=env(ws))
    assert result.rc == 0, result.stderr[-3000:]
    assert f"Frozen text features W: the cache {cached} cannot be read" in result.stdout
    assert torch.equal(torch.load(cached, weights_only=True), expected)
    assert [p.name for p in cached.parent.iterdir()] == [cached.name]  # no temp file left
