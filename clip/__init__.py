"""CLIP with per-layer prompt slots in both towers (`clip.model`), its BPE tokenizer and a weights loader.

    model, preprocess = clip.load("ViT-B/16")          # or a local file, "random:tiny", "open_clip:ViT-B-16/<tag>"
    text = clip.tokenize(["a photo of a dog."])         # (1, 77) int64
    features = model.encode_text(text, prompts=None)    # (1, embed_dim)
"""

from .model import CLIP, CLIPConfig, build_model, convert_weights
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

__all__ = ["CLIP", "CLIPConfig", "build_model", "convert_weights", "ARCHITECTURES", "ChecksumError", "CLIPLoadError",
           "MissingWeightsError", "WeightsFileError", "available_models", "load", "tokenize", "InputMismatchError",
           "UnsupportedModelError", "check_input"]
