"""open_clip backbones as our prompt-aware CLIP: `clip.load("open_clip:<model>/<tag>")` and friends.

open_clip (package ``open-clip-torch``, optional) distributes CLIPs trained on LAION, DataComp, DFN, MetaCLIP...
The ones whose towers are OpenAI's architecture with a few parameters changed are converted here, by key, into
`clip.model.CLIP`, so that prompt learning, the zero-shot baseline, every precision and the checkpoints work on them
unchanged. Spec syntax (`MODEL.BACKBONE.NAME`, `TRAINER.HICROPL.TEACHER_NAME`, `clip.load`):

    open_clip:<model>/<tag>      open_clip model config <model> (`open_clip.list_models()`, e.g. ViT-B-16) with the
                                 weights of pretrained tag <tag> (`open_clip.list_pretrained_tags_by_model(<model>)`),
                                 downloaded and cached by open_clip itself (Hugging Face cache, or ~/.cache/clip for
                                 plain URLs); preprocessing (mean/std, interpolation) is the tag's.
    open_clip:<model>@<file>     the same config with the weights of a local open_clip checkpoint file (e.g.
                                 open_clip_pytorch_model.bin / .safetensors); preprocessing: open_clip's defaults.
    random:open_clip:<model>     open_clip's random initialisation of <model>, seeded (tests, demos, benchmarks).

What is read from the open_clip model, never assumed: widths, depths, head counts (not in the state dict), MLP widths,
the activation (GELU vs QuickGELU: not in the state dict either; it comes from the config name, ``-quickgelu``,
exactly as open_clip builds it), image size, context length, vocabulary. Everything else our `CLIP` does not express
is refused with one line (`UnsupportedModelError`) before any download: timm / ResNet image towers, Hugging Face or
custom text towers, CoCa, LayerScale, attentional or average pooling, no ln_pre, LayerNorm after pooling, last / eos
text pooling, no causal mask, projection biases, logit bias, non-default LayerNorm eps, tokenizers other than CLIP's
BPE with a 77-token context. A tag trained with the other activation than its config builds (e.g. ViT-B-16/openai,
trained with QuickGELU) is refused too, naming the config to use instead.

Offline (`HICROPL_OFFLINE=1` or `HF_HUB_OFFLINE=1`): a tag is loaded only from a file already in open_clip's cache;
otherwise a one-line `MissingWeightsError` names what to download and where to put it.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from PIL import Image
from torch import nn

from .model import CLIP, CLIPConfig
from .pretrained import (
    OFFLINE_ENV,
    OPEN_CLIP_PREFIX,
    RANDOM_PREFIX,
    RANDOM_SEED,
    CLIPLoadError,
    MissingWeightsError,
    WeightsFileError,
    is_offline,
)

FILE_SEPARATOR = "@"  # open_clip:<model>@<file>
TAG_SEPARATOR = "/"  # open_clip:<model>/<tag>
HF_OFFLINE_ENV = "HF_HUB_OFFLINE"  # Hugging Face's own offline switch, honoured as well
# Tiny open_clip configs shipped with the project for tests and demos (registered with open_clip on first use).
CONFIG_DIR = Path(__file__).parent / "open_clip_configs"
# What the text tower must match so that `clip.tokenize` (CLIP BPE, 77 tokens) feeds it correctly.
CONTEXT_LENGTH = 77
VOCAB_SIZE = 49408
LAYER_NORM_EPS = 1e-5  # our LayerNorm's (torch's default)
SUPPORTED = ("open_clip CLIP configs with a ViT image tower ([CLS] pooling, ln_pre) and a causal text transformer "
             "(EOT pooling, CLIP BPE tokenizer, 77 tokens), pre-norm blocks without LayerScale, GELU or QuickGELU, "
             "e.g. ViT-B-16, ViT-B-16-quickgelu, ViT-L-14, ViT-H-14, ViT-bigG-14 (all: "
             "clip.open_clip_convert.supported_models())")


class UnsupportedModelError(CLIPLoadError, ValueError):
    """The open_clip model's towers are not expressible by our prompt-aware CLIP (or open_clip is missing)."""


class InputMismatchError(CLIPLoadError, ValueError):
    """The run's image size / normalisation differs from what the backbone's weights were trained with."""


_configs_registered = False


def _open_clip() -> Any:
    """The open_clip module, with the project's tiny configs registered; one-line error when it is not installed."""
    try:
        import open_clip
    except ImportError as error:
        raise UnsupportedModelError("open_clip backbones need the optional package open-clip-torch: "
                                    "pip install open-clip-torch") from error
    global _configs_registered
    if not _configs_registered:
        open_clip.add_model_config(CONFIG_DIR)
        _configs_registered = True
    return open_clip


def parse_spec(spec: str) -> Tuple[str, str, str]:
    """spec -> (model name, kind, source): kind "tag" (source = tag), "file" (source = path) or "random" (source "-")."""
    body = spec.split(OPEN_CLIP_PREFIX, 1)[1]
    if spec.startswith(RANDOM_PREFIX):
        name, kind, source = body, "random", "-"
    elif FILE_SEPARATOR in body:
        name, path = body.split(FILE_SEPARATOR, 1)
        kind, source = "file", path
    elif TAG_SEPARATOR in body:
        name, source = body.split(TAG_SEPARATOR, 1)
        kind = "tag"
    else:
        raise WeightsFileError(f"open_clip spec {spec!r} names no weights: use open_clip:<model>/<pretrained tag>, "
                               f"open_clip:<model>@<checkpoint file> or {RANDOM_PREFIX}open_clip:<model>")
    if not name or not source:
        raise WeightsFileError(f"open_clip spec {spec!r} is incomplete: use open_clip:<model>/<pretrained tag> or "
                               "open_clip:<model>@<checkpoint file>")
    if ":" in name:  # open_clip's hf-hub: / local-dir: schemas fetch configs of unknown families
        raise WeightsFileError(f"open_clip spec {spec!r}: schemas such as hf-hub: are not supported; name a built-in "
                               "config with a tag or a checkpoint file, e.g. open_clip:ViT-B-16@<file>")
    return name, kind, source


def config_reasons(model_cfg: Mapping[str, Any]) -> List[str]:
    """Why an open_clip model config (the dict of `open_clip.get_model_config`) cannot become our CLIP; [] if it can."""
    vision, text = model_cfg.get("vision_cfg", {}), model_cfg.get("text_cfg", {})
    reasons = []
    if "multimodal_cfg" in model_cfg:
        reasons.append("CoCa (multimodal decoder)")
    if model_cfg.get("custom_text") or "hf_model_name" in text:
        reasons.append("custom / Hugging Face text tower")
    if vision.get("timm_model_name"):
        reasons.append(f"timm image tower {vision['timm_model_name']}")
    if isinstance(vision.get("layers", 12), (list, tuple)):
        reasons.append("ResNet image tower")
    for tower, cfg in (("image", vision), ("text", text)):
        if cfg.get("ls_init_value") is not None:
            reasons.append(f"LayerScale in the {tower} tower")
        if cfg.get("act_kwargs") or cfg.get("norm_kwargs"):
            reasons.append(f"custom activation / norm arguments in the {tower} tower")
        if cfg.get("final_ln_after_pool"):
            reasons.append(f"LayerNorm after pooling in the {tower} tower")
        custom = [key for key in ("qk_norm", "scaled_cosine_attn", "scale_heads", "scale_attn_inner", "scale_attn",
                                  "scale_fc") if cfg.get(key)]
        if custom or cfg.get("block_type") not in (None, "default"):
            reasons.append(f"custom attention blocks in the {tower} tower ({', '.join(custom) or cfg['block_type']})")
    if vision.get("attentional_pool"):
        reasons.append("attentional pooler")
    if vision.get("pool_type", "tok") != "tok":
        reasons.append(f"image pooling {vision['pool_type']!r} (not [CLS])")
    if vision.get("no_ln_pre"):
        reasons.append("no ln_pre")
    size = vision.get("image_size", 224)
    if isinstance(size, (list, tuple)) and len(set(size)) > 1:
        reasons.append(f"non-square image size {tuple(size)}")
    if text.get("pool_type", "argmax") != "argmax":
        reasons.append(f"text pooling {text['pool_type']!r} (not EOT / argmax)")
    if text.get("no_causal_mask"):
        reasons.append("no causal text mask")
    if text.get("embed_cls"):
        reasons.append("appended text [CLS] embedding")
    if text.get("proj_bias") or text.get("proj_type", "linear") != "linear":
        reasons.append("text projection with bias or of another type")
    tokenizer_kwargs = text.get("tokenizer_kwargs") or {}
    if text.get("hf_tokenizer_name") or text.get("tokenizer_mode") or tokenizer_kwargs not in ({}, {"clean": "lower"}):
        reasons.append("tokenizer other than CLIP's BPE")
    if text.get("context_length", CONTEXT_LENGTH) != CONTEXT_LENGTH or text.get("vocab_size", VOCAB_SIZE) != VOCAB_SIZE:
        reasons.append(f"text context {text.get('context_length')} / vocabulary {text.get('vocab_size')} "
                       f"(CLIP's tokenizer gives {CONTEXT_LENGTH} / {VOCAB_SIZE})")
    if model_cfg.get("init_logit_bias") is not None:
        reasons.append("logit bias (SigLIP)")
    return reasons


def supported_models() -> List[str]:
    """Names of the open_clip model configs (`open_clip.list_models()`) that convert into our CLIP."""
    open_clip = _open_clip()
    return [name for name in open_clip.list_models() if not config_reasons(open_clip.get_model_config(name))]


def _activation_name(module: nn.Module) -> Optional[str]:
    """Our ACTIVATIONS key for an open_clip activation module, None if there is none."""
    from open_clip.transformer import QuickGELU as OpenClipQuickGELU

    if isinstance(module, OpenClipQuickGELU):
        return "quick_gelu"
    if type(module) is nn.GELU and module.approximate == "none":
        return "gelu"
    return None


def _module_reasons(model: nn.Module) -> List[str]:
    """Why a built open_clip model cannot become our CLIP ([] if it can): checked on the modules themselves, so that
    a model handed over directly (`from_open_clip`) is held to the same rules as a config."""
    from open_clip.model import CLIP as OpenClipCLIP
    from open_clip.transformer import ResidualAttentionBlock as OpenClipBlock
    from open_clip.transformer import VisionTransformer as OpenClipViT

    if type(model) is not OpenClipCLIP:
        return [f"{type(model).__name__} (not open_clip's CLIP: custom text tower or CoCa)"]
    visual = model.visual
    if not isinstance(visual, OpenClipViT):
        return [f"{type(visual).__name__} image tower (timm or ResNet)"]
    reasons = []
    if visual.attn_pool is not None:
        reasons.append("attentional pooler")
    if visual.pool_type != "tok":
        reasons.append(f"image pooling {visual.pool_type!r}")
    if visual.final_ln_after_pool:
        reasons.append("LayerNorm after pooling")
    if isinstance(visual.ln_pre, nn.Identity):
        reasons.append("no ln_pre")
    if (visual.proj is None or visual.image_size[0] != visual.image_size[1]
            or visual.patch_size[0] != visual.patch_size[1]):
        reasons.append("no image projection or a non-square image / patch")
    if model.text_pool_type != "argmax":
        reasons.append(f"text pooling {model.text_pool_type!r}")
    if model.attn_mask is None:
        reasons.append("no causal text mask")
    if not isinstance(model.text_projection, nn.Parameter):
        reasons.append("text projection with bias or none")
    if model.logit_bias is not None:
        reasons.append("logit bias")
    blocks = [*visual.transformer.resblocks, *model.transformer.resblocks]
    if any(type(block) is not OpenClipBlock or not isinstance(block.ls_1, nn.Identity) or hasattr(block, "ln_1_kv")
           or block.attn.in_proj_weight is None or block.attn.in_proj_bias is None for block in blocks):
        reasons.append("custom attention blocks or LayerScale")
    activations = {_activation_name(block.mlp.gelu) for block in blocks}
    if None in activations or len(activations) > 1:
        reasons.append("an activation other than GELU or QuickGELU, or different ones in the two towers")
    if any(isinstance(m, nn.LayerNorm) and (m.eps != LAYER_NORM_EPS or not m.elementwise_affine)
           for m in model.modules()):
        reasons.append(f"LayerNorm eps other than {LAYER_NORM_EPS} or without affine parameters")
    if model.vocab_size != VOCAB_SIZE or model.context_length != CONTEXT_LENGTH:
        reasons.append(f"text context {model.context_length} / vocabulary {model.vocab_size}")
    return reasons


def _refuse(name: str, reasons: Sequence[str]) -> UnsupportedModelError:
    return UnsupportedModelError(f"open_clip model {name} cannot be used as a prompt-aware CLIP "
                                 f"({'; '.join(reasons)}); supported: {SUPPORTED}")


def config_from_open_clip(model: nn.Module, name: str = "") -> CLIPConfig:
    """Our `CLIPConfig` for a built open_clip `CLIP` (dimensions, heads, MLP widths, activation from its modules)."""
    reasons = _module_reasons(model)
    if reasons:
        raise _refuse(name or type(model).__name__, reasons)
    visual, text_blocks = model.visual, model.transformer.resblocks
    vision_block = visual.transformer.resblocks[0]
    return CLIPConfig(
        embed_dim=visual.proj.shape[1],
        image_resolution=visual.image_size[0],
        vision_layers=len(visual.transformer.resblocks),
        vision_width=visual.conv1.out_channels,
        vision_heads=vision_block.attn.num_heads,
        vision_patch_size=visual.patch_size[0],
        context_length=model.positional_embedding.shape[0],
        vocab_size=model.token_embedding.num_embeddings,
        transformer_width=model.transformer.width,
        transformer_heads=text_blocks[0].attn.num_heads,
        transformer_layers=len(text_blocks),
        activation=_activation_name(vision_block.mlp.gelu),
        vision_mlp_width=vision_block.mlp.c_fc.out_features,
        transformer_mlp_width=text_blocks[0].mlp.c_fc.out_features,
    )


def from_open_clip(model: nn.Module, name: str = "", share_weights: bool = False) -> CLIP:
    """Our float32 CLIP (train mode, like any new module) with the weights of open_clip `CLIP` model, converted by key.

    open_clip's `CLIP` keeps OpenAI's parameter names (visual.*, transformer.resblocks.*, token_embedding, ...), so the
    conversion is a strict load of its state dict; only a non-scalar logit_scale (shape (1,)) is reshaped.
    share_weights: reuse model's float32 tensors instead of copying them (half the peak memory; for a model that is
    discarded afterwards, as `load_open_clip` does).
    """
    config = config_from_open_clip(model, name)
    state_dict = {key: value.detach().to(torch.float32, copy=not share_weights)
                  for key, value in model.state_dict().items()}
    state_dict["logit_scale"] = state_dict["logit_scale"].reshape(())
    with torch.device("meta"):  # no allocation or init: every weight is assigned from the state dict
        ours = CLIP(config)
    ours.load_state_dict(state_dict, strict=True, assign=True)
    return ours


def _cached_tag_file(pretrained_cfg: Mapping[str, Any], download_root: Optional[str]) -> Tuple[Optional[str], str]:
    """(path of the tag's weights in open_clip's cache or None, where to put them), without any network access."""
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    hf_hub = pretrained_cfg.get("hf_hub", "")
    try:
        import huggingface_hub
    except ImportError:
        huggingface_hub = None
    if hf_hub and huggingface_hub is not None:  # open_clip prefers the Hub when it is installed
        repo_id, filename = os.path.split(hf_hub)
        filename = filename or HF_WEIGHTS_NAME
        # open_clip first tries the safetensors twin of the file, then the file itself
        if filename == HF_WEIGHTS_NAME:
            candidates = [HF_SAFE_WEIGHTS_NAME, filename]
        elif filename.endswith((".bin", ".pth")):
            candidates = [filename[:-4] + ".safetensors", filename]
        else:
            candidates = [filename]
        for candidate in candidates:
            found = huggingface_hub.try_to_load_from_cache(repo_id, candidate, cache_dir=download_root)
            if isinstance(found, str):
                return found, ""
        cache = download_root or huggingface_hub.constants.HF_HUB_CACHE
        return None, (f"run `huggingface-cli download {repo_id} {filename}` on a connected machine and copy its "
                      f"Hugging Face cache to {cache}")
    url = pretrained_cfg.get("url", "")
    target = Path(download_root or "~/.cache/clip").expanduser() / os.path.basename(url)
    return (str(target) if target.is_file() else None), f"download {url} and place it at {target}"


def _offline() -> bool:
    return is_offline() or os.environ.get(HF_OFFLINE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _create(open_clip: Any, spec: str, download_root: Optional[str]) -> nn.Module:
    """The open_clip model a spec names, built and loaded by open_clip (its download, cache and checkpoint reader)."""
    name, kind, source = parse_spec(spec)
    model_cfg = open_clip.get_model_config(name)
    if model_cfg is None:
        raise WeightsFileError(f"open_clip has no model config {name!r} ({spec}); see open_clip.list_models(), "
                               f"supported: {SUPPORTED}")
    reasons = config_reasons(model_cfg)
    if reasons:  # before any download
        raise _refuse(name, reasons)
    kwargs: Dict[str, Any] = {}
    if kind == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            return open_clip.create_model(name, pretrained=None)
    if kind == "file":
        if not os.path.isfile(source):
            raise WeightsFileError(f"open_clip checkpoint file {source} does not exist ({spec})")
        pretrained = source
    else:
        tag_cfg = open_clip.get_pretrained_cfg(name, source)
        if not tag_cfg:
            tags = open_clip.list_pretrained_tags_by_model(name)
            raise WeightsFileError(f"open_clip model {name} has no pretrained tag {source!r}; "
                                   f"choose one of {', '.join(tags) or '(none: use a checkpoint file)'}")
        if bool(tag_cfg.get("quick_gelu", False)) != bool(model_cfg.get("quick_gelu", False)):
            trained = "QuickGELU" if tag_cfg.get("quick_gelu") else "GELU"
            other = name + "-quickgelu" if tag_cfg.get("quick_gelu") else name.replace("-quickgelu", "")
            raise UnsupportedModelError(f"open_clip tag {source} was trained with {trained} but config {name} builds "
                                        f"the other activation; use open_clip:{other}/{source}")
        pretrained = source
        if _offline():
            cached, where = _cached_tag_file(tag_cfg, download_root)
            if cached is None:
                raise MissingWeightsError(f"open_clip weights {name}/{source} are not cached and offline mode is on "
                                          f"({OFFLINE_ENV}=1 or {HF_OFFLINE_ENV}=1): {where}, or pass "
                                          f"open_clip:{name}@<checkpoint file>")
            pretrained = cached  # read the cached file directly; the tag's preprocessing is kept below
            kwargs["force_preprocess_cfg"] = {key: tag_cfg[key] for key in
                                              ("mean", "std", "interpolation", "resize_mode") if key in tag_cfg}
    try:
        return open_clip.create_model(name, pretrained=pretrained, cache_dir=download_root, **kwargs)
    except (RuntimeError, OSError, ValueError, KeyError) as error:
        if kind == "tag" and pretrained == source:
            raise MissingWeightsError(f"could not get open_clip weights {name}/{source} ({_first_line(error)}); "
                                      f"check the network, or download the checkpoint and pass "
                                      f"open_clip:{name}@<file>") from error
        raise WeightsFileError(f"{pretrained} does not hold open_clip {name} weights ({_first_line(error)})") from error


def load_open_clip(spec: str, device: Union[str, torch.device] = "cpu",
                   download_root: Union[str, os.PathLike, None] = None,
                   ) -> Tuple[CLIP, Callable[[Image.Image], torch.Tensor]]:
    """(model, preprocess) for an open_clip spec (see the module doc): our float32 CLIP in eval mode on device, with
    ``model.preprocess_cfg`` (size, mean, std, interpolation, resize_mode: what its weights expect), and open_clip's
    own test-time transform for it."""
    open_clip = _open_clip()
    root = os.fspath(download_root) if download_root is not None else None
    source_model = _create(open_clip, spec, root)
    model = from_open_clip(source_model, spec, share_weights=True).to(device).eval()
    preprocess_cfg = dict(source_model.visual.preprocess_cfg)
    del source_model
    model.preprocess_cfg = preprocess_cfg
    preprocess = open_clip.transform.image_transform_v2(open_clip.transform.PreprocessCfg(**preprocess_cfg),
                                                        is_train=False)
    return model, preprocess


def check_input(model: nn.Module, spec: str, size: Sequence[int], mean: Sequence[float], std: Sequence[float],
                interpolation: str) -> None:
    """Refuse (one line) a run whose INPUT.SIZE / PIXEL_MEAN / PIXEL_STD / INTERPOLATION differ from what the
    backbone's weights expect (``model.preprocess_cfg``; models without one, e.g. OpenAI's, are not checked)."""
    expected = getattr(model, "preprocess_cfg", None)
    if expected is None:
        return
    side = expected["size"] if isinstance(expected["size"], int) else expected["size"][0]
    want = {"INPUT.SIZE": (side, side), "INPUT.PIXEL_MEAN": list(expected["mean"]),
            "INPUT.PIXEL_STD": list(expected["std"]), "INPUT.INTERPOLATION": expected["interpolation"]}
    have = {"INPUT.SIZE": tuple(size), "INPUT.PIXEL_MEAN": list(mean), "INPUT.PIXEL_STD": list(std),
            "INPUT.INTERPOLATION": interpolation}
    if expected.get("resize_mode", "shortest") != "shortest":
        warnings.warn(f"backbone {spec} was trained with resize mode {expected['resize_mode']!r}; the data transforms "
                      "resize the shortest side and center-crop instead")
    differs = []
    for key, value in want.items():
        if key in ("INPUT.PIXEL_MEAN", "INPUT.PIXEL_STD"):
            same = len(value) == len(have[key]) and all(math.isclose(a, b, abs_tol=1e-4)
                                                        for a, b in zip(value, have[key]))
        else:
            same = value == have[key]
        if not same:
            differs.append(f'{key} "{value}"' if not isinstance(value, str) else f"{key} {value}")
    if differs:
        raise InputMismatchError(f"backbone {spec} expects other image preprocessing than this run's INPUT config; "
                                 f"add to the command: {' '.join(differs)}")
