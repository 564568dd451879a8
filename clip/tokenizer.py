"""CLIP's byte-level BPE tokenizer.

Text is cleaned (ftfy, HTML entities, whitespace), lower-cased, split into words / single digits / punctuation runs,
mapped byte-wise to printable unicode and merged with CLIP's 48,894 BPE merges. The merge list is the data file
`bpe_simple_vocab_16e6.txt.gz` of the installed `openai-clip` distribution (found through its package metadata: the
repo-root `clip/` package shadows that distribution's own `clip` module name).
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.metadata
from pathlib import Path
from typing import Dict, List, Sequence, Tuple, Union

import ftfy
import regex
import torch

START_OF_TEXT = "<|startoftext|>"
END_OF_TEXT = "<|endoftext|>"
_VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
_DISTRIBUTION = "openai-clip"
# CLIP's vocabulary: 256 byte symbols, their 256 word-final ("</w>") forms, one token per merge, then the two
# special tokens -> 49,408 ids. The merges file has a header line, and CLIP uses only this many of its merges.
_N_MERGES = 49152 - 256 - 2
# Words (letters), single digits, runs of other non-space characters, English contractions, and the special tokens.
_WORD_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE)


def vocab_path() -> Path:
    """Path of the BPE merges file inside the installed openai-clip distribution."""
    try:
        distribution = importlib.metadata.distribution(_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(f"the CLIP BPE vocabulary comes from the '{_DISTRIBUTION}' package, which is not "
                                f"installed; run `pip install {_DISTRIBUTION}`") from None
    for file in distribution.files or ():
        if file.name == _VOCAB_FILE:
            return Path(distribution.locate_file(file))
    raise FileNotFoundError(f"the installed '{_DISTRIBUTION}' package has no {_VOCAB_FILE}; reinstall it")


def bytes_to_unicode() -> Dict[int, str]:
    """Reversible map from the 256 byte values to printable unicode characters (BPE works on these).

    Printable Latin-1 bytes map to themselves; the others (control characters, space, ...) are shifted to code points
    from 256 upwards, so that no byte maps to whitespace or a control character.
    """
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    mapping = {byte: chr(byte) for byte in printable}
    shifted = 0
    for byte in range(256):
        if byte not in mapping:
            mapping[byte] = chr(256 + shifted)
            shifted += 1
    return mapping


def clean_text(text: str) -> str:
    """Fix mojibake (ftfy), unescape HTML entities (twice: doubly escaped text is common), collapse whitespace,
    lower-case."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return regex.sub(r"\s+", " ", text).strip().lower()


class Tokenizer:
    """Byte-level BPE with CLIP's vocabulary. `encode` gives ids without SOT/EOT; `decode` inverts it."""

    def __init__(self, path: Union[str, Path, None] = None) -> None:
        path = Path(path) if path is not None else vocab_path()
        with gzip.open(path, "rt", encoding="utf-8") as file:
            lines = file.read().split("\n")
        merges = [tuple(line.split()) for line in lines[1:_N_MERGES + 1]]
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {char: byte for byte, char in self.byte_encoder.items()}
        symbols = list(self.byte_encoder.values())
        vocab = symbols + [symbol + "</w>" for symbol in symbols] + ["".join(merge) for merge in merges]
        vocab += [START_OF_TEXT, END_OF_TEXT]
        self.encoder = {token: index for index, token in enumerate(vocab)}
        self.decoder = {index: token for token, index in self.encoder.items()}
        self.merge_ranks = {merge: rank for rank, merge in enumerate(merges)}
        self.sot_token = self.encoder[START_OF_TEXT]
        self.eot_token = self.encoder[END_OF_TEXT]
        # Word -> its BPE symbols; a corpus repeats words, and merging is the costly step.
        self._cache: Dict[str, Tuple[str, ...]] = {START_OF_TEXT: (START_OF_TEXT,), END_OF_TEXT: (END_OF_TEXT,)}

    def bpe(self, word: str) -> Tuple[str, ...]:
        """Merge the characters of one (byte-encoded) word, lowest merge rank first; the last symbol ends in </w>."""
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        while len(symbols) > 1:
            pairs = set(zip(symbols, symbols[1:]))
            best = min(pairs, key=lambda pair: self.merge_ranks.get(pair, float("inf")))
            if best not in self.merge_ranks:
                break
            merged: List[str] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        result = tuple(symbols)
        self._cache[word] = result
        return result

    def encode(self, text: str) -> List[int]:
        """Token ids of text, without start/end-of-text tokens."""
        ids: List[int] = []
        for word in _WORD_PATTERN.findall(clean_text(text)):
            encoded = "".join(self.byte_encoder[byte] for byte in word.encode("utf-8"))
            ids.extend(self.encoder[symbol] for symbol in self.bpe(encoded))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids (lower-cased and cleaned, as encoded; word ends become spaces)."""
        text = "".join(self.decoder[int(index)] for index in ids)
        raw = bytearray(self.byte_decoder[char] for char in text)
        return raw.decode("utf-8", errors="replace").replace("</w>", " ")


@functools.lru_cache(maxsize=1)
def default_tokenizer() -> Tokenizer:
    """The process-wide tokenizer with the installed openai-clip vocabulary (loaded on first use)."""
    return Tokenizer()


def tokenize(texts: Union[str, Sequence[str]], context_length: int = 77, truncate: bool = False) -> torch.Tensor:
    """Token ids (n, context_length), int64: [SOT] + BPE ids + [EOT], zero-padded.

    A text longer than context_length raises ValueError, unless truncate=True: then it is cut to context_length
    tokens and the last one is replaced by EOT (so EOT pooling still finds it).
    """
    if isinstance(texts, str):
        texts = [texts]
    tokenizer = default_tokenizer()
    result = torch.zeros(len(texts), context_length, dtype=torch.long)
    for row, text in enumerate(texts):
        ids = [tokenizer.sot_token] + tokenizer.encode(text) + [tokenizer.eot_token]
        if len(ids) > context_length:
            if not truncate:
                raise ValueError(f"text {text!r} is {len(ids)} tokens long, more than the context length "
                                 f"{context_length}; shorten it or pass truncate=True")
            ids = ids[:context_length - 1] + [tokenizer.eot_token]
        result[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
    return result
