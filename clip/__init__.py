"""CLIP with per-layer prompt slots in both towers (`clip.model`), its BPE tokenizer and a weights loader.

    model, preprocess = clip.load("ViT-B/16")          # or a local file, "random:tiny", "open_clip:ViT-B-16/<tag>"
    text = clip.tokenize(["a photo of a dog."])         # (1, 77) int64
    features = model.encode_text(text, prompts=None)    # (1, embed_dim)

openai-clip's module surface is here too, for code written against it: `clip.clip` (`from clip import clip`:
load, tokenize, available_models, _MODELS, _download, build_model) and `clip.simple_tokenizer.SimpleTokenizer`.
"""

from . import clip  # openai-clip's `clip.clip` module, reachable as after openai-clip's `import clip`
from .model import CLIP, CLIPCallError, CLIPConfig, build_model, convert_weights
from .pretrained import (
    ARCHITECTURES,
    ChecksumError,
    CLIPLoadError,
    MissingWeightsError,
    WeightsFileError,
    available_models,
    load,
)
from .open_clip_convert import InputMismatchError, UnsupportedModelError, check_input
from .tokenizer import tokenize

__all__ = ["CLIP", "CLIPCallError", "CLIPConfig", "build_model", "convert_weights", "ARCHITECTURES", "ChecksumError",
           "CLIPLoadError", "MissingWeightsError", "WeightsFileError", "available_models", "load", "tokenize",
           "InputMismatchError", "UnsupportedModelError", "check_input"]
