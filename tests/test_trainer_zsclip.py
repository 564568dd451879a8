"""Zero-shot CLIP baseline: CoOp's per-dataset templates, the description-ensemble classifier, logits computed
independently from the CLIP towers (random:tiny on ToyShapes), no learned weights, config errors."""
import json

import pytest
import torch
import torch.nn.functional as F

import clip
from dassl.engine import build_trainer
from descriptions import description_file
from train import build_parser, setup_cfg
from trainers.zsclip import template_sentences

CLASSES = ["circle", "square", "triangle", "star", "hexagon", "cross", "ring", "crescent", "pentagon", "arrow"]


@pytest.fixture(autouse=True)
def cache_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("HICROPL_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "hicropl_cache"))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


def make_trainer(data_root, output_dir, *opts):
    argv = ["--root", data_root, "--trainer", "ZeroshotCLIP", "--backbone", "random:tiny", "--output-dir",
            str(output_dir), "--dataset-config-file", "configs/datasets/toy_shapes.yaml", "--config-file",
            "configs/trainers/ZeroshotCLIP/vit_b16.yaml", "INPUT.SIZE", "(32, 32)", "DATALOADER.NUM_WORKERS", "0",
            "USE_CUDA", "False", *opts]
    return build_trainer(setup_cfg(build_parser().parse_args(argv)))


def test_coop_templates():
    expected = {
        "OxfordPets": "a photo of a british shorthair, a type of pet.",
        "OxfordFlowers": "a photo of a british shorthair, a type of flower.",
        "FGVCAircraft": "a photo of a british shorthair, a type of aircraft.",
        "DescribableTextures": "british shorthair texture.",
        "EuroSAT": "a centered satellite photo of british shorthair.",
        "Food101": "a photo of british shorthair, a type of food.",
        "UCF101": "a photo of a person doing british shorthair.",
        "ImageNet": "a photo of a british shorthair.",
        "SUN397": "a photo of a british shorthair.",
        "ToyShapes": "a photo of a british shorthair.",
    }
    for dataset, sentence in expected.items():
        assert template_sentences(dataset, ["british_shorthair"]) == [[sentence]]


def logits_from_texts(texts_per_class, image):
    """exp(logit_scale) * norm(image features) @ T^T with T the normalised mean of normalised sentence features."""
    model, _ = clip.load("random:tiny")
    with torch.no_grad():
        rows = []
        for texts in texts_per_class:
            features = F.normalize(model.encode_text(clip.tokenize(texts)), dim=-1).mean(0)
            rows.append(F.normalize(features, dim=-1))
        image_features = F.normalize(model.encode_image(image), dim=-1)
        return model.logit_scale.exp() * image_features @ torch.stack(rows).T


@pytest.mark.parametrize("classifier", ["template", "descriptions"])
def test_zero_shot_logits(data_root, tmp_path, classifier):
    trainer = make_trainer(data_root, tmp_path, "TRAINER.ZSCLIP.CLASSIFIER", classifier)
    assert trainer.get_model_names() == []  # nothing learned, nothing saved
    image = next(iter(trainer.test_loader))["img"][:6]
    if classifier == "template":
        texts = [[f"a photo of a {name}."] for name in CLASSES]
    else:
        table = json.loads(description_file("ToyShapes").read_text(encoding="utf-8"))
        texts = [table[name] for name in CLASSES]
    torch.testing.assert_close(trainer.model_inference(image), logits_from_texts(texts, image), atol=1e-4, rtol=1e-5)
    trainer.train()  # only evaluates
    records = json.loads((tmp_path / "results.json").read_text())["evaluations"]
    assert [r["split"] for r in records] == ["test"] and records[0]["checkpoint"] is None


@pytest.mark.parametrize("opts, message", [
    (("TRAINER.ZSCLIP.CLASSIFIER", "ensemble"), "CLASSIFIER"),
    (("TRAINER.ZSCLIP.PREC", "amp"), "PREC"),
    (("TRAINER.ZSCLIP.PREC", "fp16"), "needs a CUDA device"),
])
def test_config_errors(data_root, tmp_path, opts, message):
    with pytest.raises(ValueError, match=message):
        make_trainer(data_root, tmp_path, *opts)
