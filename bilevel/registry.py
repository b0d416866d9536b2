"""One registry of the library's named components, keyed by their ``name``.

Methods, linear solvers, dynamics, outer optimizers and meta-learning algorithms register
themselves where they are defined::

    @register("method")
    class Reverse(Method):
        name = "reverse"

The CLI, the benchmarks and the tests read the registry (:func:`names`, :func:`lookup`)
instead of keeping lists of their own. Lookup is case-insensitive and ignores ``-`` and
``_``, so ``"A-MAML"``, ``"amaml"`` and ``"a_maml"`` name the same algorithm. Layers
register their own kinds: the core never imports the meta layer; ``bilevel.meta`` fills the
``"algorithm"`` kind when it is imported.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["lookup", "names", "register", "spelling"]

T = TypeVar("T")
_REGISTRY: dict[str, dict[str, Any]] = {}
_NAMES: dict[str, dict[str, str]] = {}


def spelling(name: str) -> str:
    """The key a name is stored under: lower case without ``-``, ``_`` or spaces."""
    return "".join(c for c in str(name).lower() if c not in "-_ ")


def register(kind: str, *aliases: str) -> Callable[[T], T]:
    """Class decorator: file ``obj`` under ``kind`` by its ``name`` attribute (and aliases)."""

    def deco(obj: T) -> T:
        name = getattr(obj, "name", None)
        if not isinstance(name, str):
            raise TypeError(f"{obj!r} needs a string attribute 'name' to be registered")
        table = _REGISTRY.setdefault(kind, {})
        shown = _NAMES.setdefault(kind, {})
        for key in (name, *aliases):
            table[spelling(key)] = obj
        shown[spelling(name)] = name
        return obj

    return deco


def names(kind: str) -> list[str]:
    """The canonical names registered under ``kind``, in registration order."""
    return list(_NAMES.get(kind, {}).values())


def lookup(kind: str, name: str) -> Any:
    """The object registered under ``kind`` as ``name`` (any spelling); a clear error if none."""
    table = _REGISTRY.get(kind, {})
    try:
        return table[spelling(name)]
    except KeyError:
        known = ", ".join(names(kind)) or "none registered"
        raise ValueError(f"unknown {kind} {name!r}; choose one of: {known}") from None
