"""openai-clip's public module surface (`clip.clip`, `clip.simple_tokenizer`, sequence-first transformer calls) against
the installed openai-clip distribution's own `model.py` and `simple_tokenizer.py` (loaded by file path), on random
weights; `_download` on local file:// URLs only.
"""
import copy
import hashlib

import pytest
import torch

from clip import CLIPCallError
from clip import clip as openai_style
from clip.model import CLIP, convert_weights
from clip.pretrained import ChecksumError, build_random
from clip.simple_tokenizer import SimpleTokenizer
from test_clip_model import load_reference_module

TEXTS = ["a photo of a dog.", "X X X X crescent.", "Hello, World! 123 naïve café"]


@pytest.fixture(scope="module")
def reference():
    return load_reference_module("model")


@pytest.fixture(scope="module")
def twins(reference):
    """(ours via clip.clip.build_model, reference build_model), both fp16-converted then .float(), same weights."""
    state_dict = build_random("tiny").state_dict()
    ref = reference.build_model({k: v.clone() for k, v in state_dict.items()})
    ours = openai_style.build_model({k: v.clone() for k, v in state_dict.items()})
    return ours, ref


def test_build_model_has_openai_semantics(twins):
    ours, ref = twins
    assert isinstance(ours, CLIP) and not ours.training and not ref.training
    ref_dtypes = {k: v.dtype for k, v in ref.state_dict().items()}
    assert {k: v.dtype for k, v in ours.state_dict().items()} == ref_dtypes
    assert ours.dtype == torch.float16
    for key, value in ref.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key


def test_sequence_first_transformer_calls_match_reference(twins):
    ours, ref = (copy.deepcopy(model).float() for model in twins)
    generator = torch.Generator().manual_seed(0)
    # text tower: the reference's causal mask is built for the full context length (77)
    x = torch.randn(77, 3, ours.transformer.width, generator=generator)
    with torch.no_grad():
        expected = ref.transformer(x)
        torch.testing.assert_close(ours.transformer(x), expected, atol=1e-5, rtol=1e-5)
        # the same tensor read batch-first would be another computation: the comparison has power
        assert (ours.transformer.forward_batch_first(x) - expected).abs().max() > 1e-2
        v = torch.randn(17, 2, ours.visual.width, generator=generator)  # vision tower: (1 + 16 patches, N, D)
        torch.testing.assert_close(ours.visual.transformer(v), ref.visual.transformer(v), atol=1e-5, rtol=1e-5)
        image = torch.randn(2, 3, 32, 32, generator=generator)
        torch.testing.assert_close(ours.visual(image), ref.visual(image), atol=1e-5, rtol=1e-5)
        tokens = openai_style.tokenize(TEXTS)
        torch.testing.assert_close(ours.encode_text(tokens), ref.encode_text(tokens), atol=1e-5, rtol=1e-5)
    for name in ("transformer", "token_embedding", "positional_embedding", "ln_final", "text_projection", "visual",
                 "logit_scale", "dtype", "context_length", "vocab_size"):
        assert hasattr(ours, name), name


def test_calls_we_cannot_honour_are_refused_naming_the_caller(twins):
    ours = twins[0]
    x = torch.zeros(77, 2, ours.transformer.width, dtype=ours.dtype)
    with pytest.raises(CLIPCallError, match=r"test_clip_openai_surface\.py:\d+ calls the CLIP transformer with a "
                                            r"list.*MaPLe"):
        ours.transformer([x, [], 0])  # MaPLe's patched-CLIP call
    with pytest.raises(CLIPCallError, match=r"test_clip_openai_surface\.py:\d+ .*2 arguments.*forward_batch_first"):
        ours.transformer(x, [None])
    with pytest.raises(CLIPCallError, match=r"test_clip_openai_surface\.py:\d+ .*shape \(77, 2\)"):
        ours.visual.transformer(x[:, :, 0])
    with pytest.raises(CLIPCallError, match=r"test_clip_openai_surface\.py:\d+ passes design_details"):
        openai_style.build_model(ours.state_dict(), {"trainer": "MaPLe", "vision_depth": 0, "language_depth": 0})
    with pytest.raises(CLIPCallError, match=r"test_clip_openai_surface\.py:\d+ .*jit=True"):
        openai_style.load("random:tiny", device="cpu", jit=True)


def test_tokenizer_and_tokenize_equal_openai_clip():
    reference = load_reference_module("simple_tokenizer").SimpleTokenizer()
    ours = SimpleTokenizer()
    for text in TEXTS:
        assert ours.encode(text) == reference.encode(text)
        assert ours.decode(ours.encode(text)) == reference.decode(reference.encode(text))
    tokens = openai_style.tokenize(TEXTS)
    assert tokens.dtype == torch.int32 and tokens.shape == (3, 77)  # openai-clip returns int32 on torch >= 1.8
    for row, text in enumerate(TEXTS):
        ids = [reference.encoder["<|startoftext|>"], *reference.encode(text), reference.encoder["<|endoftext|>"]]
        assert tokens[row, :len(ids)].tolist() == ids and not tokens[row, len(ids):].any()


def test_load_and_available_models():
    model, preprocess = openai_style.load("random:tiny", device="cpu")
    assert model.dtype == torch.float32 and not model.training  # openai-clip: fp32 on the CPU
    assert openai_style.available_models() == list(openai_style._MODELS)
    assert "ViT-B/16" in openai_style._MODELS and openai_style._MODELS["ViT-B/16"].endswith("/ViT-B-16.pt")
    assert preprocess.transforms[0].size == model.visual.input_resolution


def test_download_from_file_url_verifies_and_caches(tmp_path, monkeypatch):
    monkeypatch.delenv("CLIP_CACHE_DIR", raising=False)
    payload = b"weights" * 1000
    sha256 = hashlib.sha256(payload).hexdigest()
    source = tmp_path / "server" / sha256 / "model.pt"
    source.parent.mkdir(parents=True)
    source.write_bytes(payload)
    root = tmp_path / "cache"
    path = openai_style._download(source.as_uri(), str(root))
    assert isinstance(path, str) and path == str(root / "model.pt")
    assert (root / "model.pt").read_bytes() == payload
    source.unlink()  # cached and verified: no second download
    assert openai_style._download(source.as_uri(), str(root)) == path

    wrong = tmp_path / "server" / ("0" * 64) / "other.pt"
    wrong.parent.mkdir(parents=True)
    wrong.write_bytes(payload)
    with pytest.raises(ChecksumError):
        openai_style._download(wrong.as_uri(), str(root))
    assert sorted(p.name for p in root.iterdir()) == ["model.pt"]  # nothing half-written left behind


def test_convert_weights_defaults_to_fp16():
    model = convert_weights(build_random("tiny"))
    assert model.dtype == torch.float16 and model.text_projection.dtype == torch.float16
    assert model.ln_final.weight.dtype == torch.float32
