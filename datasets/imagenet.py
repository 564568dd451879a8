"""ImageNet (1000 classes) and the shared parts of its four test-only variants.

Layout: ``imagenet/images/{train,val}/<wnid>/*.JPEG`` (val sorted into class folders) + ``classnames.txt``
(``<wnid> <class name>`` per line). The image lists are cached in ``imagenet/preprocessed.pkl`` on first use.
"""
import os
from collections import OrderedDict
from typing import Any, Dict, List, Sequence, Tuple

from dassl.data.datasets import DATASET_REGISTRY, Datum, DatasetBase
from dassl.utils import listdir_nohidden

from .common import (
    SPLIT_FEWSHOT_DIR,
    DataSource,
    Split,
    check_cached_paths,
    load_or_create_fewshot,
    read_pickle,
    subsample_classes,
    write_pickle_atomic,
)

CLASSNAMES_FILE = "classnames.txt"


def read_classnames(path: str, source: DataSource) -> "OrderedDict[str, str]":
    """``classnames.txt`` -> ordered ``{wnid: class name}`` (first token / the rest joined by single spaces)."""
    classnames: "OrderedDict[str, str]" = OrderedDict()
    with open(path) as f:
        for line in f:
            tokens = line.strip().split(" ")
            if tokens[0]:
                classnames[tokens[0]] = " ".join(tokens[1:])
    if not classnames:
        raise source.invalid("class-name file", path, "is empty")
    return classnames


def read_class_folders(image_dir: str, classes: Sequence[Tuple[str, str]], source: DataSource) -> Split:
    """Label i = ``classes[i]`` = (folder, class name): every non-hidden file of ``image_dir/folder``.

    Files are taken in sorted order (CoOp uses the raw listing order, which differs between file systems), so the
    cached lists and the few-shot subsets drawn from them depend only on the seed.
    """
    items = []
    for label, (folder, classname) in enumerate(classes):
        class_dir = source.require_dir(os.path.join(image_dir, folder), "class folder")
        items.extend(
            Datum(impath=os.path.join(class_dir, name), label=label, classname=classname)
            for name in listdir_nohidden(class_dir, sort=True)
        )
    return items


def name_wnid_folders(
    folders: Sequence[str], classnames: Dict[str, str], classnames_path: str, source: DataSource
) -> List[Tuple[str, str]]:
    """Pair each wnid folder with its name from ``classnames.txt``."""
    for folder in folders:
        if folder not in classnames:
            raise source.invalid("class-name file", classnames_path, f"has no line for class folder {folder!r}")
    return [(folder, classnames[folder]) for folder in folders]


def sorted_subfolders(path: str) -> List[str]:
    """Sorted names of the non-hidden sub-folders (files such as ``README.txt`` are skipped)."""
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


@DATASET_REGISTRY.register()
class ImageNet(DatasetBase):
    """train = ``images/train``; val = test = ``images/val`` (50,000 images), as in the CoOp family."""

    dataset_dir = "imagenet"

    def __init__(self, cfg: Any) -> None:
        source = DataSource(type(self).__name__)
        root = os.path.abspath(os.path.expanduser(cfg.DATASET.ROOT))
        self.dataset_dir = os.path.join(root, type(self).dataset_dir)
        self.image_dir = os.path.join(self.dataset_dir, "images")
        self.preprocessed = os.path.join(self.dataset_dir, "preprocessed.pkl")
        self.split_fewshot_dir = os.path.join(self.dataset_dir, SPLIT_FEWSHOT_DIR)
        source.require_dir(self.dataset_dir, "dataset folder")

        if os.path.isfile(self.preprocessed):
            data = read_pickle(self.preprocessed, source, "image-list cache")
            if not isinstance(data, dict) or "train" not in data or "test" not in data:
                raise source.invalid("image-list cache", self.preprocessed, "has an unexpected layout; delete it")
            check_cached_paths(data["train"][:1] + data["test"][:1], self.preprocessed, source)
            train, test = data["train"], data["test"]
        else:
            train, test = self.read_images(source)
            write_pickle_atomic({"train": train, "test": test}, self.preprocessed)

        # ImageNet few-shot reduces train only (val is the 50k test set).
        train, _ = load_or_create_fewshot(
            self, self.split_fewshot_dir, cfg.DATASET.NUM_SHOTS, cfg.SEED, train, None, source
        )
        subsample = getattr(cfg.DATASET, "SUBSAMPLE_CLASSES", "all")
        train, test = subsample_classes(train, test, subsample=subsample)
        super().__init__(train_x=train, val=test, test=test)

    def read_images(self, source: DataSource) -> Tuple[Split, Split]:
        """Both splits label the sorted wnid folders of ``images/train`` (the val folder must hold the same set)."""
        classnames_path = source.require_file(os.path.join(self.dataset_dir, CLASSNAMES_FILE), "class-name file")
        classnames = read_classnames(classnames_path, source)
        train_dir = source.require_dir(os.path.join(self.image_dir, "train"), "image folder")
        val_dir = source.require_dir(os.path.join(self.image_dir, "val"), "image folder")
        classes = name_wnid_folders(sorted_subfolders(train_dir), classnames, classnames_path, source)
        return read_class_folders(train_dir, classes, source), read_class_folders(val_dir, classes, source)


class ImageNetVariant(DatasetBase):
    """A test-only ImageNet variant: one image list used as train_x (for class names) and test; no val.

    ``DATASET.NUM_SHOTS`` and ``DATASET.SUBSAMPLE_CLASSES`` are ignored and nothing is cached. The variant's folder
    holds a copy of ImageNet's ``classnames.txt``. Subclasses set ``dataset_dir`` and ``image_dir`` (and may
    override :meth:`classes`).
    """

    dataset_dir = ""  # folder under DATASET.ROOT
    image_dir = ""  # image folder inside dataset_dir

    def __init__(self, cfg: Any) -> None:
        source = DataSource(type(self).__name__)
        root = os.path.abspath(os.path.expanduser(cfg.DATASET.ROOT))
        self.dataset_dir = os.path.join(root, type(self).dataset_dir)
        self.image_dir = os.path.join(self.dataset_dir, type(self).image_dir)
        source.require_dir(self.dataset_dir, "dataset folder")
        source.require_dir(self.image_dir, "image folder")
        classnames_path = source.require_file(
            os.path.join(self.dataset_dir, CLASSNAMES_FILE), "class-name file", "copy imagenet/classnames.txt here"
        )
        classnames = read_classnames(classnames_path, source)
        data = read_class_folders(self.image_dir, self.classes(classnames, classnames_path, source), source)
        super().__init__(train_x=data, test=data)

    def classes(
        self, classnames: "OrderedDict[str, str]", classnames_path: str, source: DataSource
    ) -> List[Tuple[str, str]]:
        """(folder, class name) per label. Default: the sorted wnid sub-folders of the image dir, so ImageNet-A/-R
        (200 of the 1000 wnids) are 200-class problems labelled 0..199."""
        return name_wnid_folders(sorted_subfolders(self.image_dir), classnames, classnames_path, source)
