"""Trainer modules. Importing this package registers every trainer in ``TRAINER_REGISTRY``.

Every module in this folder is imported here automatically, so a new trainer file is registered
as soon as it exists (no import line to forget).
"""
import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
