"""Caltech101 (100 object classes): ``caltech-101/101_ObjectCategories/<Category>/image_XXXX.jpg``."""
from typing import Tuple

from dassl.data.datasets import DATASET_REGISTRY

from .common import Split, SplitDataset, read_and_split_data

# Not object classes: a clutter class and a near-duplicate of "Faces".
IGNORED = ("BACKGROUND_Google", "Faces_easy")
# Folder name -> class name (image paths keep the folder names).
NEW_CNAMES = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}


@DATASET_REGISTRY.register()
class Caltech101(SplitDataset):
    dataset_dir = "caltech-101"
    image_dir = "101_ObjectCategories"
    split_file = "split_zhou_Caltech101.json"

    def generate_split(self) -> Tuple[Split, Split, Split]:
        return read_and_split_data(self.image_dir, self.source, ignored=IGNORED, new_cnames=NEW_CNAMES)
