"""ImageNet-Sketch (1000 classes, 50,889 test images): ``imagenet-sketch/images/<wnid>/``."""
from dassl.data.datasets import DATASET_REGISTRY

from .imagenet import ImageNetVariant


@DATASET_REGISTRY.register()
class ImageNetSketch(ImageNetVariant):
    dataset_dir = "imagenet-sketch"
    image_dir = "images"
