"""Advisory locks (``fcntl.flock``): one owner per output dir, and serialised read-modify-write of shared files.

``flock`` locks belong to an open file and are released by the operating system when the process ends in any way
(exit, exception, SIGKILL), so a crashed run never leaves a stale lock behind. They are advisory: they exclude
only processes that ask for them (every ``train.py`` does).
"""
import contextlib
import fcntl
import json
import os
import os.path as osp
import sys
from typing import Iterator, Optional

from .errors import UserError

__all__ = ["OUTPUT_DIR_LOCK", "DirectoryInUseError", "OutputDirLock", "locked_directory"]

# File in the output dir that the owning process holds locked; it names the owner (JSON: pid, command).
OUTPUT_DIR_LOCK = "run.lock"


class DirectoryInUseError(UserError):
    """Another live process owns the output dir (one ``error:`` line naming its PID and command)."""


class OutputDirLock:
    """Exclusive ownership of an output dir for the life of this process (or until ``release()``).

    ``OutputDirLock(dirname)`` takes ``<dirname>/run.lock`` without waiting and writes this process's PID and
    command into it; if another process holds it, raises ``DirectoryInUseError`` naming that process. ``release()``
    unlocks and removes the file (a process killed with SIGKILL leaves the file, but not the lock: the next run takes
    it over).
    """

    def __init__(self, dirname: str, command: Optional[str] = None) -> None:
        self.path = osp.join(dirname, OUTPUT_DIR_LOCK)
        self._fd: Optional[int] = None
        while self._fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise DirectoryInUseError(
                    f"output dir {dirname} is in use by {holder}; wait for that run to end (or stop it), "
                    "or choose another --output-dir"
                ) from None
            # The previous owner removes the file when it releases: if it did so between our open() and flock(),
            # we locked an unlinked file; open the path again.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
            else:
                os.close(fd)
        owner = {"pid": os.getpid(), "command": command if command is not None else " ".join(sys.argv)}
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, (json.dumps(owner) + "\n").encode(), 0)

    def release(self) -> None:
        """Remove the lock file and unlock (idempotent)."""
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.path)
        os.close(self._fd)
        self._fd = None


def _read_holder(fd: int) -> str:
    """``process <pid> (<command>)`` from a held lock file (``another process`` if it is not written yet)."""
    try:
        owner = json.loads(os.pread(fd, 65536, 0).decode() or "{}")
        return f"process {int(owner['pid'])} ({owner.get('command', '?')})"
    except (ValueError, KeyError, TypeError, OSError):
        return "another process"


@contextlib.contextmanager
def locked_directory(dirname: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the directory ``dirname`` itself while the block runs (waits for it).

    Used to serialise read-modify-write updates of files in that directory (``results.json``) between processes;
    creates no file.
    """
    fd = os.open(dirname, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
