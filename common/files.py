"""Shared files written once, safely: an advisory folder lock and atomic writes that honour the caller's umask.

Split files, few-shot caches, the frozen-text-feature (W) cache and generated datasets live in folders that several
runs (parallel seeds, lab-mates) share. Each is created with the pattern::

    if not os.path.exists(path):
        with folder_lock(os.path.dirname(path)):
            if not os.path.exists(path):      # another run may have written it while we waited
                atomic_write(path, write)
    read(path)

so that the first run writes it and every other one waits, then reads the same file (two seeds never generate and
use two different splits). The lock is ``fcntl.flock`` on the folder itself: no lock file is left behind, and the
operating system releases it when its holder dies (a SIGKILL never leaves a stale lock). Files and folders get the
modes a plain ``open``/``mkdir`` would give (``0644``/``0755`` under ``umask 022``), not the ``0600``/``0700`` of
``tempfile``, so other users can read a shared DATA folder.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from typing import IO, Any, Callable, Iterator

__all__ = ["atomic_write", "current_umask", "folder_lock", "make_shared_temp_dir"]


def current_umask() -> int:
    """The process's umask: read from ``/proc/self/status`` (Linux), else set and restored at once."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def folder_lock(folder: str) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``folder`` (created if missing) for the ``with`` block; blocks until free.

    ``flock`` on the folder's own descriptor: nothing is written into the folder, and the lock is released when the
    block ends or the process dies. Only cooperating callers (this function) are excluded.
    """
    os.makedirs(folder, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the lock


def atomic_write(path: str, write: Callable[[IO[Any]], None], binary: bool = False) -> None:
    """Write ``path`` through a temp file in the same folder + ``os.replace``, with the mode ``open`` would give.

    Readers only ever see a complete file; if ``write`` raises (or the disk is full), nothing is left behind.
    The temp file comes from ``mkstemp`` (mode ``0600``) and is given ``0666 & ~umask`` before the rename.
    """
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def make_shared_temp_dir(target: str) -> Iterator[str]:
    """A temp folder beside ``target`` with mode ``0777 & ~umask``, removed at the end unless renamed away.

    For building a whole folder (a generated dataset) and renaming it into place in one step.
    """
    parent = os.path.dirname(os.path.abspath(target))
    os.makedirs(parent, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}-", dir=parent)
    try:
        os.chmod(tmp_dir, 0o777 & ~current_umask())
        yield tmp_dir
    finally:
        if os.path.isdir(tmp_dir):
            shutil.rmtree(tmp_dir, ignore_errors=True)
