"""CoPrompt: consistency-guided prompt learning (Roy & Etemad, ICLR 2024), registered as ``CoPrompt``. Facts:
../shared/methods/COPROMPT.md.

Student: MaPLe's coupled prompts (trainers/maple.py) plus two output adapters A(x) = ReLU(W2 ReLU(W1 x)) (d -> d/4
-> d, no biases): v' = norm(0.1 A_img(v) + 0.9 v), t' = norm(0.2 A_txt(t) + 0.8 t), logits = exp(logit_scale) v' t'^T.
Teacher: the frozen, unprompted CLIP (the backbone's own towers; the released code loaded a second copy). Training
batches carry two augmented views x1, x2 of each image (DATALOADER.K_TRANSFORMS 2, RandAugment in the configs):

    L = CE(logits(x1), y) + W * [(1 - mean_c cos(t'_c, D[s]_c)) + (1 - mean_b cos(v'(x1)_b, norm(Teacher(x2))_b))]

where D (S, K, d) holds the frozen unit features of every class's S description sentences and s ~ U{0..S-1} is drawn
once per step (Python ``random``), the same sentence index for all classes (as released; S must be equal for all
classes). DISTILL "mse" replaces both 1 - mean cos by mean squared errors. A batch with one view uses it for both.

Checkpoints (``MultiModalPromptLearner/``): MaPLe's released names plus ``adapter_image.fc.{0,2}.weight`` and
``adapter_text.fc.{0,2}.weight``; released files (with the teacher ``model_distill.*`` and frozen keys) load.
Not done: the released per-dataset overrides of N_CTX / PROMPT_DEPTH / W (``constants.py``) -- pass them on the
command line.
"""
import random
from typing import Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

import clip
from clip.model import CLIP
from common.errors import UserError
from dassl.engine import TRAINER_REGISTRY
from descriptions import description_file, load_descriptions
from trainers.hicropl import cosine_distance
from trainers.ivlp import DeepPromptCLIP
from trainers.maple import MaPLe, MaPLePromptLearner

DISTILLS = ("cosine", "mse")


class Adapter(nn.Module):
    """ReLU(Linear(d/4 -> d)(ReLU(Linear(d -> d/4)(x)))), no biases (``fc.0``, ``fc.2`` as released)."""

    def __init__(self, width: int, device: torch.device, reduction: int = 4) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(width, width // reduction, bias=False, device=device), nn.ReLU(),
                                nn.Linear(width // reduction, width, bias=False, device=device), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.to(self.fc[0].weight.dtype)).to(x.dtype)


class CoPromptLearned(nn.Module):
    """``prompt_learner`` (MaPLe's), ``adapter_image``, ``adapter_text``: the released state-dict names."""

    def __init__(self, prompt_learner: MaPLePromptLearner, embed_dim: int, device: torch.device) -> None:
        super().__init__()
        self.prompt_learner = prompt_learner
        self.adapter_image = Adapter(embed_dim, device)
        self.adapter_text = Adapter(embed_dim, device)


@torch.no_grad()
def description_features(clip_model: CLIP, sentences: Sequence[Sequence[str]]) -> torch.Tensor:
    """D (S, K, d) float32: the frozen unit features of sentence s of every class k (S equal for all classes)."""
    counts = {len(group) for group in sentences}
    if len(counts) != 1:
        raise UserError("CoPrompt needs the same number of description sentences for every class; found "
                        f"{sorted(counts)}")
    device = clip_model.token_embedding.weight.device
    flat = [sentence for group in sentences for sentence in group]  # class-major
    features = torch.cat([clip_model.encode_text(clip.tokenize(flat[i:i + 256]).to(device)).float()
                          for i in range(0, len(flat), 256)])
    return F.normalize(features, dim=-1).view(len(sentences), counts.pop(), -1).transpose(0, 1).contiguous()


class CustomCLIP(DeepPromptCLIP):
    """MaPLe prompts + adapters; with labels, CoPrompt's consistency loss against the frozen CLIP."""

    method = "CoPrompt"

    def __init__(self, clip_model: CLIP, learned: CoPromptLearned, prec: str, descriptions: torch.Tensor,
                 weight: float, distill: str = "cosine") -> None:
        super().__init__(clip_model, learned, prec)
        if distill not in DISTILLS:
            raise UserError(f"TRAINER.COPROMPT.DISTILL is {distill!r}; choose one of {', '.join(DISTILLS)}")
        self.register_buffer("descriptions", descriptions, persistent=False)  # D (S, K, d), rebuilt at build
        self.weight, self.distill = weight, distill

    def features(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """image (B, 3, R, R) -> adapted unit features (v' (B, d), t' (K, d))."""
        learned = self.prompt_learner
        learner = learned.prompt_learner
        if not self.training and self.cache_eval_text and self._eval_cache is not None:
            t, vision = self._eval_cache
        else:
            text, vision = learner()
            t = self.clip_model.encode_text(learner.tokenized_prompts, text)
            t = F.normalize(0.2 * learned.adapter_text(t) + 0.8 * t, dim=-1)
            if not self.training and self.cache_eval_text:
                self._eval_cache = (t.detach(), [p.detach() for p in vision])
        v = self.clip_model.encode_image(image, vision)
        return F.normalize(0.1 * learned.adapter_image(v) + 0.9 * v, dim=-1), t

    def forward(self, image: Union[torch.Tensor, Sequence[torch.Tensor]], label: Optional[torch.Tensor] = None,
                return_terms: bool = False):
        """image (B, 3, R, R) or the views [x1, x2] -> logits (B, K) of x1; with ``label``: the loss of the module
        docstring (and its terms {"ce", "text_consistency", "image_consistency"})."""
        views = list(image) if isinstance(image, (list, tuple)) else [image]
        if label is None:
            return super().forward(views[0])
        with self.precision.autocast_context(views[0].device.type):
            v, t = self.features(views[0])
            logits = self.scaled_cosine(v, t)
            teacher = self.image_features(views[-1])  # frozen, unprompted, no adapters
        target = self.descriptions[random.randrange(self.descriptions.shape[0])]  # (K, d), one index for all
        distance = cosine_distance if self.distill == "cosine" else F.mse_loss
        ce = F.cross_entropy(logits, label)
        text_term, image_term = distance(t.float(), target), distance(v.float(), teacher.float())
        loss = ce + self.weight * (text_term + image_term)
        terms = {"ce": ce, "text_consistency": text_term, "image_consistency": image_term}
        return (loss, terms) if return_terms else loss

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor], strict: bool = True, assign: bool = False):
        """Ours or a released CoPrompt file (its teacher ``model_distill.*`` dropped too)."""
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("model_distill.")}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


@TRAINER_REGISTRY.register()
class CoPrompt(MaPLe):
    """CoPrompt: SGD (configs) over MaPLe's prompts and maps and the two adapters; model
    ``MultiModalPromptLearner`` as released. Training batches: ``img`` = [x1, x2] (K_TRANSFORMS 2) or one tensor."""

    cfg_node = "COPROMPT"

    def build_custom_model(self, clip_model: CLIP, classnames: Sequence[str]) -> CustomCLIP:
        cc = self.cfg.TRAINER.COPROMPT
        learner = MaPLePromptLearner(clip_model, classnames, cc.N_CTX, cc.PROMPT_DEPTH, cc.CTX_INIT,
                                     node="TRAINER.COPROMPT")
        path = cc.DESCRIPTIONS or description_file(self.cfg.DATASET.NAME)
        descriptions = description_features(clip_model, load_descriptions(path, classnames))
        learned = CoPromptLearned(learner, clip_model.embed_dim, clip_model.token_embedding.weight.device)
        return CustomCLIP(clip_model, learned, cc.PREC, descriptions, cc.W, cc.DISTILL)

    def parse_batch_train(self, batch):
        image = batch["img"]
        image = [x.to(self.device) for x in image] if isinstance(image, (list, tuple)) else image.to(self.device)
        return image, batch["label"].to(self.device)
