"""ImageNet-A (200 of the 1000 classes, 7,500 test images): ``imagenet-adversarial/imagenet-a/<wnid>/``."""
from dassl.data.datasets import DATASET_REGISTRY

from .imagenet import ImageNetVariant


@DATASET_REGISTRY.register()
class ImageNetA(ImageNetVariant):
    """A 200-class problem: labels 0..199 over the sorted wnid folders (``README.txt`` beside them is skipped)."""

    dataset_dir = "imagenet-adversarial"
    image_dir = "imagenet-a"
