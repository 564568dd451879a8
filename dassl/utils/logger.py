"""``setup_logger``: tee ``sys.stdout`` into ``<output>/log.txt``."""
import os
import os.path as osp
import sys
import time
from typing import Optional, TextIO

from .tools import mkdir_if_missing, write_failed

__all__ = ["Logger", "setup_logger"]


class Logger:
    """A stdout replacement that writes to the console and to a log file.

    Every write is flushed to the file so that ``log.txt`` is complete up to the last line even
    if the process is killed; ``flush()`` also fsyncs. Only stdout is captured: tqdm bars and
    warnings (stderr) stay out of the log.
    """

    def __init__(self, fpath: str, console: Optional[TextIO] = None) -> None:
        self.console = console if console is not None else sys.stdout
        mkdir_if_missing(osp.dirname(osp.abspath(fpath)))
        self.fpath = fpath
        try:
            self.file = open(fpath, "w")
        except OSError as e:  # e.g. a full disk: one line, not a traceback
            raise write_failed(fpath, e) from None

    def write(self, msg: str) -> int:
        self.console.write(msg)
        try:
            self.file.write(msg)
            self.file.flush()
        except OSError as e:
            raise write_failed(self.fpath, e) from None
        return len(msg)

    def flush(self) -> None:
        self.console.flush()
        self.file.flush()
        os.fsync(self.file.fileno())

    def isatty(self) -> bool:
        return self.console.isatty()

    @property
    def encoding(self) -> str:
        return getattr(self.console, "encoding", "utf-8")

    def close(self) -> None:
        self.file.close()


def setup_logger(output: Optional[str] = None) -> None:
    """Tee ``sys.stdout`` to a log file.

    ``output``: None -> no-op; a path ending in ``.txt``/``.log`` -> that file; otherwise
    ``<output>/log.txt``. If the file already exists (a rerun or a resume), the new log gets the
    suffix ``-%Y-%m-%d-%H-%M-%S`` (e.g. ``log.txt-2025-08-25-15-09-16``) so no log is overwritten.
    """
    if output is None:
        return
    if output.endswith(".txt") or output.endswith(".log"):
        fpath = output
    else:
        fpath = osp.join(output, "log.txt")
    if osp.exists(fpath):
        fpath += time.strftime("-%Y-%m-%d-%H-%M-%S")
    console = sys.stdout.console if isinstance(sys.stdout, Logger) else sys.stdout
    sys.stdout = Logger(fpath, console)
