"""Dataset modules. Importing this package registers every dataset in ``DATASET_REGISTRY``.

Every module in this folder is imported here automatically, so a new dataset file is registered
as soon as it exists (no import line to forget).
"""
import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
