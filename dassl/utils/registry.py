"""Name -> object registries (trainers, datasets, evaluators) with helpful lookup errors."""
from difflib import SequenceMatcher
from typing import Any, Callable, Dict, Iterable, List, Optional

from .errors import UserError


class RegistryLookupError(UserError, KeyError):
    """A name that is not registered. A ``KeyError`` (Dassl's ``Registry.get`` contract) and a ``UserError``."""

    def __str__(self) -> str:
        # KeyError would quote the message; print it as written.
        return str(self.args[0])


def get_most_similar_str_to_a_from_b(a: str, b: Iterable[str]) -> Optional[str]:
    """Return the string of ``b`` most similar to ``a`` (difflib ratio), or None if ``b`` is empty."""
    best, best_ratio = None, -1.0
    for candidate in b:
        ratio = SequenceMatcher(None, a, candidate).ratio()
        if ratio > best_ratio:
            best, best_ratio = candidate, ratio
    return best


def _unavailable_message(kind: str, requested: str, available: Iterable[str]) -> str:
    available = sorted(available)
    closest = get_most_similar_str_to_a_from_b(requested, available)
    hint = f" Did you mean {closest!r}?" if closest is not None else ""
    return f"unknown {kind} {requested!r}; available: {', '.join(available) or '(none)'}.{hint}"


def check_availability(requested: str, available: Iterable[str], kind: str = "name") -> None:
    """Raise a ``UserError`` (a ``ValueError``) listing ``available`` and the closest match if missing."""
    available = list(available)
    if requested not in available:
        raise UserError(_unavailable_message(kind, requested, available))


class Registry:
    """A name -> object map filled at import time by the ``@REGISTRY.register()`` decorator.

    Example::

        TRAINER_REGISTRY = Registry("TRAINER")

        @TRAINER_REGISTRY.register()
        class MyTrainer(TrainerX):
            ...

        TRAINER_REGISTRY.get("MyTrainer")
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._obj_map: Dict[str, Any] = {}

    def _do_register(self, name: str, obj: Any, force: bool = False) -> None:
        if name in self._obj_map and not force:
            raise KeyError(
                f'An object named "{name}" was already registered in "{self._name}" registry '
                "(pass force=True to replace it)"
            )
        self._obj_map[name] = obj

    def register(self, obj: Any = None, force: bool = False) -> Any:
        """Register ``obj`` under ``obj.__name__``; with no ``obj``, return a decorator that does it."""
        if obj is None:

            def wrapper(fn_or_class: Callable) -> Callable:
                self._do_register(fn_or_class.__name__, fn_or_class, force=force)
                return fn_or_class

            return wrapper
        self._do_register(obj.__name__, obj, force=force)
        return obj

    def get(self, name: str) -> Any:
        """The object registered as ``name``; unknown name -> ``RegistryLookupError`` naming the closest match."""
        if name not in self._obj_map:
            raise RegistryLookupError(_unavailable_message(self._name.lower(), name, self._obj_map))
        return self._obj_map[name]

    def registered_names(self) -> List[str]:
        """Registered names in registration order."""
        return list(self._obj_map.keys())

    def __contains__(self, name: str) -> bool:
        return name in self._obj_map

    def __repr__(self) -> str:
        return f"Registry({self._name!r}, {self.registered_names()})"
