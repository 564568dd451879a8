"""Shared by the interchange tests: a scratch copy of the repository to drop foreign files into, and train.py runs in it.

`run_train` runs ``train.py`` in a fresh interpreter, optionally after a few lines of ``preamble`` Python (e.g. to
register a test weights URL in ``clip.clip._MODELS`` or to set the engine's defaults to the original Dassl's).
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[1]
COPIED = ("clip", "common", "configs", "dassl", "datasets", "descriptions", "trainers", "train.py")


def make_scratch_repo(target: Path) -> Path:
    """Copy what train.py needs (no tests, scripts, git metadata or caches) to target; returns target."""
    target.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target / name)
    return target


def run_train(repo: Path, args: Sequence[str], cache: Path, preamble: str = "",
              timeout: int = 300) -> subprocess.CompletedProcess:
    """``python train.py ARGS`` in repo (cwd), offline, caches under cache; preamble runs first in the process."""
    code = f"{preamble}\nimport runpy, sys\nsys.argv = ['train.py', *{list(args)!r}]\n" \
           "runpy.run_path('train.py', run_name='__main__')\n"
    env = {**os.environ, "HICROPL_OFFLINE": "1", "CLIP_CACHE_DIR": str(cache / "clip"),
           "HICROPL_CACHE_DIR": str(cache / "hicropl"), "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    return subprocess.run([sys.executable, "-c", code], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=timeout)
