"""ImageNetV2 (matched frequency, 10,000 test images).

Layout: ``imagenetv2/imagenetv2-matched-frequency-format-val/<0..999>/`` + ``imagenetv2/classnames.txt``.
"""
from collections import OrderedDict
from typing import List, Tuple

from dassl.data.datasets import DATASET_REGISTRY

from .common import DataSource
from .imagenet import ImageNetVariant


@DATASET_REGISTRY.register()
class ImageNetV2(ImageNetVariant):
    dataset_dir = "imagenetv2"
    image_dir = "imagenetv2-matched-frequency-format-val"

    def classes(
        self, classnames: "OrderedDict[str, str]", classnames_path: str, source: DataSource
    ) -> List[Tuple[str, str]]:
        """Folders are named by label ("0".."999"); label i takes the i-th line of classnames.txt (which must be in
        the canonical sorted-wnid order, as ImageNet's file is)."""
        return [(str(label), name) for label, name in enumerate(classnames.values())]
