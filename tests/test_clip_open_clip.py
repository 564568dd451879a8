"""open_clip backbones (clip/open_clip_convert.py): no download anywhere, models built with random weights.

- Equivalence: an open_clip model and our CLIP converted from it give the same image and text features (fp32, 1e-5)
  for ViT-B-16 (GELU) and the project's tiny configs (GELU; QuickGELU with 32-wide heads and 2x / 3x MLPs), and the
  test notices a wrong activation. With prompts, our towers equal prompt insertion written out by hand on open_clip's
  own modules.
- clip.load specs: random:open_clip:<model> (seeded), open_clip:<model>@<file>, a tag read offline from a prepared
  Hugging Face cache (preprocessing from the tag), and the one-line refusals (unsupported families, activation /
  tag mismatch, unknown tag, offline without the file, a file of another model).
- Downstream: the INPUT check against the backbone's preprocessing, a short HiCroPL training and the zero-shot
  baseline on ToyShapes with an open_clip tiny backbone.
"""
import dataclasses
import sys

import pytest
import torch
import torch.nn.functional as F

import clip
from clip.model import convert_weights
from clip.open_clip_convert import (UnsupportedModelError, _open_clip, config_from_open_clip, from_open_clip,
                                    supported_models)
from clip.pretrained import MissingWeightsError, WeightsFileError

open_clip = pytest.importorskip("open_clip")
TEXTS = ["a photo of a dog.", "x", "a long and winding sentence, with commas; and more words than the others have!"]
TOL = 1e-5


def open_clip_model(name, seed=0):
    _open_clip()  # registers the project's tiny configs
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return open_clip.create_model(name, pretrained=None).eval()


def images(model, n=2, seed=1):
    side = model.visual.image_size[0]
    return torch.randn(n, 3, side, side, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def tiny_pairs():
    pairs = {}
    for name in ("hicropl-tiny", "hicropl-tiny-quickgelu"):
        source = open_clip_model(name)
        pairs[name] = source, from_open_clip(source, name).eval()
    return pairs


@pytest.mark.parametrize("name", ["ViT-B-16", "hicropl-tiny", "hicropl-tiny-quickgelu"])
def test_features_equal_open_clip(name, tiny_pairs):
    source, ours = tiny_pairs[name] if name in tiny_pairs else (None, None)
    if source is None:
        source = open_clip_model(name)
        ours = from_open_clip(source, name).eval()
    image, text = images(source, n=1 if name == "ViT-B-16" else 2), clip.tokenize(TEXTS)
    with torch.no_grad():
        expected_image, expected_text = source.encode_image(image), source.encode_text(text)
        torch.testing.assert_close(ours.encode_image(image), expected_image, rtol=0, atol=TOL)
        torch.testing.assert_close(ours.encode_text(text), expected_text, rtol=0, atol=TOL)
        expected_logits = source.logit_scale.exp() * F.normalize(expected_image) @ F.normalize(expected_text).t()
        torch.testing.assert_close(ours(image, text)[0], expected_logits, rtol=0, atol=1e-4)


def test_architecture_read_from_the_modules(tiny_pairs):
    # hicropl-tiny-quickgelu.json: heads of width 32 in the image tower (96 / 32 = 3), 4 text heads of width 16,
    # MLP ratios 2 and 3, QuickGELU; none of this is in the state dict.
    config = tiny_pairs["hicropl-tiny-quickgelu"][1].config
    assert (config.vision_heads, config.transformer_heads) == (3, 4)
    assert (config.vision_mlp_width, config.transformer_mlp_width) == (192, 192)
    assert config.activation == "quick_gelu"
    assert tiny_pairs["hicropl-tiny"][1].config.activation == "gelu"
    source, ours = tiny_pairs["hicropl-tiny"]
    assert ours.visual.proj.data_ptr() != source.visual.proj.data_ptr()  # copies: the open_clip model stays apart


def test_wrong_activation_is_noticed(tiny_pairs):
    # The same weights under QuickGELU instead of GELU: the equivalence test above would fail.
    source, ours = tiny_pairs["hicropl-tiny"]
    assert config_from_open_clip(source) == ours.config
    wrong = clip.CLIP(dataclasses.replace(ours.config, activation="quick_gelu")).eval()
    wrong.load_state_dict(ours.state_dict())
    with torch.no_grad():
        difference = (wrong.encode_text(clip.tokenize(TEXTS)) - source.encode_text(clip.tokenize(TEXTS))).abs().max()
    assert difference > 100 * TOL


def hand_prompted_image(source, image, prompts):
    """open_clip's image tower with m prompt tokens appended after [CLS] + patches (before ln_pre) and replaced at
    the input of block i by prompts[i], written out on open_clip's own modules."""
    visual = source.visual
    x = visual.conv1(image).flatten(2).transpose(1, 2)
    x = torch.cat([visual.class_embedding.expand(x.shape[0], 1, -1), x], dim=1) + visual.positional_embedding
    x = visual.ln_pre(torch.cat([x, prompts[0].expand(x.shape[0], -1, -1)], dim=1))
    m = prompts[0].shape[0]
    for index, block in enumerate(visual.transformer.resblocks):
        if 0 < index < len(prompts):
            x = torch.cat([x[:, :-m], prompts[index].expand(x.shape[0], -1, -1)], dim=1)
        x = block(x)
    return visual.ln_post(x[:, 0]) @ visual.proj


def hand_prompted_text(source, text, prompts):
    """open_clip's text tower with positions 1..m replaced by prompts[i] before block i (prompts[0]: before the
    positional embedding), causal mask and EOT pooling as open_clip applies them."""
    m = prompts[0].shape[0]

    def insert(x, prompt):
        return torch.cat([x[:, :1], prompt.expand(x.shape[0], -1, -1), x[:, 1 + m:]], dim=1)

    x = insert(source.token_embedding(text), prompts[0]) + source.positional_embedding
    for index, block in enumerate(source.transformer.resblocks):
        if 0 < index < len(prompts):
            x = insert(x, prompts[index])
        x = block(x, attn_mask=source.attn_mask)
    x = source.ln_final(x)
    return x[torch.arange(x.shape[0]), text.argmax(dim=-1)] @ source.text_projection


@pytest.mark.parametrize("name", ["hicropl-tiny", "hicropl-tiny-quickgelu"])
def test_prompts_equal_hand_insertion_on_open_clip_modules(name, tiny_pairs):
    source, ours = tiny_pairs[name]
    generator = torch.Generator().manual_seed(2)
    depth, m = 3, 2
    vision = [torch.randn(m, ours.visual.width, generator=generator) for _ in range(depth)]
    text_prompts = [torch.randn(m, ours.transformer.width, generator=generator) for _ in range(depth)]
    image, text = images(source), clip.tokenize(["X X a photo of a dog.", "X X cat."])
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_image(image, vision), hand_prompted_image(source, image, vision),
                                   rtol=0, atol=TOL)
        torch.testing.assert_close(ours.encode_text(text, text_prompts),
                                   hand_prompted_text(source, text, text_prompts), rtol=0, atol=TOL)
        # and the prompts do change the features
        assert (ours.encode_text(text, text_prompts) - ours.encode_text(text)).abs().max() > 1e-3


def test_bf16_runs_close_to_fp32(tiny_pairs):
    source, ours = tiny_pairs["hicropl-tiny"]
    image = images(source)
    low = convert_weights(from_open_clip(source).eval(), torch.bfloat16)
    with torch.no_grad():
        torch.testing.assert_close(low.encode_image(image).float(), ours.encode_image(image), rtol=0.05, atol=0.05)


def test_load_random_spec_is_seeded_and_eval():
    first, preprocess = clip.load("random:open_clip:hicropl-tiny")
    second, _ = clip.load("random:open_clip:hicropl-tiny")
    assert not first.training
    for (key, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), key
    assert first.preprocess_cfg["size"] == (32, 32)
    from PIL import Image
    assert preprocess(Image.new("RGB", (50, 40))).shape == (3, 32, 32)


def test_load_local_checkpoint_file(tmp_path, tiny_pairs):
    source, _ = tiny_pairs["hicropl-tiny"]
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(source.state_dict(), path)
    model, _ = clip.load(f"open_clip:hicropl-tiny@{path}")
    image = images(source)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(image), source.encode_image(image), rtol=0, atol=TOL)
    # the file of another architecture: one line naming the file
    with pytest.raises(WeightsFileError, match=f"{path} does not hold open_clip hicropl-tiny-quickgelu weights"):
        clip.load(f"open_clip:hicropl-tiny-quickgelu@{path}")


FAKE_TAG = {"hf_hub": "someone/tiny-clip/", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
            "interpolation": "bilinear", "resize_mode": "shortest"}


@pytest.fixture
def fake_tag(monkeypatch):
    """A pretrained tag `fake` for hicropl-tiny, published (in this test) on the Hugging Face hub."""
    real = open_clip.get_pretrained_cfg
    def get_pretrained_cfg(name, tag):
        return dict(FAKE_TAG) if (name, tag) == ("hicropl-tiny", "fake") else real(name, tag)

    monkeypatch.setattr(open_clip, "get_pretrained_cfg", get_pretrained_cfg)


def test_offline_tag_from_the_hugging_face_cache(tmp_path, monkeypatch, fake_tag, tiny_pairs):
    source, _ = tiny_pairs["hicropl-tiny"]
    monkeypatch.setenv("HICROPL_OFFLINE", "1")
    monkeypatch.setattr(open_clip.pretrained, "hf_hub_download", None)  # any network attempt would fail loudly
    with pytest.raises(MissingWeightsError, match="huggingface-cli download someone/tiny-clip "
                                                  "open_clip_pytorch_model.bin") as error:
        clip.load("open_clip:hicropl-tiny/fake", download_root=tmp_path)
    assert str(tmp_path) in str(error.value) and "\n" not in str(error.value)
    # the layout huggingface_hub gives a downloaded file: <cache>/models--org--name/{refs/main, snapshots/<rev>/file}
    repo = tmp_path / "models--someone--tiny-clip"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abc")
    (repo / "snapshots" / "0123abc").mkdir(parents=True)
    torch.save(source.state_dict(), repo / "snapshots" / "0123abc" / "open_clip_pytorch_model.bin")
    model, preprocess = clip.load("open_clip:hicropl-tiny/fake", download_root=tmp_path)
    assert model.preprocess_cfg["mean"] == (0.5, 0.5, 0.5) and model.preprocess_cfg["interpolation"] == "bilinear"
    assert any(getattr(t, "mean", None) == (0.5, 0.5, 0.5) for t in preprocess.transforms)
    image = images(source)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(image), source.encode_image(image), rtol=0, atol=TOL)


@pytest.mark.parametrize("spec, message", [
    ("open_clip:coca_ViT-B-32/laion2b_s13b_b90k", "CoCa"),
    ("open_clip:ViT-B-16-SigLIP/webli", "timm image tower"),
    ("open_clip:ViT-L-14-CLIPA/datacomp1b", "image pooling 'avg'"),
    ("open_clip:ViT-M-16-alt/laion400m_e32", "LayerScale"),
    ("open_clip:ViT-B-16/openai", "use open_clip:ViT-B-16-quickgelu/openai"),
    ("open_clip:ViT-B-16/nope", "no pretrained tag 'nope'; choose one of openai, "),
    ("open_clip:ViT-B-16", "names no weights"),
    ("open_clip:ViT-Nope/x", "no model config 'ViT-Nope'"),
    ("open_clip:hf-hub:laion/CLIP-ViT-B-16-laion2B-s34B-b88K", "schemas such as hf-hub: are not supported"),
])
def test_refusals_are_one_line_and_download_nothing(spec, message, monkeypatch):
    monkeypatch.setattr(open_clip, "create_model", None)  # refused before open_clip builds or downloads anything
    with pytest.raises(clip.CLIPLoadError, match=message) as error:
        clip.load(spec)
    assert "\n" not in str(error.value)


def test_module_level_refusal_of_a_model_handed_over():
    # LayerScale set on a model built directly from a config dict: refused on its modules, listing what is supported
    cfg = open_clip.get_model_config("hicropl-tiny")
    cfg["vision_cfg"]["ls_init_value"] = 0.1
    model = open_clip.model.CLIP(**cfg)
    with pytest.raises(UnsupportedModelError, match="LayerScale.*supported: open_clip CLIP configs"):
        from_open_clip(model)


def test_supported_models_are_the_openai_layout_configs():
    names = supported_models()
    assert {"ViT-B-16", "ViT-B-16-quickgelu", "ViT-L-14", "ViT-H-14", "ViT-bigG-14"} <= set(names)
    assert not {"ViT-M-16-alt", "ViT-L-14-CLIPA", "coca_ViT-B-32", "RN50", "EVA02-B-16"} & set(names)


def test_check_input(tiny_pairs):
    model, _ = clip.load("random:open_clip:hicropl-tiny")
    mean, std = list(model.preprocess_cfg["mean"]), list(model.preprocess_cfg["std"])
    clip.check_input(model, "spec", (32, 32), mean, std, "bicubic")
    with pytest.raises(clip.InputMismatchError, match=r'add to the command: INPUT.SIZE "\(32, 32\)" '
                                                      r'INPUT.PIXEL_STD "\[0.26862954'):
        clip.check_input(model, "spec", (224, 224), mean, [0.5, 0.5, 0.5], "bicubic")
    openai_layout, _ = clip.load("random:tiny")  # no preprocessing record: not checked
    clip.check_input(openai_layout, "random:tiny", (224, 224), [0.5] * 3, [0.5] * 3, "bilinear")


def make_trainer(tmp_path, trainer, config, *opts):
    from dassl.engine import build_trainer
    from dassl.utils import set_random_seed
    from train import build_parser, setup_cfg

    argv = ["--root", str(tmp_path / "data"), "--seed", "1", "--trainer", trainer, "--config-file", config,
            "--dataset-config-file", "configs/datasets/toy_shapes.yaml", "--output-dir", str(tmp_path / "out"),
            "USE_CUDA", "False", "DATALOADER.NUM_WORKERS", "0", *map(str, opts)]
    cfg = setup_cfg(build_parser().parse_args(argv))
    set_random_seed(cfg.SEED)
    return build_trainer(cfg)


@pytest.fixture
def hicropl_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HICROPL_CACHE_DIR", str(tmp_path / "hicropl_cache"))


def test_hicropl_trains_on_an_open_clip_backbone(tmp_path, hicropl_cache):
    trainer = make_trainer(tmp_path, "HiCroPL", "configs/trainers/HiCroPL/demo_tiny.yaml",
                           "MODEL.BACKBONE.NAME", "random:open_clip:hicropl-tiny", "DATASET.SUBSAMPLE_CLASSES", "base",
                           "OPTIM.MAX_EPOCH", 1)
    assert trainer.model.clip_model.config.activation == "gelu"
    learner = {k: v.clone() for k, v in trainer.model.prompt_learner.state_dict().items()}
    trainer.train()
    changed = [k for k, v in trainer.model.prompt_learner.state_dict().items() if not torch.equal(v, learner[k])]
    assert changed  # the prompts were trained
    assert (tmp_path / "out" / "VLPromptLearner" / "model.pth.tar-1").is_file()


def test_mismatching_input_is_refused(tmp_path, hicropl_cache):
    with pytest.raises(clip.InputMismatchError, match='INPUT.PIXEL_MEAN "\\[0.48145466'):
        make_trainer(tmp_path, "HiCroPL", "configs/trainers/HiCroPL/demo_tiny.yaml",
                     "MODEL.BACKBONE.NAME", "random:open_clip:hicropl-tiny", "INPUT.PIXEL_MEAN", "[0.5, 0.5, 0.5]")


def test_zero_shot_baseline_on_an_open_clip_backbone(tmp_path, hicropl_cache):
    trainer = make_trainer(tmp_path, "ZeroshotCLIP", "configs/trainers/ZeroshotCLIP/vit_b16.yaml",
                           "MODEL.BACKBONE.NAME", "random:open_clip:hicropl-tiny", "INPUT.SIZE", "(32, 32)")
    result = trainer.test()
    assert 0 <= result <= 100


def test_text_feature_cache_tells_activations_apart(tmp_path, monkeypatch, tiny_pairs):
    # Same weights, other activation (open_clip:ViT-B-16@f vs open_clip:ViT-B-16-quickgelu@f): HiCroPL's on-disk
    # cache of frozen text features must not serve one model's features to the other.
    from trainers.hicropl import encode_descriptions, frozen_text_features

    monkeypatch.setenv("HICROPL_CACHE_DIR", str(tmp_path))
    _, gelu = tiny_pairs["hicropl-tiny"]
    quick = clip.CLIP(dataclasses.replace(gelu.config, activation="quick_gelu")).eval()
    quick.load_state_dict(gelu.state_dict())
    sentences = [["a circle."], ["a red square."]]
    cached_gelu = frozen_text_features(gelu, sentences)
    cached_quick = frozen_text_features(quick, sentences)
    torch.testing.assert_close(cached_quick, encode_descriptions(quick, sentences))
    assert (cached_quick - cached_gelu).abs().max() > 1e-3


def test_missing_open_clip_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)  # as if open-clip-torch were not installed
    with pytest.raises(UnsupportedModelError, match="^open_clip backbones need the optional package open-clip-torch: "
                                                    "pip install open-clip-torch$"):
        clip.load("open_clip:ViT-B-16/laion2b_s34b_b88k")
