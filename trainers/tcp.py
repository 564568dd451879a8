"""TCP: Textual-based Class-aware Prompt tuning (Yao et al., CVPR 2024), registered as ``TCP``.
Facts: ../shared/methods/TCP.md.

A CoOp context at the input of the text tower (shared by all classes, class token at the end, per-dataset text after
the class name) plus class-aware tokens at one deep text layer. The Textual Knowledge Embedding (TKE) maps frozen
CLIP's feature of each class's hand-crafted prompt to M tokens, which replace the context positions at the input of
text block ``LAYER`` (8 of 12 published) and nowhere else:

    t_k  = norm(frozen_text(template_k))                              (K, d), once per class set, cached
    T    = linear2(quick_gelu(linear1(t))).view(K, M, D_t)            TKE, hidden width d // 4
    w_k  = norm(text([SOT] ctx name_k ...; block LAYER: positions 1..M <- T_k))
    logits = exp(logit_scale) * norm(f_img) @ w^T;  loss = CE + W * (1 - mean_k cos(w_k, t_k))   (W = 8.0)

Novel classes get their tokens from TKE applied to their own frozen features. Checkpoints hold ``ctx`` and
``meta_net.{linear1,linear2}.{weight,bias}`` (331,904 values for ViT-B/16, M = 4; the released key names).
"""
from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from clip.model import CLIP, QuickGELU
from common.errors import UserError
from dassl.engine import TRAINER_REGISTRY
from trainers.coop import CoOpPromptLearner
from trainers.kgcoop import KGCOOP_TEMPLATES
from trainers.kgcoop import CustomCLIP as KgCoOpCLIP
from trainers.kgcoop import KgCoOp
from trainers.shared import template_class_features

# Frozen-knowledge templates (encoded by frozen CLIP): KgCoOp's except FGVC and Food101.
TCP_FROZEN_TEMPLATES = {**KGCOOP_TEMPLATES, "FGVCAircraft": "a photo of an aircraft {}.",
                        "Food101": "a photo of a {}, a type of food."}
# Text after the M learned context tokens (released learnable-prompt templates without their "X X X X" / "a photo of
# a" head, which the context overwrites); datasets not listed: "{}.".
TCP_PROMPT_TEMPLATES = {
    "OxfordPets": "{}, a type of pet.",
    "OxfordFlowers": "{}, a type of flower.",
    "FGVCAircraft": "{}, a type of aircraft.",
    "DescribableTextures": "{} texture.",
    "StanfordCars": "{}, a type of car",
    "Food101": "{}, a type of food.",
    "UCF101": "person doing {}.",
}


class TCPPromptLearner(CoOpPromptLearner):
    """CoOp's "end" prompt learner plus TKE ``meta_net``: Linear(d -> d // 4) -> QuickGELU -> Linear(-> M * D_t)."""

    def __init__(self, clip_model: CLIP, classnames: Sequence[str], n_ctx: int, ctx_init: str, template: str,
                 frozen_text: torch.Tensor, layer: int) -> None:
        super().__init__(clip_model, classnames, n_ctx, ctx_init, template=template, node="TRAINER.TCP")
        if not 1 <= layer < clip_model.transformer.layers:
            raise UserError(f"TRAINER.TCP.LAYER is {layer}; it must lie in [1, {clip_model.transformer.layers - 1}] "
                            f"for this backbone's {clip_model.transformer.layers} text layers")
        self.layer = layer
        width_in, width_out = clip_model.embed_dim, clip_model.transformer.width
        self.meta_net = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(width_in, width_in // 4)),
            ("gelu", QuickGELU()),
            ("linear2", nn.Linear(width_in // 4, self.n_ctx * width_out)),
        ])).to(clip_model.token_embedding.weight.device)
        self.register_buffer("frozen_text", frozen_text.float(), persistent=False)  # (K, d) unit rows

    def class_tokens(self) -> torch.Tensor:
        """TKE of the frozen class features: (K, M, D_t)."""
        tokens = self.meta_net(self.frozen_text.to(self.ctx.dtype))
        return tokens.view(len(tokens), self.n_ctx, -1)

    def text_features(self, clip_model: CLIP, ctx=None, deep_prompts=()) -> torch.Tensor:
        """(K, d) unnormalised: context at the input, the class-aware tokens at block ``layer`` only."""
        sparse = [None] * (self.layer - 1) + [self.class_tokens()]  # blocks 1 .. layer
        return super().text_features(clip_model, ctx, sparse)


class CustomCLIP(KgCoOpCLIP):
    """KgCoOp's CustomCLIP (CE + W * knowledge term against the same frozen features) with TCP's prompt learner."""

    method = "TCP"
    released_ignored_prefixes = ()


@TRAINER_REGISTRY.register()
class TCP(KgCoOp):
    """TCP: Adam (configs, eps 1e-3) over ``ctx`` and TKE; one registered model ``prompt_learner``."""

    cfg_node = "TCP"
    load_keys = ("MODEL.BACKBONE.NAME", "TRAINER.TCP.N_CTX", "TRAINER.TCP.CTX_INIT", "TRAINER.TCP.LAYER")

    def build_custom_model(self, clip_model: CLIP, classnames: Sequence[str]) -> CustomCLIP:
        tc, dataset = self.cfg.TRAINER.TCP, self.cfg.DATASET.NAME
        frozen_text = template_class_features(clip_model, dataset, classnames, TCP_FROZEN_TEMPLATES)
        learner = TCPPromptLearner(clip_model, classnames, tc.N_CTX, tc.CTX_INIT,
                                   TCP_PROMPT_TEMPLATES.get(dataset, "{}."), frozen_text, tc.LAYER)
        return CustomCLIP(clip_model, learner, tc.PREC, frozen_text, tc.W)
