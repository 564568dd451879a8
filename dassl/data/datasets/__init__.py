"""Dataset base classes and the dataset registry (dataset files import from here)."""
from .base_dataset import DatasetBase, Datum
from .build import DATASET_REGISTRY, build_dataset
