"""clip.tokenizer against openai-clip's `simple_tokenizer.py` (loaded by file path from the installed distribution)."""

import importlib.metadata
import importlib.util
import subprocess
from pathlib import Path

import pytest
import torch

from clip.tokenizer import Tokenizer, default_tokenizer, tokenize, vocab_path

CORPUS = [
    "a photo of a dog.",
    "A PHOTO OF A DOG.",
    "MiXeD CaSe WoRdS",
    "Héllo Wörld, café naïve façade jalapeño",
    "Ünïcödé ﬁ ligature and ½ fraction",
    "日本語のテキスト、中文文本 и русский текст",
    "emoji 🐶🐱 thumbs 👍🏽 family 👨‍👩‍👧",
    "&amp; &lt;b&gt; &quot;quoted&quot; &#39;apostrophe&#39; &amp;amp;",
    "mojibake â€œquotesâ€\x9d and Ã©",
    "It's 3.14159, isn't it?! 1,000,000 2024-01-31 #42",
    "don't we'll they've I'm you'd she's",
    "punctuation ... !!! ??? --- ((())) [x] {y} <z> @#$%^&*",
    "  leading, trailing \t tabs\nnew lines\r\n  ",
    "<|startoftext|> special tokens in text <|endoftext|>",
    "",
    "x",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "a photo of a " + "very " * 60 + "long caption.",
    "🙂" * 40,
]


def load_reference_module(name: str):
    distribution = importlib.metadata.distribution("openai-clip")
    file = next(f for f in distribution.files if str(f) == f"clip/{name}.py")
    spec = importlib.util.spec_from_file_location(f"openai_clip_reference_{name}", distribution.locate_file(file))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def reference():
    return load_reference_module("simple_tokenizer").SimpleTokenizer()


def reference_tokenize(reference, text, context_length=77):
    """openai-clip's tokenize rule on the reference encoder: SOT + ids + EOT, cut with EOT kept last, zero-padded."""
    ids = [reference.encoder["<|startoftext|>"]] + reference.encode(text) + [reference.encoder["<|endoftext|>"]]
    if len(ids) > context_length:
        ids = ids[:context_length]
        ids[-1] = reference.encoder["<|endoftext|>"]
    return ids + [0] * (context_length - len(ids))


@pytest.mark.parametrize("text", CORPUS)
def test_encode_and_decode_match_reference(reference, text):
    ids = default_tokenizer().encode(text)
    assert ids == reference.encode(text)
    assert default_tokenizer().decode(ids) == reference.decode(ids)


def test_tokenize_matches_reference_with_truncation(reference):
    tokens = tokenize(CORPUS, truncate=True)
    assert tokens.dtype == torch.long and tokens.shape == (len(CORPUS), 77)
    assert tokens.tolist() == [reference_tokenize(reference, text) for text in CORPUS]
    short = tokenize(CORPUS[:4], context_length=8, truncate=True)
    assert short.tolist() == [reference_tokenize(reference, text, 8) for text in CORPUS[:4]]


def test_special_token_ids_and_single_string():
    tokens = tokenize("a photo of a dog.")
    assert tokens.shape == (1, 77)
    assert tokens[0, 0] == 49406 and tokens[0].argmax() == 7 and tokens[0, 7] == 49407
    assert tokenize("X")[0, 1] == 343  # SPEC: the placeholder word "X" tokenizes to 343


def test_too_long_text_raises_naming_the_text():
    long_text = "a photo of a " + "very " * 80 + "long caption."
    with pytest.raises(ValueError, match="'a photo of a very very.*truncate=True"):
        tokenize(["fine", long_text])
    assert tokenize([long_text], truncate=True)[0, -1] == 49407


def test_vocabulary_is_read_from_the_installed_distribution_not_the_repo():
    path = vocab_path()
    location = Path(importlib.metadata.distribution("openai-clip").locate_file(""))
    assert path.is_file() and location in path.parents
    repo = Path(__file__).resolve().parents[1]
    tracked = subprocess.run(["git", "ls-files"], cwd=repo, capture_output=True, text=True).stdout.split()
    assert not [name for name in tracked if "bpe_simple_vocab" in name]
    assert len(Tokenizer(path).encoder) == 49408
