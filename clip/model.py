"""CLIP (Radford et al., 2021) with per-layer prompt injection in both towers.

Both towers are built from the one `Transformer` class below. Its forward takes an optional list of per-layer prompt
tensors; *where* prompt tokens sit in the sequence is fixed when the tower builds its transformer
(`prompt_position`), so a prompt-learning method only supplies tensors, never code:

- text tower: the m prompt tokens occupy positions 1..m, right after the start-of-text token;
- image tower (ViT): the m prompt tokens are the last m tokens, after [CLS] and the patch tokens.

Parameter names, shapes and the layout of the state dict are those of OpenAI's released checkpoints, so
`build_model(state_dict)` loads them strictly. Tensors are batch-first: (batch, tokens, width).

openai-clip's call conventions hold where code written against openai-clip (CoOp-family trainers) uses them:
`model.transformer(x)` and `model.visual.transformer(x)` take and return sequence-first tensors (L, N, D), exactly
as openai-clip's do; module attribute names (`transformer`, `token_embedding`, `positional_embedding`, `ln_final`,
`text_projection`, `visual`, `logit_scale`, `dtype`) are openai-clip's; `convert_weights(model)` casts to fp16.
Our prompt-aware path is explicit and batch-first: `encode_text(text, prompts=...)`, `encode_image(image,
prompts=...)`, `Transformer.forward_batch_first(x, prompts)`. Calls this CLIP cannot honour (e.g. MaPLe's
`transformer([x, deep_prompts, counter])`, meant for its own patched CLIP) raise `CLIPCallError`, one line naming
the calling file. The blocks (`transformer.resblocks[i]`) are batch-first; code that calls them one by one needs
its own CLIP.

Extension points for prompt-learning methods (n texts, m prompt tokens, D_t text width, L <= context_length, B
images, K classes, d = embed_dim). With no prompts every path is exactly openai-clip's computation.

- Per-layer prompts: `prompts` is a list whose entry i (or None) is used at the input of block i; entries past the
  list's end are None. Sparse lists work in both towers (text: `[ctx, None, ..., None, T]` puts T at one deep layer
  only, as TCP does; vision: entry 0 must be given when any entry is).
- Shared, per-class and per-sample prompts: each entry is (m, D) shared by all sequences, or (n, m, D) / (B, m, D)
  with one prompt per sequence: per class for the text tower (CoOp's class-specific context, TCP's class-aware
  deep tokens: row k goes with text k), per image for the image tower. An image-conditioned text prompt (CoCoOp)
  is a shared (m, D_t) prompt computed from one image, one `encode_text` call per image.
- Per-block residual side branches (both towers; MMA's adapters): ``tower.transformer.side_branches = {i: fn}``
  (``tower`` = ``clip_model`` for text, ``clip_model.visual`` for the ViT) adds ``fn(x, block)`` (B, N, D) to the
  output of block i, where x is that block's input and ``block`` the frozen block (so a branch can use its
  LayerNorms): ``x_out = block(x) + fn(x, block)``. The method owns the modules ``fn`` calls; None (default) or an
  empty dict is plain CLIP. Branches act on every token, so the text tower's shared-prefix path stays exact.
- Pre-built text input: `CLIP.encode_text_embeddings(embeddings (n, L, D_t), eot (n,), prompts)` -> (n, d) takes
  the token embeddings assembled by the method (e.g. CoOp's "middle"/"front" layouts, where the learned context
  sits around the class-name tokens at class-dependent positions) and the EOT position of each row. The positional
  embedding is added after assembly, as for token ids: `encode_text(text)` equals
  `encode_text_embeddings(token_embedding(text), text.argmax(-1))`.
"""

from __future__ import annotations

import math
import os
import sys
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

Prompts = Optional[Sequence[Optional[torch.Tensor]]]

_CLIP_DIR = os.path.dirname(os.path.abspath(__file__))
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__))


class CLIPCallError(TypeError):
    """Code calls this CLIP in a way it cannot honour (e.g. an input meant for another project's patched CLIP).
    The message is one line naming the calling file and what to do; `train.py` prints it as ``error: <message>``."""


def calling_file() -> str:
    """``path:line`` of the innermost frame outside clip/ and torch/: the code that called into this CLIP."""
    frame = sys._getframe(1)
    while frame is not None:
        path = os.path.abspath(frame.f_code.co_filename)
        if not path.startswith((_CLIP_DIR + os.sep, _TORCH_DIR + os.sep)):
            relative = os.path.relpath(path)
            return f"{path if relative.startswith('..') else relative}:{frame.f_lineno}"
        frame = frame.f_back
    return "<unknown file>"


# Keys that OpenAI's TorchScript archives carry next to the weights; they hold no parameters.
_NON_WEIGHT_KEYS = ("input_resolution", "context_length", "vocab_size")
# OpenAI's checkpoints do not store head counts; every released model uses 64-dimensional attention heads.
_HEAD_DIM = 64


@dataclass(frozen=True)
class CLIPConfig:
    """Architecture of a CLIP model (everything needed to build it; weights come separately).

    vision_layers: number of ViT blocks (int), or blocks per ResNet stage (4-tuple) for the ResNet image tower.
    vision_patch_size: ViT patch size; None selects the modified ResNet image tower.
    vision_width: ViT token width, or the ResNet stem width (the attention pool then works at 32 x vision_width).
    """

    embed_dim: int
    image_resolution: int
    vision_layers: Union[int, Tuple[int, ...]]
    vision_width: int
    vision_heads: int
    vision_patch_size: Optional[int]
    context_length: int
    vocab_size: int
    transformer_width: int
    transformer_heads: int
    transformer_layers: int
    # MLP activation of every transformer block, both towers: a key of ACTIVATIONS ("quick_gelu": OpenAI's CLIPs;
    # "gelu": exact erf GELU, e.g. open_clip configs without "-quickgelu").
    activation: str = "quick_gelu"
    # Hidden width of the block MLPs (None = 4 x the tower's width, as in OpenAI's CLIPs; open_clip's ViT-g/bigG/e
    # differ).
    vision_mlp_width: Optional[int] = None
    transformer_mlp_width: Optional[int] = None

    @property
    def is_vit(self) -> bool:
        return self.vision_patch_size is not None


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 and cast back to the input dtype (CLIP's convention for fp16 weights)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


class BatchNorm2d(nn.BatchNorm2d):
    """BatchNorm computed in float32 (its parameters stay float32 under `convert_weights`), cast back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


class _QuickGELUFunction(torch.autograd.Function):
    """x * sigmoid(1.702 x) that keeps only x for backward (autograd would also keep sigmoid(1.702 x), one more
    (B, N, 4D) tensor per block) and recomputes the sigmoid there."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return (x * 1.702).sigmoid_().mul_(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(x * 1.702)
        # d/dx [x s(1.702x)] = s + 1.702 x s (1 - s)
        return grad * s * (1 + 1.702 * x * (1 - s))


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the GELU approximation CLIP was trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return _QuickGELUFunction.apply(x)
        # Without autograd: one (B, N, 4D) buffer instead of three (the MLP's largest tensors).
        return (x * 1.702).sigmoid_().mul_(x)


# MLP activations a `CLIPConfig.activation` may name.
ACTIVATIONS = {"quick_gelu": QuickGELU, "gelu": nn.GELU}


class SelfAttention(nn.Module):
    """Multi-head self-attention over batch-first tokens, via `F.scaled_dot_product_attention`.

    Parameter names match `nn.MultiheadAttention` (`in_proj_weight`, `in_proj_bias`, `out_proj.*`), hence OpenAI's
    state dicts, and so does the initialisation.
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} attention heads")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def _qkv(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, N, D) -> q, k, v, each (B, heads, N, head_dim)."""
        batch, n_tokens, width = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        return qkv.view(batch, n_tokens, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)

    def _merge(self, out: torch.Tensor) -> torch.Tensor:
        """(B, heads, N, head_dim) -> out_proj of the concatenated heads, (B, N, D)."""
        batch, _, n_tokens, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(batch, n_tokens, -1))

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        """x: (B, N, D) -> (B, N, D). causal: token i attends to tokens 0..i only."""
        q, k, v = self._qkv(x)
        return self._merge(F.scaled_dot_product_attention(q, k, v, is_causal=causal))

    def forward_shared_prefix(self, prefix: torch.Tensor, rows: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Causal attention over the n sequences [prefix; rows[i]], the common prefix computed once.

        prefix (1, P, D), rows (n, S, D) -> ((1, P, D), (n, S, D)): the prefix attends causally to itself; row
        token j attends to the whole prefix and to row tokens 0..j. Equals ``forward(cat(prefix, rows), True)``.
        """
        q_p, k_p, v_p = self._qkv(prefix)  # (1, heads, P, head_dim)
        q_r, k_r, v_r = self._qkv(rows)  # (n, heads, S, head_dim)
        n, heads, length, head_dim = q_r.shape
        prefix_length = prefix.shape[1]
        q_r = q_r * head_dim ** -0.5
        # Scores against the prefix keys as one (heads, n*S, head_dim) @ (heads, head_dim, P) product: the prefix
        # keys and values are never copied per row (n copies would be most of the text tower's training memory).
        q_heads = q_r.transpose(0, 1).reshape(heads, n * length, head_dim)
        to_prefix = (q_heads @ k_p[0].transpose(1, 2)).view(heads, n, length, prefix_length).transpose(0, 1)
        to_rows = (q_r @ k_r.transpose(2, 3)).masked_fill(  # (n, heads, S, S), causal within the row
            torch.ones(length, length, dtype=torch.bool, device=rows.device).triu(1), float("-inf"))
        probs = torch.cat([to_prefix, to_rows], dim=-1).float().softmax(dim=-1).to(q_r.dtype)  # (n, heads, S, P+S)
        from_prefix = probs[..., :prefix_length].transpose(0, 1).reshape(heads, n * length, prefix_length) @ v_p[0]
        out = probs[..., prefix_length:] @ v_r + from_prefix.view(heads, n, length, head_dim).transpose(0, 1)
        return self._merge(F.scaled_dot_product_attention(q_p, k_p, v_p, is_causal=True)), self._merge(out)


class ResidualAttentionBlock(nn.Module):
    """Pre-LN transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x)); the MLP is width -> mlp_width (default
    4 x width) -> width with the `activation` of ACTIVATIONS (default QuickGELU) in between."""

    def __init__(self, width: int, heads: int, causal: bool = False, mlp_width: Optional[int] = None,
                 activation: str = "quick_gelu") -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        self.causal = causal
        self.attn = SelfAttention(width, heads)
        self.ln_1 = LayerNorm(width)
        mlp_width = mlp_width or 4 * width
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, mlp_width)),
            ("gelu", ACTIVATIONS[activation]()),
            ("c_proj", nn.Linear(mlp_width, width)),
        ]))
        self.ln_2 = LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, D) -> (B, N, D)."""
        x = x + self.attn(self.ln_1(x), causal=self.causal)
        return x + self.mlp(self.ln_2(x))

    def forward_shared_prefix(self, prefix: torch.Tensor, rows: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Causal block over [prefix; rows[i]] for each i: prefix (1, P, D), rows (n, S, D) -> same shapes."""
        attn_prefix, attn_rows = self.attn.forward_shared_prefix(self.ln_1(prefix), self.ln_1(rows))
        prefix, rows = prefix + attn_prefix, rows + attn_rows
        return prefix + self.mlp(self.ln_2(prefix)), rows + self.mlp(self.ln_2(rows))


PROMPT_POSITIONS = ("after_first", "last")


class Transformer(nn.Module):
    """A stack of `ResidualAttentionBlock`s with optional prompt replacement at the input of each block.

    prompt_position: where a tower keeps its m prompt tokens —
        "after_first": positions 1..m (text tower: right after the start-of-text token);
        "last":        the last m tokens (image tower: after [CLS] and the patches).
    causal: causal attention mask (text tower).
    mlp_width, activation: of every block (see `ResidualAttentionBlock`).
    """

    # Activation checkpointing: while autograd records, keep only each block's input and recompute the block in
    # backward (less memory, about one more forward of compute). Set on an instance; HiCroPL sets it on the text
    # tower from TRAINER.HICROPL.TEXT_CHECKPOINTING.
    checkpointing: bool = False
    # Per-block residual side branches {block index: fn(x, block) -> (B, N, D)} added to the block's output (module
    # docstring); set on an instance by the method that owns the branch modules (MMA). None: no branches.
    side_branches: Optional[Dict[int, Callable[[torch.Tensor, nn.Module], torch.Tensor]]] = None

    def __init__(self, width: int, layers: int, heads: int, causal: bool = False,
                 prompt_position: str = "last", mlp_width: Optional[int] = None,
                 activation: str = "quick_gelu") -> None:
        super().__init__()
        if prompt_position not in PROMPT_POSITIONS:
            raise ValueError(f"prompt_position must be one of {PROMPT_POSITIONS}, got {prompt_position!r}")
        self.width = width
        self.layers = layers
        self.heads = heads
        self.causal = causal
        self.prompt_position = prompt_position
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads, causal, mlp_width, activation)
                                         for _ in range(layers)])

    def replace_prompt_tokens(self, x: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        """Overwrite the m prompt positions of x (B, N, D) with prompt (m, D) or (B, m, D); returns (B, N, D)."""
        n_prompt = prompt.shape[-2]
        prompt = _per_sample(prompt, x.shape[0]).to(x.dtype)
        if self.prompt_position == "after_first":
            return torch.cat([x[:, :1], prompt, x[:, 1 + n_prompt:]], dim=1)
        return torch.cat([x[:, :-n_prompt], prompt], dim=1)

    def forward(self, x: torch.Tensor, *unsupported: object) -> torch.Tensor:
        """openai-clip's call: x (L, N, D) sequence-first -> (L, N, D) sequence-first, no prompts.

        What CoOp-family code does around `clip_model.transformer(x.permute(1, 0, 2))`. Anything else (a MaPLe-style
        list [x, deep_prompts, counter], more arguments, a wrong shape) raises `CLIPCallError` naming the caller.
        """
        if unsupported:
            raise CLIPCallError(
                f"{calling_file()} calls the CLIP transformer with {1 + len(unsupported)} arguments; like openai-clip's "
                "it takes one sequence-first tensor (L, N, D). Per-layer prompts go through the batch-first "
                "transformer.forward_batch_first(x, prompts) or encode_text/encode_image(..., prompts=...)")
        if not isinstance(x, torch.Tensor):
            kind = type(x).__name__
            raise CLIPCallError(
                f"{calling_file()} calls the CLIP transformer with a {kind}, not a tensor (L, N, {self.width}) as "
                "openai-clip's takes; a list such as [x, deep_prompts, counter] is meant for another project's "
                "patched CLIP (MaPLe-style). Pass per-layer prompts with encode_text(text, prompts=...) / "
                "encode_image(image, prompts=...), or ship that method's own CLIP module with the trainer")
        if x.dim() != 3 or x.shape[-1] != self.width:
            raise CLIPCallError(
                f"{calling_file()} calls the CLIP transformer with shape {tuple(x.shape)}; it takes (L, N, "
                f"{self.width}) sequence-first, as openai-clip's does (permute a batch-first (N, L, D) with "
                "x.permute(1, 0, 2))")
        return self.forward_batch_first(x.transpose(0, 1)).transpose(0, 1)

    def forward_batch_first(self, x: torch.Tensor, prompts: Prompts = None) -> torch.Tensor:
        """x: (B, N, D) -> (B, N, D). prompts[i], if given and not None, replaces the prompt tokens at the input
        of block i (blocks at index >= len(prompts) get no replacement)."""
        for index, block in enumerate(self.resblocks):
            if prompts is not None and index < len(prompts) and prompts[index] is not None:
                x = self.replace_prompt_tokens(x, prompts[index])
            branch = self.side_branches.get(index) if self.side_branches else None
            if self.checkpointing and torch.is_grad_enabled() and x.requires_grad:
                out = checkpoint(block, x, use_reentrant=False)
            else:
                out = block(x)
            x = out if branch is None else out + branch(x, block)
        return x

    def forward_shared_prefix(self, prefix: torch.Tensor, rows: torch.Tensor,
                              prompts: Prompts = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Causal stack over n sequences that start with the same P tokens, the prefix computed once.

        prefix (1, P, D), rows (n, S, D) -> ((1, P, D), (n, S, D)): the outputs of ``forward(cat(prefix, rows))``
        split at P. prompts[i] (m, D) replaces prefix positions 1..m at the input of block i (needs
        prompt_position "after_first", causal and P > m, so that every sequence gets the same prompt tokens).
        """
        if not self.causal or self.prompt_position != "after_first":
            raise ValueError("a shared prefix needs a causal transformer with prompts after the first token")
        for index, block in enumerate(self.resblocks):
            if prompts is not None and index < len(prompts) and prompts[index] is not None:
                prefix = self.replace_prompt_tokens(prefix, prompts[index])
            branch = self.side_branches.get(index) if self.side_branches else None
            if self.checkpointing and torch.is_grad_enabled() and (prefix.requires_grad or rows.requires_grad):
                out_prefix, out_rows = checkpoint(block.forward_shared_prefix, prefix, rows, use_reentrant=False)
            else:
                out_prefix, out_rows = block.forward_shared_prefix(prefix, rows)
            if branch is not None:
                out_prefix, out_rows = out_prefix + branch(prefix, block), out_rows + branch(rows, block)
            prefix, rows = out_prefix, out_rows
        return prefix, rows


def _per_sample(prompt: torch.Tensor, batch: int) -> torch.Tensor:
    """(m, D) shared or (B, m, D) per-sample -> (B, m, D)."""
    return prompt.expand(batch, -1, -1) if prompt.dim() == 2 else prompt


def _check_prompts(prompts: Prompts, transformer: Transformer, batch: int, tower: str) -> int:
    """Validate a per-layer prompt list for `transformer`; return the prompt length m (0 when there are none)."""
    if prompts is None:
        return 0
    if len(prompts) > transformer.layers:
        raise ValueError(f"{tower} prompts has {len(prompts)} entries but the {tower} transformer has "
                         f"{transformer.layers} layers; pass at most {transformer.layers} (entry i is used at block i)")
    n_prompt = 0
    for index, prompt in enumerate(prompts):
        if prompt is None:
            continue
        expected = f"(m, {transformer.width}) shared or ({batch}, m, {transformer.width}) per-sample"
        if (prompt.dim() not in (2, 3) or prompt.shape[-1] != transformer.width
                or (prompt.dim() == 3 and prompt.shape[0] != batch)):
            raise ValueError(f"{tower} prompts[{index}] has shape {tuple(prompt.shape)}; expected {expected}")
        if prompt.shape[-2] < 1:
            raise ValueError(f"{tower} prompts[{index}] has no tokens; use None for a layer without prompts")
        if n_prompt and prompt.shape[-2] != n_prompt:
            raise ValueError(f"{tower} prompts[{index}] has {prompt.shape[-2]} tokens but earlier entries have "
                             f"{n_prompt}; all entries must have the same length m")
        n_prompt = prompt.shape[-2]
    return n_prompt


class VisionTransformer(nn.Module):
    """ViT image tower: patches -> [CLS] + patches + pos-emb [+ prompts] -> ln_pre -> blocks -> ln_post(CLS) @ proj."""

    def __init__(self, input_resolution: int, patch_size: int, width: int, layers: int, heads: int,
                 output_dim: int, mlp_width: Optional[int] = None, activation: str = "quick_gelu") -> None:
        super().__init__()
        if input_resolution % patch_size:
            raise ValueError(f"input resolution {input_resolution} is not a multiple of the patch size {patch_size}")
        self.input_resolution = input_resolution
        self.patch_size = patch_size
        self.width = width
        self.layers = layers
        self.output_dim = output_dim
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        scale = width ** -0.5
        n_tokens = (input_resolution // patch_size) ** 2 + 1
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(n_tokens, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads, causal=False, prompt_position="last",
                                       mlp_width=mlp_width, activation=activation)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def forward(self, image: torch.Tensor, prompts: Prompts = None) -> torch.Tensor:
        """image (B, 3, R, R) -> (B, output_dim).

        prompts[0] (m, D) or (B, m, D) is appended after [CLS] + patches (after the positional embedding, none added
        to the prompts) before `ln_pre`; prompts[i], i >= 1, replaces the last m tokens at the input of block i.
        """
        batch = image.shape[0]
        n_prompt = _check_prompts(prompts, self.transformer, batch, "vision")
        if n_prompt and prompts[0] is None:
            raise ValueError("vision prompts[0] is None but deeper entries are given: deep visual prompts replace the "
                             "tokens appended by prompts[0], so pass prompts[0] too")
        x = self.conv1(image.to(self.conv1.weight.dtype))  # (B, D, grid, grid)
        x = x.flatten(2).transpose(1, 2)  # (B, grid^2, D)
        cls = self.class_embedding.to(x.dtype).expand(batch, 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        if n_prompt:
            x = torch.cat([x, _per_sample(prompts[0], batch).to(x.dtype)], dim=1)
        x = self.ln_pre(x)
        x = self.transformer.forward_batch_first(x, None if not n_prompt else [None, *prompts[1:]])
        return self.ln_post(x[:, 0, :]) @ self.proj


class Bottleneck(nn.Module):
    """ResNet bottleneck with anti-aliased downsampling: stride > 1 is an average pool after the 3x3 conv (and
    before the 1x1 conv of the shortcut)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = BatchNorm2d(planes * self.expansion)
        self.relu3 = nn.ReLU(inplace=True)
        self.downsample = None
        if stride > 1 or inplanes != planes * self.expansion:
            self.downsample = nn.Sequential(OrderedDict([
                ("-1", nn.AvgPool2d(stride)),
                ("0", nn.Conv2d(inplanes, planes * self.expansion, 1, stride=1, bias=False)),
                ("1", BatchNorm2d(planes * self.expansion)),
            ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu3(out + identity)


class AttentionPool2d(nn.Module):
    """Attention pooling of a (B, C, H, W) feature map: the query is the mean token, keys/values all tokens."""

    def __init__(self, spatial_dim: int, embed_dim: int, num_heads: int, output_dim: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.positional_embedding = nn.Parameter(torch.randn(spatial_dim ** 2 + 1, embed_dim) / embed_dim ** 0.5)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) -> (B, output_dim)."""
        batch, channels = x.shape[:2]
        x = x.flatten(2).transpose(1, 2)  # (B, HW, C)
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1) + self.positional_embedding.to(x.dtype)

        def heads(t: torch.Tensor) -> torch.Tensor:  # (B, N, C) -> (B, heads, N, C / heads)
            return t.view(batch, t.shape[1], self.num_heads, channels // self.num_heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(self.q_proj(x[:, :1])), heads(self.k_proj(x)),
                                             heads(self.v_proj(x)))  # (B, heads, 1, C / heads)
        return self.c_proj(out.transpose(1, 2).reshape(batch, channels))


class ModifiedResNet(nn.Module):
    """CLIP's ResNet image tower: 3-conv stem with average pooling, anti-aliased bottlenecks, attention pooling.

    It has no prompt slots; it exists so that the RN checkpoints load for zero-shot use.
    """

    def __init__(self, layers: Sequence[int], output_dim: int, heads: int, input_resolution: int = 224,
                 width: int = 64) -> None:
        super().__init__()
        self.input_resolution = input_resolution
        self.width = width
        self.layers = tuple(layers)
        self.output_dim = output_dim
        self.conv1 = nn.Conv2d(3, width // 2, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = BatchNorm2d(width // 2)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width // 2, width // 2, kernel_size=3, padding=1, bias=False)
        self.bn2 = BatchNorm2d(width // 2)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(width // 2, width, kernel_size=3, padding=1, bias=False)
        self.bn3 = BatchNorm2d(width)
        self.relu3 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(2)
        inplanes = width
        stages = []
        for stage, blocks in enumerate(self.layers):
            planes = width * 2 ** stage
            stride = 1 if stage == 0 else 2
            stage_blocks = [Bottleneck(inplanes, planes, stride)]
            inplanes = planes * Bottleneck.expansion
            stage_blocks += [Bottleneck(inplanes, planes) for _ in range(1, blocks)]
            stages.append(nn.Sequential(*stage_blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        # The stem downsamples by 4 and stages 2-4 by 2 each: a 32x smaller map of 32 * width channels.
        self.attnpool = AttentionPool2d(input_resolution // 32, width * 32, heads, output_dim)

    def forward(self, image: torch.Tensor, prompts: Prompts = None) -> torch.Tensor:
        """image (B, 3, R, R) -> (B, output_dim)."""
        if prompts is not None and any(p is not None for p in prompts):
            raise ValueError("the ResNet image tower has no prompt slots; use a ViT CLIP (e.g. ViT-B/16) for "
                             "visual prompts, or pass prompts=None")
        x = image.to(self.conv1.weight.dtype)
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.avgpool(self.relu3(self.bn3(self.conv3(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.attnpool(x)


class CLIP(nn.Module):
    """Contrastive image-text model: `encode_image`, `encode_text` and the scaled cosine logits of `forward`."""

    # Two exact shortcuts of encode_text (see there); set on an instance or on the class. Turned off, they give the
    # same features at several times the cost, as the reference implementation does (the naive path of
    # scripts/benchmark.py):
    # truncate_text (default True): compute only the first max(EOT position) + 1 positions, not all context_length;
    # share_text_prefix: compute the token prefix common to all texts of a batch (start token + shared prompt
    #   tokens, e.g. "X X ... X" before the class names) once instead of once per text. It saves ~4x of the text
    #   tower's work and training memory but runs each block as two parts (more, smaller kernels), so it pays where
    #   compute is the limit: None (default) = on CPU only; True / False force it.
    truncate_text: bool = True
    share_text_prefix: Optional[bool] = None

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_dim = config.embed_dim
        self.context_length = config.context_length
        self.vocab_size = config.vocab_size
        if config.is_vit:
            self.visual = VisionTransformer(config.image_resolution, config.vision_patch_size, config.vision_width,
                                            config.vision_layers, config.vision_heads, config.embed_dim,
                                            config.vision_mlp_width, config.activation)
        else:
            self.visual = ModifiedResNet(config.vision_layers, config.embed_dim, config.vision_heads,
                                         config.image_resolution, config.vision_width)
        self.transformer = Transformer(config.transformer_width, config.transformer_layers, config.transformer_heads,
                                       causal=True, prompt_position="after_first",
                                       mlp_width=config.transformer_mlp_width, activation=config.activation)
        self.token_embedding = nn.Embedding(config.vocab_size, config.transformer_width)
        self.positional_embedding = nn.Parameter(torch.empty(config.context_length, config.transformer_width))
        self.ln_final = LayerNorm(config.transformer_width)
        self.text_projection = nn.Parameter(torch.empty(config.transformer_width, config.embed_dim))
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))
        self.initialize_parameters()

    def initialize_parameters(self) -> None:
        """CLIP's initialisation: N(0, 0.02) token / N(0, 0.01) positional embeddings, depth-scaled text blocks,
        1/sqrt(fan_in) attention pooling, zero-initialised last BatchNorm of every ResNet residual branch."""
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        if isinstance(self.visual, ModifiedResNet):
            pool = self.visual.attnpool
            std = pool.c_proj.in_features ** -0.5
            for linear in (pool.q_proj, pool.k_proj, pool.v_proj, pool.c_proj):
                nn.init.normal_(linear.weight, std=std)
            for stage in (self.visual.layer1, self.visual.layer2, self.visual.layer3, self.visual.layer4):
                for block in stage:
                    nn.init.zeros_(block.bn3.weight)
        width, layers = self.transformer.width, self.transformer.layers
        proj_std = width ** -0.5 * (2 * layers) ** -0.5
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=width ** -0.5)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=(2 * width) ** -0.5)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=width ** -0.5)

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype of the matmul/conv weights (float16 after `convert_weights(model, torch.float16)`)."""
        return self.visual.conv1.weight.dtype

    def encode_image(self, image: torch.Tensor, prompts: Prompts = None) -> torch.Tensor:
        """image (B, 3, R, R) -> (B, embed_dim), unnormalised. prompts: see `VisionTransformer.forward`."""
        return self.visual(image.to(self.dtype), prompts)

    def encode_text(self, text: torch.Tensor, prompts: Prompts = None) -> torch.Tensor:
        """text (n, context_length) token ids -> (n, embed_dim), unnormalised.

        prompts[0] (m, D_t) or (n, m, D_t) replaces the token embeddings at positions 1..m before the positional
        embedding is added; prompts[i], i >= 1, replaces positions 1..m at the input of block i. Only the first
        max(EOT position) + 1 positions are computed: with the causal mask, later (padding) tokens cannot change
        the EOT features. For the same reason the first P positions are identical in all n texts when their
        tokens (and prompts) are: that prefix is computed once and attended to by every text (`shared_prefix`).
        """
        batch = text.shape[0]
        n_prompt = _check_prompts(prompts, self.transformer, batch, "text")
        if 1 + n_prompt > self.context_length:
            raise ValueError(f"{n_prompt} text prompt tokens do not fit in the context length {self.context_length}")
        eot = text.argmax(dim=-1)  # EOT has the largest token id
        length = max(int(eot.max()) + 1, 1 + n_prompt) if self.truncate_text else self.context_length
        shared = self.shared_prefix(text[:, :length], eot, n_prompt, prompts)
        if shared:
            prefix = self.token_embedding(text[:1, :shared]).to(self.dtype)  # (1, P, D_t)
            if n_prompt and prompts[0] is not None:
                prefix = self.transformer.replace_prompt_tokens(prefix, prompts[0])
            prefix = prefix + self.positional_embedding[:shared].to(self.dtype)
            rows = self.token_embedding(text[:, shared:length]).to(self.dtype)  # (n, length - P, D_t)
            rows = rows + self.positional_embedding[shared:length].to(self.dtype)
            deep = None if not n_prompt else [None, *prompts[1:]]
            _, rows = self.transformer.forward_shared_prefix(prefix, rows, deep)
            rows = self.ln_final(rows)
            return rows[torch.arange(batch, device=rows.device), eot - shared] @ self.text_projection
        return self.encode_text_embeddings(self.token_embedding(text[:, :length]), eot, prompts)

    def encode_text_embeddings(self, embeddings: torch.Tensor, eot: torch.Tensor,
                               prompts: Prompts = None) -> torch.Tensor:
        """embeddings (n, L, D_t) input token embeddings (no positional embedding; L <= context_length), eot (n,)
        the position of each row's end-of-text token -> (n, embed_dim), unnormalised.

        The positional embedding of positions 0..L-1 is added here, after the caller assembled the rows, so a
        vector gets the positional embedding of wherever it was placed. prompts: as `encode_text` (prompts[0]
        replaces positions 1..m of the embeddings). Only the first max(eot) + 1 positions are computed.
        """
        batch, length = embeddings.shape[:2]
        if length > self.context_length:
            raise ValueError(f"text embeddings have {length} positions; the context length is {self.context_length}")
        if eot.shape != (batch,) or bool((eot < 0).any()) or bool((eot >= length).any()):
            raise ValueError(f"eot must hold one position in [0, {length}) per row ({batch} rows), "
                             f"got shape {tuple(eot.shape)}")
        n_prompt = _check_prompts(prompts, self.transformer, batch, "text")
        if self.truncate_text:
            length = min(max(int(eot.max()) + 1, 1 + n_prompt), length)
        x = embeddings[:, :length].to(self.dtype)  # (n, length, D_t)
        if n_prompt and prompts[0] is not None:
            x = self.transformer.replace_prompt_tokens(x, prompts[0])
        x = x + self.positional_embedding[:length].to(self.dtype)
        x = self.transformer.forward_batch_first(x, None if not n_prompt else [None, *prompts[1:]])
        x = self.ln_final(x)
        return x[torch.arange(batch, device=x.device), eot] @ self.text_projection

    def shared_prefix(self, text: torch.Tensor, eot: torch.Tensor, n_prompt: int, prompts: Prompts) -> int:
        """Length P of the prefix that `encode_text` computes once for all n texts, or 0 (no sharing).

        text (n, length) token ids, eot (n,) EOT positions. P = the longest common token prefix, capped at the
        first EOT (every text keeps its EOT after the prefix); used only when enabled (`share_text_prefix`), n > 1,
        P > m (the prompt positions 1..m lie inside the prefix) and the prompts are shared (2-D), since per-text
        prompts differ between texts.
        """
        share = self.share_text_prefix if self.share_text_prefix is not None else text.device.type == "cpu"
        if not share or text.shape[0] < 2:
            return 0
        if prompts is not None and any(p is not None and p.dim() == 3 for p in prompts):
            return 0
        differs = (text != text[:1]).any(dim=0)  # (length,): positions where some text differs from the first
        common = int(differs.int().argmax()) if bool(differs.any()) else text.shape[1]
        shared = min(common, int(eot.min()))
        return shared if shared > max(n_prompt, 1) else 0

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """image (B, 3, R, R), text (n, context_length) -> logits_per_image (B, n), logits_per_text (n, B)."""
        image_features = F.normalize(self.encode_image(image), dim=-1)
        text_features = F.normalize(self.encode_text(text), dim=-1)
        logits_per_image = self.logit_scale.exp() * image_features @ text_features.t()
        return logits_per_image, logits_per_image.t()


def convert_weights(model: nn.Module, dtype: torch.dtype = torch.float16) -> nn.Module:
    """Cast matmul and conv weights (and the two projection matrices) to dtype (default fp16, as openai-clip's
    one-argument `convert_weights(model)`), in place.

    LayerNorms, BatchNorms, embeddings, [CLS]/positional embeddings and logit_scale stay float32; `LayerNorm` and
    `BatchNorm2d` compute in float32 and cast back, so an fp16 model runs end to end. Returns model.
    """
    def cast(param: Optional[torch.Tensor]) -> None:
        if param is not None:
            param.data = param.data.to(dtype)

    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            cast(module.weight)
            cast(module.bias)
        elif isinstance(module, SelfAttention):
            cast(module.in_proj_weight)
            cast(module.in_proj_bias)
        for name in ("text_projection", "proj"):
            param = getattr(module, name, None)
            if isinstance(param, nn.Parameter):
                cast(param)
    return model


def config_from_state_dict(state_dict: Mapping[str, torch.Tensor]) -> CLIPConfig:
    """Read the architecture from the shapes (and key names) of an OpenAI-layout CLIP state dict."""
    required = ("text_projection", "positional_embedding", "token_embedding.weight", "ln_final.weight",
                "visual.conv1.weight")
    missing = [key for key in required if key not in state_dict]
    if missing:
        raise ValueError(f"not a CLIP state dict: missing {missing}; expected OpenAI CLIP key names")

    def count_children(prefix: str) -> int:  # distinct module indices directly below prefix
        return len({key[len(prefix):].split(".")[0] for key in state_dict if key.startswith(prefix)})

    if "visual.proj" in state_dict:
        vision_width = state_dict["visual.conv1.weight"].shape[0]
        patch_size = state_dict["visual.conv1.weight"].shape[-1]
        grid = round((state_dict["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        vision_layers: Union[int, Tuple[int, ...]] = count_children("visual.transformer.resblocks.")
        image_resolution = patch_size * grid
        vision_heads = vision_width // _HEAD_DIM
    else:
        patch_size = None
        vision_width = state_dict["visual.layer1.0.conv1.weight"].shape[0]
        vision_layers = tuple(count_children(f"visual.layer{stage}.") for stage in range(1, 5))
        grid = round((state_dict["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
        image_resolution = 32 * grid
        vision_heads = vision_width * 32 // _HEAD_DIM
    transformer_width = state_dict["ln_final.weight"].shape[0]
    return CLIPConfig(
        embed_dim=state_dict["text_projection"].shape[1],
        image_resolution=image_resolution,
        vision_layers=vision_layers,
        vision_width=vision_width,
        vision_heads=max(vision_heads, 1),
        vision_patch_size=patch_size,
        context_length=state_dict["positional_embedding"].shape[0],
        vocab_size=state_dict["token_embedding.weight"].shape[0],
        transformer_width=transformer_width,
        transformer_heads=max(transformer_width // _HEAD_DIM, 1),
        transformer_layers=count_children("transformer.resblocks."),
    )


def build_model(state_dict: Mapping[str, torch.Tensor]) -> CLIP:
    """Build a float32 CLIP from an OpenAI-layout state dict (strict: every key must match). Returns train mode,
    like any freshly built module; `clip.load` puts it in eval mode. openai-clip's `build_model` (fp16 weights,
    eval mode) is `clip.clip.build_model`, the one CoOp-family code calls."""
    # Own float32 copies: the model must not alias the caller's tensors (fp32 inputs would otherwise be shared).
    state_dict = {key: value.to(torch.float32, copy=True) if value.is_floating_point() else value.clone()
                  for key, value in state_dict.items() if key not in _NON_WEIGHT_KEYS}
    config = config_from_state_dict(state_dict)
    # Build without allocating or initialising weights: every one is replaced by the state dict's tensor.
    with torch.device("meta"):
        model = CLIP(config)
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model
