"""SUN397 (397 scene classes): ``sun397/SUN397/<letter>/<category>[/<sub>]/*.jpg`` + partition txt files."""
import os
from typing import Dict, Tuple

from dassl.data.datasets import DATASET_REGISTRY

from .common import Split, SplitDataset, make_datum, split_trainval


@DATASET_REGISTRY.register()
class SUN397(SplitDataset):
    dataset_dir = "sun397"
    image_dir = "SUN397"
    split_file = "split_zhou_SUN397.json"

    def generate_split(self) -> Tuple[Split, Split, Split]:
        """Classes from ``ClassName.txt`` (line order), partition 1 of ``Training_01.txt`` / ``Testing_01.txt``."""
        classname_file = self.require_annotation(os.path.join(self.dataset_dir, "ClassName.txt"))
        with open(classname_file) as f:
            class_keys = [line.strip()[1:] for line in f if line.strip()]  # "/a/abbey" -> "a/abbey"
        key2label = {key: label for label, key in enumerate(class_keys)}
        trainval = self.read_partition(key2label, "Training_01.txt")
        test = self.read_partition(key2label, "Testing_01.txt")
        train, val = split_trainval(trainval, p_val=0.2)
        return train, val, test

    def read_partition(self, key2label: Dict[str, int], list_name: str) -> Split:
        list_file = self.require_annotation(os.path.join(self.dataset_dir, list_name))
        items = []
        with open(list_file) as f:
            for line in f:
                relpath = line.strip()[1:]  # "/a/abbey/sun_x.jpg" -> "a/abbey/sun_x.jpg"
                if not relpath:
                    continue
                key = os.path.dirname(relpath)
                if key not in key2label:
                    raise self.source.invalid("partition file", list_file, f"lists {relpath}, not in ClassName.txt")
                # Drop the letter folder and read the rest backwards: "a/apartment_building/outdoor" ->
                # "outdoor apartment_building".
                classname = " ".join(key.split("/")[1:][::-1])
                impath = os.path.join(self.image_dir, relpath)
                items.append(make_datum(impath, key2label[key], classname, self.source, list_name))
        return items
