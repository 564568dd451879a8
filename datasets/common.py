"""Helpers shared by every dataset module (written once, used by all 16 datasets).

What lives here (DATASETS_FACTS.md §2-§4):

* clear one-line errors for a missing dataset folder, split file or image (``DataSource.missing``);
* the CoOp ``split_zhou_<Name>.json`` format: :func:`read_split` / :func:`write_split`;
* split generation: :func:`read_and_split_data` (class folders -> 50/20/30), :func:`split_by_ratio` (one class,
  50/20/30) and :func:`split_trainval` (80/20);
* the few-shot cache ``split_fewshot/shot_<K>-seed_<SEED>.pkl``: :func:`load_or_create_fewshot`;
* the base/new class split: :func:`subsample_classes`;
* atomic writes (temp file + ``os.replace``) so that an interrupted or failed run never leaves a half-written
  split, few-shot or preprocessed file behind;
* :class:`SplitDataset`, the constructor pipeline shared by the datasets that have a split file.

Randomness: split generation and few-shot sampling use Python's global ``random`` (seeded by ``SEED`` in
train.py), in the same order as CoOp, so that the official split files plus the same seed give the same few-shot
subsets as the CoOp-family code.
"""
from __future__ import annotations

import json
import math
import os
import pickle
import random
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from common.errors import MissingFileError, UserError
from dassl.data.datasets import Datum, DatasetBase
from dassl.utils import listdir_nohidden, read_json

DOC_FILE = "DATASETS.md"
SPLIT_FEWSHOT_DIR = "split_fewshot"
#: allowed values of ``DATASET.SUBSAMPLE_CLASSES``: all classes, the first ceil(n/2) labels, or the rest.
SUBSAMPLE_CHOICES = ("all", "base", "new")

Split = List[Datum]


class MissingDataError(MissingFileError):
    """An expected dataset folder, split/annotation file or image is not there (one-line message, no traceback)."""


@dataclass(frozen=True)
class DataSource:
    """Who is reading, for error messages: the registered dataset name (its DATASETS.md section anchor is the
    name lower-cased, e.g. ``DATASETS.md#oxfordpets``)."""

    name: str

    @property
    def anchor(self) -> str:
        return self.name.lower()

    def missing(self, what: str, path: str, hint: str = "") -> MissingDataError:
        """The one-line error for an expected file or folder that is not there (``hint``: an extra fix)."""
        fix = f"{hint}; see" if hint else "see"
        return MissingDataError(f"{self.name}: {what} not found: {path} ({fix} {DOC_FILE}#{self.anchor})")

    def invalid(self, what: str, path: str, problem: str) -> UserError:
        """The one-line error for a file that exists but cannot be used."""
        return UserError(f"{self.name}: {what} {path} {problem} (see {DOC_FILE}#{self.anchor})")

    def require_dir(self, path: str, what: str) -> str:
        if not os.path.isdir(path):
            raise self.missing(what, path, near_miss_hint(path))
        return path

    def require_file(self, path: str, what: str, hint: str = "") -> str:
        if not os.path.isfile(path):
            raise self.missing(what, path, hint)
        return path


def near_miss_hint(path: str) -> str:
    """Why a folder may be missing: its parent does not exist, or a sibling differs only in case or separators.

    E.g. ``found 'OxfordPets' instead: rename it to 'oxford_pets'``; "" when neither applies.
    """
    parent, name = os.path.split(os.path.normpath(path))
    if not os.path.isdir(parent):
        return f"{parent} does not exist either"

    def key(folder: str) -> str:
        return "".join(c for c in folder.lower() if c not in "-_ .")

    for entry in sorted(os.listdir(parent)):
        if key(entry) == key(name) and os.path.isdir(os.path.join(parent, entry)):
            return f"found {entry!r} instead: rename it to {name!r}"
    return ""


def make_datum(impath: str, label: int, classname: str, source: DataSource, listed_in: str) -> Datum:
    """``Datum(impath, label, classname)`` after checking the image exists (the engine's Datum would only assert).

    ``listed_in`` names where the path came from (``split_zhou_X.json``, ``trainval.txt``, ...) for the error.
    """
    if not os.path.isfile(impath):
        raise source.missing(f"image listed in {listed_in}", impath)
    return Datum(impath=impath, label=label, classname=classname)


# --------------------------------------------------------------------------------------------- atomic writes


def atomic_write(path: str, write: Callable[[Any], None], binary: bool = False) -> None:
    """Write ``path`` through a temp file in the same folder + ``os.replace``.

    Readers (and concurrent runs writing the same cache) therefore only ever see a complete file; if ``write``
    raises, nothing is left behind.
    """
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json_atomic(obj: Any, path: str) -> None:
    """JSON with 4-space indent and (",", ": ") separators, the layout of the published split files."""
    atomic_write(path, lambda f: json.dump(obj, f, indent=4, separators=(",", ": ")))


def write_pickle_atomic(obj: Any, path: str) -> None:
    atomic_write(path, lambda f: pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL), binary=True)


def read_pickle(path: str, source: DataSource, what: str) -> Any:
    """Unpickle a cache file; an unreadable one is reported with the fix (delete it, it is rebuilt)."""
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, TypeError, ValueError) as exc:
        raise source.invalid(what, path, f"cannot be read ({type(exc).__name__}: {exc}); delete it to rebuild it")


# ------------------------------------------------------------------------------------------------ split files


def read_split(filepath: str, path_prefix: str, source: DataSource) -> Tuple[Split, Split, Split]:
    """Read a ``split_zhou`` json: ``{"train"|"val"|"test": [[relative path, label, classname], ...]}``.

    Paths are joined onto ``path_prefix`` (the dataset's image dir), labels cast to int, classnames taken verbatim.
    Every listed image must exist.
    """
    print(f"Reading split from {filepath}")
    try:
        split = read_json(filepath)
    except ValueError as exc:
        raise source.invalid("split file", filepath, f"is not valid JSON ({exc})")
    if not isinstance(split, dict) or any(key not in split for key in ("train", "val", "test")):
        raise source.invalid("split file", filepath, 'must be a JSON object with keys "train", "val" and "test"')
    listed_in = os.path.basename(filepath)

    def convert(items: Sequence[Sequence[Any]]) -> Split:
        return [
            make_datum(os.path.join(path_prefix, impath), int(label), classname, source, listed_in)
            for impath, label, classname in items
        ]

    return convert(split["train"]), convert(split["val"]), convert(split["test"])


def write_split(train: Split, val: Split, test: Split, filepath: str, path_prefix: str) -> None:
    """Write the three splits as a ``split_zhou`` json with paths relative to ``path_prefix``."""

    def extract(items: Split) -> List[Tuple[str, int, str]]:
        prefix = path_prefix.rstrip(os.sep) + os.sep
        return [(item.impath[len(prefix):] if item.impath.startswith(prefix) else item.impath, item.label,
                 item.classname) for item in items]

    write_json_atomic({"train": extract(train), "val": extract(val), "test": extract(test)}, filepath)
    print(f"Saved split to {filepath}")


def split_trainval(trainval: Split, p_val: float = 0.2) -> Tuple[Split, Split]:
    """Per class (first-appearance order): shuffle, ``round(p_val * n)`` items to val (must be > 0), rest to train."""
    by_label: Dict[int, List[int]] = {}
    for idx, item in enumerate(trainval):
        by_label.setdefault(item.label, []).append(idx)
    train, val = [], []
    for label, idxs in by_label.items():
        n_val = round(len(idxs) * p_val)
        if n_val <= 0:
            raise UserError(
                f"class {label} ({trainval[idxs[0]].classname!r}) has {len(idxs)} train+val images, "
                f"too few to hold out {p_val:.0%} for validation"
            )
        random.shuffle(idxs)
        for n, idx in enumerate(idxs):
            (val if n < n_val else train).append(trainval[idx])
    return train, val


def read_and_split_data(
    image_dir: str,
    source: DataSource,
    p_trn: float = 0.5,
    p_val: float = 0.2,
    ignored: Sequence[str] = (),
    new_cnames: Optional[Mapping[str, str]] = None,
) -> Tuple[Split, Split, Split]:
    """Build a split from ``image_dir/<category>/<image>`` (Caltech101, DTD, EuroSAT, Food101).

    Categories = sorted non-hidden folder names minus ``ignored``; label = index in that list; classname = folder
    name or ``new_cnames[folder]``. Per category: shuffle, ``round(n*p_trn)`` train, ``round(n*p_val)`` val, rest
    test (each must be > 0). Files are listed in sorted order before the shuffle (CoOp uses the raw listing order,
    which differs between file systems), so a generated split depends only on the seed.
    """
    categories = [c for c in listdir_nohidden(image_dir, sort=True) if c not in ignored]
    categories = [c for c in categories if os.path.isdir(os.path.join(image_dir, c))]
    if not categories:
        raise source.missing("class folders", os.path.join(image_dir, "<class>"))
    train, val, test = [], [], []
    for label, category in enumerate(categories):
        category_dir = os.path.join(image_dir, category)
        impaths = [os.path.join(category_dir, name) for name in listdir_nohidden(category_dir, sort=True)]
        classname = new_cnames.get(category, category) if new_cnames else category
        for split, paths in zip((train, val, test), split_by_ratio(impaths, p_trn, p_val, category_dir, source)):
            split.extend(Datum(impath=path, label=label, classname=classname) for path in paths)
    return train, val, test


def split_by_ratio(
    items: List[str], p_trn: float, p_val: float, what: str, source: DataSource
) -> Tuple[List[str], List[str], List[str]]:
    """Shuffle one class's items (in place) and cut ``round(n*p_trn)`` train, ``round(n*p_val)`` val, rest test.

    Python's ``round`` is round-half-to-even, as in CoOp. Each part must be non-empty; ``what`` names the class
    in the error.
    """
    random.shuffle(items)
    n_total = len(items)
    n_train = round(n_total * p_trn)
    n_val = round(n_total * p_val)
    if min(n_train, n_val, n_total - n_train - n_val) <= 0:
        raise UserError(
            f"{source.name}: {what} has {n_total} images, too few for a {p_trn:.0%}/{p_val:.0%}/rest "
            f"train/val/test split (see {DOC_FILE}#{source.anchor})"
        )
    return items[:n_train], items[n_train:n_train + n_val], items[n_train + n_val:]


# ------------------------------------------------------------------------------------------ few-shot + base/new


def fewshot_cache_path(split_fewshot_dir: str, num_shots: int, seed: int) -> str:
    """``<dataset_dir>/split_fewshot/shot_<K>-seed_<SEED>.pkl`` (``seed_-1`` when no seed is fixed)."""
    return os.path.join(split_fewshot_dir, f"shot_{num_shots}-seed_{seed}.pkl")


def load_or_create_fewshot(
    dataset: DatasetBase,
    split_fewshot_dir: str,
    num_shots: int,
    seed: int,
    train: Split,
    val: Optional[Split],
    source: DataSource,
) -> Tuple[Split, Optional[Split]]:
    """Reduce ``train`` to ``num_shots`` images per class and ``val`` to ``min(num_shots, 4)``, with a disk cache.

    ``num_shots < 1`` returns both unchanged. The cache pickle holds ``{"train": [...], "val": [...]}`` (only
    ``"train"`` when ``val`` is None, as for ImageNet) with the full class set, so base and new runs of a seed share
    it; it is interchangeable with the CoOp-family code's files. Sampling is the engine's
    ``DatasetBase.generate_fewshot_dataset`` (train first, then val: the order matters for reproducibility).
    """
    if num_shots < 1:
        return train, val
    path = fewshot_cache_path(split_fewshot_dir, num_shots, seed)
    if os.path.isfile(path):
        print(f"Loading preprocessed few-shot data from {path}")
        data = read_pickle(path, source, "few-shot cache")
        if not isinstance(data, dict) or "train" not in data or (val is not None and "val" not in data):
            raise source.invalid("few-shot cache", path, "has an unexpected layout; delete it to rebuild it")
        check_cached_paths(data["train"] + (data["val"] if val is not None else []), path, source)
        return data["train"], (data["val"] if val is not None else None)
    train = dataset.generate_fewshot_dataset(train, num_shots=num_shots)
    data = {"train": train}
    if val is not None:
        val = dataset.generate_fewshot_dataset(val, num_shots=min(num_shots, 4))
        data["val"] = val
    print(f"Saving preprocessed few-shot data to {path}")
    write_pickle_atomic(data, path)
    return train, val


def check_cached_paths(items: Sequence[Datum], cache_path: str, source: DataSource) -> None:
    """Caches store absolute image paths; say so clearly when the data was moved after the cache was written."""
    for item in items:
        if not os.path.isfile(item.impath):
            raise source.invalid(
                "cache", cache_path,
                f"lists an image that no longer exists ({item.impath}; was DATASET.ROOT moved?); "
                "delete it to rebuild it",
            )


def subsample_classes(*splits: Split, subsample: str = "all") -> List[Split]:
    """Keep the base (first ``ceil(n/2)``) or new (remaining) labels of the first split, relabelled from 0.

    The label set comes from ``splits[0]`` (train, after few-shot), sorted ascending. Every split is filtered to
    the selected labels and rebuilt as ``Datum(impath, new_label, classname)`` (domain reset to 0).
    ``subsample="all"`` returns the splits unchanged.
    """
    if subsample not in SUBSAMPLE_CHOICES:
        raise UserError(f"DATASET.SUBSAMPLE_CLASSES must be one of {', '.join(SUBSAMPLE_CHOICES)}, got {subsample!r}")
    if subsample == "all":
        return list(splits)
    labels = sorted({item.label for item in splits[0]})
    m = math.ceil(len(labels) / 2)
    print(f"SUBSAMPLE {subsample.upper()} CLASSES!")
    selected = labels[:m] if subsample == "base" else labels[m:]
    relabeler = {label: new_label for new_label, label in enumerate(selected)}
    return [
        [Datum(impath=item.impath, label=relabeler[item.label], classname=item.classname)
         for item in split if item.label in relabeler]
        for split in splits
    ]


# ------------------------------------------------------------------------------------------- the shared pipeline


class SplitDataset(DatasetBase):
    """A dataset with a train/val/test split file: the constructor pipeline of DATASETS_FACTS.md §2.

    1. ``dataset_dir`` = ``DATASET.ROOT/<dataset_dir>`` and its image dir must exist;
    2. read the split file, or (if it is absent) :meth:`generate_split` and write it;
    3. few-shot (``DATASET.NUM_SHOTS >= 1``) via the ``split_fewshot/`` cache;
    4. base/new subsampling (``DATASET.SUBSAMPLE_CLASSES``).

    Subclasses set the class attributes below (relative names; the constructor turns ``dataset_dir`` and
    ``image_dir`` into absolute paths on the instance, as CoOp-family dataset classes do) and override
    :meth:`generate_split` (or :meth:`load_splits` for datasets without a split file).
    """

    dataset_dir = ""  # folder under DATASET.ROOT
    image_dir = ""  # folder under dataset_dir that split paths are relative to ("" = dataset_dir itself)
    split_file = ""  # split json inside dataset_dir

    def __init__(self, cfg: Any) -> None:
        self.source = DataSource(type(self).__name__)
        root = os.path.abspath(os.path.expanduser(cfg.DATASET.ROOT))
        self.dataset_dir = os.path.join(root, type(self).dataset_dir)
        image_subdir = type(self).image_dir
        self.image_dir = os.path.join(self.dataset_dir, image_subdir) if image_subdir else self.dataset_dir
        self.split_path = os.path.join(self.dataset_dir, self.split_file)
        self.split_fewshot_dir = os.path.join(self.dataset_dir, SPLIT_FEWSHOT_DIR)
        self.prepare(root)
        self.source.require_dir(self.dataset_dir, "dataset folder")
        self.source.require_dir(self.image_dir, "image folder")

        train, val, test = self.load_splits()
        train, val = load_or_create_fewshot(
            self, self.split_fewshot_dir, cfg.DATASET.NUM_SHOTS, cfg.SEED, train, val, self.source
        )
        # DATASET.SUBSAMPLE_CLASSES is added by train.py's extend_cfg; a plain Dassl config means "all".
        subsample = getattr(cfg.DATASET, "SUBSAMPLE_CLASSES", "all")
        train, val, test = subsample_classes(train, val, test, subsample=subsample)
        super().__init__(train_x=train, val=val, test=test)

    def prepare(self, root: str) -> None:
        """Hook run before the folder checks (ToyShapes generates itself here). Default: nothing."""

    def load_splits(self) -> Tuple[Split, Split, Split]:
        """Read the split file; if it is absent, generate the split from the raw annotations and write it."""
        if os.path.isfile(self.split_path):
            return read_split(self.split_path, self.image_dir, self.source)
        train, val, test = self.generate_split()
        write_split(train, val, test, self.split_path, self.image_dir)
        return train, val, test

    def generate_split(self) -> Tuple[Split, Split, Split]:
        """Build train/val/test from the raw annotations (uses the global ``random``)."""
        raise self.source.missing("split file", self.split_path)

    def require_annotation(self, path: str) -> str:
        """An annotation file needed only because the split file is absent: the error names both."""
        if not os.path.isfile(path):
            raise self.source.missing("split file", self.split_path, f"nor is {path}, needed to regenerate it")
        return path
