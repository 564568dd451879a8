"""DTD, Describable Textures (47 classes): ``dtd/images/<category>/*.jpg``."""
from typing import Tuple

from dassl.data.datasets import DATASET_REGISTRY

from .common import Split, SplitDataset, read_and_split_data


@DATASET_REGISTRY.register()
class DescribableTextures(SplitDataset):
    dataset_dir = "dtd"
    image_dir = "images"
    split_file = "split_zhou_DescribableTextures.json"

    def generate_split(self) -> Tuple[Split, Split, Split]:
        return read_and_split_data(self.image_dir, self.source)
