"""Food101 (101 classes): ``food-101/images/<class>/<id>.jpg``; the official ``meta/`` lists are not used."""
from typing import Tuple

from dassl.data.datasets import DATASET_REGISTRY

from .common import Split, SplitDataset, read_and_split_data


@DATASET_REGISTRY.register()
class Food101(SplitDataset):
    dataset_dir = "food-101"
    image_dir = "images"
    split_file = "split_zhou_Food101.json"

    def generate_split(self) -> Tuple[Split, Split, Split]:
        return read_and_split_data(self.image_dir, self.source)
