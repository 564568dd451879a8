"""Zero-shot CLIP baseline (registered ``ZeroshotCLIP``): nothing is learned, the classifier is built from text.

``TRAINER.ZSCLIP.CLASSIFIER``:
- ``template``: one sentence per class from CoOp's hand-crafted per-dataset template (``CUSTOM_TEMPLATES``);
- ``descriptions``: the normalised mean of the CLIP features of the class's description sentences -- the frozen
  classifier W that HiCroPL fuses into its logits (SPEC §4.2), so this baseline is HiCroPL's "text prior" alone.

Run with ``--eval-only`` (or plain training, which only evaluates): logits = exp(logit_scale) * norm(image) @ T^T.
"""
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from yacs.config import CfgNode

import clip
from clip.model import CLIP, convert_weights
from common.errors import UserError
from dassl.engine import TRAINER_REGISTRY, TrainerX
from descriptions import description_file, load_descriptions
from trainers.config import ZS_CLASSIFIERS
from trainers.hicropl import PRECISION_TABLE, frozen_text_features

# CoOp's hand-crafted prompt per dataset (DATASET.NAME); "{}" is the class name with "_" -> " ".
CUSTOM_TEMPLATES = {
    "OxfordPets": "a photo of a {}, a type of pet.",
    "OxfordFlowers": "a photo of a {}, a type of flower.",
    "FGVCAircraft": "a photo of a {}, a type of aircraft.",
    "DescribableTextures": "{} texture.",
    "EuroSAT": "a centered satellite photo of {}.",
    "StanfordCars": "a photo of a {}.",
    "Food101": "a photo of {}, a type of food.",
    "SUN397": "a photo of a {}.",
    "Caltech101": "a photo of a {}.",
    "UCF101": "a photo of a person doing {}.",
    "ImageNet": "a photo of a {}.",
    "ImageNetSketch": "a photo of a {}.",
    "ImageNetV2": "a photo of a {}.",
    "ImageNetA": "a photo of a {}.",
    "ImageNetR": "a photo of a {}.",
}
DEFAULT_TEMPLATE = "a photo of a {}."
ZS_PRECISIONS = ("fp32", "fp16", "bf16")


def check_zsclip_cfg(zc: CfgNode, device: torch.device) -> None:
    """Validate ``TRAINER.ZSCLIP`` (one clear line per problem)."""
    if zc.CLASSIFIER not in ZS_CLASSIFIERS:
        raise UserError(f"TRAINER.ZSCLIP.CLASSIFIER is {zc.CLASSIFIER!r}; choose one of {', '.join(ZS_CLASSIFIERS)}")
    if zc.PREC not in ZS_PRECISIONS:
        raise UserError(f"TRAINER.ZSCLIP.PREC is {zc.PREC!r}; choose one of {', '.join(ZS_PRECISIONS)}")
    if device.type == "cpu" and not PRECISION_TABLE[zc.PREC].cpu_ok:
        raise UserError(f"TRAINER.ZSCLIP.PREC {zc.PREC} needs a CUDA device; on CPU use PREC fp32 or bf16")


def template_sentences(dataset_name: str, classnames: Sequence[str]) -> list:
    """One sentence per class (label order) from the dataset's hand-crafted template."""
    template = CUSTOM_TEMPLATES.get(dataset_name, DEFAULT_TEMPLATE)
    return [[template.format(name.replace("_", " "))] for name in classnames]


class ZeroshotClassifier(nn.Module):
    """Frozen CLIP image tower + a fixed text classifier T (n_cls, d) with unit rows."""

    def __init__(self, clip_model: CLIP, class_features: torch.Tensor, precision: str) -> None:
        super().__init__()
        self.clip_model = clip_model.requires_grad_(False).eval()
        self.precision = PRECISION_TABLE[precision]
        if self.precision.weights != torch.float32:
            convert_weights(self.clip_model, self.precision.weights)
        self.register_buffer("class_features", class_features.float(), persistent=False)

    @torch.no_grad()
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image (B, 3, R, R) -> logits (B, n_cls) float32."""
        with self.precision.autocast_context(image.device.type):
            image_features = F.normalize(self.clip_model.encode_image(image).float(), dim=-1)
        return self.clip_model.logit_scale.exp() * image_features @ self.class_features.t()


@TRAINER_REGISTRY.register()
class ZeroshotCLIP(TrainerX):
    """Zero-shot CLIP: builds the text classifier once; registers no model (nothing to save or load)."""

    cfg_node = "ZSCLIP"  # its config node (TRAINER.ZSCLIP), part of the identity in its results.json records

    def check_cfg(self, cfg: CfgNode) -> None:
        device = torch.device("cuda" if cfg.USE_CUDA and torch.cuda.is_available() else "cpu")
        check_zsclip_cfg(cfg.TRAINER.ZSCLIP, device)

    def build_model(self) -> None:
        cfg, zc = self.cfg, self.cfg.TRAINER.ZSCLIP
        classnames = self.dm.dataset.classnames
        print(f"Loading CLIP (backbone: {cfg.MODEL.BACKBONE.NAME})")
        clip_model, _ = clip.load(cfg.MODEL.BACKBONE.NAME, device=self.device)
        clip.check_input(clip_model, cfg.MODEL.BACKBONE.NAME, cfg.INPUT.SIZE, cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD,
                         cfg.INPUT.INTERPOLATION)  # open_clip backbones: the images their weights expect
        if zc.CLASSIFIER == "template":
            sentences = template_sentences(cfg.DATASET.NAME, classnames)
            print(f"Zero-shot classifier: template {sentences[0][0]!r} (first class)")
        else:
            path = Path(zc.DESCRIPTIONS) if zc.DESCRIPTIONS else description_file(cfg.DATASET.NAME)
            print(f"Zero-shot classifier: averaged descriptions from {path}")
            sentences = load_descriptions(path, classnames)
        # A one-sentence group averages to that sentence's normalised feature: the same code serves both variants.
        class_features = frozen_text_features(clip_model, sentences)
        self.model = ZeroshotClassifier(clip_model, class_features, zc.PREC).to(self.device)

    def train(self) -> None:
        """Nothing to learn: evaluate on the test split."""
        print("ZeroshotCLIP has no parameters to train; evaluating")
        self.test()
