"""What the CoOp-family trainers share (CoOp, CoCoOp, KgCoOp, TCP); each method's own file reads top to bottom.

1. precision and device checks of a ``TRAINER.<METHOD>.PREC`` value (the table is HiCroPL's ``PRECISION_TABLE``);
2. prompt texts and context initialisation from words (CoOp's rule: "a photo of a" -> M = 4 context vectors);
3. frozen class features from a per-dataset hand-crafted template (KgCoOp's / TCP's "knowledge"), cached on disk;
4. ``PromptedCLIP``: frozen CLIP + a prompt learner, a learned-only state dict whose keys are those of the released
   code's registered ``prompt_learner`` model (so released checkpoints load), an eval-mode cache of class features;
5. ``PromptTrainer``: the trainer every method subclasses (optimiser over the trainable parameters only, one
   registered model named ``prompt_learner`` as in the released code, precision / loss scaling, NaN check).

Shapes: K = classes, M = context length, D_t = text width, d = joint embedding width, B = batch size.
"""
from typing import Callable, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from yacs.config import CfgNode

import clip
from clip.model import CLIP, convert_weights
from common.errors import UserError
from dassl.engine import TrainerX
from dassl.optim import build_lr_scheduler, build_optimizer
from descriptions import too_long_for_context
from trainers.config import PRECISIONS, apply_optim_eps
from trainers.hicropl import PRECISION_TABLE, HiCroPL, Precision, frozen_text_features
from trainers.zsclip import CUSTOM_TEMPLATES, DEFAULT_TEMPLATE

# ---------------------------------------------------------------------------------------------------------------------
# 1. Precision
# ---------------------------------------------------------------------------------------------------------------------


def cfg_device(cfg: CfgNode) -> torch.device:
    return torch.device("cuda" if cfg.USE_CUDA and torch.cuda.is_available() else "cpu")


def check_precision(node: str, prec: str, device: torch.device) -> None:
    """``node`` e.g. "TRAINER.COOP": PREC must be a PRECISIONS value that runs on ``device``."""
    if prec not in PRECISION_TABLE:
        raise UserError(f"{node}.PREC is {prec!r}; choose one of {', '.join(PRECISIONS)}")
    if device.type == "cpu" and not PRECISION_TABLE[prec].cpu_ok:
        raise UserError(f"{node}.PREC {prec} needs a CUDA device; on CPU use PREC fp32 or bf16")


# ---------------------------------------------------------------------------------------------------------------------
# 2. Prompt texts and context initialisation
# ---------------------------------------------------------------------------------------------------------------------


def initial_context(clip_model: CLIP, n_ctx: int, ctx_init: str, n_cls: Optional[int] = None,
                    node: str = "TRAINER.COOP") -> Tuple[torch.Tensor, str]:
    """Initial context (M, D_t) float32 (``n_cls`` given: (n_cls, M, D_t), one copy per class) and the prompt prefix.

    ctx_init words (``_`` -> space): M = their token count (``N_CTX`` is ignored, as in CoOp), the context is their
    frozen token embeddings and the prefix is the words. Empty: M = n_ctx vectors drawn from N(0, 0.02^2) and the
    prefix "X X ... X" (M placeholders, overwritten by the context).
    """
    words = ctx_init.replace("_", " ").strip()
    device = clip_model.token_embedding.weight.device
    if words:
        tokens = clip.tokenize([words]).to(device)
        n_words = int(tokens.argmax(dim=-1)) - 1  # tokens between SOT and EOT
        with torch.no_grad():
            ctx = clip_model.token_embedding(tokens)[0, 1:1 + n_words].float()
        prefix = words
    else:
        if n_ctx < 1:
            raise UserError(f"{node}.N_CTX is {n_ctx}; it must be >= 1 (or set {node}.CTX_INIT)")
        ctx = torch.empty(n_ctx, clip_model.transformer.width, device=device).normal_(std=0.02)
        prefix = " ".join(["X"] * n_ctx)
    if n_cls is not None:
        ctx = ctx.expand(n_cls, -1, -1).clone() if words else torch.empty(
            n_cls, *ctx.shape, device=device).normal_(std=0.02)
    return ctx, prefix


def prompt_tokens(prefix: str, classnames: Sequence[str], template: str = "{}.",
                  node: str = "TRAINER.COOP") -> torch.Tensor:
    """(K, 77) token ids of "<prefix> <template with the class name>" per class (``_`` -> space in names)."""
    texts = [f"{prefix} {template.format(name.replace('_', ' '))}" for name in classnames]
    bad = too_long_for_context(texts)
    if bad:
        names = ", ".join(repr(classnames[i]) for i in bad)
        raise UserError(f"{node}: the prompt does not fit CLIP's 77-token context for class(es) {names}; "
                        "lower N_CTX (or shorten the class names)")
    return clip.tokenize(texts)


def name_lengths(classnames: Sequence[str]) -> list:
    """Number of BPE tokens of each class name (``_`` -> space)."""
    tokens = clip.tokenize([name.replace("_", " ") for name in classnames])
    return (tokens.argmax(dim=-1) - 1).tolist()


# ---------------------------------------------------------------------------------------------------------------------
# 3. Frozen class features from hand-crafted templates
# ---------------------------------------------------------------------------------------------------------------------


def template_class_features(clip_model: CLIP, dataset_name: str, classnames: Sequence[str],
                            templates: Mapping[str, str] = CUSTOM_TEMPLATES) -> torch.Tensor:
    """(K, d) float32 unit rows: frozen CLIP features of ``templates[dataset_name]`` (default "a photo of a {}.")
    filled with each class name; cached on disk like HiCroPL's description features."""
    template = templates.get(dataset_name, DEFAULT_TEMPLATE)
    print(f"Frozen class features from the template {template!r}")
    return frozen_text_features(clip_model, [[template.format(name.replace("_", " "))] for name in classnames])


# ---------------------------------------------------------------------------------------------------------------------
# 4. Prompted CLIP with a learned-only state dict
# ---------------------------------------------------------------------------------------------------------------------


class PromptedCLIP(nn.Module):
    """Frozen CLIP (``clip_model``) + ``prompt_learner``; a method's CustomCLIP subclasses it.

    ``state_dict()`` is the prompt learner's own (keys ``ctx``, ``meta_net.*``, ... without a prefix, as in the
    released checkpoints, whose registered model is the prompt learner); ``load_state_dict`` drops the
    class-dependent buffers and unused modules that released files carry (``released_ignored_keys`` /
    ``released_ignored_prefixes``) and names every other missing, unexpected or mis-shaped key in one error.
    """

    method = "prompt"
    released_ignored_keys: Tuple[str, ...] = ("token_prefix", "token_suffix", "token_midfix")
    released_ignored_prefixes: Tuple[str, ...] = ()
    # Eval-mode cache of the class features (they do not depend on the image for CoOp, KgCoOp, TCP).
    cache_eval_text: bool = True

    def __init__(self, clip_model: CLIP, prompt_learner: nn.Module, prec: str) -> None:
        super().__init__()
        self.clip_model = clip_model.requires_grad_(False).eval()
        self.prompt_learner = prompt_learner
        self.precision: Precision = PRECISION_TABLE[prec]
        if self.precision.weights != torch.float32:
            convert_weights(self.clip_model, self.precision.weights)
            self.prompt_learner.to(self.precision.weights)
        self._eval_cache: Optional[torch.Tensor] = None

    def train(self, mode: bool = True) -> "PromptedCLIP":
        """The frozen CLIP stays in eval mode; mode changes drop the class-feature cache."""
        super().train(mode)
        self.clip_model.train(False)
        self._eval_cache = None
        return self

    @torch.no_grad()
    def image_features(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, R, R) -> (B, d) unit rows of the frozen, unprompted image tower."""
        return F.normalize(self.clip_model.encode_image(image), dim=-1)

    def cached(self, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``compute()`` in training; in eval mode computed once until the next mode change or load."""
        if self.training or not self.cache_eval_text:
            return compute()
        if self._eval_cache is None:
            self._eval_cache = compute().detach()
        return self._eval_cache

    def scaled_cosine(self, image_features: torch.Tensor, class_features: torch.Tensor) -> torch.Tensor:
        """(B, d), (K, d) unit rows -> logits (B, K) float32 = exp(logit_scale) * cosine."""
        return (self.clip_model.logit_scale.exp() * image_features @ class_features.t()).float()

    # Prefix of the state-dict keys: "" (released names, e.g. ``ctx``); "prompt_learner." names them as the
    # parameters are named, which DDP setup needs (it syncs the parameters that the state dict names).
    state_dict_prefix = ""

    def state_dict(self, *, destination=None, prefix: str = "", keep_vars: bool = False):
        return self.prompt_learner.state_dict(destination=destination, prefix=prefix + self.state_dict_prefix,
                                              keep_vars=keep_vars)

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor], strict: bool = True, assign: bool = False):
        """Load our checkpoints or the released code's (its class-dependent buffers and unused modules dropped)."""
        state_dict = {key[len("module."):] if key.startswith("module.") else key: value
                      for key, value in state_dict.items()}
        state_dict = {key: value for key, value in state_dict.items()
                      if key not in self.released_ignored_keys and not key.startswith(self.released_ignored_prefixes)}
        expected = self.state_dict(keep_vars=True)
        problems = []
        missing = [key for key in expected if key not in state_dict]
        unexpected = [key for key in state_dict if key not in expected]
        mismatched = [f"{key} {tuple(state_dict[key].shape)} vs {tuple(expected[key].shape)}"
                      for key in expected if key in state_dict and state_dict[key].shape != expected[key].shape]
        if strict and missing:
            problems.append(f"missing keys: {', '.join(missing)}")
        if strict and unexpected:
            problems.append(f"unexpected keys: {', '.join(unexpected)}")
        if mismatched:
            problems.append(f"shape mismatch (checkpoint vs model): {', '.join(mismatched)}")
        if problems:
            raise UserError(f"checkpoint does not match this {self.method} model (check N_CTX, CSC, the class count "
                            "for class-specific context, and the backbone): " + "; ".join(problems))
        result = self.prompt_learner.load_state_dict(state_dict, strict=strict, assign=assign)
        self._eval_cache = None
        return result


# ---------------------------------------------------------------------------------------------------------------------
# 5. Trainer
# ---------------------------------------------------------------------------------------------------------------------


class PromptTrainer(TrainerX):
    """Base of the CoOp-family trainers: ``build_custom_model`` is all a method adds (plus its config checks).

    The model ``self.model`` (a ``PromptedCLIP``) returns logits (B, K) without labels and (loss, terms) with them.
    """

    model_name = "prompt_learner"  # the released code's registered name: checkpoints in <output>/prompt_learner/
    cfg_node = ""  # e.g. "COOP": the TRAINER.<node> of the method (also the engine's run-identity node)

    def check_cfg(self, cfg: CfgNode) -> None:
        check_precision(f"TRAINER.{self.cfg_node}", cfg.TRAINER[self.cfg_node].PREC, cfg_device(cfg))

    def build_custom_model(self, clip_model: CLIP, classnames: Sequence[str]) -> PromptedCLIP:
        raise NotImplementedError

    def build_model(self) -> None:
        cfg = self.cfg
        print(f"Loading CLIP (backbone: {cfg.MODEL.BACKBONE.NAME})")
        clip_model, _ = clip.load(cfg.MODEL.BACKBONE.NAME, device=self.device)
        print(f"Building {type(self).__name__}")
        self.model = self.build_custom_model(clip_model, self.dm.dataset.classnames).to(self.device)
        trainable = [(name, p) for name, p in self.model.named_parameters() if p.requires_grad]
        print(f"{len(trainable)} trainable tensors ({', '.join(name for name, _ in trainable)}), "
              f"{sum(p.numel() for _, p in trainable):,} trainable parameters")
        self.optim = build_optimizer([p for _, p in trainable], cfg.OPTIM)
        apply_optim_eps(self.optim, cfg.OPTIM)  # the original Dassl's build_optimizer ignores OPTIM.EPS
        self.sched = build_lr_scheduler(self.optim, cfg.OPTIM)
        self.register_model(self.model_name, self.model, self.optim, self.sched)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.model.precision.grad_scaler else None

    def setup_distributed(self) -> None:
        """The engine's DDP setup, with the state dict naming the learned tensors by their parameter names."""
        model = self.model
        model.state_dict_prefix = "prompt_learner."
        try:
            super().setup_distributed()
        finally:
            model.state_dict_prefix = ""

    # The optimisation step is HiCroPL's (its model has the same interface): NaN check before any update, optional
    # GradScaler, the lr scheduler stepped after the last batch of each epoch.
    forward_backward = HiCroPL.forward_backward
    parse_batch_train = HiCroPL.parse_batch_train
