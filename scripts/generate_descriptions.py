#!/usr/bin/env python
"""Generate LLM visual descriptions of classes for HiCroPL's frozen text classifier (SPEC §4.2, §9).

Asks any OpenAI-compatible chat endpoint (`POST <base-url>/chat/completions`) for N short visual sentences per
class and writes them in the CoPrompt format read by `descriptions.load_descriptions`:
`{class name with "_" replaced by " ": [sentence, ...]}`, keys in label order.

The run is resumable: the output file is rewritten atomically after every class and classes already present in
it are skipped, so an interrupted run is finished by running the same command again. Transient failures
(timeouts, connection errors, HTTP 408/409/429/5xx) and unusable replies are retried with exponential backoff.
Sentences longer than CLIP's 77-token context are dropped (HiCroPL tokenizes without truncation).

Examples (from the repository root):
    export OPENAI_API_KEY=...
    python scripts/generate_descriptions.py --classnames my_classes.txt --output descriptions/my_dataset.json \
        --model gpt-4o-mini --hint "a type of bird"
    python scripts/generate_descriptions.py --dataset ToyShapes --root ./data --output /tmp/toy.json \
        --base-url http://127.0.0.1:8000/v1 --model local-model --key-env LOCAL_KEY
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from common.errors import UserError  # noqa: E402
from descriptions import description_key  # noqa: E402  (the key HiCroPL looks a class up by, SPEC §4.2)

# The whole request sent for one class. `{n}` = --n-sentences, `{classname}` = the key written to the file,
# `{hint}` = ", <--hint>" or "" (e.g. ", a type of aircraft"), which disambiguates names such as "crane".
SYSTEM_PROMPT = "You write short, concrete visual descriptions that are used to build image classifiers."
PROMPT_TEMPLATE = (
    "Write {n} different sentences describing what a photo of a {classname}{hint} shows. "
    "Each sentence names only visible features (shape, colour, parts, texture, layout, typical setting) "
    "that tell a {classname} apart from similar things. Keep every sentence under 25 words, vary how the "
    "sentences begin, and do not use the words 'photo' or 'image'. "
    "Answer with a JSON list of {n} strings and nothing else."
)

CLIP_CONTEXT_LENGTH = 77  # HiCroPL tokenizes descriptions to CLIP's context without truncation (SPEC §4.2)
# Retrying cannot fix a client error, except these: timeout, conflict, rate limit.
RETRYABLE_HTTP_CODES = {408, 409, 429}
WNID_LINE = re.compile(r"^n\d{8}\s+")  # ImageNet-style "<wnid> <classname>" lines (CoOp classnames.txt)


class ReplyError(ValueError):
    """The endpoint answered, but the answer holds too few usable sentences (worth asking again)."""


class PermanentError(RuntimeError):
    """A failure that retrying cannot fix (bad key, unknown model, bad URL)."""


class GiveUpError(RuntimeError):
    """A class still failed after every allowed retry."""


def read_classnames_file(path: Path) -> List[str]:
    """One class per line, label order; blank lines ignored; a leading ImageNet wnid is stripped."""
    names = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = WNID_LINE.sub("", line.strip())
        if line:
            names.append(line)
    if not names:
        raise SystemExit(f"error: {path} holds no class names; write one class name per line")
    return names


def dataset_classnames(dataset_name: str, root: str, config_file: Optional[str]) -> List[str]:
    """Class names (label order) of a registered dataset, built exactly as training builds it."""
    from dassl.config import get_cfg_default, merge_from_file_checked
    from dassl.data.datasets import build_dataset

    from train import extend_cfg  # also registers every dataset

    cfg = get_cfg_default()
    extend_cfg(cfg)
    if config_file:
        merge_from_file_checked(cfg, config_file)
    cfg.DATASET.NAME = dataset_name
    cfg.DATASET.ROOT = root
    return list(build_dataset(cfg).classnames)


def token_lengths(sentences: Sequence[str]) -> List[int]:
    """Number of CLIP tokens of each sentence including SOT and EOT, measured with the repo's tokenizer."""
    from clip import tokenize

    # A context far above 77 so nothing is truncated; EOT (49407) is the largest id, so argmax finds it.
    ids = tokenize(list(sentences), context_length=1024, truncate=True)  # (n, 1024)
    return (ids.argmax(dim=-1) + 1).tolist()


def parse_reply(content: str, n_wanted: int, min_sentences: int) -> List[str]:
    """Usable sentences from a chat reply: a JSON list of strings (optionally inside a ``` fence or prose).

    Keeps the first `n_wanted` distinct, non-empty sentences that fit CLIP's context; raises ReplyError when
    fewer than `min_sentences` remain.
    """
    start, end = content.find("["), content.rfind("]")
    try:
        items = json.loads(content[start:end + 1]) if 0 <= start < end else None
    except json.JSONDecodeError:
        items = None
    if not isinstance(items, list):
        raise ReplyError(f"reply is not a JSON list of strings: {content[:120]!r}")
    sentences: List[str] = []
    seen = set()
    for item in items:
        if not isinstance(item, str):
            continue
        text = " ".join(item.split())
        if text and text.lower() not in seen:
            seen.add(text.lower())
            sentences.append(text)
    if sentences:
        lengths = token_lengths(sentences)
        sentences = [s for s, n in zip(sentences, lengths) if n <= CLIP_CONTEXT_LENGTH]
    sentences = sentences[:n_wanted]
    if len(sentences) < min_sentences:
        raise ReplyError(f"reply has {len(sentences)} usable sentences, {min_sentences} needed")
    return sentences


def chat_completion(base_url: str, model: str, api_key: str, prompt: str, temperature: float,
                    timeout: float) -> str:
    """Content of the first choice of one OpenAI-compatible chat completion."""
    body = {
        "model": model,
        "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}],
        "temperature": temperature,
    }
    request = urllib.request.Request(
        base_url.rstrip("/") + "/chat/completions",
        data=json.dumps(body).encode("utf-8"),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {api_key}"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        payload = json.loads(response.read().decode("utf-8"))
    try:
        return payload["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise ReplyError(f"response has no choices[0].message.content: {str(payload)[:120]!r}") from None


def with_retries(call: Callable[[], List[str]], retries: int, backoff: float, what: str) -> List[str]:
    """Run `call`, retrying transient failures up to `retries` times with delays backoff * 2**attempt."""
    attempt = 0
    while True:
        try:
            return call()
        except urllib.error.HTTPError as err:
            if err.code not in RETRYABLE_HTTP_CODES and err.code < 500:
                detail = err.read().decode("utf-8", "replace")[:200]
                raise PermanentError(f"{what}: HTTP {err.code} {err.reason}: {detail}") from None
            reason = f"HTTP {err.code}"
            retry_after = err.headers.get("Retry-After", "") if err.headers else ""
        except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError,
                json.JSONDecodeError, ReplyError) as err:
            reason, retry_after = str(err), ""
        if attempt == retries:
            raise GiveUpError(f"{what}: giving up after {retries + 1} attempts, last error: {reason}")
        delay = backoff * 2 ** attempt
        if retry_after.isdigit():  # the server's own rate-limit hint, capped so one reply cannot stall the run
            delay = max(delay, min(float(retry_after), 60.0))
        time.sleep(delay)
        attempt += 1


def load_existing(path: Path) -> Dict[str, List[str]]:
    """Descriptions already written by an earlier (possibly interrupted) run; {} when there is no file."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise SystemExit(f"error: {path} is not valid JSON ({err}); fix or move it away, then rerun") from None
    if not isinstance(data, dict):
        raise SystemExit(f"error: {path} must hold one JSON object {{class name: [sentences]}}")
    return data


def write_atomic(path: Path, data: Dict[str, List[str]]) -> None:
    """Write the JSON next to `path` then rename it over `path`, so a crash never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, ensure_ascii=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def generate(keys: Sequence[str], output: Path, ask: Callable[[str], List[str]]) -> Dict[str, List[str]]:
    """Fill `output` with `ask(key)` for every key not in it yet; keys kept in `keys` order, extras at the end."""
    from tqdm import tqdm

    data = load_existing(output)
    todo = [k for k in keys if k not in data]
    with tqdm(total=len(keys), initial=len(keys) - len(todo), unit="class", desc="descriptions") as bar:
        for key in todo:
            data[key] = ask(key)
            ordered = {k: data[k] for k in keys if k in data}
            ordered.update((k, v) for k, v in data.items() if k not in ordered)
            data = ordered
            write_atomic(output, data)
            bar.update(1)
    return data


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--classnames", type=Path,
                        help="text file, one class name per line in label order ('<wnid> <name>' lines allowed)")
    source.add_argument("--dataset", help="registered DATASET.NAME (e.g. OxfordPets); needs its data under --root")
    parser.add_argument("--root", default="", help="DATASET.ROOT for --dataset")
    parser.add_argument("--config-file", help="optional dataset yaml merged before building --dataset")
    parser.add_argument("--output", type=Path, required=True,
                        help="JSON file to create or complete (classes already in it are skipped)")
    parser.add_argument("--base-url", default="https://api.openai.com/v1",
                        help="OpenAI-compatible API root; '/chat/completions' is appended")
    parser.add_argument("--model", required=True, help="chat model name passed to the endpoint")
    parser.add_argument("--key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    parser.add_argument("--n-sentences", type=int, default=10, help="sentences requested per class (>= 1)")
    parser.add_argument("--min-sentences", type=int, default=None,
                        help="fewest usable sentences accepted per reply before asking again "
                             "(default: min(5, --n-sentences))")
    parser.add_argument("--hint", default="", help="what the classes are, e.g. 'a type of flower' (optional)")
    parser.add_argument("--temperature", type=float, default=0.7, help="sampling temperature sent to the model")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for one reply")
    parser.add_argument("--retries", type=int, default=5, help="extra attempts per class after a transient failure")
    parser.add_argument("--backoff", type=float, default=2.0,
                        help="first retry delay in seconds, doubled on every further retry")
    args = parser.parse_args(argv)
    if args.n_sentences < 1:
        parser.error(f"--n-sentences must be >= 1, got {args.n_sentences}")
    if args.min_sentences is None:
        args.min_sentences = min(5, args.n_sentences)
    if not 1 <= args.min_sentences <= args.n_sentences:
        parser.error(f"--min-sentences must be between 1 and --n-sentences ({args.n_sentences}), "
                     f"got {args.min_sentences}")
    if args.retries < 0 or args.backoff < 0:
        parser.error("--retries and --backoff must be >= 0")
    if args.dataset and not args.root:
        parser.error("--dataset needs --root (the DATASET.ROOT holding that dataset's files)")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    api_key = os.environ.get(args.key_env)
    if not api_key:
        raise SystemExit(f"error: environment variable {args.key_env} is not set; export your API key in it "
                         "(or name another variable with --key-env)")
    if args.classnames:
        if not args.classnames.is_file():
            raise SystemExit(f"error: --classnames file {args.classnames} does not exist")
        classnames = read_classnames_file(args.classnames)
    else:
        try:
            classnames = dataset_classnames(args.dataset, args.root, args.config_file)
        except UserError as err:
            raise SystemExit(f"error: {err}") from None
    keys = list(dict.fromkeys(description_key(c) for c in classnames))  # duplicate names share one entry
    hint = f", {args.hint}" if args.hint else ""

    def ask(key: str) -> List[str]:
        prompt = PROMPT_TEMPLATE.format(n=args.n_sentences, classname=key, hint=hint)
        return with_retries(
            lambda: parse_reply(chat_completion(args.base_url, args.model, api_key, prompt, args.temperature,
                                                args.timeout), args.n_sentences, args.min_sentences),
            args.retries, args.backoff, what=f"class {key!r}")

    try:
        data = generate(keys, args.output, ask)
    except (PermanentError, GiveUpError) as err:
        raise SystemExit(f"error: {err}\n(classes finished so far are saved in {args.output}; "
                         "rerun the same command to continue)") from None
    print(f"wrote {len(keys)} classes to {args.output} ({sum(len(data[k]) for k in keys)} sentences)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
