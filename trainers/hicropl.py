"""HiCroPL: Hierarchical Cross-modal Prompt Learning for vision-language models (Zheng et al., ICCV 2025).

One self-contained trainer file, read top to bottom:

1. precision table (``PREC``) and config validation (``check_hicropl_cfg``);
2. frozen text classifier W from averaged class descriptions, cached on disk (SPEC §4.2);
3. building blocks: LKP, the layer-specific knowledge proxy (SPEC §3.2), and the hierarchical knowledge
   mapper (SPEC §3.3);
4. ``HiCroPLPromptLearner``: per-layer text prompts P_t[0..J-1] and visual prompts P_v[0..J-1]; layers [0, k) are
   mapped text -> image, layers [k, J) image -> text (SPEC §3.4), either written back into the prompt parameters
   without gradient (``MAPPER_MODE released``) or computed as differentiable tensors (``differentiable``);
5. ``CustomCLIP``: prompted CLIP + frozen teacher, fused logits (SPEC §4.1) and the loss (SPEC §4.3);
6. the registered ``HiCroPL`` trainer (optimiser, precision, checkpoints incl. those of the released code, the
   frozen teacher's features of each evaluation set computed once: ``trainers.feature_cache``).

The paper's ablations are config switches (trainers/config.py), each a small named piece: ``flow_layers`` (FLOW),
``apply_mapper`` (T2I_SCALE / I2T_SCALE), ``COMPRESSION_MODULES`` (COMPRESSION), ``ConsistencyTarget``
(CONSISTENCY_TARGET) and ``CONSISTENCY_DISTANCES`` (CONSISTENCY_CRITERION); the defaults are HiCroPL as published.

Shapes: m = N_CTX, J = PROMPT_DEPTH, k = CROSS_LAYER, D_t / D_v = text / vision token width, d = joint embedding
width, n_cls = number of classes, B = batch size. Widths, depths, dtypes and devices are read from the CLIP model.
"""
import copy
import hashlib
import json
import os
import pickle
from collections import OrderedDict
from contextlib import nullcontext
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import ContextManager, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from yacs.config import CfgNode

import clip
from clip.model import CLIP, convert_weights
from common.errors import UserError
from common.files import atomic_write, folder_lock
from dassl.engine import TRAINER_REGISTRY, TrainerX
from dassl.optim import build_lr_scheduler, build_optimizer
from descriptions import description_file, load_descriptions, too_long_for_context
from trainers.checks import check_input_size
from trainers.config import (
    COMPRESSIONS,
    CONSISTENCY_CRITERIA,
    CONSISTENCY_TARGETS,
    EVAL_FEATURE_CACHES,
    FLOWS,
    MAPPER_MODES,
    MAPPER_SCALES,
    PRECISIONS,
    apply_optim_eps,
)
from trainers.feature_cache import (
    FeatureTable,
    feature_key,
    image_list_digest,
    process_shard,
    state_digest,
)

# ---------------------------------------------------------------------------------------------------------------------
# 1. Precision and config validation
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Precision:
    """How one ``PREC`` value runs: weight dtype of CLIP and the prompt learner, autocast dtype, loss scaling."""

    weights: torch.dtype
    autocast: Optional[torch.dtype]  # None: no autocast
    grad_scaler: bool
    cpu_ok: bool

    def autocast_context(self, device_type: str) -> ContextManager:
        if self.autocast is None:
            return nullcontext()
        return torch.autocast(device_type=device_type, dtype=self.autocast)


PRECISION_TABLE: Dict[str, Precision] = {
    # released behaviour: CLIP matmul/conv weights and the whole prompt learner in fp16 (Adam needs OPTIM.EPS 1e-3)
    "fp16": Precision(weights=torch.float16, autocast=None, grad_scaler=False, cpu_ok=False),
    "fp32": Precision(weights=torch.float32, autocast=None, grad_scaler=False, cpu_ok=True),
    "amp": Precision(weights=torch.float32, autocast=torch.float16, grad_scaler=True, cpu_ok=False),
    "bf16": Precision(weights=torch.float32, autocast=torch.bfloat16, grad_scaler=False, cpu_ok=True),
}
assert set(PRECISION_TABLE) == set(PRECISIONS)


def check_hicropl_cfg(
    hc: CfgNode,
    device: Optional[torch.device] = None,
    clip_model: Optional[CLIP] = None,
) -> None:
    """Validate ``TRAINER.HICROPL`` (every check of the method lives here; each failure is one clear line).

    Config-only checks always run; ``device`` adds the precision/device check, ``clip_model`` the checks against the
    backbone (ViT image tower, depth, head count). The prompt-length check needs the class names and is done by
    ``build_text_template`` where the prompts are tokenised.
    """
    if hc.PREC not in PRECISION_TABLE:
        raise UserError(f"TRAINER.HICROPL.PREC is {hc.PREC!r}; choose one of {', '.join(PRECISIONS)}")
    if hc.CACHE_EVAL_FEATURES not in EVAL_FEATURE_CACHES:
        raise UserError(f"TRAINER.HICROPL.CACHE_EVAL_FEATURES is {hc.CACHE_EVAL_FEATURES!r}; "
                        f"choose one of {', '.join(EVAL_FEATURE_CACHES)}")
    if hc.MAPPER_MODE not in MAPPER_MODES:
        raise UserError(f"TRAINER.HICROPL.MAPPER_MODE is {hc.MAPPER_MODE!r}; choose one of {', '.join(MAPPER_MODES)}")
    if hc.N_CTX < 1:
        raise UserError(f"TRAINER.HICROPL.N_CTX is {hc.N_CTX}; it must be >= 1")
    if hc.PROMPT_DEPTH < 1:
        raise UserError(f"TRAINER.HICROPL.PROMPT_DEPTH is {hc.PROMPT_DEPTH}; it must be >= 1")
    if not 0 <= hc.CROSS_LAYER <= hc.PROMPT_DEPTH:
        raise UserError(
            f"TRAINER.HICROPL.CROSS_LAYER ({hc.CROSS_LAYER}) must lie in [0, PROMPT_DEPTH] = [0, {hc.PROMPT_DEPTH}]"
        )
    if hc.LAMBD < 0:
        raise UserError(f"TRAINER.HICROPL.LAMBD is {hc.LAMBD}; it must be >= 0")
    if hc.MAPPER_HEADS < 1:
        raise UserError(f"TRAINER.HICROPL.MAPPER_HEADS is {hc.MAPPER_HEADS}; it must be >= 1")
    for key, allowed in (("FLOW", FLOWS), ("T2I_SCALE", MAPPER_SCALES), ("I2T_SCALE", MAPPER_SCALES),
                         ("COMPRESSION", COMPRESSIONS), ("CONSISTENCY_TARGET", CONSISTENCY_TARGETS),
                         ("CONSISTENCY_CRITERION", CONSISTENCY_CRITERIA)):
        if hc[key] not in allowed:
            raise UserError(f"TRAINER.HICROPL.{key} is {hc[key]!r}; choose one of {', '.join(allowed)}")
    if device is not None and device.type == "cpu" and not PRECISION_TABLE[hc.PREC].cpu_ok:
        raise UserError(
            f"TRAINER.HICROPL.PREC {hc.PREC} needs a CUDA device; on CPU use PREC fp32 or bf16"
        )
    if clip_model is None:
        return
    if not hasattr(clip_model.visual, "transformer"):
        raise UserError("HiCroPL needs a ViT image tower (prompts are tokens); choose a ViT backbone, e.g. ViT-B/16")
    layers = min(clip_model.visual.layers, clip_model.transformer.layers)
    if hc.PROMPT_DEPTH > layers:
        raise UserError(
            f"TRAINER.HICROPL.PROMPT_DEPTH ({hc.PROMPT_DEPTH}) exceeds the backbone's depth ({layers} layers)"
        )
    for tower, width in (("text", clip_model.transformer.width), ("vision", clip_model.visual.width)):
        if width % hc.MAPPER_HEADS:
            raise UserError(
                f"TRAINER.HICROPL.MAPPER_HEADS ({hc.MAPPER_HEADS}) must divide the {tower} width ({width})"
            )


# ---------------------------------------------------------------------------------------------------------------------
# 2. Frozen text classifier W (SPEC §4.2), cached on disk
# ---------------------------------------------------------------------------------------------------------------------

# Where W tables are cached: $HICROPL_CACHE_DIR, else ~/.cache/hicropl.
CACHE_ENV = "HICROPL_CACHE_DIR"


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "hicropl")


def _text_tower_digest(clip_model: CLIP) -> str:
    """SHA-256 of every weight the text features depend on (all of CLIP except the image tower) and of the
    architecture, whose head counts and activation are not in the weights (open_clip's ViT-B-16 vs -quickgelu)."""
    return state_digest(((name, tensor) for name, tensor in clip_model.state_dict().items()
                         if not name.startswith("visual.")), header=repr(clip_model.config))


@torch.no_grad()
def encode_descriptions(clip_model: CLIP, sentences: Sequence[Sequence[str]], batch_size: int = 256) -> torch.Tensor:
    """W (n_cls, d) float32, unit rows: per class, the normalised mean of its normalised sentence features."""
    flat = [s for group in sentences for s in group]
    device = clip_model.token_embedding.weight.device
    features = []
    for start in range(0, len(flat), batch_size):
        tokens = clip.tokenize(flat[start:start + batch_size]).to(device)
        features.append(F.normalize(clip_model.encode_text(tokens).float(), dim=-1))
    features = torch.cat(features)  # (n_sentences, d)
    rows, start = [], 0
    for group in sentences:
        rows.append(features[start:start + len(group)].mean(dim=0))
        start += len(group)
    return F.normalize(torch.stack(rows), dim=-1)


def frozen_text_features(clip_model: CLIP, sentences: Sequence[Sequence[str]]) -> torch.Tensor:
    """``encode_descriptions`` with an on-disk cache keyed by (text-tower weights, per-class sentence lists).

    The sentence lists are the description-file content for the current class list in label order, so the key
    changes with the backbone, the file or the classes. Writes are atomic (temp file + rename); a cache that cannot
    be written only costs a recomputation next time; an unreadable one (damaged on disk) is recomputed and replaced.
    """
    digest = hashlib.sha256(_text_tower_digest(clip_model).encode())
    digest.update(json.dumps([list(group) for group in sentences]).encode())
    path = cache_dir() / "text_features" / f"{digest.hexdigest()}.pt"
    device = clip_model.token_embedding.weight.device
    if path.is_file():
        try:
            weights = torch.load(path, map_location=device, weights_only=True)
            if isinstance(weights, torch.Tensor) and weights.shape == (len(sentences), clip_model.embed_dim):
                print(f"Frozen text features W: loaded from {path}")
                return weights
            problem = "holds no (n_cls, d) tensor"
        except (RuntimeError, EOFError, pickle.UnpicklingError) as e:
            problem = f"cannot be read ({type(e).__name__})"
        print(f"Frozen text features W: the cache {path} {problem}; recomputing it")
    weights = encode_descriptions(clip_model, sentences)
    try:
        # Parallel runs may both compute W (same values); the lock makes the writes one after the other.
        with folder_lock(str(path.parent)):
            atomic_write(str(path), lambda f: torch.save(weights.cpu(), f), binary=True)
        print(f"Frozen text features W: {sum(map(len, sentences))} sentences encoded, cached at {path}")
    except (OSError, RuntimeError) as e:  # RuntimeError: torch's writer on a full disk
        print(f"Frozen text features W: could not write the cache {path} ({e}); continuing without it")
    return weights


# CONSISTENCY_TARGET imagenet_templates (Table 12): CLIP's 7-template ImageNet ensemble (the subset selected in the
# CLIP paper's prompt-engineering notebook). Replace by another list (e.g. CLIP's 80 ImageNet templates) to change it.
IMAGENET_TEMPLATES = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)


class ConsistencyTarget(nn.Module):
    """Frozen text target of the text consistency term when it is not W (``CONSISTENCY_TARGET``, Table 12).

    features (n_rows, d) unit rows. counts None: one fixed row per class (n_rows = n_cls). counts (n_cls,): the rows
    are the sentence features of all classes, class c owning ``counts[c]`` consecutive rows; every call in training
    mode draws one of them per class uniformly at random (a new draw each training step); in eval mode the
    normalised mean per class (= W of the same sentences).
    """

    def __init__(self, features: torch.Tensor, counts: Optional[Sequence[int]] = None) -> None:
        super().__init__()
        self.register_buffer("features", features.float(), persistent=False)
        self.sampled = counts is not None
        if counts is not None:
            counts_t = torch.as_tensor(list(counts), device=features.device)
            self.register_buffer("counts", counts_t, persistent=False)
            self.register_buffer("starts", torch.cumsum(counts_t, 0) - counts_t, persistent=False)

    def forward(self) -> torch.Tensor:
        """(n_cls, d) float32 target rows."""
        if not self.sampled:
            return self.features
        if self.training:
            offsets = (torch.rand(len(self.counts), device=self.counts.device) * self.counts).long()
            return self.features[self.starts + torch.minimum(offsets, self.counts - 1)]
        means = [self.features[start:start + count].mean(0) for start, count in zip(self.starts, self.counts)]
        return F.normalize(torch.stack(means), dim=-1)


def build_consistency_target(
    target: str, clip_model: CLIP, classnames: Sequence[str], descriptions: Sequence[Sequence[str]]
) -> Optional[ConsistencyTarget]:
    """The target chosen by ``CONSISTENCY_TARGET`` (None for "descriptions": the loss then uses W itself)."""
    names = [name.replace("_", " ") for name in classnames]
    if target == "descriptions":
        return None
    print(f"Text consistency target: {target} (the fused logits keep W)")
    if target == "template":
        return ConsistencyTarget(frozen_text_features(clip_model, [[f"a photo of a {name}."] for name in names]))
    if target == "imagenet_templates":
        return ConsistencyTarget(
            frozen_text_features(clip_model, [[t.format(name) for t in IMAGENET_TEMPLATES] for name in names])
        )
    # "random_description": every sentence's own features (a one-sentence "class" each, so they share W's cache)
    sentences = [[sentence] for group in descriptions for sentence in group]
    return ConsistencyTarget(frozen_text_features(clip_model, sentences), [len(group) for group in descriptions])


# ---------------------------------------------------------------------------------------------------------------------
# 3. Building blocks
# ---------------------------------------------------------------------------------------------------------------------


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x), CLIP's GELU approximation (used by the released mapper FFN)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class LayerKnowledgeProxy(nn.Module):
    """LKP (SPEC §3.2): compress one layer's m prompts into one knowledge token.

    p' = LN2(p + MHA(LN1(p), LN1(P), LN1(P))) with the same LN1 on query, keys and values; no FFN.
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, proxy: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        """proxy (1, D), prompts (m, D) -> (1, D)."""
        query, source = self.ln_1(proxy), self.ln_1(prompts)
        return self.ln_2(proxy + self.attn(query, source, source, need_weights=False)[0])


class MeanCompression(nn.Module):
    """COMPRESSION mean (Table 7): the knowledge token is the plain average of the layer's prompts (no parameters)."""

    def forward(self, proxy: Optional[torch.Tensor], prompts: torch.Tensor) -> torch.Tensor:
        """proxy unused (None), prompts (m, D) -> (1, D)."""
        return prompts.mean(dim=0, keepdim=True)


class MLPCompression(nn.Module):
    """COMPRESSION mlp (Table 7): a 2-layer MLP (D -> D -> D, QuickGELU) on every prompt, averaged over the m prompts.

    The paper gives no width; the hidden width D keeps it close to the LKP's size. No proxy token.
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, width)
        self.gelu = QuickGELU()
        self.c_proj = nn.Linear(width, width)

    def forward(self, proxy: Optional[torch.Tensor], prompts: torch.Tensor) -> torch.Tensor:
        """proxy unused (None), prompts (m, D) -> (1, D)."""
        return self.c_proj(self.gelu(self.c_fc(prompts))).mean(dim=0, keepdim=True)


# COMPRESSION -> factory of one layer's compression module (width, heads); "lkp" is the published LKP.
COMPRESSION_MODULES = {
    "lkp": lambda width, heads: LayerKnowledgeProxy(width, heads),
    "mean": lambda width, heads: MeanCompression(),
    "mlp": lambda width, heads: MLPCompression(width),
}
assert set(COMPRESSION_MODULES) == set(COMPRESSIONS)


class HierarchicalKnowledgeMapper(nn.Module):
    """Mapper M (SPEC §3.3): the prompts of one modality attend to the layer knowledge of the other.

    Q = linear_q(X), K = linear_k(S), V = linear_v(S); Q1 = Q + MHA(LN1(Q), LN1(K), LN1(V)); Y = Q1 + FFN(LN2(Q1)).
    Every query row attends to all source rows (no mask), so each layer sees the knowledge of every layer of its
    segment; rows of X never interact.
    """

    def __init__(self, query_width: int, source_width: int, heads: int) -> None:
        super().__init__()
        # Registration order = the released state-dict order (SPEC §7.2).
        self.attn = nn.MultiheadAttention(query_width, heads)
        self.linear_q = nn.Linear(query_width, query_width)
        self.linear_k = nn.Linear(source_width, query_width)
        self.linear_v = nn.Linear(source_width, query_width)
        self.ln_1 = nn.LayerNorm(query_width)
        self.ffn = nn.Sequential(
            OrderedDict(
                c_fc=nn.Linear(query_width, 4 * query_width),
                gelu=QuickGELU(),
                c_proj=nn.Linear(4 * query_width, query_width),
            )
        )
        self.ln_2 = nn.LayerNorm(query_width)

    def forward(self, queries: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
        """queries X (N, D_query), sources S (n, D_source) -> Y (N, D_query)."""
        q, k, v = self.linear_q(queries), self.linear_k(sources), self.linear_v(sources)
        q = q + self.attn(self.ln_1(q), self.ln_1(k), self.ln_1(v), need_weights=False)[0]
        return q + self.ffn(self.ln_2(q))


def layer_knowledge(
    compressors: Sequence[nn.Module], proxies: Sequence[torch.Tensor], prompts: Sequence[torch.Tensor]
) -> torch.Tensor:
    """One knowledge token per layer of a flow from that layer's prompts (m, D): (n_layers, D).

    ``proxies`` is empty unless COMPRESSION is lkp (the other compressions take no proxy)."""
    proxies = list(proxies) or [None] * len(prompts)
    return torch.cat([net(proxy, layer) for net, proxy, layer in zip(compressors, proxies, prompts)])


def apply_mapper(
    mapper: HierarchicalKnowledgeMapper, prompts: Sequence[torch.Tensor], knowledge: torch.Tensor, scale: str
) -> torch.Tensor:
    """Map the n layers' prompts [n x (m, D_query)] with the knowledge tokens (n, D_source): (n, m, D_query).

    multi (published): all n*m prompt rows attend to all n knowledge tokens. single (Table 6): the prompts of layer
    i attend to knowledge token i only (same mapper), so they depend on no other layer.
    """
    if scale == "multi":
        m = prompts[0].shape[0]
        return mapper(torch.cat(list(prompts)), knowledge).view(len(prompts), m, -1)
    return torch.stack([mapper(layer, knowledge[i:i + 1]) for i, layer in enumerate(prompts)])


def flow_layers(flow: str, cross_layer: int, depth: int) -> Tuple[range, range]:
    """(layers mapped text->image, layers mapped image->text) under FLOW (Table 4); k = cross_layer, J = depth."""
    lower, upper, every, no_layer = range(0, cross_layer), range(cross_layer, depth), range(0, depth), range(0)
    return {
        "t2i_i2t": (lower, upper),
        "i2t_t2i": (upper, lower),
        "t2i": (every, no_layer),
        "i2t": (no_layer, every),
        "none": (no_layer, no_layer),
    }[flow]


# ---------------------------------------------------------------------------------------------------------------------
# 4. Prompt learner
# ---------------------------------------------------------------------------------------------------------------------


def build_text_template(hc: CfgNode, classnames: Sequence[str]) -> Tuple[str, List[str], bool]:
    """Prompt prefix, one prompt text per class, and whether CTX_INIT initialises P_t[0].

    Released behaviour (SPEC F4): CTX_INIT is used only when N_CTX <= 4; the text becomes "<CTX_INIT> <class>." and
    its first N_CTX tokens are replaced by the learnable prompts (the remaining words stay fixed). Otherwise the
    text is "X X ... X <class>." with N_CTX placeholders.
    """
    m = hc.N_CTX
    ctx_init = hc.CTX_INIT.replace("_", " ").strip()
    use_init = bool(ctx_init) and m <= 4
    if use_init:
        n_init = int(clip.tokenize([ctx_init]).argmax(dim=-1)) - 1  # tokens between SOT and EOT
        if n_init < m:
            raise UserError(
                f"TRAINER.HICROPL.CTX_INIT {ctx_init!r} has {n_init} tokens, fewer than N_CTX={m}; "
                "give a longer CTX_INIT or set it to \"\""
            )
        prefix = ctx_init
    else:
        prefix = " ".join(["X"] * m)
    texts = [f"{prefix} {name.replace('_', ' ')}." for name in classnames]
    bad = too_long_for_context(texts)
    if bad:
        names = ", ".join(repr(classnames[i]) for i in bad)
        raise UserError(
            f"TRAINER.HICROPL.N_CTX={m}: the prompt does not fit CLIP's 77-token context for class(es) {names}; "
            "lower N_CTX (or shorten the class names)"
        )
    return prefix, texts, use_init


class HiCroPLPromptLearner(nn.Module):
    """Per-layer prompts of both towers, the knowledge proxies and the two mappers (SPEC §3.1, §3.4).

    State-dict keys (the learned / mapping-defining tensors; names as in the released code, SPEC §7.2):
      cross_prompts_text.{0..J-1} (m, D_t)      P_t; entry 0 is the first-layer text context ("ctx")
      cross_prompts_visual.{0..J-1} (m, D_v)    P_v
      text2visual_net.* (queries D_v, sources D_t), visual2text_net.* (queries D_t, sources D_v)
      attn_pooling_text_nets.{0..k-1}.*, attn_pooling_visual_nets.{0..J-k-1}.*   LKP modules (width D_t / D_v)
      text_proxy_token.{0..k-1} (1, D_t), visual_proxy_token.{0..J-k-1} (1, D_v)
    A mapper whose segment is empty (k = 0 or k = J) is not built.
    Ablation switches (trainers/config.py): FLOW chooses which layers each mapper serves (``flow_layers``; the text
    compression modules and proxies belong to the text->image layers, the visual ones to the image->text layers),
    T2I_SCALE / I2T_SCALE how a mapper sees the layers (``apply_mapper``), COMPRESSION what compresses a layer
    (``COMPRESSION_MODULES``; proxies only for lkp).

    Initialisation as released (SPEC §3.1, §5.B): P_t entries independent N(0, 0.02^2) (P_t[0] from CTX_INIT when it
    applies); all P_v entries share one N(0, 0.02^2) draw, all text proxies one N(0, 1) draw, all visual proxies
    another, all LKP copies of a modality one initialisation -- identical values, separate storage.
    """

    def __init__(self, hc: CfgNode, classnames: Sequence[str], clip_model: CLIP) -> None:
        super().__init__()
        check_hicropl_cfg(hc, clip_model=clip_model)
        m, depth, cross = hc.N_CTX, hc.PROMPT_DEPTH, hc.CROSS_LAYER
        text_width, vision_width = clip_model.transformer.width, clip_model.visual.width
        factory = {"device": clip_model.token_embedding.weight.device, "dtype": torch.float32}
        self.n_ctx, self.depth, self.cross_layer = m, depth, cross
        self.mapper_mode = hc.MAPPER_MODE
        self.t2i_layers, self.i2t_layers = flow_layers(hc.FLOW, cross, depth)
        self.t2i_scale, self.i2t_scale = hc.T2I_SCALE, hc.I2T_SCALE
        n_t2i, n_i2t = len(self.t2i_layers), len(self.i2t_layers)
        uses_proxies = hc.COMPRESSION == "lkp"

        prefix, texts, use_init = build_text_template(hc, classnames)
        self.prompt_prefix = prefix
        # (n_cls, 77) token ids; positions 1..m are overwritten by the text prompts inside the text tower.
        self.register_buffer("tokenized_prompts", clip.tokenize(texts).to(factory["device"]), persistent=False)

        if use_init:
            with torch.no_grad():
                tokens = clip.tokenize([prefix]).to(factory["device"])
                first = clip_model.token_embedding(tokens)[0, 1:1 + m].float()
        else:
            first = torch.empty(m, text_width, **factory).normal_(std=0.02)
        self.cross_prompts_text = nn.ParameterList(
            [nn.Parameter(first)]
            + [nn.Parameter(torch.empty(m, text_width, **factory).normal_(std=0.02)) for _ in range(depth - 1)]
        )
        visual_init = torch.empty(m, vision_width, **factory).normal_(std=0.02)
        self.cross_prompts_visual = nn.ParameterList([nn.Parameter(visual_init.clone()) for _ in range(depth)])
        if uses_proxies:
            text_proxy = torch.randn(1, text_width, **factory)
            visual_proxy = torch.randn(1, vision_width, **factory)
        heads = hc.MAPPER_HEADS
        make_compressor = COMPRESSION_MODULES[hc.COMPRESSION]
        text_compressor = make_compressor(text_width, heads).to(**factory)
        visual_compressor = make_compressor(vision_width, heads).to(**factory)
        # Registration order below = the released state-dict order (SPEC §7.2): mappers, LKP modules, proxies.
        self.text2visual_net = (
            HierarchicalKnowledgeMapper(vision_width, text_width, heads).to(**factory) if n_t2i else None
        )
        self.visual2text_net = (
            HierarchicalKnowledgeMapper(text_width, vision_width, heads).to(**factory) if n_i2t else None
        )
        self.attn_pooling_text_nets = nn.ModuleList([copy.deepcopy(text_compressor) for _ in range(n_t2i)])
        self.attn_pooling_visual_nets = nn.ModuleList([copy.deepcopy(visual_compressor) for _ in range(n_i2t)])
        self.text_proxy_token = nn.ParameterList(
            [nn.Parameter(text_proxy.clone()) for _ in range(n_t2i if uses_proxies else 0)]
        )
        self.visual_proxy_token = nn.ParameterList(
            [nn.Parameter(visual_proxy.clone()) for _ in range(n_i2t if uses_proxies else 0)]
        )

        if self.mapper_mode == "released":
            # The released code writes the mapper outputs into `.data`, so no gradient ever reaches these (SPEC §5.A).
            for module in self.mapping_modules():
                module.requires_grad_(False)

    @property
    def ctx(self) -> nn.Parameter:
        """First-layer text prompts P_t[0] (m, D_t) -- the released code's ``ctx``."""
        return self.cross_prompts_text[0]

    def mapping_modules(self) -> List[nn.Module]:
        """Everything that defines the mappings but is not a prompt: proxies, LKP modules, mappers."""
        modules = [self.text_proxy_token, self.visual_proxy_token, self.attn_pooling_text_nets,
                   self.attn_pooling_visual_nets]
        return modules + [net for net in (self.text2visual_net, self.visual2text_net) if net is not None]

    def map_text_to_visual(self) -> torch.Tensor:
        """T->I flow (published: layers L = [0, k)): P_v[L] attend to the LKP summaries of P_t[L]. (|L|, m, D_v)."""
        layers = self.t2i_layers
        knowledge = layer_knowledge(self.attn_pooling_text_nets, self.text_proxy_token,
                                    [self.cross_prompts_text[i] for i in layers])  # (|L|, D_t)
        queries = [self.cross_prompts_visual[i] for i in layers]
        return apply_mapper(self.text2visual_net, queries, knowledge, self.t2i_scale)

    def map_visual_to_text(self) -> torch.Tensor:
        """I->T flow (published: layers L = [k, J)): P_t[L] attend to the LKP summaries of P_v[L]. (|L|, m, D_t)."""
        layers = self.i2t_layers
        knowledge = layer_knowledge(self.attn_pooling_visual_nets, self.visual_proxy_token,
                                    [self.cross_prompts_visual[i] for i in layers])  # (|L|, D_v)
        queries = [self.cross_prompts_text[i] for i in layers]
        return apply_mapper(self.visual2text_net, queries, knowledge, self.i2t_scale)

    def forward(self) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """Prompts for the encoders: (text [J x (m, D_t)], visual [J x (m, D_v)]); entry i is used at layer i.

        The two flows read disjoint prompt sets (T->I reads P_t[0..k-1] and P_v[0..k-1], I->T reads P_t[k..J-1]
        and P_v[k..J-1]; each FLOW keeps its flows' layers disjoint), so their order does not matter and nothing
        chains between them.
        released: the mapped prompts overwrite the parameters in place, without gradient, and the parameters are
          returned (each call maps the previous call's values again: x <- M(x; sources)).
        differentiable: the mapped prompts are returned as tensors; parameters are never modified.
        """
        text = list(self.cross_prompts_text)
        visual = list(self.cross_prompts_visual)
        if self.mapper_mode == "released":
            with torch.no_grad():
                if self.t2i_layers:
                    for i, mapped in zip(self.t2i_layers, self.map_text_to_visual()):
                        visual[i].copy_(mapped)
                if self.i2t_layers:
                    for i, mapped in zip(self.i2t_layers, self.map_visual_to_text()):
                        text[i].copy_(mapped)
            return text, visual
        if self.t2i_layers:
            for i, mapped in zip(self.t2i_layers, self.map_text_to_visual()):
                visual[i] = mapped
        if self.i2t_layers:
            for i, mapped in zip(self.i2t_layers, self.map_visual_to_text()):
                text[i] = mapped
        return text, visual


# ---------------------------------------------------------------------------------------------------------------------
# 5. Model: prompted CLIP + frozen teacher, fused logits and loss
# ---------------------------------------------------------------------------------------------------------------------

# Keys of a released-code checkpoint (SPEC §7.2) that hold nothing we learn: frozen towers, the teacher, the
# class-dependent token buffers (rebuilt for the current classes) and the frozen logit scale.
RELEASED_IGNORED_PREFIXES = (
    "image_encoder.",
    "text_encoder.",
    "prompt_learner.ZS_image_encoder.",
    "prompt_learner.token_prefix",
    "prompt_learner.token_suffix",
)
RELEASED_IGNORED_KEYS = ("logit_scale",)


def convert_released_state_dict(state_dict: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    """Map a released-code CustomCLIP state dict (SPEC §7.2) onto ours; our own state dicts pass unchanged.

    Frozen-tower, teacher, token_prefix/suffix and logit_scale keys are dropped; ``prompt_learner.ctx`` is the same
    tensor as ``prompt_learner.cross_prompts_text.0`` (used when the latter is absent, checked equal otherwise).
    """
    out = OrderedDict()
    for key, value in state_dict.items():
        key = key[len("module."):] if key.startswith("module.") else key
        if key in RELEASED_IGNORED_KEYS or key.startswith(RELEASED_IGNORED_PREFIXES):
            continue
        out[key] = value
    ctx = out.pop("prompt_learner.ctx", None)
    if ctx is not None:
        first = out.setdefault("prompt_learner.cross_prompts_text.0", ctx)
        if first.shape != ctx.shape or not torch.equal(first, ctx.to(first.dtype)):
            raise UserError("checkpoint: prompt_learner.ctx differs from prompt_learner.cross_prompts_text.0")
    return out


def fuse(prompted: torch.Tensor, frozen: torch.Tensor) -> torch.Tensor:
    """norm(norm(prompted) + frozen): the fused feature of SPEC §4.1 (frozen rows are unit vectors). (N, d).

    Computed in the prompted features' dtype (fp16 in the released precision, as the released code casts W)."""
    return F.normalize(F.normalize(prompted, dim=-1) + frozen.to(prompted.dtype), dim=-1)


def cosine_distance(features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1 - mean cosine similarity of the rows (eps 1e-7, as released)."""
    return 1 - F.cosine_similarity(features, targets, dim=-1, eps=1e-7).mean()


# CONSISTENCY_CRITERION (Table 13) -> distance(features (N, d), targets (N, d)) -> scalar.
CONSISTENCY_DISTANCES = {"cosine": cosine_distance, "l1": F.l1_loss, "mse": F.mse_loss}
assert set(CONSISTENCY_DISTANCES) == set(CONSISTENCY_CRITERIA)


def hicropl_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    image_features: torch.Tensor,
    teacher_features: torch.Tensor,
    text_features: torch.Tensor,
    frozen_text: torch.Tensor,
    lambd: float,
    criterion: str = "cosine",
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """SPEC §4.3: CE + lambda * [(1 - mean_c cos(f_txt_c, W_c)) + (1 - mean_b cos(f_img_b, V_b))], in float32.

    logits (B, n_cls), labels (B,), image_features f_img (B, d), teacher_features V (B, d), text_features f_txt
    (n_cls, d), frozen_text W (n_cls, d). The text term averages over all classes, the image term over the batch.
    ``criterion`` (CONSISTENCY_CRITERION) replaces 1 - mean cos by another distance of CONSISTENCY_DISTANCES.
    Returns the total and its terms {"ce", "text_consistency", "image_consistency"}.
    """
    ce = F.cross_entropy(logits.float(), labels)
    distance = CONSISTENCY_DISTANCES[criterion]
    text_term = distance(text_features.float(), frozen_text.float())
    image_term = distance(image_features.float(), teacher_features.float())
    terms = {"ce": ce, "text_consistency": text_term, "image_consistency": image_term}
    return ce + lambd * (text_term + image_term), terms


class CustomCLIP(nn.Module):
    """Prompted CLIP with a frozen teacher and a frozen description classifier W.

    logits = exp(logit_scale) * f_img @ f_txt^T with f_img = norm(norm(V_p) + V), f_txt = norm(norm(W_p) + W)
    (SPEC §4.1): V_p / W_p the prompted image / class features, V the frozen teacher's image features, W the frozen
    description features. The same fused logits are used for training and evaluation.

    ``state_dict()`` holds only the prompt learner (what is learned or defines the mappings); the frozen CLIP,
    the teacher and W are rebuilt from the config. In eval mode the prompt learner and the text tower run once and
    are cached until the module returns to train mode or a state dict is loaded.
    """

    # Eval-mode cache of the prompts and class features (the text side does not depend on the images). False
    # recomputes them for every batch, as the released code does (the naive path of scripts/benchmark.py): same
    # logits for the first batch, but in MAPPER_MODE released every extra call re-maps the prompts in place.
    cache_eval_text: bool = True
    # Teacher features of the evaluation set being evaluated, one row per image index (set by ``HiCroPL.test``
    # for one evaluation); None: the teacher runs on every batch.
    eval_features: Optional[FeatureTable] = None

    def __init__(
        self,
        cfg: CfgNode,
        classnames: Sequence[str],
        clip_model: CLIP,
        frozen_text: torch.Tensor,
        teacher: Optional[CLIP] = None,
        consistency_target: Optional[ConsistencyTarget] = None,
    ) -> None:
        super().__init__()
        hc = cfg.TRAINER.HICROPL
        self.prompt_learner = HiCroPLPromptLearner(hc, classnames, clip_model)  # validates hc first
        self.precision = PRECISION_TABLE[hc.PREC]
        self.lambd = hc.LAMBD
        self.criterion = hc.CONSISTENCY_CRITERION
        # Target of the text consistency term (CONSISTENCY_TARGET); None: W itself (published).
        self.consistency_target = consistency_target
        self.clip_model = clip_model
        clip_model.transformer.checkpointing = hc.TEXT_CHECKPOINTING
        # None: the teacher is the backbone's own visual tower with prompts off (no second copy).
        self.teacher = teacher
        for frozen in (self.clip_model, self.teacher):
            if frozen is not None:
                frozen.requires_grad_(False)
                if self.precision.weights != torch.float32:
                    convert_weights(frozen, self.precision.weights)
        if self.precision.weights != torch.float32:
            self.prompt_learner.to(self.precision.weights)
        # (n_cls, d) float32 unit rows; rebuilt from the descriptions, so not part of the state dict.
        self.register_buffer("frozen_text", frozen_text.float(), persistent=False)
        self._eval_cache: Optional[Tuple[List[torch.Tensor], torch.Tensor]] = None

    # --- frozen parts ------------------------------------------------------------------------------------------------

    def train(self, mode: bool = True) -> "CustomCLIP":
        """Frozen towers always stay in eval mode (no BatchNorm statistics updates); mode changes drop the cache."""
        super().train(mode)
        self.clip_model.train(False)
        if self.teacher is not None:
            self.teacher.train(False)
        self._eval_cache = None
        return self

    @torch.no_grad()
    def teacher_features(self, image: torch.Tensor) -> torch.Tensor:
        """V = norm(teacher(image)) (B, d): frozen CLIP image features, no prompts."""
        teacher = self.teacher if self.teacher is not None else self.clip_model
        return F.normalize(teacher.encode_image(image), dim=-1)

    # --- prompted parts ----------------------------------------------------------------------------------------------

    def prompts_and_text_features(self) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """(visual prompts [J x (m, D_v)], f_txt (n_cls, d)); computed once per evaluation in eval mode."""
        if not self.training and self.cache_eval_text and self._eval_cache is not None:
            return self._eval_cache
        text_prompts, visual_prompts = self.prompt_learner()
        class_features = self.clip_model.encode_text(self.prompt_learner.tokenized_prompts, text_prompts)  # W_p
        text_features = fuse(class_features, self.frozen_text)
        if not self.training and self.cache_eval_text:
            self._eval_cache = ([p.detach() for p in visual_prompts], text_features.detach())
        return visual_prompts, text_features

    def forward_features(
        self, image: torch.Tensor, index: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """image (B, 3, R, R) -> logits (B, n_cls), f_img (B, d), V (B, d), f_txt (n_cls, d).

        index (B,): the images' positions in the evaluation set; in eval mode with ``eval_features`` set, V of
        images seen before comes from that table instead of the teacher."""
        with self.precision.autocast_context(image.device.type):
            visual_prompts, text_features = self.prompts_and_text_features()
            if self.training or self.eval_features is None or index is None:
                teacher = self.teacher_features(image)
            else:
                teacher = self.eval_features.features_for(index, lambda: self.teacher_features(image))
            image_features = fuse(self.clip_model.encode_image(image, visual_prompts), teacher)
            logits = self.clip_model.logit_scale.exp() * image_features @ text_features.t()
        return logits.float(), image_features, teacher, text_features

    def forward(self, image: torch.Tensor, label: Optional[torch.Tensor] = None, return_terms: bool = False,
                index: Optional[torch.Tensor] = None):
        """With ``label``: the scalar loss of SPEC §4.3 (and its terms if ``return_terms``); without: logits
        (B, n_cls) float32. ``index``: see ``forward_features``."""
        logits, image_features, teacher, text_features = self.forward_features(image, index)
        if label is None:
            return logits
        target = self.frozen_text if self.consistency_target is None else self.consistency_target()
        loss, terms = hicropl_loss(logits, label, image_features, teacher, text_features, target, self.lambd,
                                   self.criterion)
        return (loss, terms) if return_terms else loss

    # --- checkpoints -------------------------------------------------------------------------------------------------

    def state_dict(self, *, destination=None, prefix: str = "", keep_vars: bool = False):
        """Only ``prompt_learner.*`` (prompts, proxies, LKP, mappers): the frozen CLIP is rebuilt from the config."""
        return self.prompt_learner.state_dict(
            destination=destination, prefix=prefix + "prompt_learner.", keep_vars=keep_vars
        )

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor], strict: bool = True, assign: bool = False):
        """Load our checkpoints or the released code's (SPEC §7.2; frozen-tower keys ignored, ``ctx`` mapped).

        strict: every learned key must be present with the right shape and no unknown key may remain, otherwise one
        error names the offending keys (the released code silently skipped mismatches). Drops the eval cache.
        """
        state_dict = convert_released_state_dict(state_dict)
        expected = self.state_dict(keep_vars=True)
        missing = [key for key in expected if key not in state_dict]
        unexpected = [key for key in state_dict if key not in expected]
        mismatched = [
            f"{key} {tuple(state_dict[key].shape)} vs {tuple(expected[key].shape)}"
            for key in expected
            if key in state_dict and state_dict[key].shape != expected[key].shape
        ]
        if mismatched or (strict and (missing or unexpected)):
            problems = []
            if missing:
                problems.append(f"missing keys: {', '.join(missing)}")
            if unexpected:
                problems.append(f"unexpected keys: {', '.join(unexpected)}")
            if mismatched:
                problems.append(f"shape mismatch (checkpoint vs model): {', '.join(mismatched)}")
            raise UserError(
                "checkpoint does not match this HiCroPL model (check N_CTX, PROMPT_DEPTH, CROSS_LAYER and the "
                "backbone): " + "; ".join(problems)
            )
        prefix = "prompt_learner."
        result = self.prompt_learner.load_state_dict(
            {key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)},
            strict=strict,
            assign=assign,
        )
        self._eval_cache = None
        return result


# ---------------------------------------------------------------------------------------------------------------------
# 6. Trainer
# ---------------------------------------------------------------------------------------------------------------------


def is_same_backbone(teacher_name: str, backbone_name: str) -> bool:
    return teacher_name in ("", backbone_name)


@TRAINER_REGISTRY.register()
class HiCroPL(TrainerX):
    """HiCroPL trainer: Adam over the trainable prompt-learner parameters, one registered model
    ``VLPromptLearner`` (the CustomCLIP; its checkpoints hold only the prompt learner)."""

    model_name = "VLPromptLearner"
    # Checkpoint metadata (dassl.engine.identity; plain attributes, unused on the real Dassl): keys that give the
    # learned tensors their shape or meaning must match on load; activation checkpointing changes no result, so it
    # is not part of the run identity.
    load_keys = ("MODEL.BACKBONE.NAME",) + tuple(
        f"TRAINER.HICROPL.{key}"
        for key in ("N_CTX", "CTX_INIT", "PROMPT_DEPTH", "CROSS_LAYER", "MAPPER_MODE", "MAPPER_HEADS")
    )
    identity_excluded_keys = ("TRAINER.HICROPL.TEXT_CHECKPOINTING",)

    def check_cfg(self, cfg: CfgNode) -> None:
        device = torch.device("cuda" if cfg.USE_CUDA and torch.cuda.is_available() else "cpu")
        check_hicropl_cfg(cfg.TRAINER.HICROPL, device=device)

    def build_model(self) -> None:
        cfg = self.cfg
        hc = cfg.TRAINER.HICROPL
        classnames = self.dm.dataset.classnames
        backbone = cfg.MODEL.BACKBONE.NAME

        print(f"Loading CLIP (backbone: {backbone})")
        clip_model, _ = clip.load(backbone, device=self.device)
        check_hicropl_cfg(hc, device=self.device, clip_model=clip_model)
        clip.check_input(clip_model, backbone, cfg.INPUT.SIZE, cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD,
                         cfg.INPUT.INTERPOLATION)  # open_clip backbones: the images their weights expect
        check_input_size(cfg.INPUT.SIZE, clip_model, backbone)  # every backbone: its image size

        path = Path(hc.DESCRIPTIONS) if hc.DESCRIPTIONS else description_file(cfg.DATASET.NAME)
        print(f"Frozen text features W from the descriptions in {path}")
        sentences = load_descriptions(path, classnames, fallback=hc.DESCRIPTIONS_FALLBACK)
        frozen_text = frozen_text_features(clip_model, sentences)  # before any fp16 conversion: fp32 features
        consistency_target = build_consistency_target(hc.CONSISTENCY_TARGET, clip_model, classnames, sentences)

        teacher = None
        if not is_same_backbone(hc.TEACHER_NAME, backbone):
            print(f"Loading the frozen teacher image encoder ({hc.TEACHER_NAME})")
            teacher, _ = clip.load(hc.TEACHER_NAME, device=self.device)
            clip.check_input(teacher, hc.TEACHER_NAME, cfg.INPUT.SIZE, cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD,
                             cfg.INPUT.INTERPOLATION)
            if teacher.embed_dim != clip_model.embed_dim:
                raise UserError(
                    f"TRAINER.HICROPL.TEACHER_NAME {hc.TEACHER_NAME} embeds into {teacher.embed_dim} dims but the "
                    f"backbone {backbone} into {clip_model.embed_dim}; use a teacher with the same embedding width"
                )

        print("Building custom CLIP")
        self.model = CustomCLIP(cfg, classnames, clip_model, frozen_text, teacher, consistency_target).to(self.device)

        trainable = [(name, p) for name, p in self.model.named_parameters() if p.requires_grad]
        print(f"MAPPER_MODE {hc.MAPPER_MODE}: {len(trainable)} trainable tensors, "
              f"{sum(p.numel() for _, p in trainable):,} trainable parameters")
        self.optim = build_optimizer([p for _, p in trainable], cfg.OPTIM)
        apply_optim_eps(self.optim, cfg.OPTIM)  # the original Dassl's build_optimizer ignores OPTIM.EPS
        self.sched = build_lr_scheduler(self.optim, cfg.OPTIM)
        self.register_model(self.model_name, self.model, self.optim, self.sched)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.model.precision.grad_scaler else None

    def forward_backward(self, batch: Mapping[str, torch.Tensor]) -> Dict[str, float]:
        image, label = self.parse_batch_train(batch)
        loss, terms = self.model(image, label, return_terms=True)
        # Before any update: a NaN stops training with intact checkpoints. Dassl's signature (loss only); our engine
        # reads the terms from self.loss_terms for its message, the original Dassl ignores them.
        self.loss_terms = terms
        self.detect_anomaly(loss)
        self.optim.zero_grad()
        if self.scaler is None:
            loss.backward()
            self.optim.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optim)
            self.scaler.update()
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()
        return {"loss": loss.item()}

    def parse_batch_train(self, batch: Mapping[str, torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        return batch["img"].to(self.device), batch["label"].to(self.device)

    # --- evaluation: the teacher's features of an evaluation set are computed once ----------------------------------

    def parse_batch_test(
        self, batch: Mapping[str, torch.Tensor]
    ) -> Tuple[Tuple[torch.Tensor, Optional[torch.Tensor]], torch.Tensor]:
        """((image (B, 3, R, R), index (B,) or None), label (B,)): the index names the images for the cache."""
        image, label = super().parse_batch_test(batch)
        return (image, batch.get("index")), label

    def model_inference(self, input: Union[torch.Tensor, Tuple[torch.Tensor, Optional[torch.Tensor]]]) -> torch.Tensor:
        """Logits (B, n_cls) of ``(image, index)`` from ``parse_batch_test`` or of an image batch alone."""
        image, index = input if isinstance(input, tuple) else (input, None)
        return self.model(image, index=index)

    def test(self, split: Optional[str] = None) -> float:
        """The engine's evaluation, with the evaluation set's teacher-feature table in the model (saved after)."""
        model = self._models[self.model_name]
        model.eval_features = table = self.eval_feature_table(split)
        try:
            result = super().test(split)
        finally:
            model.eval_features = None
        if table is not None:
            table.save()
        return result

    @cached_property
    def eval_feature_tables(self) -> Dict[str, FeatureTable]:
        """key -> teacher-feature table, for the keys the splits last evaluated (val and test may share one)."""
        return {}

    @cached_property
    def eval_feature_keys(self) -> Dict[str, str]:
        """split name -> key of the set it evaluated last."""
        return {}

    @cached_property
    def teacher_digest(self) -> str:
        """SHA-256 of the frozen teacher's image tower as it runs (weights after the precision's conversion, and the
        architecture, whose head counts and activation are not in the weights)."""
        model = self._models[self.model_name]
        teacher = model.teacher if model.teacher is not None else model.clip_model
        return state_digest(teacher.visual.state_dict().items(), header=repr(teacher.config))

    def eval_feature_table(self, split: Optional[str]) -> Optional[FeatureTable]:
        """The teacher-feature table of the set ``test(split)`` evaluates; None with CACHE_EVAL_FEATURES off.

        Keyed by the teacher's weights, the ordered image files (path, size, mtime), the test transform and input
        settings, PREC, the device type, the torch version and this process's shard (rank, world size)."""
        hc = self.cfg.TRAINER.HICROPL
        # Dassl's rule for the set test(split) reads (also on the real Dassl, which has no eval_loader()).
        if (split or self.cfg.TEST.SPLIT) == "val" and self.val_loader is not None:
            split, loader = "val", self.val_loader
        else:
            split, loader = "test", self.test_loader
        data_source = getattr(loader.dataset, "data_source", None)
        if hc.CACHE_EVAL_FEATURES == "off" or data_source is None:  # None: not a Dassl DatasetWrapper
            return None
        inputs = self.cfg.INPUT
        key = feature_key({
            "teacher": self.teacher_digest,
            "images": image_list_digest([item.impath for item in data_source]),
            "transform": repr(loader.dataset.transform),
            "input": [inputs.SIZE, inputs.INTERPOLATION, inputs.PIXEL_MEAN, inputs.PIXEL_STD, inputs.TRANSFORMS],
            "prec": hc.PREC,
            "device": self.device.type,
            "shard": process_shard(),
        })
        self.eval_feature_keys[split] = key
        for stale in set(self.eval_feature_tables) - set(self.eval_feature_keys.values()):
            del self.eval_feature_tables[stale]  # a set that changed (e.g. rewritten images): free its rows
        if key not in self.eval_feature_tables:
            folder = cache_dir() / "teacher_features" if hc.CACHE_EVAL_FEATURES == "disk" else None
            embed_dim = self._models[self.model_name].clip_model.embed_dim
            self.eval_feature_tables[key] = FeatureTable.open(
                key, len(data_source), embed_dim, folder, self.device, "Teacher features")
        return self.eval_feature_tables[key]
