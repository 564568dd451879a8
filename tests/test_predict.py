"""predict.py on a demo-like run (ToyShapes base classes, random:tiny, 1 epoch): the run's config.yaml (never replaced
by a refused resume or an in-place evaluation), the same predictions and accuracy as the engine's evaluation on the
novel test split, free class lists and description files, unreadable images, the one-line errors, the script's
entry point, ZeroshotCLIP run dirs and the README's Python API example."""
import json
import re
import runpy
import shutil
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import clip
import predict
import train
from dassl.engine import build_trainer
from dassl.utils import UserError, set_random_seed

REPO = Path(__file__).resolve().parent.parent
CONFIGS = ["--config-file", "configs/trainers/HiCroPL/demo_tiny.yaml",
           "--dataset-config-file", "configs/datasets/toy_shapes.yaml"]
NOVEL = ["cross", "ring", "crescent", "pentagon", "arrow"]  # ToyShapes labels 5-9


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """(data root, training run dir): HiCroPL trained for 1 epoch on the ToyShapes base classes by train.main."""
    root = tmp_path_factory.mktemp("predict")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HICROPL_CACHE_DIR", str(root / "cache"))
        run_train(["--root", str(root / "data"), "--seed", "1", "--trainer", "HiCroPL", *CONFIGS,
                   "--output-dir", str(root / "run"), "USE_CUDA", "False", "DATASET.SUBSAMPLE_CLASSES", "base",
                   "OPTIM.MAX_EPOCH", "1"])
    return root / "data", root / "run"


@pytest.fixture(autouse=True)
def cache_dir(workspace, monkeypatch):
    monkeypatch.setenv("HICROPL_CACHE_DIR", str(workspace[1].parent / "cache"))


def run_train(argv):
    stdout = sys.stdout
    try:
        train.main(train.build_parser().parse_args(argv))
    finally:
        sys.stdout = stdout  # train.main tees stdout into log.txt


def run_predict(argv):
    predict.main(predict.build_parser().parse_args(argv))


def prediction_lines(text):
    return [line for line in text.splitlines() if re.match(r".+\.png: \S", line)]


def write_run_config(run_dir, target, **changes):
    """A copy of ``run_dir``'s config.yaml in ``target`` with dotted ``changes`` (e.g. TRAINER__NAME="X")."""
    cfg = predict.read_run_config(str(run_dir))
    cfg.set_new_allowed(True)
    for key, value in changes.items():
        node = cfg
        *parents, leaf = key.split("__")
        for part in parents:
            node = node[part]
        node[leaf] = value
    target.mkdir(parents=True, exist_ok=True)
    (target / "config.yaml").write_text(cfg.dump())
    return target


def test_run_dir_stores_its_config(workspace):
    _, run = workspace
    cfg = predict.read_run_config(str(run))
    assert cfg.TRAINER.NAME == "HiCroPL" and cfg.MODEL.BACKBONE.NAME == "random:tiny"
    assert cfg.TRAINER.HICROPL.N_CTX == 8 and cfg.DATASET.SUBSAMPLE_CLASSES == "base"
    assert tuple(cfg.INPUT.SIZE) == (32, 32)


def test_config_is_never_replaced_by_a_refused_resume_or_an_in_place_evaluation(workspace, tmp_path):
    data, run = workspace
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    before = (copy / "config.yaml").read_text()
    common = ["--root", str(data), "--seed", "1", "--trainer", "HiCroPL", *CONFIGS, "--output-dir", str(copy),
              "USE_CUDA", "False"]
    with pytest.raises(UserError, match="cannot resume"):
        run_train(common + ["DATASET.SUBSAMPLE_CLASSES", "base", "TRAINER.HICROPL.N_CTX", "4"])
    run_train(common[:-2] + ["--model-dir", str(copy), "--eval-only", "USE_CUDA", "False",
                             "DATASET.SUBSAMPLE_CLASSES", "new"])
    assert (copy / "config.yaml").read_text() == before


def test_same_predictions_and_accuracy_as_eval_only(workspace, tmp_path):
    data, run = workspace
    # The engine's evaluation of the run on the novel test split, as train.py --eval-only does it.
    args = train.build_parser().parse_args(
        ["--root", str(data), "--seed", "1", "--trainer", "HiCroPL", *CONFIGS, "--output-dir", str(tmp_path / "eval"),
         "--model-dir", str(run), "--eval-only", "USE_CUDA", "False", "DATASET.SUBSAMPLE_CLASSES", "new"])
    cfg = train.setup_cfg(args)
    set_random_seed(cfg.SEED)
    trainer = build_trainer(cfg)
    trainer.load_model(str(run))
    accuracy = trainer.test()
    paths, labels, engine_probs = [], [], []
    with torch.no_grad():  # the eval cache keeps the prompts of test(): the same logits per image
        for batch in trainer.test_loader:
            paths += batch["impath"]
            labels += batch["label"].tolist()
            engine_probs.append(trainer.model_inference(batch["img"]).softmax(dim=-1))
    engine_probs = torch.cat(engine_probs)
    assert trainer.dm.dataset.classnames == NOVEL and len(paths) == 5 * 12

    out = tmp_path / "preds.csv"
    run_predict(["--model-dir", str(run), *paths, "--dataset-config-file", "configs/datasets/toy_shapes.yaml",
                 "--subsample", "new", "--topk", "5", "--out", str(out)])
    rows = {row[0]: row[1:] for row in (line.split(",") for line in out.read_text().splitlines()[1:])}
    assert list(rows) == paths
    top1 = [rows[p][0] for p in paths]
    assert top1 == [NOVEL[i] for i in engine_probs.argmax(dim=1).tolist()]
    for path, probs in zip(paths, engine_probs):  # all 5 classes: the full distribution, to CSV precision
        ours = dict(zip(rows[path][0::2], map(float, rows[path][1::2])))
        assert ours == pytest.approx({name: p for name, p in zip(NOVEL, probs.tolist())}, abs=1e-6)
    correct = sum(name == NOVEL[label] for name, label in zip(top1, labels))
    assert round(100 * correct / len(paths), 2) == pytest.approx(accuracy)


def test_new_class_names_and_images_end_to_end(workspace, tmp_path, capsys):
    _, run = workspace
    model = predict.load_trained(str(run))
    image = Image.new("RGB", (50, 40), (200, 30, 30))
    path = tmp_path / "blue.jpg"
    Image.new("RGB", (20, 20), (20, 40, 220)).save(path)
    classes = ["red thing", "ring", "blue_square", "zebra"]
    capsys.readouterr()
    probs, names = model.predict([image, str(path)], classes, topk=2)
    note = [line for line in capsys.readouterr().out.splitlines() if "missing" in line]
    assert len(note) == 1 and "'red thing'" in note[0] and "'zebra'" in note[0] and "'ring'" not in note[0]
    assert probs.shape == (2, 2) and len(names) == 2 and all(len(row) == 2 for row in names)
    assert all(set(row) <= set(classes) and len(set(row)) == 2 for row in names)
    assert (probs[:, 0] >= probs[:, 1]).all()
    full = model.probabilities([image, path], classes)
    assert full.shape == (2, 4) and torch.allclose(full.sum(dim=1), torch.ones(2))
    # Another class list and back: the first answer again (HiCroPL's in-place prompt mapping is not re-applied).
    model.probabilities([image], ["circle", "square"])
    assert torch.equal(model.probabilities([image, path], classes), full)

    # Descriptions of one's own: the described classes get them (no fallback note), and W changes the answer.
    descriptions = tmp_path / "mine.json"
    descriptions.write_text(json.dumps({"zebra": ["a striped horse.", "black and white stripes."]}))
    described = predict.load_trained(str(run), descriptions=str(descriptions))
    capsys.readouterr()
    other = described.probabilities([image, path], classes)
    note = [line for line in capsys.readouterr().out.splitlines() if "missing" in line]
    assert len(note) == 1 and "'zebra'" not in note[0] and "'ring'" in note[0] and str(descriptions) in note[0]
    assert not torch.allclose(other, full)


def test_unreadable_image_in_a_folder_is_skipped_and_reported(workspace, tmp_path, capsys):
    data, run = workspace
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("0000.png", "0001.png"):
        shutil.copy(data / "toy_shapes" / "images" / "ring" / name, folder / name)
    (folder / "broken.png").write_bytes(b"not a png at all")
    (folder / "notes.txt").write_text("not an image, not looked at")
    out = tmp_path / "preds.jsonl"
    run_predict(["--model-dir", str(run), str(folder), "--classnames", "ring", "cross", "--out", str(out)])
    captured = capsys.readouterr()
    assert len(prediction_lines(captured.out)) == 2 and "broken.png" not in captured.out
    skipped = [line for line in captured.err.splitlines() if line.startswith("skipped:")]
    assert len(skipped) == 1 and "broken.png" in skipped[0]
    assert "1 of 3 images could not be read" in captured.err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [Path(r["image"]).name for r in records] == ["0000.png", "0001.png"]
    assert all({p["class"] for p in r["predictions"]} == {"ring", "cross"} for r in records)

    with pytest.raises(UserError, match="broken.png"):
        run_predict(["--model-dir", str(run), str(folder), "--classnames", "ring", "--strict"])


def test_one_line_errors(workspace, tmp_path):
    data, run = workspace
    image = str(data / "toy_shapes" / "images" / "ring" / "0000.png")

    def error(model_dir, *extra, images=(image,)):
        with pytest.raises(UserError) as info:
            run_predict(["--model-dir", str(model_dir), *images, *(extra or ("--classnames", "ring"))])
        message = str(info.value)
        assert "\n" not in message
        return message

    assert "has no config.yaml" in error(tmp_path)
    assert "holds no checkpoints" in error(write_run_config(run, tmp_path / "no_ckpt"))
    assert "pick one with --load-epoch" in error(run, "--classnames", "ring", "--load-epoch", "7")
    assert "run of trainer CoOp" in error(write_run_config(run, tmp_path / "coop", TRAINER__NAME="CoOp"))
    other = write_run_config(run, tmp_path / "other_cfg", TRAINER__HICROPL__N_CTX=4)
    shutil.copytree(run / "VLPromptLearner", other / "VLPromptLearner")
    assert "does not match this HiCroPL model" in error(other)
    empty = tmp_path / "classes.txt"
    empty.write_text("# nothing here\n\n")
    assert "class list is empty" in error(run, "--classnames-file", str(empty))
    assert "more than once" in error(run, "--classnames", "ring", "ring")
    assert "missing.png does not exist" in error(run, images=(image, str(tmp_path / "missing.png")))
    assert "must end in .csv or .jsonl" in error(run, "--classnames", "ring", "--out", str(tmp_path / "p.txt"))


def test_zeroshot_clip_run_dir(workspace, tmp_path):
    data, run = workspace
    zs_dir = write_run_config(run, tmp_path / "zs", TRAINER__NAME="ZeroshotCLIP")
    image = data / "toy_shapes" / "images" / "ring" / "0000.png"
    model = predict.load_trained(str(zs_dir))
    probs = model.probabilities([image], ["ring", "arrow"])
    # Independently: CLIP's zero-shot softmax with ToyShapes' template sentence (the default "a photo of a {}.").
    reference, _ = clip.load("random:tiny")
    with torch.no_grad():
        x = model.load_image(image)[None]
        img = F.normalize(reference.encode_image(x), dim=-1)
        txt = F.normalize(reference.encode_text(clip.tokenize(["a photo of a ring.", "a photo of a arrow."])), dim=-1)
        expected = (reference.logit_scale.exp() * img @ txt.t()).softmax(dim=-1)
    assert torch.allclose(probs, expected, atol=1e-5)
    with pytest.raises(UserError, match="no checkpoints"):
        predict.load_trained(str(zs_dir), load_epoch=1)


def run_script(argv, monkeypatch):
    """``python predict.py ARGV`` in this process (the ``__main__`` block included); returns the exit status."""
    monkeypatch.setattr(sys, "argv", ["predict.py", *argv])
    try:
        runpy.run_path(str(REPO / "predict.py"), run_name="__main__")
    except SystemExit as e:
        return e.code
    return 0


def test_cli_entry_point(workspace, tmp_path, monkeypatch, capsys):
    data, run = workspace
    folder = tmp_path / "images"
    folder.mkdir()
    shutil.copy(data / "toy_shapes" / "images" / "ring" / "0000.png", folder / "a.png")
    (folder / "b.png").write_bytes(b"\x89PNG broken")
    argv = ["--model-dir", str(run), str(folder), "--classnames", "ring", "cross", "arrow", "--topk", "2"]
    assert run_script(argv, monkeypatch) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines() == prediction_lines(captured.out) and len(captured.out.splitlines()) == 1
    assert re.fullmatch(r".*a\.png: \w+ 0\.\d{3}, \w+ 0\.\d{3}", captured.out.strip())
    assert "skipped:" in captured.err and "b.png" in captured.err

    assert run_script(argv[:3] + ["--classnames-file", str(tmp_path / "none.txt")], monkeypatch) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith("error: cannot read --classnames-file")


def test_readme_python_api_example_runs(workspace, tmp_path, monkeypatch, capsys):
    data, run = workspace
    readme = (REPO / "README.md").read_text()
    section = readme.split("### Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len([line for line in code.splitlines() if line.strip()]) <= 5
    # The paths `make demo` leaves behind.
    (tmp_path / "output" / "demo").mkdir(parents=True)
    (tmp_path / "output" / "demo" / "train_base").symlink_to(run)
    (tmp_path / "data").symlink_to(data)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(r"\['\w+', '\w+'\] tensor\(\[0\.\d+, 0\.\d+\]\)", printed), printed
