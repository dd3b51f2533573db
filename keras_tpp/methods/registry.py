"""The registry of pruning methods by name: adding a method is one module that registers."""
from __future__ import annotations

from typing import Any

METHODS: dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: make ``cls`` (a PruningMethod subclass) known by ``cls.name``."""
    from keras_tpp.methods.base import PruningMethod

    if not (isinstance(cls, type) and issubclass(cls, PruningMethod)) or not cls.name:
        raise ValueError(f"register() takes a PruningMethod subclass with a name, got {cls!r}.")
    if cls.selection not in ("l1", "random", "deferred", "scores"):
        raise ValueError(f"{cls.__name__}.selection must be 'l1', 'random', 'deferred' or "
                         f"'scores', got {cls.selection!r}.")
    if cls.granularity not in ("channel", "weight"):
        raise ValueError(f"{cls.__name__}.granularity must be 'channel' or 'weight', got "
                         f"{cls.granularity!r}.")
    METHODS[cls.name] = cls
    return cls


def unregister(name: str) -> None:
    """Forget a registered method (no error if it is unknown)."""
    METHODS.pop(name, None)


def names() -> list[str]:
    """The registered method names, in registration order."""
    return list(METHODS)


def get_method(method: Any, options: dict | None = None):
    """A PruningMethod instance from a name (with ``options``) or an instance.

    Raises ValueError listing the valid names for anything else.
    """
    from keras_tpp.methods.base import PruningMethod

    if isinstance(method, PruningMethod):
        if options:
            raise ValueError("Method options go on the method object, not beside it.")
        return method
    cls = METHODS.get(method.lower()) if isinstance(method, str) else None
    if cls is None:
        valid = ", ".join(f"'{m}'" for m in METHODS)
        raise ValueError(f"Unknown pruning method {method!r}; valid methods: {valid}.")
    try:
        return cls(**(options or {}))
    except TypeError as err:
        raise ValueError(f"Invalid options for method '{cls.name}': {err}") from None
