"""scripts/generate_descriptions.py against a local stand-in OpenAI-compatible chat server.

The server runs in a thread on 127.0.0.1 (free port chosen by the OS) and answers each chat request with what
the test scripted for the class named in the prompt, so every request the script makes is recorded and checked.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "generate_descriptions.py"
KEY_ENV = "HICROPL_TEST_LLM_KEY"
KEY = "sk-test-123"


def load_script():
    spec = importlib.util.spec_from_file_location("generate_descriptions", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = load_script()


def prompt_regex() -> "re.Pattern[str]":
    """The script's PROMPT_TEMPLATE as a regex capturing the class name (group c) and the hint (group h)."""
    out, named = [], False
    for part in re.split(r"(\{n\}|\{classname\}|\{hint\})", gen.PROMPT_TEMPLATE):
        if part == "{n}":
            out.append(r"\d+")
        elif part == "{hint}":
            out.append(r"(?P<h>(?:, .+?)?)")
        elif part == "{classname}":
            out.append("(?P=c)" if named else "(?P<c>.+?)")
            named = True
        else:
            out.append(re.escape(part))
    return re.compile("".join(out) + r"\Z", re.S)


PROMPT_RE = prompt_regex()


def good_sentences(key: str, n: int) -> List[str]:
    return [f"A {key} seen from angle {i}, with its distinctive parts clearly visible." for i in range(n)]


def chat_body(content: str) -> bytes:
    return json.dumps({"id": "x", "object": "chat.completion",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                    "finish_reason": "stop"}]}).encode()


class FakeLLM:
    """Records requests; replies per class from a queue of scripted answers, then with `default`."""

    def __init__(self, keys: List[str], n: int = 6):
        self.keys, self.n = keys, n
        self.requests: List[Dict] = []
        self.queues: Dict[str, List[Tuple[int, bytes, Dict[str, str]]]] = {}
        self.lock = threading.Lock()

    def script(self, key: str, *answers: Tuple[int, bytes, Dict[str, str]]) -> None:
        self.queues.setdefault(key, []).extend(answers)

    def class_of(self, prompt: str) -> str:
        match = PROMPT_RE.match(prompt)
        assert match and match["c"] in self.keys, f"unexpected prompt {prompt!r}"
        return match["c"]

    def answer(self, path: str, headers, body: bytes) -> Tuple[int, bytes, Dict[str, str]]:
        request = json.loads(body)
        prompt = request["messages"][-1]["content"]
        key = self.class_of(prompt)
        with self.lock:
            self.requests.append({"path": path, "auth": headers.get("Authorization"), "key": key,
                                  "model": request["model"], "prompt": prompt,
                                  "hint": PROMPT_RE.match(prompt)["h"]})
            queue = self.queues.get(key)
            if queue:
                return queue.pop(0)
        return 200, chat_body(json.dumps(good_sentences(key, self.n))), {}

    def requested(self) -> List[str]:
        return [r["key"] for r in self.requests]


@pytest.fixture
def server():
    holder: Dict[str, FakeLLM] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server API)
            body = self.rfile.read(int(self.headers["Content-Length"]))
            status, payload, extra = holder["llm"].answer(self.path, self.headers, body)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in extra.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):  # keep pytest output clean
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.timeout = 5
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()

    def start(keys: List[str], n: int = 6) -> Tuple[FakeLLM, str]:
        holder["llm"] = FakeLLM(keys, n)
        return holder["llm"], f"http://127.0.0.1:{httpd.server_address[1]}/v1"

    yield start
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def cli_args(base_url: str, classnames: Path, output: Path, *extra: str) -> List[str]:
    return ["--classnames", str(classnames), "--output", str(output), "--base-url", base_url,
            "--model", "stand-in-model", "--key-env", KEY_ENV, "--n-sentences", "6",
            "--retries", "2", "--backoff", "0.01", "--timeout", "10", *extra]


def run_cli(args: List[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, **{KEY_ENV: KEY})
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)


CLASSES = ["Apply_Eye_Makeup", "Baby_Crawling", "707-320", "2012 Audi TTS Coupe", "Annual Crop Land"]
KEYS = ["Apply Eye Makeup", "Baby Crawling", "707-320", "2012 Audi TTS Coupe", "Annual Crop Land"]


def test_cli_resumes_after_interruption(server, tmp_path):
    llm, url = server(KEYS)
    names = tmp_path / "classes.txt"
    names.write_text("\n".join(CLASSES) + "\n")
    out = tmp_path / "out" / "desc.json"
    # The third class gets a permanent error (HTTP 401): the run must stop at once, keeping the first two.
    llm.script(KEYS[2], (401, b'{"error": "bad key"}', {}))
    first = run_cli(cli_args(url, names, out))
    assert first.returncode != 0
    assert "707-320" in first.stderr and "rerun" in first.stderr
    assert llm.requested() == KEYS[:3]  # no retry of a permanent error, nothing asked after it
    saved = json.loads(out.read_text())
    assert list(saved) == KEYS[:2]
    assert [p.name for p in out.parent.iterdir()] == ["desc.json"]  # no temp file left behind

    # Every request was a proper OpenAI chat call carrying the key from --key-env and the class key.
    for r in llm.requests:
        assert r["path"] == "/v1/chat/completions"
        assert r["auth"] == f"Bearer {KEY}"
        assert r["model"] == "stand-in-model"
        assert r["prompt"] == gen.PROMPT_TEMPLATE.format(n=6, classname=r["key"], hint="")

    llm.requests.clear()
    second = run_cli(cli_args(url, names, out))
    assert second.returncode == 0, second.stderr
    assert llm.requested() == KEYS[2:]  # finished classes are not asked again
    final = json.loads(out.read_text())
    assert list(final) == KEYS  # label order, "_" -> " ", casing kept
    assert final == {k: good_sentences(k, 6) for k in KEYS}
    assert "\n \"" in out.read_text()  # indent 1, like the shipped files

    llm.requests.clear()
    third = run_cli(cli_args(url, names, out))
    assert third.returncode == 0 and llm.requests == []


def test_transient_errors_are_retried(server, tmp_path, monkeypatch):
    llm, url = server(KEYS[:2])
    names = tmp_path / "classes.txt"
    names.write_text("n00000001 Apply_Eye_Makeup\nn00000002 Baby_Crawling\n")  # wnid lines are accepted
    llm.script(KEYS[0], (503, b"overloaded", {}), (500, b"oops", {}))
    llm.script(KEYS[1], (429, b"slow down", {"Retry-After": "3"}))
    monkeypatch.setenv(KEY_ENV, KEY)
    delays: List[float] = []
    monkeypatch.setattr(gen.time, "sleep", delays.append)
    out = tmp_path / "desc.json"
    assert gen.main(cli_args(url, names, out)) == 0
    assert llm.requested() == [KEYS[0]] * 3 + [KEYS[1]] * 2
    # Exponential backoff (--backoff 0.01 doubles per retry), then the server's Retry-After hint wins.
    assert delays == pytest.approx([0.01, 0.02, 3.0])
    assert json.loads(out.read_text()) == {k: good_sentences(k, 6) for k in KEYS[:2]}


def test_malformed_replies(server, tmp_path, monkeypatch):
    llm, url = server(KEYS[:2])
    names = tmp_path / "classes.txt"
    names.write_text("Apply_Eye_Makeup\nBaby_Crawling\n")
    monkeypatch.setenv(KEY_ENV, KEY)
    fenced = "Here you go:\n```json\n" + json.dumps(good_sentences(KEYS[0], 6)) + "\n```"
    # Prose instead of JSON, then a body that is not a chat completion at all, then a usable fenced answer.
    llm.script(KEYS[0], (200, chat_body("Sure! A person applies make-up."), {}), (200, b"<html>", {}),
               (200, chat_body(fenced), {}))
    # Always malformed: the run gives up on this class after --retries and keeps what it finished.
    llm.script(KEYS[1], *[(200, chat_body('["only one", 3, null]'), {})] * 3)
    out = tmp_path / "desc.json"
    with pytest.raises(SystemExit) as exc:
        gen.main(cli_args(url, names, out))
    assert "Baby Crawling" in str(exc.value) and "3 attempts" in str(exc.value)
    assert llm.requested() == [KEYS[0]] * 3 + [KEYS[1]] * 3
    assert json.loads(out.read_text()) == {KEYS[0]: good_sentences(KEYS[0], 6)}


def test_reply_cleaning_and_token_limit():
    # 75 one-token words + SOT + EOT = 77 tokens fits CLIP's context exactly; one more word does not.
    fits, too_long = " ".join(["cat"] * 75), " ".join(["cat"] * 76)
    reply = json.dumps(["  A red  petal. ", "a red petal.", "", fits, too_long, 7, "Green stem."] +
                       [f"Leaf number {i}." for i in range(10)])
    got = gen.parse_reply(reply, n_wanted=5, min_sentences=3)
    assert got == ["A red petal.", fits, "Green stem.", "Leaf number 0.", "Leaf number 1."]
    assert gen.token_lengths([fits, too_long, "cat"]) == [77, 78, 3]
    with pytest.raises(gen.ReplyError):
        gen.parse_reply(json.dumps([too_long, "one", "two"]), n_wanted=5, min_sentences=3)
    for broken in ('{"sentences": "a, b, c"}', '["A cut-off reply", "with no end'):
        with pytest.raises(gen.ReplyError):
            gen.parse_reply(broken, n_wanted=5, min_sentences=1)


def test_bad_input_is_reported(tmp_path, monkeypatch, capsys):
    names = tmp_path / "classes.txt"
    names.write_text("circle\n")
    out = tmp_path / "o.json"
    base = ["--classnames", str(names), "--output", str(out), "--model", "m", "--key-env", KEY_ENV]
    with pytest.raises(SystemExit):
        gen.main(base + ["--n-sentences", "0"])
    assert "--n-sentences must be >= 1" in capsys.readouterr().err
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(SystemExit) as exc:
        gen.main(base)
    assert KEY_ENV in str(exc.value) and "not set" in str(exc.value)
    monkeypatch.setenv(KEY_ENV, KEY)
    out.write_text("{not json")
    with pytest.raises(SystemExit) as exc:
        gen.main(base)
    assert "not valid JSON" in str(exc.value)
    assert out.read_text() == "{not json"  # an unreadable existing file is never overwritten
    with pytest.raises(SystemExit) as exc:  # a folder is not reported as missing
        gen.main(["--classnames", str(tmp_path)] + base[2:])
    assert str(exc.value) == f"error: --classnames {tmp_path} is a folder; pass a text file, one class a line"


TOY_SHAPES = ["circle", "square", "triangle", "star", "hexagon", "cross", "ring", "crescent", "pentagon", "arrow"]


def test_dataset_option_reads_registered_classes(server, tmp_path, monkeypatch):
    llm, url = server(TOY_SHAPES)
    monkeypatch.setenv(KEY_ENV, KEY)
    out = tmp_path / "toy.json"
    args = cli_args(url, tmp_path / "unused.txt", out, "--hint", "a simple geometric shape")
    args[:2] = ["--dataset", "ToyShapes", "--root", str(tmp_path / "data")]
    assert gen.main(args) == 0
    assert list(json.loads(out.read_text())) == TOY_SHAPES  # the contract's label order
    assert [r["hint"] for r in llm.requests] == [", a simple geometric shape"] * len(TOY_SHAPES)
    with pytest.raises(SystemExit) as exc:
        gen.main(["--dataset", "NoSuchSet", "--root", str(tmp_path), "--output", str(out), "--model", "m",
                  "--key-env", KEY_ENV])
    assert "NoSuchSet" in str(exc.value)
