"""Small file-system, randomness and environment helpers (Dassl ``dassl.utils.tools`` names)."""
import errno
import json
import os
import os.path as osp
import random
import re
import uuid
import warnings
from typing import Any, Callable, List

import numpy as np
import PIL
import torch
from PIL import Image, UnidentifiedImageError

from .errors import UserError
from .registry import check_availability, get_most_similar_str_to_a_from_b

__all__ = [
    "mkdir_if_missing",
    "check_isfile",
    "read_json",
    "write_json",
    "atomic_write_path",
    "atomic_write_text",
    "write_failed",
    "temp_path_beside",
    "remove_stale_temp_files",
    "listdir_nohidden",
    "read_image",
    "set_random_seed",
    "collect_env_info",
    "tolist_if_not",
    "check_availability",
    "get_most_similar_str_to_a_from_b",
]


def mkdir_if_missing(dirname: str) -> None:
    """Create ``dirname`` (and parents) if it does not exist; safe when several processes race."""
    if not osp.exists(dirname):
        try:
            os.makedirs(dirname)
        except OSError as e:
            if e.errno != errno.EEXIST:
                raise


def check_isfile(fpath: str) -> bool:
    """True if ``fpath`` is an existing file; warns otherwise."""
    isfile = osp.isfile(fpath)
    if not isfile:
        warnings.warn(f'No file found at "{fpath}"')
    return isfile


def read_json(fpath: str) -> Any:
    """Load a json file."""
    with open(fpath, "r") as f:
        return json.load(f)


def temp_path_beside(fpath: str) -> str:
    """A unique hidden temp-file name in the folder of ``fpath`` (same file system, so ``os.replace`` is atomic).

    ``uuid4`` draws from ``os.urandom``, so this never disturbs the seeded ``random``/torch streams.
    """
    dirname, basename = osp.split(osp.abspath(fpath))
    return osp.join(dirname, f".{basename}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


_TEMP_NAME = re.compile(r"^\..+\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")


def remove_stale_temp_files(dirname: str) -> List[str]:
    """Delete the ``temp_path_beside`` files in ``dirname`` whose writing process no longer runs; returns their names.

    A process killed between creating a temp file and renaming it leaves the file behind. Resume logic never reads
    temp files, so they are only litter; a live writer's (e.g. a concurrent run's) files are left alone.
    """
    removed = []
    if not osp.isdir(dirname):
        return removed
    for name in sorted(os.listdir(dirname)):
        match = _TEMP_NAME.match(name)
        if match is None or _process_exists(int(match.group("pid"))):
            continue
        try:
            os.remove(osp.join(dirname, name))
            removed.append(name)
        except FileNotFoundError:  # removed by someone else meanwhile
            pass
    return removed


def _process_exists(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def write_failed(fpath: str, error: OSError) -> UserError:
    """The one-line error for a file that could not be written (full disk, quota, permissions).

    The engine writes every file through a temp file + rename, so what was written before is intact and a rerun of
    the same command resumes from the last checkpoint.
    """
    return UserError(
        f"cannot write {fpath} ({error.strerror or error}); the files written before it (earlier checkpoints "
        "included) are intact: free some space (or fix the permissions) and run the same command again to resume"
    )


def atomic_write_path(fpath: str, write: Callable[[str], None]) -> None:
    """``write(tmp)`` writes a temp file in ``fpath``'s folder, which ``os.replace`` then moves to ``fpath``.

    Readers never see a half-written file, even if the process dies mid-write. The file gets the mode that ``open``
    gives (``0666 & ~umask``); a failed write (e.g. a full disk) raises ``write_failed``'s ``UserError``.
    """
    mkdir_if_missing(osp.dirname(osp.abspath(fpath)))
    tmp = temp_path_beside(fpath)
    try:
        write(tmp)
        os.replace(tmp, fpath)
    except OSError as e:
        raise write_failed(fpath, e) from None
    finally:
        if osp.exists(tmp):
            os.remove(tmp)


def atomic_write_text(text: str, fpath: str) -> None:
    """Write ``text`` to ``fpath`` atomically (``atomic_write_path``)."""

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)

    atomic_write_path(fpath, write)


def write_json(obj: Any, fpath: str) -> None:
    """Dump ``obj`` as json (indent 4, separators ``", "``/``": "``) atomically; parent dirs are created."""
    atomic_write_text(json.dumps(obj, indent=4, separators=(",", ": ")), fpath)


def listdir_nohidden(path: str, sort: bool = False) -> List[str]:
    """``os.listdir`` without names starting with ``.``; sorted if ``sort``."""
    items = [f for f in os.listdir(path) if not f.startswith(".")]
    if sort:
        items.sort()
    return items


def read_image(path: str) -> Image.Image:
    """Read an image file as an RGB PIL image.

    A file that PIL cannot decode (corrupt, truncated, not an image) raises ``UserError`` naming it, so a run
    stops with one line instead of a DataLoader traceback.
    """
    if not osp.exists(path):
        raise IOError(f'No file exists at "{path}"')
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, SyntaxError, ValueError) as e:  # PIL's decode errors (UnidentifiedImageError is an OSError)
        reason = "not an image file PIL can identify" if isinstance(e, UnidentifiedImageError) else str(e)
        raise UserError(
            f"cannot read image {path} ({reason}); replace the file with a valid image or remove it from the dataset"
        ) from None


def set_random_seed(seed: int) -> None:
    """Seed Python's ``random``, NumPy and torch (CPU and every CUDA device). No cuDNN determinism flags."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def collect_env_info() -> str:
    """torch's environment report plus the Pillow version."""
    from torch.utils.collect_env import get_pretty_env_info

    return get_pretty_env_info() + f"\n        Pillow ({PIL.__version__})"


def tolist_if_not(x: Any) -> list:
    """Wrap ``x`` in a list unless it already is one."""
    if not isinstance(x, list):
        x = [x]
    return x
