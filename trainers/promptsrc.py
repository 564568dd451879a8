"""PromptSRC: Self-Regulating Prompts (Khattak et al., ICCV 2023), registered as ``PromptSRC``. Facts:
../shared/methods/PROMPTSRC.md.

The prompted model is IVLP (trainers/ivlp.py; 4 + 4 tokens, depth 9). Training regularises it toward frozen CLIP
(f, g: frozen unit image / class features; f_p, g_p: prompted; z = 100 f g^T, z_p = 100 f_p g_p^T):

    L = CE(z_p, y) + IMAGE_LOSS_WEIGHT * mean|f_p - f| + TEXT_LOSS_WEIGHT * mean|g_p - g|
        + sum_{b,c} q_bc (log q_bc - log p_bc) / (B K),     q = softmax(z), p = softmax(z_p)

with f from the backbone's own frozen image tower (no prompts; the released code kept a second copy) on the same
augmented batch, and g per class = norm(mean of the un-normalised features of the 60 ``TEMPLATES``). Evaluation uses
z_p alone (logit scale: the model's, 100 for released CLIPs).

Gaussian prompt aggregation (GPA, ``GPA``): after every epoch e = 1..N (the engine's end-of-epoch hook) the learned
tensors are added to a running sum with weight g_e = pdf_N(GPA_MEAN, GPA_STD)(e) / sum_e'(...); after the last
epoch the sum replaces the prompts, so the last checkpoint and the final test hold the GPA model. The running sum is
in every checkpoint (``end_of_epoch_state``), so kill + resume gives the same model. Only the learned tensors are
averaged (the released code averaged the whole state dict, frozen fp16 weights included, changing them by rounding).

Checkpoints: ``VLPromptLearner/``, IVLP's released key names; released PromptSRC files (with their frozen-CLIP and
``prompt_learner.ZS_image_encoder.*`` keys) load.
"""
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F

import clip
from clip.model import CLIP
from common.errors import UserError
from dassl.engine import TRAINER_REGISTRY
from trainers.ivlp import IVLP, CustomCLIP as IVLPCustomCLIP, IVLPPromptLearner

# "a photo of a {}." + the first 59 of CLIP's 80 ImageNet templates without it (PROMPTSRC.md §3.2).
TEMPLATES = [
    "a photo of a {}.", "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.",
    "a photo of the hard to see {}.", "a low resolution photo of the {}.", "a rendering of a {}.", "graffiti of a {}.",
    "a bad photo of the {}.", "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.",
    "a photo of a hard to see {}.", "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.",
    "a dark photo of the {}.", "a drawing of a {}.", "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.", "a painting of the {}.", "a painting of a {}.",
    "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.", "a cropped photo of a {}.",
    "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.", "a blurry photo of the {}.",
    "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.", "a {} in a video game.",
    "a photo of one {}.", "a doodle of a {}.", "a close-up photo of the {}.", "the origami {}.",
    "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.", "a origami {}.",
    "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.", "a photo of the clean {}.",
    "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.", "a photo of a weird {}.",
    "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.", "a sketch of the {}.", "a embroidered {}.",
    "a pixelated photo of a {}.", "itap of the {}.",
]
assert len(TEMPLATES) == 60


@torch.no_grad()
def template_ensemble_features(clip_model: CLIP, classnames: Sequence[str],
                               templates: Sequence[str] = TEMPLATES) -> torch.Tensor:
    """g (K, d) float32 unit rows: per class, norm(mean over templates of the **un-normalised** frozen features)."""
    device = clip_model.token_embedding.weight.device
    rows = []
    for name in classnames:
        tokens = clip.tokenize([t.format(name.replace("_", " ")) for t in templates]).to(device)
        rows.append(clip_model.encode_text(tokens).float().mean(dim=0))
    return F.normalize(torch.stack(rows), dim=-1)


def promptsrc_loss(logits: torch.Tensor, labels: torch.Tensor, image_features: torch.Tensor,
                   frozen_image: torch.Tensor, class_features: torch.Tensor, frozen_text: torch.Tensor,
                   frozen_logits: torch.Tensor, image_weight: float, text_weight: float):
    """PROMPTSRC.md §4 in float32: logits z_p (B, K), labels (B,), f_p / f (B, d), g_p / g (K, d), z (B, K).
    Returns the total and {"ce", "image_l1", "text_l1", "kl"}."""
    ce = F.cross_entropy(logits.float(), labels)
    image_l1 = F.l1_loss(image_features.float(), frozen_image.float())
    text_l1 = F.l1_loss(class_features.float(), frozen_text.float())
    kl = F.kl_div(F.log_softmax(logits.float(), dim=1), F.log_softmax(frozen_logits.float(), dim=1),
                  reduction="sum", log_target=True) / logits.numel()
    terms = {"ce": ce, "image_l1": image_l1, "text_l1": text_l1, "kl": kl}
    return ce + image_weight * image_l1 + text_weight * text_l1 + kl, terms


class CustomCLIP(IVLPCustomCLIP):
    """IVLP's prompted CLIP; with labels, PromptSRC's regularised loss against the frozen CLIP."""

    method = "PromptSRC"

    def __init__(self, clip_model: CLIP, prompt_learner: IVLPPromptLearner, prec: str, frozen_text: torch.Tensor,
                 image_weight: float, text_weight: float) -> None:
        super().__init__(clip_model, prompt_learner, prec)
        self.register_buffer("frozen_text", frozen_text.float(), persistent=False)  # g (K, d), rebuilt at build
        self.image_weight, self.text_weight = image_weight, text_weight

    def forward(self, image: torch.Tensor, label: Optional[torch.Tensor] = None, return_terms: bool = False):
        if label is None:
            return super().forward(image)
        with self.precision.autocast_context(image.device.type):
            image_features, class_features = self.features(image)
            frozen_image = self.image_features(image)  # f: the frozen, unprompted image tower
            logits = self.scaled_cosine(image_features, class_features)
            frozen_logits = self.scaled_cosine(frozen_image, self.frozen_text.to(frozen_image.dtype))
        loss, terms = promptsrc_loss(logits, label, image_features, frozen_image, class_features, self.frozen_text,
                                     frozen_logits, self.image_weight, self.text_weight)
        return (loss, terms) if return_terms else loss

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor], strict: bool = True, assign: bool = False):
        """Ours or a released PromptSRC file (its teacher copy ``prompt_learner.ZS_image_encoder.*`` dropped too)."""
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("prompt_learner.ZS_image_encoder.")}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def gpa_weights(n_epochs: int, mean: float, std: float) -> List[float]:
    """g_e for e = 1..n_epochs: the N(mean, std^2) density at e, normalised to sum 1."""
    if std <= 0:
        raise UserError(f"TRAINER.PROMPTSRC.GPA_STD is {std}; it must be > 0")
    density = [math.exp(-0.5 * ((e - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi))
               for e in range(1, n_epochs + 1)]
    total = sum(density)
    return [d / total for d in density]


class GPA:
    """Running Gaussian-weighted sum of state dicts (float32): ``add(state, e)`` adds g_e * state (e 1-based)."""

    def __init__(self, weights: Sequence[float]) -> None:
        self.weights = list(weights)
        self.sum: Optional[Dict[str, torch.Tensor]] = None

    def add(self, state: Mapping[str, torch.Tensor], epoch: int) -> None:
        weight = self.weights[epoch - 1]
        scaled = {key: value.detach().float() * weight for key, value in state.items()}
        self.sum = scaled if self.sum is None else {key: self.sum[key] + scaled[key] for key in self.sum}


@TRAINER_REGISTRY.register()
class PromptSRC(IVLP):
    """PromptSRC: IVLP prompts, the regularised loss, GPA in the end-of-epoch hook; model ``VLPromptLearner``."""

    cfg_node = "PROMPTSRC"

    def build_custom_model(self, clip_model: CLIP, classnames: Sequence[str]) -> CustomCLIP:
        pc = self.cfg.TRAINER.PROMPTSRC
        learner = IVLPPromptLearner(clip_model, classnames, pc.N_CTX_TEXT, pc.N_CTX_VISION, pc.PROMPT_DEPTH_TEXT,
                                    pc.PROMPT_DEPTH_VISION, pc.CTX_INIT, node="TRAINER.PROMPTSRC")
        if not pc.PROMPT_DEPTH_TEXT:
            raise UserError("TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT must be >= 1 (its text loss needs text prompts)")
        self.gpa = GPA(gpa_weights(self.cfg.OPTIM.MAX_EPOCH, pc.GPA_MEAN, pc.GPA_STD))
        frozen_text = template_ensemble_features(clip_model, classnames)
        return CustomCLIP(clip_model, learner, pc.PREC, frozen_text, pc.IMAGE_LOSS_WEIGHT, pc.TEXT_LOSS_WEIGHT)

    def end_of_epoch(self) -> None:
        """GPA: add this epoch's prompts; after the last epoch the weighted sum becomes the model."""
        model = self._models[self.model_name]
        self.gpa.add(model.state_dict(), self.epoch + 1)
        if self.epoch + 1 == self.max_epoch:
            print("Using GPA model for final inference...")
            current = model.state_dict()
            model.load_state_dict({key: value.to(current[key].dtype) for key, value in self.gpa.sum.items()})

    def end_of_epoch_state(self) -> Any:
        return None if self.gpa.sum is None else {"gpa_sum": self.gpa.sum}

    def load_end_of_epoch_state(self, state: Any) -> None:
        self.gpa.sum = {key: value.clone() for key, value in state["gpa_sum"].items()}
