"""Import every module of a package (trainers/, datasets/) so that each registers itself, one bad file at a time.

A module that fails to import (a syntax error, a missing dependency, a name clash in ``TRAINER_REGISTRY`` /
``DATASET_REGISTRY`` such as a second ``ZeroshotCLIP``) is reported in one ``warning:`` line on stderr naming its
file, the names it registered before failing are removed again, and every other module still loads: a file dropped
in from another project can never take ``train.py --list-trainers`` or another trainer's run down.
"""
import importlib
import os
import pkgutil
import sys
from typing import Iterable, List, Sequence


def _registries() -> List[object]:
    """The engine's registries (whichever Dassl is on the path), to undo a failed module's registrations."""
    from dassl.data.datasets import DATASET_REGISTRY
    from dassl.engine import TRAINER_REGISTRY

    return [TRAINER_REGISTRY, DATASET_REGISTRY]


def _one_line(error: BaseException) -> str:
    if isinstance(error, SyntaxError):
        return f"SyntaxError: {error.msg} (line {error.lineno})"
    text = error.args[0] if isinstance(error, KeyError) and error.args else error  # KeyError's str() adds quotes
    message = " ".join(str(text).split())
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def import_package_modules(package: str, path: Iterable[str], first: Sequence[str] = ()) -> List[str]:
    """Import ``<package>.<module>`` for every module in ``path``: the names in ``first`` (this library's own modules,
    so that they win any registry name clash), then the others alphabetically. Returns the modules that failed."""
    found = sorted(module.name for module in pkgutil.iter_modules(list(path)))
    order = [name for name in first if name in found] + [name for name in found if name not in first]
    failed = []
    for name in order:
        registries = _registries()
        before = [set(getattr(registry, "_obj_map", {})) for registry in registries]
        try:
            importlib.import_module(f"{package}.{name}")
        except Exception as error:  # any failure of a dropped-in file means the same: skip it, say why
            for registry, names in zip(registries, before):
                obj_map = getattr(registry, "_obj_map", {})
                for added in set(obj_map) - names:
                    del obj_map[added]
            file = os.path.join(package.replace(".", os.sep), f"{name}.py")
            print(f"warning: skipped {file}: {_one_line(error)}; the other {package} still work", file=sys.stderr)
            failed.append(name)
    return failed
