"""Run ``train.py`` many times, fast: child processes forked from one warm interpreter (a "zygote").

Importing torch and torchvision costs 3-5 s per ``python train.py`` on a loaded 2-core machine, and the reliability
tests run train.py ~30 times. The zygote is one ``python`` process that imports train.py's dependencies once
(1 torch thread) and then, per request, forks a child that executes ``train.py`` as ``__main__`` with its own argv,
environment, working directory and stdout/stderr files -- what ``python train.py ARGS`` does, minus the imports:
a ``SystemExit`` gives the exit status, an uncaught exception prints its traceback and exits 1. The children are
real processes, so the tests can SIGKILL them anywhere. ``test_forked_run_matches_a_fresh_interpreter`` checks that
a forked run and a fresh interpreter print the same thing.

Fault injection (test code applied inside the child before train.py runs; the code under test is unchanged):
  {"kind": "kill_in_save", "name": N, "nth": k}        the k-th ``torch.save`` of a temp file for target file N
                                                       writes half of its bytes, then the process SIGKILLs itself
  {"kind": "kill_before_replace", "name": N, "nth": k} the k-th ``os.replace(tmp, .../N)`` SIGKILLs the process
                                                       before renaming (the temp file is complete)
  {"kind": "kill_at_call", "function": "pkg.mod.f", "nth": k}  the k-th call of module attribute f SIGKILLs
  {"kind": "stop_at_call", "function": "pkg.mod.f", "nth": k}  ... SIGSTOPs the process (alive, holding its locks)
  "when_stdout_contains": S (any kill fault)           count only calls made after the run printed S
  {"kind": "nan_input", "trainer": T, "epoch": e, "batch": b}   trainer T sees NaN images at 1-based (e, b)
"""
import json
import os
import os.path as osp
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TRAIN_PY = osp.join(REPO, "train.py")

# The zygote: imports once, then serves {"op": "spawn" | "wait", ...} requests, one JSON line each way.
ZYGOTE = r'''
import importlib, io, json, os, runpy, signal, sys, time, traceback
REPO, TRAIN_PY = sys.argv[1], sys.argv[2]
sys.path.insert(0, REPO)
import torch
torch.set_num_threads(1)
import train  # noqa: F401  (warm the imports: torch, torchvision, clip, dassl, datasets, trainers)


def install_faults(faults, stdout_path):
    counts = {}

    def hit(fault):
        if "when_stdout_contains" in fault:
            sys.stdout.flush()
            with open(stdout_path, errors="replace") as f:
                if fault["when_stdout_contains"] not in f.read():
                    return False
        key = id(fault)
        counts[key] = counts.get(key, 0) + 1
        return counts[key] == fault.get("nth", 1)

    def die():
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    def target_of_temp(path):
        # dassl's temp files are named ".<target name>.<pid>.<8 hex>.tmp"
        base = os.path.basename(str(path))
        return base[1:].rsplit(".", 3)[0] if base.startswith(".") and base.endswith(".tmp") else None

    for fault in faults:
        kind = fault["kind"]
        if kind == "kill_in_save":
            def save(obj, f, *args, _fault=fault, _real=torch.save, **kwargs):
                if isinstance(f, (str, os.PathLike)) and target_of_temp(f) == _fault["name"] and hit(_fault):
                    buffer = io.BytesIO()
                    _real(obj, buffer, *args, **kwargs)
                    data = buffer.getvalue()
                    with open(f, "wb") as out:
                        out.write(data[: len(data) // 2])
                        out.flush()
                        os.fsync(out.fileno())
                    die()
                return _real(obj, f, *args, **kwargs)
            torch.save = save
        elif kind == "kill_before_replace":
            def replace(src, dst, *args, _fault=fault, _real=os.replace, **kwargs):
                if os.path.basename(str(dst)) == _fault["name"] and hit(_fault):
                    die()
                return _real(src, dst, *args, **kwargs)
            os.replace = replace
        elif kind in ("kill_at_call", "stop_at_call"):
            module_name, attr = fault["function"].rsplit(".", 1)
            module = importlib.import_module(module_name)
            def at_call(*args, _fault=fault, _real=getattr(module, attr), **kwargs):
                if hit(_fault):
                    if _fault["kind"] == "stop_at_call":
                        sys.stdout.flush()
                        os.kill(os.getpid(), signal.SIGSTOP)
                    else:
                        die()
                return _real(*args, **kwargs)
            setattr(module, attr, at_call)
        elif kind == "nan_input":
            from dassl.engine import TRAINER_REGISTRY
            cls = TRAINER_REGISTRY.get(fault["trainer"])
            real_fb = cls.forward_backward
            def forward_backward(self, batch, _fault=fault, _real=real_fb):
                if (self.epoch + 1, self.batch_idx + 1) == (_fault["epoch"], _fault["batch"]):
                    batch = dict(batch, img=batch["img"] * float("nan"))
                return _real(self, batch)
            cls.forward_backward = forward_backward
        else:
            raise ValueError(f"unknown fault {kind}")


def child(req):
    os.chdir(req["cwd"])
    for key, value in req["env"].items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(fd, 0)
    for target, path in ((1, req["stdout"]), (2, req["stderr"])):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        os.dup2(fd, target)
        os.close(fd)
    install_faults(req["faults"], req["stdout"])
    sys.argv = [TRAIN_PY] + req["args"]
    code = 0
    try:
        runpy.run_path(TRAIN_PY, run_name="__main__")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, (int, type(None))):
            print(e.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    req = json.loads(line)
    if req["op"] == "spawn":
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            child(req)
        print(json.dumps({"pid": pid}), flush=True)
    elif req["op"] == "wait":
        deadline = time.time() + req["timeout"]
        while True:
            done, status = os.waitpid(req["pid"], os.WNOHANG)
            if done:
                break
            if time.time() > deadline:
                os.kill(req["pid"], signal.SIGKILL)
                os.waitpid(req["pid"], 0)
                status = None
                break
            time.sleep(0.02)
        rc = None if status is None else os.waitstatus_to_exitcode(status)
        print(json.dumps({"rc": rc}), flush=True)
'''


@dataclass
class Result:
    rc: int  # exit status; -9 after SIGKILL
    stdout: str
    stderr: str


class Child:
    """A train.py process forked by the zygote."""

    def __init__(self, zygote: "Zygote", pid: int, stdout: str, stderr: str) -> None:
        self.zygote, self.pid, self.stdout_path, self.stderr_path = zygote, pid, stdout, stderr

    def stdout(self) -> str:
        with open(self.stdout_path, errors="replace") as f:
            return f.read()

    def finished(self) -> bool:
        """True once the process has exited (a zombie until the zygote reaps it)."""
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
        except FileNotFoundError:
            return True

    def wait_until(self, predicate, what: str, timeout: float = 120) -> None:
        """Poll ``predicate`` until it holds; fail at once (with the run's stderr) if the process ends first."""
        wait_for(lambda: predicate() or self.finished(), timeout=timeout, what=what)
        if not predicate():
            with open(self.stderr_path, errors="replace") as f:
                raise AssertionError(f"train.py ended before {what}:\n{f.read()[-3000:]}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def wait(self, timeout: float = 120) -> Result:
        reply = self.zygote.request({"op": "wait", "pid": self.pid, "timeout": timeout})
        if reply["rc"] is None:
            raise AssertionError(f"train.py ran longer than {timeout} s:\n{self.stdout()[-3000:]}")
        with open(self.stderr_path, errors="replace") as f:
            return Result(reply["rc"], self.stdout(), f.read())


class Zygote:
    def __init__(self) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE, REPO, TRAIN_PY], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
        assert json.loads(self.proc.stdout.readline()) == {"ready": True}
        self.counter = 0

    def request(self, req: dict) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError("the zygote process died")
        return json.loads(line)

    def spawn(self, args: List[str], logs_dir: str, env: Optional[Dict[str, Optional[str]]] = None,
              faults: Optional[List[dict]] = None, cwd: str = REPO) -> Child:
        """Start ``train.py ARGS``; its stdout/stderr go to files in ``logs_dir`` (keep that out of output dirs)."""
        os.makedirs(logs_dir, exist_ok=True)
        self.counter += 1
        stdout = osp.join(logs_dir, f"run{self.counter}.stdout")
        stderr = osp.join(logs_dir, f"run{self.counter}.stderr")
        for path in (stdout, stderr):  # exist from the start, for readers polling the output
            open(path, "w").close()
        reply = self.request({"op": "spawn", "args": [str(a) for a in args], "env": env or {}, "cwd": cwd,
                              "faults": faults or [], "stdout": stdout, "stderr": stderr})
        return Child(self, reply["pid"], stdout, stderr)

    def run(self, args: List[str], logs_dir: str, timeout: float = 120, **kwargs) -> Result:
        return self.spawn(args, logs_dir, **kwargs).wait(timeout)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


_ZYGOTE: Optional[Zygote] = None


def zygote() -> Zygote:
    """The shared zygote of this pytest process (started on first use, stopped when the interpreter exits)."""
    global _ZYGOTE
    if _ZYGOTE is None or _ZYGOTE.proc.poll() is not None:
        _ZYGOTE = Zygote()
        import atexit

        atexit.register(_ZYGOTE.close)
    return _ZYGOTE


TQDM_BAR = re.compile(r"^[^:|]+: +\d+%\|")


def message_lines(stderr: str) -> List[str]:
    """The lines of ``stderr`` that are messages: tqdm progress bars (evaluation always shows one) removed."""
    return [line for line in re.split(r"[\r\n]", stderr) if line.strip() and not TQDM_BAR.match(line)]


def wait_for(predicate, timeout: float = 60, what: str = "condition") -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


# ---------------------------------------------------------------------------------------------------------------------


def test_forked_run_matches_a_fresh_interpreter(tmp_path):
    """The same failing command in a fresh ``python train.py`` and in a forked child: same status, same stderr."""
    args = ["--trainer", "HiCroPl", "--dataset-config-file", "configs/datasets/toy_shapes.yaml",
            "--output-dir", str(tmp_path / "out")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    fresh = subprocess.run([sys.executable, TRAIN_PY, *args], cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=120)
    forked = zygote().run(args, str(tmp_path / "logs"))
    assert fresh.returncode == forked.rc == 2
    assert fresh.stderr == forked.stderr
    assert forked.stderr.startswith("error: ") and forked.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()
