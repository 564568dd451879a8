"""MMA: Multi-Modal Adapter (Yang et al., CVPR 2024), registered as ``MMA``. Facts: ../shared/methods/MMA.md.

CLIP stays frozen and gets no prompt tokens: the text input is "<TEXT_CTX_INIT> <class>." ("a photo of a <class>.").
Blocks i = ADAPTER_START..ADAPTER_END (1-based, as released) of both towers get a parallel residual branch through
the CLIP extension point ``Transformer.side_branches`` (clip/model.py):

    x_out = block(x) + alpha * Up_i^tower( ReLU( Shared_i( ReLU( Down_i^tower( block.ln_1(x) ) ) ) ) )

Down (D -> r) and Up (r -> D) belong to a tower, Shared_i (r -> r) is one module used by both towers at block i;
alpha = ADAPTER_SCALE. As released, two identity functions scale the gradients around the branch: the gradient
reaching x through the branch is the true one, the adapters' gradients are 1/alpha times the true ones (as if
alpha = 1). logits = exp(logit_scale) * norm(f_img) @ norm(w)^T, loss = cross-entropy.

Checkpoints (``adapter_learner/model.pth.tar-<epoch>``) hold the adapters under the released names
``{text,visual}_adapter.<i>.down.0.*``, ``{text,visual}_adapter.<i>.up.*``, ``shared_adapter.<i>.0.*``; released files
(with their ``token_embedding`` / ``tokenized_prompts`` buffers) load.
"""
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from clip.model import CLIP, VisionTransformer
from common.errors import UserError
from dassl.engine import TRAINER_REGISTRY
from trainers.shared import PromptedCLIP, PromptTrainer, prompt_tokens


class _ScaleGradient(torch.autograd.Function):
    """Identity in the forward; the backward multiplies the gradient by ``scale``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


def _linear(in_features: int, out_features: int, device: torch.device) -> nn.Linear:
    """Linear with Kaiming-normal (fan_out, relu) weights and zero bias, as released."""
    layer = nn.Linear(in_features, out_features, device=device)
    nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
    nn.init.zeros_(layer.bias)
    return layer


class AdapterLearner(nn.Module):
    """``text_adapter`` / ``visual_adapter`` / ``shared_adapter``: ModuleLists of length layers + 1 indexed by the
    1-based block (None where no adapter), and the K template token ids."""

    def __init__(self, clip_model: CLIP, classnames: Sequence[str], text_ctx_init: str, start: int, end: int,
                 dim: int, scale: float, node: str = "TRAINER.MMA") -> None:
        super().__init__()
        if not isinstance(clip_model.visual, VisionTransformer):
            raise UserError(f"{node}: the adapters need a ViT backbone (MODEL.BACKBONE.NAME ViT-*)")
        layers = min(clip_model.transformer.layers, clip_model.visual.transformer.layers)
        if not 1 <= start <= end <= layers:
            raise UserError(f"{node}: need 1 <= ADAPTER_START ({start}) <= ADAPTER_END ({end}) <= {layers} (blocks are "
                            "1-based; ADAPTER_START 0, the embedding-level adapter, is not supported)")
        if dim < 1 or scale <= 0:
            raise UserError(f"{node}: ADAPTER_DIM must be >= 1 and ADAPTER_SCALE > 0 (got {dim}, {scale})")
        device = clip_model.token_embedding.weight.device
        prefix = text_ctx_init.replace("_", " ").strip()
        self.register_buffer("tokenized_prompts", prompt_tokens(prefix, classnames, "{}.", node).to(device),
                             persistent=False)
        self.blocks, self.scale = range(start, end + 1), scale
        text_width, vision_width = clip_model.transformer.width, clip_model.visual.width

        def tower(width: int) -> nn.ModuleList:
            adapters = [None] * (layers + 1)
            for i in self.blocks:
                adapter = nn.Module()
                adapter.down = nn.Sequential(_linear(width, dim, device), nn.ReLU())
                adapter.up = _linear(dim, width, device)
                adapters[i] = adapter
            return nn.ModuleList(adapters)

        self.text_adapter = tower(text_width)
        self.visual_adapter = tower(vision_width)
        self.shared_adapter = nn.ModuleList(
            [nn.Sequential(_linear(dim, dim, device), nn.ReLU()) if i in self.blocks else None
             for i in range(layers + 1)])

    def branch(self, adapters: nn.ModuleList, i: int, x: torch.Tensor, block: nn.Module) -> torch.Tensor:
        """alpha * Up_i(ReLU(Shared_i(Down_i(block.ln_1(x))))) (B, N, D), with the released gradient scaling."""
        h = block.ln_1(_ScaleGradient.apply(x, self.scale))
        adapter = adapters[i]
        u = adapter.up(self.shared_adapter[i](adapter.down(h.to(adapter.up.weight.dtype))))
        return _ScaleGradient.apply(self.scale * u, 1.0 / self.scale).to(x.dtype)

    def attach(self, clip_model: CLIP) -> None:
        """Install the branches on both towers (block i, 1-based, is transformer block index i - 1)."""
        for transformer, adapters in ((clip_model.transformer, self.text_adapter),
                                      (clip_model.visual.transformer, self.visual_adapter)):
            transformer.side_branches = {
                i - 1: (lambda x, block, i=i, adapters=adapters: self.branch(adapters, i, x, block))
                for i in self.blocks}


class CustomCLIP(PromptedCLIP):
    """Frozen CLIP with MMA's adapters: logits = exp(logit_scale) * norm(f_img) @ norm(w)^T, loss = CE."""

    method = "MMA"
    released_ignored_keys = ("token_embedding", "tokenized_prompts")

    def __init__(self, clip_model: CLIP, adapter_learner: AdapterLearner, prec: str) -> None:
        super().__init__(clip_model, adapter_learner, prec)
        adapter_learner.attach(self.clip_model)

    def class_features(self) -> torch.Tensor:
        """(K, d) unit rows of the adapted text tower on the fixed template."""
        return F.normalize(self.clip_model.encode_text(self.prompt_learner.tokenized_prompts), dim=-1)

    def forward(self, image: torch.Tensor, label: Optional[torch.Tensor] = None, return_terms: bool = False):
        """image (B, 3, R, R) -> logits (B, K) float32; with ``label``: the CE loss (and {"loss": ...})."""
        with self.precision.autocast_context(image.device.type):
            image_features = F.normalize(self.clip_model.encode_image(image), dim=-1)  # adapted image tower
            logits = self.scaled_cosine(image_features, self.cached(self.class_features))
        if label is None:
            return logits
        loss = F.cross_entropy(logits, label)
        return (loss, {"loss": loss}) if return_terms else loss


@TRAINER_REGISTRY.register()
class MMA(PromptTrainer):
    """MMA: SGD (configs) over the adapters; registered model ``adapter_learner`` as released."""

    cfg_node = "MMA"
    model_name = "adapter_learner"

    def build_custom_model(self, clip_model: CLIP, classnames: Sequence[str]) -> CustomCLIP:
        mc = self.cfg.TRAINER.MMA
        learner = AdapterLearner(clip_model, classnames, mc.TEXT_CTX_INIT, mc.ADAPTER_START, mc.ADAPTER_END,
                                 mc.ADAPTER_DIM, mc.ADAPTER_SCALE)
        return CustomCLIP(clip_model, learner, mc.PREC)
