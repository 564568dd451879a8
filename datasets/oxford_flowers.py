"""Oxford Flowers102: ``oxford_flowers/jpg/image_XXXXX.jpg`` + ``imagelabels.mat`` + ``cat_to_name.json``."""
import os
from typing import Dict, List, Tuple

from scipy.io import loadmat

from dassl.data.datasets import DATASET_REGISTRY
from dassl.utils import read_json

from .common import Split, SplitDataset, make_datum, split_by_ratio


@DATASET_REGISTRY.register()
class OxfordFlowers(SplitDataset):
    dataset_dir = "oxford_flowers"
    image_dir = "jpg"
    split_file = "split_zhou_OxfordFlowers.json"

    def generate_split(self) -> Tuple[Split, Split, Split]:
        """Per class (first-appearance order in ``imagelabels.mat``): 50% train, 20% val, rest test."""
        label_file = self.require_annotation(os.path.join(self.dataset_dir, "imagelabels.mat"))
        # cat_to_name.json maps the 1-based class id as a string ("1".."102") to the flower name.
        lab2cname = read_json(self.require_annotation(os.path.join(self.dataset_dir, "cat_to_name.json")))
        by_class: Dict[int, List[str]] = {}
        for i, class_id in enumerate(loadmat(label_file)["labels"][0]):
            impath = os.path.join(self.image_dir, f"image_{i + 1:05d}.jpg")
            by_class.setdefault(int(class_id), []).append(impath)
        train, val, test = [], [], []
        for class_id, impaths in by_class.items():
            classname = lab2cname[str(class_id)]
            parts = split_by_ratio(impaths, 0.5, 0.2, f"class {class_id} ({classname})", self.source)
            for split, paths in zip((train, val, test), parts):
                split.extend(make_datum(p, class_id - 1, classname, self.source, "imagelabels.mat") for p in paths)
        return train, val, test
