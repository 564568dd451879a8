"""`clip.load`: CLIP from an OpenAI model name, a local weights file, or `random:<arch>`.

Downloads go to the cache directory of the openai-clip package convention (`~/.cache/clip`), so files it already
downloaded are reused. The directory is overridden by `download_root`, else by the `CLIP_CACHE_DIR` environment
variable. `HICROPL_OFFLINE=1` forbids network access: a missing file then raises an error naming the path to put it at.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import pickle
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
from pathlib import Path
from typing import Callable, Dict, List, Tuple, Union

import torch
from PIL import Image
from torchvision import transforms
from tqdm import tqdm

from .model import CLIP, CLIPConfig, build_model

# OpenAI's released checkpoints (TorchScript archives). The second-to-last path component is the file's SHA256.
MODEL_URLS: Dict[str, str] = {
    "RN50": "https://openaipublic.azureedge.net/clip/models/afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt",
    "RN101": "https://openaipublic.azureedge.net/clip/models/8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599/RN101.pt",
    "RN50x4": "https://openaipublic.azureedge.net/clip/models/7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd/RN50x4.pt",
    "RN50x16": "https://openaipublic.azureedge.net/clip/models/52378b407f34354e150460fe41077663dd5b39c54cd0bfd2b27167a4a06ec9aa/RN50x16.pt",
    "RN50x64": "https://openaipublic.azureedge.net/clip/models/be1cfb55d75a9666199fb2206c106743da0f6468c9d327f3e0d0a543a9919d9c/RN50x64.pt",
    "ViT-B/32": "https://openaipublic.azureedge.net/clip/models/40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt",
    "ViT-B/16": "https://openaipublic.azureedge.net/clip/models/5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt",
    "ViT-L/14": "https://openaipublic.azureedge.net/clip/models/b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt",
    "ViT-L/14@336px": "https://openaipublic.azureedge.net/clip/models/3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02/ViT-L-14-336px.pt",
}

RANDOM_PREFIX = "random:"
OPEN_CLIP_PREFIX = "open_clip:"  # open_clip backbones: clip/open_clip_convert.py
RANDOM_SEED = 0  # seed of every `random:<arch>` model, so that the same spec always gives the same weights
OFFLINE_ENV = "HICROPL_OFFLINE"  # "1" / "true" / "yes" / "on": never touch the network
CACHE_ENV = "CLIP_CACHE_DIR"  # cache directory for downloads (default ~/.cache/clip)
DOWNLOAD_TIMEOUT_S = 30  # per blocking socket operation, so a dead network fails instead of hanging
# Normalisation statistics CLIP was trained with (RGB, on [0, 1] pixels).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _vit(embed_dim: int, resolution: int, layers: int, width: int, patch: int, text_width: int) -> CLIPConfig:
    return CLIPConfig(embed_dim=embed_dim, image_resolution=resolution, vision_layers=layers, vision_width=width,
                      vision_heads=width // 64, vision_patch_size=patch, context_length=77, vocab_size=49408,
                      transformer_width=text_width, transformer_heads=text_width // 64, transformer_layers=12)


def _resnet(embed_dim: int, resolution: int, layers: Tuple[int, int, int, int], width: int,
            text_width: int) -> CLIPConfig:
    return CLIPConfig(embed_dim=embed_dim, image_resolution=resolution, vision_layers=layers, vision_width=width,
                      vision_heads=width * 32 // 64, vision_patch_size=None, context_length=77, vocab_size=49408,
                      transformer_width=text_width, transformer_heads=text_width // 64, transformer_layers=12)


# Architectures for `random:<arch>`: the nine OpenAI models, plus `tiny` for fast tests and demos (vision width 128
# != text width 64 on purpose, as ViT-B/16 has 768 != 512).
ARCHITECTURES: Dict[str, CLIPConfig] = {
    "RN50": _resnet(1024, 224, (3, 4, 6, 3), 64, 512),
    "RN101": _resnet(512, 224, (3, 4, 23, 3), 64, 512),
    "RN50x4": _resnet(640, 288, (4, 6, 10, 6), 80, 640),
    "RN50x16": _resnet(768, 384, (6, 8, 18, 8), 96, 768),
    "RN50x64": _resnet(1024, 448, (3, 15, 36, 10), 128, 1024),
    "ViT-B/32": _vit(512, 224, 12, 768, 32, 512),
    "ViT-B/16": _vit(512, 224, 12, 768, 16, 512),
    "ViT-L/14": _vit(768, 224, 24, 1024, 14, 768),
    "ViT-L/14@336px": _vit(768, 336, 24, 1024, 14, 768),
    "tiny": CLIPConfig(embed_dim=64, image_resolution=32, vision_layers=4, vision_width=128, vision_heads=2,
                       vision_patch_size=8, context_length=77, vocab_size=49408, transformer_width=64,
                       transformer_heads=1, transformer_layers=4),
}


class CLIPLoadError(Exception):
    """`load` cannot build a model from its spec. The message is one line saying what to do; `train.py` prints it
    as ``error: <message>`` without a traceback (as it does for ``dassl.utils.UserError``)."""


class MissingWeightsError(CLIPLoadError, FileNotFoundError):
    """Weights are not in the cache and cannot be downloaded (offline mode or network failure)."""


class ChecksumError(CLIPLoadError, RuntimeError):
    """A downloaded or cached weights file does not have the SHA256 its URL names."""


class WeightsFileError(CLIPLoadError, ValueError):
    """The spec names no known model, architecture or file, or the file does not hold CLIP weights."""


def available_models() -> List[str]:
    """Names of the OpenAI checkpoints `load` can download."""
    return list(MODEL_URLS)


def cache_dir(download_root: Union[str, os.PathLike, None] = None) -> Path:
    """download_root, else $CLIP_CACHE_DIR, else ~/.cache/clip (openai-clip's location)."""
    root = download_root if download_root is not None else os.environ.get(CACHE_ENV) or "~/.cache/clip"
    return Path(root).expanduser()


def is_offline() -> bool:
    """True when $HICROPL_OFFLINE is 1/true/yes/on: `load` then never opens a network connection."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download(url: str, target: Path, sha256: str) -> None:
    """Stream url into a temporary file next to target, check its SHA256, then atomically rename it to target.

    A failed or mismatching download leaves nothing behind.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    temp = Path(temp_name)
    try:
        digest = hashlib.sha256()
        try:
            with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                          desc=f"Downloading {target.name}") as bar:
                    for chunk in iter(lambda: response.read(1 << 20), b""):
                        out.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
        except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
            raise MissingWeightsError(f"could not download {url} ({error}); download it yourself and place it at "
                                      f"{target}") from error
        if digest.hexdigest() != sha256:
            raise ChecksumError(f"the file downloaded from {url} has SHA256 {digest.hexdigest()}, expected {sha256}; "
                                f"it was deleted. Retry, or download it yourself and place it at {target}")
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)


def fetch(name: str, download_root: Union[str, os.PathLike, None] = None) -> Path:
    """Path of the verified checkpoint of OpenAI model `name` in the cache, downloading it if needed."""
    return fetch_url(MODEL_URLS[name], download_root, name)


def fetch_url(url: str, download_root: Union[str, os.PathLike, None] = None, name: str = "") -> Path:
    """Path of the verified file of `url` (whose second-to-last path component is its SHA256) in the cache,
    `cache_dir(download_root) / basename(url)`, downloading it if needed. name: what the messages call it."""
    name = name or os.path.basename(url)
    offline = is_offline() and not url.startswith("file:")  # a file:// URL needs no network
    sha256 = url.split("/")[-2]
    target = cache_dir(download_root) / os.path.basename(url)
    if target.exists() and not target.is_file():
        raise WeightsFileError(f"{target} exists and is not a regular file; remove it so that {name} can be cached")
    if target.is_file():
        actual = _sha256(target)
        if actual == sha256:
            return target
        if offline:
            raise ChecksumError(f"the cached {name} weights {target} have SHA256 {actual}, expected {sha256}; "
                                f"replace the file with {url} (offline mode is on: {OFFLINE_ENV}=1)")
        warnings.warn(f"the cached {name} weights {target} have SHA256 {actual}, expected {sha256}; re-downloading")
    elif offline:
        raise MissingWeightsError(f"CLIP {name} weights are not cached and offline mode is on ({OFFLINE_ENV}=1): "
                                  f"download {url} and place it at {target}")
    _download(url, target, sha256)
    return target


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are zip files with compiled code; `torch.save` zips hold only pickled data."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") or "/code/" in name for name in archive.namelist())


def read_state_dict(path: Union[str, os.PathLike]) -> Dict[str, torch.Tensor]:
    """Weights from a TorchScript archive (OpenAI's format), a saved state dict, or a dict with a "state_dict"."""
    path = Path(path)
    try:
        if _is_torchscript(path):
            with warnings.catch_warnings():
                # OpenAI ships TorchScript only, and only its tensors are used: the deprecation is not actionable here
                warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.*deprecated", category=FutureWarning)
                return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any reader failure means the same thing to the user: this file is not usable
        detail = type(error).__name__
        if str(error).strip() and not isinstance(error, pickle.UnpicklingError):
            # torch's text for a refused pickle ("re-run with weights_only=False ...") is misleading advice
            detail += ": " + str(error).strip().splitlines()[0].split(". ")[0]
        raise WeightsFileError(f"could not read CLIP weights from {path}: not a TorchScript archive nor a torch.save "
                               f"file of tensors, or truncated ({detail}); download it again") from error
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(value, torch.Tensor) for value in loaded.values()):
        raise WeightsFileError(
            f"{path} does not hold a CLIP state dict (a dict of tensors, possibly under 'state_dict')"
        )
    return loaded


def build_random(arch: str, seed: int = RANDOM_SEED) -> CLIP:
    """CLIP of architecture `arch` (a key of ARCHITECTURES) with CLIP's random init, deterministic in seed.

    The global RNG state is left untouched.
    """
    if arch not in ARCHITECTURES:
        raise WeightsFileError(
            f"unknown architecture {arch!r} for random:<arch>; choose one of {', '.join(ARCHITECTURES)}"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIP(ARCHITECTURES[arch])


def _to_rgb(image: Image.Image) -> Image.Image:
    return image.convert("RGB")


def image_transform(resolution: int) -> Callable[[Image.Image], torch.Tensor]:
    """CLIP's test-time preprocessing: PIL image -> (3, resolution, resolution) normalised float tensor."""
    return transforms.Compose([
        transforms.Resize(resolution, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(resolution),
        _to_rgb,
        transforms.ToTensor(),
        transforms.Normalize(CLIP_MEAN, CLIP_STD),
    ])


def _build_from_file(path: Union[str, os.PathLike]) -> CLIP:
    """`build_model(read_state_dict(path))`, with a one-line `WeightsFileError` for tensors that are not CLIP's."""
    state_dict = read_state_dict(path)
    try:
        return build_model(state_dict)
    except (KeyError, ValueError, RuntimeError) as error:  # missing keys or wrong shapes (e.g. another model's file)
        reason = f"missing key {error}" if isinstance(error, KeyError) else str(error).strip().splitlines()[0]
        raise WeightsFileError(f"{path} does not hold OpenAI CLIP weights ({reason}); pass a CLIP checkpoint, "
                               "a CLIP model name or random:<arch>") from error


def load(spec: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu",
         download_root: Union[str, os.PathLike, None] = None,
         ) -> Tuple[CLIP, Callable[[Image.Image], torch.Tensor]]:
    """(model, preprocess): a float32 CLIP in eval mode on device, and its image preprocessing.

    spec: an OpenAI model name (`available_models()`), downloaded to / read from `cache_dir(download_root)`;
          a path to a local weights file (TorchScript archive, or a state dict, possibly under "state_dict");
          or `random:<arch>` with arch in ARCHITECTURES (e.g. `random:ViT-B/16`, `random:tiny`): seeded random weights;
          or an open_clip backbone, `open_clip:<model>/<tag>`, `open_clip:<model>@<file>`, `random:open_clip:<model>`
          (see `clip.open_clip_convert`; needs the optional package open-clip-torch).
    """
    spec = os.fspath(spec)
    if spec.startswith(OPEN_CLIP_PREFIX) or spec.startswith(RANDOM_PREFIX + OPEN_CLIP_PREFIX):
        from .open_clip_convert import load_open_clip  # here: open_clip_convert imports this module

        return load_open_clip(spec, device, download_root)
    if spec.startswith(RANDOM_PREFIX):
        model = build_random(spec[len(RANDOM_PREFIX):])
    elif spec in MODEL_URLS:
        model = _build_from_file(fetch(spec, download_root))
    elif os.path.isfile(spec):
        model = _build_from_file(spec)
    else:
        raise WeightsFileError(f"CLIP spec {spec!r} is not a model name ({', '.join(available_models())}), an "
                               f"existing file, {OPEN_CLIP_PREFIX}<model>/<tag>, nor {RANDOM_PREFIX}<arch> with arch "
                               f"in {', '.join(ARCHITECTURES)}")
    model = model.float().to(device).eval()
    return model, image_transform(model.visual.input_resolution)
