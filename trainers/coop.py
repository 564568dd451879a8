"""CoOp: Context Optimization (Zhou et al., IJCV 2022), registered as ``CoOp``. Facts: ../shared/methods/COOP.md.

CLIP stays frozen. The hand-written context of a zero-shot prompt ("a photo of a") is replaced by M learned
vectors in the word-embedding space; the K class prompts run through the frozen text tower and their features are
the classifier: logits = exp(logit_scale) * norm(f_img) @ norm(w)^T, trained with cross-entropy. The context is one
(M, D_t) tensor shared by all classes ("unified") or one per class (``CSC``, (K, M, D_t)).

Class-token position (``CLASS_TOKEN_POSITION``) with c = the class-name tokens, h = M // 2:
    end     [SOT] ctx[0..M-1] c . EOT       (the text tower's prompt slots 1..M: ``encode_text`` with prompts)
    middle  [SOT] ctx[0..h-1] c ctx[h..M-1] . EOT
    front   [SOT] c ctx[0..M-1] . EOT
"middle"/"front" put the context at class-dependent positions, so the rows are assembled here and encoded with
``CLIP.encode_text_embeddings`` (positional embeddings added after assembly; EOT stays where it was).

With ``CTX_INIT`` words, M = their token count (``N_CTX`` ignored, as in CoOp); with ``CSC`` every class starts from
those words (the released code silently ignored ``CSC`` when ``CTX_INIT`` was set).

Checkpoints (``prompt_learner/model.pth.tar-<epoch>``) hold ``ctx`` only; released CoOp files (``ctx``,
``token_prefix``, ``token_suffix``) load, their class-dependent buffers dropped.
"""
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from clip.model import CLIP
from common.errors import UserError
from dassl.engine import TRAINER_REGISTRY
from trainers.config import CLASS_TOKEN_POSITIONS
from trainers.shared import PromptedCLIP, PromptTrainer, initial_context, name_lengths, prompt_tokens


class CoOpPromptLearner(nn.Module):
    """The learned context ``ctx`` (M, D_t) or (K, M, D_t) and the fixed token ids / embeddings of the K prompts.

    template: the text after the context, "{}" = class name (CoOp: "{}."; TCP uses per-dataset templates).
    Reused by KgCoOp, CoCoOp and TCP, which all build CoOp's "end" prompts.
    """

    def __init__(self, clip_model: CLIP, classnames: Sequence[str], n_ctx: int, ctx_init: str = "",
                 csc: bool = False, position: str = "end", template: str = "{}.",
                 node: str = "TRAINER.COOP") -> None:
        super().__init__()
        if position not in CLASS_TOKEN_POSITIONS:
            raise UserError(f"{node}.CLASS_TOKEN_POSITION is {position!r}; choose one of "
                            f"{', '.join(CLASS_TOKEN_POSITIONS)}")
        ctx, prefix = initial_context(clip_model, n_ctx, ctx_init, len(classnames) if csc else None, node)
        self.ctx = nn.Parameter(ctx)
        self.n_ctx = ctx.shape[-2]
        self.position = position
        device = clip_model.token_embedding.weight.device
        tokens = prompt_tokens(prefix, classnames, template, node).to(device)  # (K, 77)
        self.register_buffer("tokenized_prompts", tokens, persistent=False)
        self.register_buffer("eot", tokens.argmax(dim=-1), persistent=False)  # (K,) EOT positions
        if position != "end":
            length = int(self.eot.max()) + 1  # later (padding) positions cannot reach any EOT feature
            with torch.no_grad():  # (K, L, D_t): [SOT] X..X c . EOT pad; the X rows are replaced in `layout`
                self.register_buffer("token_embeddings", clip_model.token_embedding(tokens[:, :length]).float(),
                                     persistent=False)
            self.name_lens = name_lengths(classnames)

    def layout(self, ctx: torch.Tensor) -> torch.Tensor:
        """ctx (M, D_t) or (K, M, D_t) -> input embeddings (K, L, D_t) in the "middle" or "front" layout
        (L = the longest prompt's EOT position + 1)."""
        rows, m, half = [], self.n_ctx, self.n_ctx // 2
        embeddings = self.token_embeddings.to(ctx.dtype)
        for k, n_name in enumerate(self.name_lens):
            row_ctx = ctx if ctx.dim() == 2 else ctx[k]
            sot, name, rest = embeddings[k, :1], embeddings[k, 1 + m:1 + m + n_name], embeddings[k, 1 + m + n_name:]
            if self.position == "front":
                rows.append(torch.cat([sot, name, row_ctx, rest]))
            else:
                rows.append(torch.cat([sot, row_ctx[:half], name, row_ctx[half:], rest]))
        return torch.stack(rows)

    def text_features(self, clip_model: CLIP, ctx: Optional[torch.Tensor] = None,
                      deep_prompts: Sequence[Optional[torch.Tensor]] = ()) -> torch.Tensor:
        """(K, d) unnormalised class features for context ``ctx`` (default: the learned one).

        deep_prompts[i - 1] (m, D_t) / (K, m, D_t) / None replaces the context positions at the input of text block
        i ("end" layout only; TCP's class-aware tokens).
        """
        ctx = self.ctx if ctx is None else ctx
        if self.position == "end":
            return clip_model.encode_text(self.tokenized_prompts, [ctx, *deep_prompts])
        if deep_prompts:
            raise ValueError("deep prompts need the 'end' class-token position (context at positions 1..M)")
        return clip_model.encode_text_embeddings(self.layout(ctx), self.eot)


class CustomCLIP(PromptedCLIP):
    """Frozen CLIP + CoOp's prompt learner: logits = exp(logit_scale) * norm(f_img) @ norm(w)^T, loss = CE."""

    method = "CoOp"

    def class_features(self) -> torch.Tensor:
        """(K, d) unit rows from the current context."""
        return F.normalize(self.prompt_learner.text_features(self.clip_model), dim=-1)

    def forward(self, image: torch.Tensor, label: Optional[torch.Tensor] = None, return_terms: bool = False):
        """image (B, 3, R, R) -> logits (B, K) float32; with ``label``: the CE loss (and {"loss": ...})."""
        with self.precision.autocast_context(image.device.type):
            logits = self.scaled_cosine(self.image_features(image), self.cached(self.class_features))
        if label is None:
            return logits
        loss = F.cross_entropy(logits, label)
        return (loss, {"loss": loss}) if return_terms else loss


@TRAINER_REGISTRY.register()
class CoOp(PromptTrainer):
    """CoOp: SGD (configs) over ``ctx`` only; one registered model ``prompt_learner``."""

    cfg_node = "COOP"
    # Checkpoint metadata (dassl.engine.identity): keys that give ctx its shape or meaning must match on load.
    load_keys = ("MODEL.BACKBONE.NAME",) + tuple(
        f"TRAINER.COOP.{key}" for key in ("N_CTX", "CSC", "CTX_INIT", "CLASS_TOKEN_POSITION"))

    def build_custom_model(self, clip_model: CLIP, classnames: Sequence[str]) -> CustomCLIP:
        cc = self.cfg.TRAINER.COOP
        learner = CoOpPromptLearner(clip_model, classnames, cc.N_CTX, cc.CTX_INIT, cc.CSC, cc.CLASS_TOKEN_POSITION)
        return CustomCLIP(clip_model, learner, cc.PREC)
