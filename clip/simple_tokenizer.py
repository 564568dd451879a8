"""openai-clip's ``clip.simple_tokenizer`` module: ``SimpleTokenizer`` (``encode`` / ``decode``), ``default_bpe``.

For code written against openai-clip (``from clip.simple_tokenizer import SimpleTokenizer as _Tokenizer``). It is
this library's tokenizer (`clip.tokenizer.Tokenizer`): the same ids as openai-clip's on the same vocabulary file.
"""

from __future__ import annotations

from typing import Optional

from .tokenizer import Tokenizer, bytes_to_unicode, vocab_path

__all__ = ["SimpleTokenizer", "bytes_to_unicode", "default_bpe"]


def default_bpe() -> str:
    """Path of CLIP's BPE merges file (the installed openai-clip distribution's)."""
    return str(vocab_path())


class SimpleTokenizer(Tokenizer):
    """openai-clip's tokenizer class: ``encode(text) -> list of ids`` (no SOT/EOT), ``decode(ids) -> text``,
    ``encoder`` / ``decoder`` dicts (token <-> id)."""

    def __init__(self, bpe_path: Optional[str] = None) -> None:
        super().__init__(bpe_path)
