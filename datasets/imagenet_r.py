"""ImageNet-R (200 of the 1000 classes, 30,000 test images): ``imagenet-rendition/imagenet-r/<wnid>/``."""
from dassl.data.datasets import DATASET_REGISTRY

from .imagenet import ImageNetVariant


@DATASET_REGISTRY.register()
class ImageNetR(ImageNetVariant):
    """A 200-class problem: labels 0..199 over the sorted wnid folders (``README.txt`` beside them is skipped)."""

    dataset_dir = "imagenet-rendition"
    image_dir = "imagenet-r"
