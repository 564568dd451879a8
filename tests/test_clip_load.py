"""clip.load: local files (state dict, TorchScript), random:<arch>, the download/cache/offline paths, preprocessing.

No test touches the network: downloads are served from local file:// URLs, and any other URL fails the test.
"""

import hashlib
import importlib.metadata
import importlib.util
import urllib.error
import urllib.request
import warnings

import pytest
import torch
from PIL import Image

import clip
from clip import pretrained
from clip.tokenizer import tokenize

NAME = "ViT-B/16"  # its URL is pointed at a local file holding tiny weights


@pytest.fixture(autouse=True)
def no_network(monkeypatch, tmp_path):
    """Only file:// URLs may be opened; the user's real cache and offline setting are never used."""
    real_urlopen = urllib.request.urlopen

    def local_only(url, *args, **kwargs):
        assert str(url).startswith("file://"), f"test tried to reach the network: {url}"
        return real_urlopen(url, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", local_only)
    monkeypatch.setenv("CLIP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("HICROPL_OFFLINE", raising=False)


@pytest.fixture(scope="module")
def tiny_model():
    return clip.load("random:tiny")[0]


@pytest.fixture
def served(tmp_path, monkeypatch, tiny_model):
    """Serve tiny weights at file://.../<sha256>/ViT-B-16.pt (the URL layout of OpenAI's checkpoints) as NAME."""
    payload = tmp_path / "payload.pt"
    torch.save(tiny_model.state_dict(), payload)
    data = payload.read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()

    def serve(sha_in_url=sha256):
        folder = tmp_path / "server" / sha_in_url
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "ViT-B-16.pt").write_bytes(data)
        url = (folder / "ViT-B-16.pt").as_uri()
        monkeypatch.setitem(pretrained.MODEL_URLS, NAME, url)
        return url

    serve.data = data
    return serve


def same_outputs(model, other):
    image = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    text = tokenize(["a photo of a cat.", "x"])
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(image), other.encode_image(image), atol=1e-5, rtol=0)
        torch.testing.assert_close(model.encode_text(text), other.encode_text(text), atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------------------- random:

def test_random_spec_is_deterministic_float32_eval_and_leaves_global_rng_alone(tiny_model):
    state = torch.random.get_rng_state()
    model, preprocess = clip.load("random:tiny")
    assert torch.equal(torch.random.get_rng_state(), state)
    assert not model.training and all(p.dtype == torch.float32 for p in model.parameters())
    for key, value in model.state_dict().items():
        assert torch.equal(value, tiny_model.state_dict()[key]), key
    other = pretrained.build_random("tiny", seed=1)
    assert not torch.equal(other.positional_embedding, model.positional_embedding)


def test_random_tiny_has_the_contract_architecture(tiny_model):
    m = tiny_model
    assert (m.embed_dim, m.visual.input_resolution, m.visual.patch_size) == (64, 32, 8)
    assert (m.visual.width, m.visual.layers, m.visual.transformer.heads) == (128, 4, 2)
    assert (m.context_length, m.vocab_size, m.transformer.width, m.transformer.layers, m.transformer.heads) == \
        (77, 49408, 64, 4, 1)


def test_bad_specs_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown architecture 'ViT-H/14'"):
        clip.load("random:ViT-H/14")
    with pytest.raises(ValueError, match="is not a model name"):
        clip.load(str(tmp_path / "missing.pt"))
    assert clip.available_models() == ["RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B/32", "ViT-B/16",
                                       "ViT-L/14", "ViT-L/14@336px"]
    assert set(clip.available_models()) < set(pretrained.ARCHITECTURES)


# ----------------------------------------------------------------------------------------------------- local files

def test_state_dict_files_load(tmp_path, tiny_model):
    half = {k: v.half() if v.is_floating_point() else v for k, v in tiny_model.state_dict().items()}
    variants = {
        "plain.pt": tiny_model.state_dict(),
        "wrapped.pth": {"state_dict": tiny_model.state_dict(), "epoch": 3},
        # fp16 weights plus the non-weight entries of OpenAI's archives
        "openai_style.pt": {**half, "input_resolution": torch.tensor(32), "context_length": torch.tensor(77),
                            "vocab_size": torch.tensor(49408)},
    }
    fp16_rounded = clip.build_model(half).eval()
    for name, content in variants.items():
        torch.save(content, tmp_path / name)
        model, _ = clip.load(tmp_path / name)
        assert not model.training and model.dtype == torch.float32
        same_outputs(model, fp16_rounded if name == "openai_style.pt" else tiny_model)


def test_torchscript_archive_loads_and_matches_the_reference_it_was_traced_from(tmp_path, tiny_model):
    distribution = importlib.metadata.distribution("openai-clip")
    file = next(f for f in distribution.files if str(f) == "clip/model.py")
    spec = importlib.util.spec_from_file_location("openai_clip_reference_model", distribution.locate_file(file))
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    ref_model = reference.build_model(dict(tiny_model.state_dict())).float().eval()
    image, text = torch.randn(1, 3, 32, 32), tokenize(["a photo of a cat."])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about the reference's Python control flow
        traced = torch.jit.trace(ref_model, (image, text))
    path = tmp_path / "traced.pt"
    traced.save(str(path))
    model, _ = clip.load(path)
    same_outputs(model, ref_model)


def test_unreadable_file_raises_naming_it(tmp_path):
    path = tmp_path / "corrupt.pt"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ValueError, match=f"could not read CLIP weights from {path}"):
        clip.load(path)
    torch.save({"weights": [1, 2, 3]}, tmp_path / "not_clip.pt")
    with pytest.raises(ValueError, match="does not hold a CLIP state dict"):
        clip.load(tmp_path / "not_clip.pt")


# ---------------------------------------------------------------------------------------------- download and cache

def test_download_verifies_and_caches(tmp_path, served, tiny_model):
    served()
    model, _ = clip.load(NAME)
    cached = tmp_path / "cache" / "ViT-B-16.pt"
    assert cached.read_bytes() == served.data
    assert sorted(p.name for p in cached.parent.iterdir()) == ["ViT-B-16.pt"]  # no temporary file left
    same_outputs(model, tiny_model)
    # a second load uses the cache: with the source gone, it still works
    (tmp_path / "server").rename(tmp_path / "gone")
    clip.load(NAME)


def test_download_root_overrides_the_environment(tmp_path, served):
    served()
    clip.load(NAME, download_root=tmp_path / "elsewhere")
    assert (tmp_path / "elsewhere" / "ViT-B-16.pt").is_file()
    assert not (tmp_path / "cache").exists()


def test_checksum_mismatch_deletes_the_download(tmp_path, served):
    url = served(sha_in_url="0" * 64)
    with pytest.raises(clip.ChecksumError, match=f"from {url} has SHA256 .*expected 0000"):
        clip.load(NAME)
    assert list((tmp_path / "cache").iterdir()) == []


def test_corrupt_cached_file_is_redownloaded(tmp_path, served):
    served()
    cached = tmp_path / "cache" / "ViT-B-16.pt"
    cached.parent.mkdir()
    cached.write_bytes(b"truncated")
    with pytest.warns(UserWarning, match="re-downloading"):
        clip.load(NAME)
    assert cached.read_bytes() == served.data


def test_offline_with_corrupt_cache_raises_and_keeps_the_file(tmp_path, served, monkeypatch):
    # A network URL (a file:// one needs no network and is allowed offline); the network must not be touched.
    sha256 = served().split("/")[-2]
    monkeypatch.setitem(pretrained.MODEL_URLS, NAME, f"https://weights.invalid/{sha256}/ViT-B-16.pt")
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("network used in offline mode"))
    monkeypatch.setenv("HICROPL_OFFLINE", "1")
    cached = tmp_path / "cache" / "ViT-B-16.pt"
    cached.parent.mkdir()
    cached.write_bytes(b"truncated")
    with pytest.raises(clip.ChecksumError, match=f"{cached} have SHA256"):
        clip.load(NAME)
    assert cached.read_bytes() == b"truncated"


def test_offline_and_missing_names_the_path_without_touching_the_network(tmp_path, monkeypatch):
    monkeypatch.setenv("HICROPL_OFFLINE", "1")
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("network used in offline mode"))
    expected = tmp_path / "cache" / "ViT-B-16.pt"
    with pytest.raises(clip.MissingWeightsError, match=f"{pretrained.MODEL_URLS[NAME]} and place it at {expected}"):
        clip.load(NAME)


def test_offline_with_a_valid_cache_loads(tmp_path, served, monkeypatch):
    served()
    clip.load(NAME)
    monkeypatch.setenv("HICROPL_OFFLINE", "1")
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("network used in offline mode"))
    clip.load(NAME)


def test_network_failure_is_a_clear_error(tmp_path, monkeypatch):
    def unreachable(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", unreachable)
    expected = tmp_path / "cache" / "ViT-B-16.pt"
    with pytest.raises(clip.MissingWeightsError, match=f"could not download .*place it at {expected}"):
        clip.load(NAME)
    assert list(expected.parent.iterdir()) == []


# ------------------------------------------------------------------------------------------------------ preprocess

def test_preprocess_resizes_crops_and_normalises(tiny_model):
    _, preprocess = clip.load("random:tiny")
    colour = (200, 30, 90)
    tensor = preprocess(Image.new("RGB", (75, 40), colour))
    assert tensor.shape == (3, 32, 32)
    expected = [(c / 255 - mean) / std for c, mean, std in zip(colour, pretrained.CLIP_MEAN, pretrained.CLIP_STD)]
    torch.testing.assert_close(tensor.mean(dim=(1, 2)), torch.tensor(expected), atol=1e-5, rtol=0)
    grey = preprocess(Image.new("L", (50, 50), 128))  # single-channel images become RGB
    assert grey.shape == (3, 32, 32)
