"""MaPLe: Multi-modal Prompt Learning (Khattak et al., CVPR 2023), registered as ``MaPLe``. Facts:
../shared/methods/MAPLE.md.

CLIP stays frozen. Prompts of length m in the first J layers of both towers; only the text prompts are free:
  text:   P_t[0] = ``ctx`` (m, D_t) at positions 1..m of the embedded template, P_t[l] = ``compound_prompts_text[l-1]``
          replacing them at the input of text block l, 1 <= l < J;
  vision: P_v[0] = ``proj``(P_t[0]) appended before ``ln_pre``, P_v[l] = ``compound_prompt_projections[l-1]``(P_t[l])
          replacing the last m tokens at vision block l: a per-layer linear map D_t -> D_v (the V-L coupling),
          recomputed every forward, so the image loss reaches the text prompts and the maps.
logits = exp(logit_scale) * norm(f_img) @ norm(w)^T, loss = cross-entropy. The template follows CTX_INIT when m <= 4
("a photo of a {class}." with its first m tokens learnable; with m = 2 the words "of a" stay fixed, as released).
The J-1 deep maps start as copies of one Linear (identical weights, as released); ``proj`` is a separate Linear.

Checkpoints (``MultiModalPromptLearner/model.pth.tar-<epoch>``) hold the learned tensors only, under the released
names ``prompt_learner.{ctx, proj.*, compound_prompts_text.<i>, compound_prompt_projections.<i>.*}``; released
files (the whole CustomCLIP) load, their frozen-CLIP keys and token buffers dropped. Precision: every learned
tensor in the model's precision (the released code kept the deep tensors in fp32 and cast them to fp16 at use).

Shapes: K classes, B images, m prompt length, D_t / D_v tower widths, d joint width, J prompt depth.
"""
import copy
from typing import List, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from clip.model import CLIP, VisionTransformer
from common.errors import UserError
from dassl.engine import TRAINER_REGISTRY
from trainers.ivlp import DeepPromptCLIP, template_prefix
from trainers.shared import PromptTrainer, prompt_tokens


class MaPLePromptLearner(nn.Module):
    """``ctx`` (m, D_t), ``proj`` (D_t -> D_v), ``compound_prompts_text`` J-1 x (m, D_t) N(0, 0.02^2),
    ``compound_prompt_projections`` J-1 x Linear(D_t -> D_v), and the K template token ids."""

    def __init__(self, clip_model: CLIP, classnames: Sequence[str], n_ctx: int, depth: int, ctx_init: str = "",
                 node: str = "TRAINER.MAPLE") -> None:
        super().__init__()
        if not isinstance(clip_model.visual, VisionTransformer):
            raise UserError(f"{node}: visual prompts need a ViT backbone (MODEL.BACKBONE.NAME ViT-*)")
        layers = min(clip_model.transformer.layers, clip_model.visual.transformer.layers)
        if not 1 <= depth <= layers:
            raise UserError(f"{node}.PROMPT_DEPTH is {depth}; it must be in [1, {layers}] (1 = layer-0 prompts only)")
        if n_ctx < 1:
            raise UserError(f"{node}.N_CTX is {n_ctx}; it must be >= 1")
        device = clip_model.token_embedding.weight.device
        text_width, vision_width = clip_model.transformer.width, clip_model.visual.width
        prefix, ctx = template_prefix(clip_model, n_ctx, ctx_init, node)
        self.register_buffer("tokenized_prompts", prompt_tokens(prefix, classnames, "{}.", node).to(device),
                             persistent=False)
        self.ctx = nn.Parameter(ctx)
        self.proj = nn.Linear(text_width, vision_width, device=device)
        self.compound_prompts_text = nn.ParameterList(
            [nn.Parameter(torch.empty(n_ctx, text_width, device=device).normal_(std=0.02)) for _ in range(depth - 1)])
        deep_map = nn.Linear(text_width, vision_width, device=device)
        self.compound_prompt_projections = nn.ModuleList([copy.deepcopy(deep_map) for _ in range(depth - 1)])

    def forward(self) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """(text [J x (m, D_t)], vision [J x (m, D_v)]): entry l is used at block l of its tower."""
        text = [self.ctx, *self.compound_prompts_text]
        vision = [self.proj(self.ctx)] + [layer_map(prompt) for layer_map, prompt in
                                          zip(self.compound_prompt_projections, self.compound_prompts_text)]
        return text, vision


class MaPLeLearned(nn.Module):
    """Holds the prompt learner as ``prompt_learner`` so that the state-dict keys are the released ones."""

    def __init__(self, prompt_learner: MaPLePromptLearner) -> None:
        super().__init__()
        self.prompt_learner = prompt_learner


class CustomCLIP(DeepPromptCLIP):
    """Frozen CLIP with MaPLe's coupled prompts: logits = exp(logit_scale) * norm(f_img) @ norm(w)^T, loss CE."""

    method = "MaPLe"

    def features(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """image (B, 3, R, R) -> (f_img (B, d), w (K, d)) unit rows; both towers from one prompt-learner call."""
        learner = self.prompt_learner.prompt_learner
        if not self.training and self.cache_eval_text and self._eval_cache is not None:
            text_features, vision = self._eval_cache
        else:
            text, vision = learner()
            text_features = F.normalize(self.clip_model.encode_text(learner.tokenized_prompts, text), dim=-1)
            if not self.training and self.cache_eval_text:
                self._eval_cache = (text_features.detach(), [p.detach() for p in vision])
        return F.normalize(self.clip_model.encode_image(image, vision), dim=-1), text_features


@TRAINER_REGISTRY.register()
class MaPLe(PromptTrainer):
    """MaPLe: SGD (configs) over ``ctx``, the deep text prompts and the coupling maps; registered model
    ``MultiModalPromptLearner`` as released."""

    cfg_node = "MAPLE"
    model_name = "MultiModalPromptLearner"

    def build_custom_model(self, clip_model: CLIP, classnames: Sequence[str]) -> CustomCLIP:
        mc = self.cfg.TRAINER.MAPLE
        learner = MaPLePromptLearner(clip_model, classnames, mc.N_CTX, mc.PROMPT_DEPTH, mc.CTX_INIT)
        return CustomCLIP(clip_model, MaPLeLearned(learner), mc.PREC)
