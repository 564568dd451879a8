"""FGVC-Aircraft (100 variants): ``fgvc_aircraft/images/<id>.jpg`` + the official variant lists (no split file)."""
import os
from typing import Dict, Tuple

from dassl.data.datasets import DATASET_REGISTRY

from .common import Split, SplitDataset, make_datum


@DATASET_REGISTRY.register()
class FGVCAircraft(SplitDataset):
    """Always built from the official lists: deterministic, no random split, no json written."""

    dataset_dir = "fgvc_aircraft"
    image_dir = "images"

    def load_splits(self) -> Tuple[Split, Split, Split]:
        variants_file = self.source.require_file(os.path.join(self.dataset_dir, "variants.txt"), "class list")
        with open(variants_file) as f:
            classnames = [line.strip() for line in f if line.strip()]
        cname2label = {name: label for label, name in enumerate(classnames)}
        return tuple(self.read_list(cname2label, f"images_variant_{split}.txt") for split in ("train", "val", "test"))

    def read_list(self, cname2label: Dict[str, int], list_name: str) -> Split:
        """Lines ``<image id> <variant name, may contain spaces and '/'>``."""
        list_file = self.source.require_file(os.path.join(self.dataset_dir, list_name), "split list")
        items = []
        with open(list_file) as f:
            for line in f:
                if not line.strip():
                    continue
                image_id, classname = line.strip().split(" ", 1)
                if classname not in cname2label:
                    raise self.source.invalid("split list", list_file, f"names {classname!r}, not in variants.txt")
                impath = os.path.join(self.image_dir, image_id + ".jpg")
                items.append(make_datum(impath, cname2label[classname], classname, self.source, list_name))
        return items
