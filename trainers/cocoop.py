"""CoCoOp: Conditional Context Optimization (Zhou et al., CVPR 2022), registered as ``CoCoOp``.
Facts: ../shared/methods/COCOOP.md.

CoOp (unified context, class token at the end) plus a Meta-Net that maps each image's normalised CLIP feature to one
token-space vector pi(x), added to every context vector: v_m(x) = v_m + pi(x), m = 1..M. So every image has its own
K prompts: the text tower runs B x K sequences per batch (per-text prompts, in chunks of images; no eval-time text
cache):

    f = norm(image_encoder(x))                      (B, d)      frozen, unprompted
    pi = linear2(relu(linear1(f)))                  (B, D_t)    Meta-Net, hidden width d // 16
    w_b = norm(text(ctx + pi_b))                    (K, d)      per image b
    logits[b] = exp(logit_scale) * f_b @ w_b^T      (B, K);     loss = CE

Checkpoints hold ``ctx`` and ``meta_net.{linear1,linear2}.{weight,bias}`` (35,360 values for ViT-B/16, M = 4), the
released key names; released files (with ``token_prefix`` / ``token_suffix``) load.
"""
from collections import OrderedDict
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from clip.model import CLIP
from dassl.engine import TRAINER_REGISTRY
from trainers.coop import CoOpPromptLearner
from trainers.shared import PromptedCLIP, PromptTrainer


class CoCoOpPromptLearner(CoOpPromptLearner):
    """CoOp's "end" prompt learner plus ``meta_net``: Linear(d -> d // 16) -> ReLU -> Linear(d // 16 -> D_t)."""

    def __init__(self, clip_model: CLIP, classnames: Sequence[str], n_ctx: int, ctx_init: str) -> None:
        super().__init__(clip_model, classnames, n_ctx, ctx_init, node="TRAINER.COCOOP")
        width_in, width_out = clip_model.embed_dim, clip_model.transformer.width
        device = clip_model.token_embedding.weight.device
        self.meta_net = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(width_in, width_in // 16)),
            ("relu", nn.ReLU(inplace=True)),
            ("linear2", nn.Linear(width_in // 16, width_out)),
        ])).to(device)

    def conditional_contexts(self, image_features: torch.Tensor) -> torch.Tensor:
        """image_features (B, d) unit rows -> per-image contexts ctx + pi(x) (B, M, D_t)."""
        offset = self.meta_net(image_features.to(self.ctx.dtype))  # (B, D_t)
        return self.ctx.unsqueeze(0) + offset.unsqueeze(1)

    def per_image_text_features(self, clip_model: CLIP, contexts: torch.Tensor) -> torch.Tensor:
        """contexts (b, M, D_t) -> (b, K, d) unnormalised: the K prompts of every image as one batch of b * K texts
        (row i * K + k: image i, class k), each with its image's context as a per-text prompt."""
        n_images, n_cls = len(contexts), len(self.tokenized_prompts)
        tokens = self.tokenized_prompts.repeat(n_images, 1)  # (b * K, 77)
        features = clip_model.encode_text(tokens, [contexts.repeat_interleave(n_cls, dim=0)])
        return features.view(n_images, n_cls, -1)


class CustomCLIP(PromptedCLIP):
    """Frozen CLIP + CoCoOp's prompt learner; the class features depend on the image (no eval cache)."""

    method = "CoCoOp"
    # Texts per text-tower call (images x classes); bounds memory (ImageNet test: 100 images x 500 classes).
    text_rows_per_call = 2048

    def forward(self, image: torch.Tensor, label: Optional[torch.Tensor] = None, return_terms: bool = False):
        """image (B, 3, R, R) -> logits (B, K) float32; with ``label``: the CE loss (and {"loss": ...})."""
        with self.precision.autocast_context(image.device.type):
            image_features = self.image_features(image)  # (B, d)
            contexts = self.prompt_learner.conditional_contexts(image_features)  # (B, M, D_t)
            logits = []
            step = max(1, self.text_rows_per_call // len(self.prompt_learner.tokenized_prompts))
            for start in range(0, len(image), step):  # chunks of images: at most text_rows_per_call texts per call
                class_features = F.normalize(self.prompt_learner.per_image_text_features(
                    self.clip_model, contexts[start:start + step]), dim=-1)  # (b, K, d)
                cosine = torch.einsum("bd,bkd->bk", image_features[start:start + step], class_features)
                logits.append((self.clip_model.logit_scale.exp() * cosine).float())
            logits = torch.cat(logits)
        if label is None:
            return logits
        loss = F.cross_entropy(logits, label)
        return (loss, {"loss": loss}) if return_terms else loss


@TRAINER_REGISTRY.register()
class CoCoOp(PromptTrainer):
    """CoCoOp: SGD (configs; batch 1) over ``ctx`` and the Meta-Net; one registered model ``prompt_learner``."""

    cfg_node = "COCOOP"
    load_keys = ("MODEL.BACKBONE.NAME", "TRAINER.COCOOP.N_CTX", "TRAINER.COCOOP.CTX_INIT")  # must match on load

    def build_custom_model(self, clip_model: CLIP, classnames: Sequence[str]) -> CustomCLIP:
        cc = self.cfg.TRAINER.COCOOP
        return CustomCLIP(clip_model, CoCoOpPromptLearner(clip_model, classnames, cc.N_CTX, cc.CTX_INIT), cc.PREC)
