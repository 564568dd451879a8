"""KgCoOp: Knowledge-guided Context Optimization (Yao et al., CVPR 2023), registered as ``KgCoOp``.
Facts: ../shared/methods/KGCOOP.md.

CoOp (unified context initialised from "a photo of a", class token at the end) plus a term that keeps the learned
class features w_k close to frozen CLIP's features w_k^clip of a hand-crafted per-dataset prompt:

    loss = CE(logits, y) + W * (1 - mean_k cos(w_k, w_k^clip))       over all K classes, every step

(the released code's form, W = 8.0 published; for unit vectors ||a - b||^2 = 2 - 2 cos(a, b)). w^clip is computed
once per class set by the frozen text tower with prompts off (no second CLIP) and cached on disk. Evaluation is CoOp
evaluation. Checkpoints hold ``ctx`` only; released files load (their ``token_prefix`` / ``token_suffix`` buffers and
the unused ``bias_vectors`` / ``meta_net.*`` modules are dropped).
"""
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from yacs.config import CfgNode

from clip.model import CLIP
from common.errors import UserError
from dassl.engine import TRAINER_REGISTRY
from trainers.coop import CoOpPromptLearner
from trainers.coop import CustomCLIP as CoOpCLIP
from trainers.shared import PromptTrainer, template_class_features
from trainers.zsclip import CUSTOM_TEMPLATES

# The released KgCoOp templates: CoOp's zero-shot ones except DTD.
KGCOOP_TEMPLATES = {**CUSTOM_TEMPLATES, "DescribableTextures": "a photo of a {}, a type of texture."}


def knowledge_term(class_features: torch.Tensor, frozen_features: torch.Tensor) -> torch.Tensor:
    """1 - mean_k cos(w_k, w_k^clip) for (K, d) learned and (K, d) frozen class features; a scalar."""
    return 1 - F.cosine_similarity(class_features.float(), frozen_features.float(), dim=-1, eps=1e-7).mean()


class CustomCLIP(CoOpCLIP):
    """CoOp's CustomCLIP plus the frozen class features ``frozen_text`` (K, d) and the knowledge term."""

    method = "KgCoOp"
    released_ignored_prefixes = ("bias_vectors", "meta_net.")

    def __init__(self, clip_model: CLIP, prompt_learner: CoOpPromptLearner, prec: str, frozen_text: torch.Tensor,
                 weight: float) -> None:
        super().__init__(clip_model, prompt_learner, prec)
        self.register_buffer("frozen_text", frozen_text.float(), persistent=False)  # (K, d) unit rows
        self.weight = weight

    def forward(self, image: torch.Tensor, label: Optional[torch.Tensor] = None, return_terms: bool = False):
        """image (B, 3, R, R) -> logits (B, K) float32; with ``label``: CE + W * knowledge term (and the terms)."""
        if label is None:
            return super().forward(image)
        with self.precision.autocast_context(image.device.type):
            class_features = self.class_features()
            logits = self.scaled_cosine(self.image_features(image), class_features)
        ce = F.cross_entropy(logits, label)
        knowledge = knowledge_term(class_features, self.frozen_text)
        loss = ce + self.weight * knowledge
        return (loss, {"loss": loss, "ce": ce, "knowledge": knowledge}) if return_terms else loss


@TRAINER_REGISTRY.register()
class KgCoOp(PromptTrainer):
    """KgCoOp: SGD (configs; batch 128) over ``ctx`` only; one registered model ``prompt_learner``."""

    cfg_node = "KGCOOP"
    load_keys = ("MODEL.BACKBONE.NAME", "TRAINER.KGCOOP.N_CTX", "TRAINER.KGCOOP.CTX_INIT")  # must match on load

    def check_cfg(self, cfg: CfgNode) -> None:
        super().check_cfg(cfg)
        weight = cfg.TRAINER[self.cfg_node].W
        if weight < 0:
            raise UserError(f"TRAINER.{self.cfg_node}.W is {weight}; it must be >= 0")

    def build_custom_model(self, clip_model: CLIP, classnames: Sequence[str]) -> CustomCLIP:
        kc = self.cfg.TRAINER.KGCOOP
        frozen_text = template_class_features(clip_model, self.cfg.DATASET.NAME, classnames, KGCOOP_TEMPLATES)
        learner = CoOpPromptLearner(clip_model, classnames, kc.N_CTX, kc.CTX_INIT, node="TRAINER.KGCOOP")
        return CustomCLIP(clip_model, learner, kc.PREC, frozen_text, kc.W)
