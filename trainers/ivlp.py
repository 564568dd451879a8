"""IVLP: Independent Vision-Language Prompting (the MaPLe paper's baseline), registered as ``IVLP``.
Facts: ../shared/methods/IVLP.md.

CLIP stays frozen. Each tower gets its own deep prompts, free parameters with no coupling between the towers:
  text:   P_t[0] (m_t, D_t) at positions 1..m_t of the embedded template (with positional embedding), P_t[i]
          replaces those positions at the input of text block i, 1 <= i < J_t;
  vision: P_v[0] (m_v, D_v) appended after [CLS] + patches (before ``ln_pre``), P_v[i] replaces the last m_v tokens
          at the input of vision block i, 1 <= i < J_v.
logits = exp(logit_scale) * norm(f_img) @ norm(w)^T, loss = cross-entropy. Settings (``TRAINER.IVLP``):
  J_v = 0: deep language prompting (plain CLIP image tower);
  J_t = 0: VPT-deep (the classifier is the frozen features of "a photo of a {class}.", one template, as in VPT).
The text template follows CTX_INIT when m_t <= 4: "a photo of a {class}." with its first m_t tokens learnable (with
m_t = 2 the words "of a" stay fixed, as released).

Checkpoints (``VLPromptLearner/model.pth.tar-<epoch>``) hold the learned tensors only, under the released names
(IVLP.md §4): ``prompt_learner.ctx``, ``image_encoder.VPT``, ``{image,text}_encoder.transformer.resblocks.<i>.
VPT_shallow``; released files (the whole CustomCLIP) load, their frozen-CLIP keys and token buffers dropped.
Precision: all learned tensors in the model's precision (the released code mixed fp16 ``ctx`` with fp32 deep
prompts cast to fp16 at use; same forward values in fp16).

Shapes: K classes, B images, m_t / m_v prompt lengths, D_t / D_v tower widths, d joint width.
"""
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

import clip
from clip.model import CLIP, VisionTransformer
from common.errors import UserError
from dassl.engine import TRAINER_REGISTRY
from trainers.hicropl import frozen_text_features
from trainers.shared import PromptedCLIP, PromptTrainer, prompt_tokens
from trainers.zsclip import DEFAULT_TEMPLATE

# Released-checkpoint keys of the frozen CLIP that an IVLP file carries next to the prompts (dropped on load).
FROZEN_PREFIXES = ("image_encoder.", "text_encoder.")
PROMPT_SUFFIXES = ("VPT", "VPT_shallow")


def check_tower(node: str, tower: str, n_ctx: int, depth: int, layers: int) -> None:
    """UserError unless 0 <= depth <= layers and n_ctx >= 1 when the tower has prompts."""
    if not 0 <= depth <= layers:
        raise UserError(f"{node}.PROMPT_DEPTH_{tower} is {depth}; it must be in [0, {layers}] (the {tower.lower()} "
                        "tower's layers)")
    if depth and n_ctx < 1:
        raise UserError(f"{node}.N_CTX_{tower} is {n_ctx}; it must be >= 1 when PROMPT_DEPTH_{tower} > 0")


def template_prefix(clip_model: CLIP, n_ctx: int, ctx_init: str, node: str) -> Tuple[str, torch.Tensor]:
    """Prompt prefix and the layer-0 text prompts (n_ctx, D_t) float32 (HiCroPL's / MaPLe's rule).

    ctx_init words and n_ctx <= 4: prefix = the words, prompts = the token embeddings of their first n_ctx tokens
    (later words stay fixed in the template). Otherwise prefix "X X ... X" and N(0, 0.02^2) prompts.
    """
    words = ctx_init.replace("_", " ").strip()
    device = clip_model.token_embedding.weight.device
    if words and n_ctx <= 4:
        tokens = clip.tokenize([words]).to(device)
        n_words = int(tokens.argmax(dim=-1)) - 1
        if n_words < n_ctx:
            raise UserError(f"{node}.CTX_INIT {words!r} has {n_words} tokens, fewer than N_CTX={n_ctx}; give a "
                            "longer CTX_INIT or set it to \"\"")
        with torch.no_grad():
            return words, clip_model.token_embedding(tokens)[0, 1:1 + n_ctx].float()
    return " ".join(["X"] * n_ctx), torch.empty(n_ctx, clip_model.transformer.width, device=device).normal_(std=0.02)


def _holder(**parameters: nn.Parameter) -> nn.Module:
    """An empty module holding ``parameters`` (gives the learned tensors their released state-dict names)."""
    module = nn.Module()
    for name, parameter in parameters.items():
        module.register_parameter(name, parameter)
    return module


def _deep_prompts(n_ctx: int, width: int, depth: int, device: torch.device) -> nn.Module:
    """``transformer.resblocks.<i>.VPT_shallow`` (n_ctx, width) N(0, 0.02^2) for blocks 1..depth-1."""
    blocks = nn.ModuleDict({str(i): _holder(VPT_shallow=nn.Parameter(
        torch.empty(n_ctx, width, device=device).normal_(std=0.02))) for i in range(1, depth)})
    transformer = nn.Module()
    transformer.resblocks = blocks
    return transformer


class IVLPPromptLearner(nn.Module):
    """The learned prompts of both towers (released names, see the module docstring) and the K template token ids.

    Text: ``prompt_learner.ctx`` (m_t, D_t) + ``text_encoder.transformer.resblocks.{1..J_t-1}.VPT_shallow``.
    Vision: ``image_encoder.VPT`` (m_v, D_v) + ``image_encoder.transformer.resblocks.{1..J_v-1}.VPT_shallow``.
    """

    def __init__(self, clip_model: CLIP, classnames: Sequence[str], n_ctx_text: int, n_ctx_vision: int,
                 depth_text: int, depth_vision: int, ctx_init: str = "", node: str = "TRAINER.IVLP") -> None:
        super().__init__()
        if not isinstance(clip_model.visual, VisionTransformer):
            raise UserError(f"{node}: visual prompts need a ViT backbone (MODEL.BACKBONE.NAME ViT-*)")
        check_tower(node, "TEXT", n_ctx_text, depth_text, clip_model.transformer.layers)
        check_tower(node, "VISION", n_ctx_vision, depth_vision, clip_model.visual.transformer.layers)
        device = clip_model.token_embedding.weight.device
        self.depth_text, self.depth_vision = depth_text, depth_vision
        if depth_text:
            prefix, ctx = template_prefix(clip_model, n_ctx_text, ctx_init, node)
            self.register_buffer("tokenized_prompts", prompt_tokens(prefix, classnames, "{}.", node).to(device),
                                 persistent=False)
            self.prompt_learner = _holder(ctx=nn.Parameter(ctx))
            self.text_encoder = _holder()
            self.text_encoder.transformer = _deep_prompts(n_ctx_text, clip_model.transformer.width, depth_text,
                                                          device)
        if depth_vision:
            width = clip_model.visual.width
            self.image_encoder = _holder(VPT=nn.Parameter(torch.empty(n_ctx_vision, width, device=device)
                                                          .normal_(std=0.02)))
            self.image_encoder.transformer = _deep_prompts(n_ctx_vision, width, depth_vision, device)

    @staticmethod
    def _layers(first: torch.Tensor, deep: nn.Module, depth: int) -> List[torch.Tensor]:
        return [first] + [deep.resblocks[str(i)].VPT_shallow for i in range(1, depth)]

    def text_prompts(self) -> List[torch.Tensor]:
        """[J_t x (m_t, D_t)]: entry i is used at text block i."""
        return self._layers(self.prompt_learner.ctx, self.text_encoder.transformer, self.depth_text)

    def visual_prompts(self) -> Optional[List[torch.Tensor]]:
        """[J_v x (m_v, D_v)] (entry i at vision block i), or None without visual prompts."""
        if not self.depth_vision:
            return None
        return self._layers(self.image_encoder.VPT, self.image_encoder.transformer, self.depth_vision)


class DeepPromptCLIP(PromptedCLIP):
    """Base of the IVLP, PromptSRC, MaPLe and CoPrompt models: logits = exp(logit_scale) * f_img @ w^T from
    ``features``, loss CE; state dicts under the released names, and released files (whole CustomCLIP) load without
    their frozen keys."""

    released_ignored_keys = ("logit_scale", "prompt_learner.token_prefix", "prompt_learner.token_suffix")

    def features(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """image (B, 3, R, R) -> (f_img (B, d), w (K, d)) unit rows."""
        raise NotImplementedError

    def forward(self, image: torch.Tensor, label: Optional[torch.Tensor] = None, return_terms: bool = False):
        """image (B, 3, R, R) -> logits (B, K) float32; with ``label``: the CE loss (and {"loss": ...})."""
        with self.precision.autocast_context(image.device.type):
            logits = self.scaled_cosine(*self.features(image))
        if label is None:
            return logits
        loss = F.cross_entropy(logits, label)
        return (loss, {"loss": loss}) if return_terms else loss

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor], strict: bool = True, assign: bool = False):
        """Ours or a released file (whole CustomCLIP: its frozen-CLIP keys are dropped first)."""
        return super().load_state_dict(drop_frozen_keys(state_dict), strict=strict, assign=assign)


class CustomCLIP(DeepPromptCLIP):
    """Frozen CLIP with IVLP's independent prompts."""

    method = "IVLP"

    def __init__(self, clip_model: CLIP, prompt_learner: IVLPPromptLearner, prec: str,
                 zeroshot_text: Optional[torch.Tensor] = None) -> None:
        super().__init__(clip_model, prompt_learner, prec)
        # VPT-deep (J_t = 0): (K, d) frozen unit rows of "a photo of a {class}."; rebuilt from the class names.
        self.register_buffer("zeroshot_text", zeroshot_text, persistent=False)

    def class_features(self) -> torch.Tensor:
        """(K, d) unit rows: the prompted text tower, or the frozen zero-shot classifier (J_t = 0)."""
        learner = self.prompt_learner
        if not learner.depth_text:
            return self.zeroshot_text
        return F.normalize(self.clip_model.encode_text(learner.tokenized_prompts, learner.text_prompts()), dim=-1)

    def prompted_image_features(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, R, R) -> (B, d) unit rows of the prompted image tower."""
        return F.normalize(self.clip_model.encode_image(image, self.prompt_learner.visual_prompts()), dim=-1)

    def features(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.prompted_image_features(image), self.cached(self.class_features)


def drop_frozen_keys(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """``state_dict`` without the frozen ``image_encoder.*`` / ``text_encoder.*`` tensors of a released file
    (the prompts stored inside them, ``*.VPT`` / ``*.VPT_shallow``, are kept)."""
    return {key: value for key, value in state_dict.items()
            if not (key.startswith(FROZEN_PREFIXES) and not key.endswith(PROMPT_SUFFIXES))}


@TRAINER_REGISTRY.register()
class IVLP(PromptTrainer):
    """IVLP / deep language prompting / VPT-deep: SGD (configs) over the prompts; registered model
    ``VLPromptLearner`` as released."""

    cfg_node = "IVLP"
    model_name = "VLPromptLearner"

    def build_custom_model(self, clip_model: CLIP, classnames: Sequence[str]) -> CustomCLIP:
        ic = self.cfg.TRAINER.IVLP
        learner = IVLPPromptLearner(clip_model, classnames, ic.N_CTX_TEXT, ic.N_CTX_VISION, ic.PROMPT_DEPTH_TEXT,
                                    ic.PROMPT_DEPTH_VISION, ic.CTX_INIT)
        zeroshot = None
        if not ic.PROMPT_DEPTH_TEXT:
            zeroshot = frozen_text_features(clip_model, [[DEFAULT_TEMPLATE.format(name.replace("_", " "))]
                                                         for name in classnames])
        return CustomCLIP(clip_model, learner, ic.PREC, zeroshot)
