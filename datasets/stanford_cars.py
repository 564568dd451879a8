"""Stanford Cars (196 classes): ``stanford_cars/{cars_train,cars_test}/`` + devkit ``.mat`` annotations.

Split-file paths are relative to ``stanford_cars/`` itself (``cars_train/00001.jpg``).
"""
import os
from typing import Tuple

from scipy.io import loadmat

from dassl.data.datasets import DATASET_REGISTRY

from .common import Split, SplitDataset, make_datum, split_trainval


@DATASET_REGISTRY.register()
class StanfordCars(SplitDataset):
    dataset_dir = "stanford_cars"
    image_dir = ""
    split_file = "split_zhou_StanfordCars.json"

    def generate_split(self) -> Tuple[Split, Split, Split]:
        meta_file = os.path.join(self.dataset_dir, "devkit", "cars_meta.mat")
        trainval = self.read_annotations(
            "cars_train", os.path.join(self.dataset_dir, "devkit", "cars_train_annos.mat"), meta_file
        )
        test = self.read_annotations(
            "cars_test", os.path.join(self.dataset_dir, "cars_test_annos_withlabels.mat"), meta_file
        )
        train, val = split_trainval(trainval, p_val=0.2)
        return train, val, test

    def read_annotations(self, image_folder: str, anno_file: str, meta_file: str) -> Split:
        """``annotations`` records (``fname``, 1-based ``class``) + ``class_names``; the year moves to the front."""
        annotations = loadmat(self.require_annotation(anno_file))["annotations"][0]
        class_names = loadmat(self.require_annotation(meta_file))["class_names"][0]
        items = []
        for record in annotations:
            label = int(record["class"][0, 0]) - 1
            words = str(class_names[label][0]).split(" ")
            classname = " ".join([words[-1]] + words[:-1])  # "Tesla Model S Sedan 2012" -> "2012 Tesla Model S Sedan"
            impath = os.path.join(self.dataset_dir, image_folder, str(record["fname"][0]))
            items.append(make_datum(impath, label, classname, self.source, os.path.basename(anno_file)))
        return items
