"""openai-clip's ``clip.clip`` module, with openai-clip's semantics, for code written against openai-clip.

CoOp-family trainers start with ``from clip import clip`` and then call, as this module offers them::

    url = clip._MODELS["ViT-B/16"]                    # OpenAI's checkpoint URLs (SHA256 in the path)
    model_path = clip._download(url)                  # cached in ~/.cache/clip (or $CLIP_CACHE_DIR), verified
    model = clip.build_model(state_dict)              # fp16 weights, eval mode (as openai-clip's)
    model, preprocess = clip.load("ViT-B/16", device) # fp16 on a GPU, fp32 on the CPU (as openai-clip's)
    tokens = clip.tokenize(["a photo of a dog."])     # (n, 77) int32 (as openai-clip's)

The model is this library's `clip.model.CLIP`: its `transformer(x)` and `visual.transformer(x)` take sequence-first
(L, N, D) tensors as openai-clip's do. Not supported: ``load(..., jit=True)`` (openai's TorchScript model), which
raises `CLIPCallError`. One difference that only shows on non-OpenAI weights: `load` on the CPU keeps float32 weights
as they are (openai-clip rounds them to fp16 first); OpenAI's checkpoints are stored in fp16, so on them both agree.
"""

from __future__ import annotations

import os
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
from PIL import Image

from . import pretrained
from .model import CLIP, CLIPCallError, calling_file, convert_weights
from .model import build_model as _build_model_float32
from .simple_tokenizer import SimpleTokenizer
from .tokenizer import tokenize as _tokenize

__all__ = ["available_models", "load", "tokenize"]

# The same dict as `clip.pretrained.MODEL_URLS`: a name added here is loadable by `clip.load` too.
_MODELS = pretrained.MODEL_URLS


def __getattr__(name: str) -> SimpleTokenizer:
    """`_tokenizer`, openai-clip's module-level tokenizer instance, built on first use (reading the vocabulary)."""
    if name == "_tokenizer":
        globals()["_tokenizer"] = SimpleTokenizer()
        return globals()["_tokenizer"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def available_models() -> List[str]:
    """Names of the OpenAI checkpoints `load` can download (the keys of `_MODELS`)."""
    return list(_MODELS)


def _download(url: str, root: Optional[Union[str, os.PathLike]] = None) -> str:
    """Path (str) of the file at `url` in `root` (default ~/.cache/clip, or $CLIP_CACHE_DIR), downloaded if it is not
    there with the SHA256 that the URL's second-to-last component names. A mismatching download is deleted and
    raises; offline mode ($HICROPL_OFFLINE=1) raises naming the path to put the file at."""
    return str(pretrained.fetch_url(url, root))


def build_model(state_dict: dict, design_details: Optional[dict] = None) -> CLIP:
    """openai-clip's `build_model`: CLIP from an OpenAI-layout state dict, matmul weights in fp16 (`convert_weights`),
    eval mode. Call `.float()` on it for fp32 (what CoOp-family trainers do for PREC fp32 / amp).

    design_details (MaPLe / IVLP / PromptSRC pass one to their own patched CLIP) is refused with `CLIPCallError`:
    those methods change CLIP's blocks, which this CLIP does not emulate.
    """
    if design_details is not None:
        raise CLIPCallError(
            f"{calling_file()} passes design_details to clip.build_model, as MaPLe/IVLP/PromptSRC do for their own "
            "patched CLIP; this CLIP has no such blocks. Ship that method's clip package with it under another name "
            "(e.g. maple_clip/) and import it from the trainer, or port it to encode_text/encode_image(prompts=...)")
    return convert_weights(_build_model_float32(state_dict)).eval()


def load(name: str, device: Union[str, torch.device, None] = None, jit: bool = False,
         download_root: Optional[str] = None) -> Tuple[CLIP, Callable[[Image.Image], torch.Tensor]]:
    """openai-clip's `load`: (model in eval mode on `device`, image preprocessing).

    name: a name of `available_models()`, a local weights file, or (this library's addition) `random:<arch>`.
    device: default "cuda" when available, else "cpu". On a GPU the matmul weights are fp16, on the CPU fp32.
    """
    if jit:
        raise CLIPCallError(f"{calling_file()} asks clip.load for openai's TorchScript model (jit=True), which this "
                            "CLIP does not run; pass jit=False (the same weights as an nn.Module)")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model, preprocess = pretrained.load(name, device=device, download_root=download_root)
    if str(device) != "cpu":
        convert_weights(model)
    return model, preprocess


def tokenize(texts: Union[str, Sequence[str]], context_length: int = 77, truncate: bool = False) -> torch.Tensor:
    """openai-clip's `tokenize`: (n, context_length) int32 token ids, [SOT] text [EOT] zero-padded. A text longer than
    context_length raises, unless truncate=True (then cut, its last token EOT)."""
    return _tokenize(texts, context_length, truncate).to(torch.int)
