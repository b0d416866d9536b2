"""A readable, stable description of the objects that determine a run.

:func:`describe` turns a model, an algorithm, a task sampler, a problem or an optimizer into
a string that is equal for two objects exactly when they would compute the same thing:
option objects and plain objects by their type and public attributes (recursively), arrays
by shape, dtype and a SHA-256 of their bytes, functions by qualified name and a hash of
their code, constants and closure. Outer loops store these strings in their checkpoint's
``config`` (:func:`bilevel.outer.restore` compares them), so a resume under a changed model
or problem is refused and the message names the field that differs.
"""

from __future__ import annotations

import hashlib
import types
from typing import Any

import numpy as np

from ..backend import is_array, to_numpy

__all__ = ["describe", "digest", "public_fields"]

_LONG = 240  # longer descriptions are shortened to "Type#<digest>"
_DEPTH = 6


def digest(text: str) -> str:
    """First 16 hex digits of the SHA-256 of ``text``."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _array(x: Any) -> str:
    a = np.ascontiguousarray(to_numpy(x))
    return f"array{list(a.shape)}:{a.dtype}:{hashlib.sha256(a.tobytes()).hexdigest()[:16]}"


def _function(fn: Any, depth: int) -> str:
    code = getattr(fn, "__code__", None)
    name = getattr(fn, "__qualname__", type(fn).__name__)
    if code is None:
        return f"{getattr(fn, '__module__', '')}.{name}"
    cells = tuple(_describe(c.cell_contents, depth + 1) for c in (fn.__closure__ or ())
                  if _filled(c))
    body = repr((code.co_code, _consts(code.co_consts), code.co_names, cells))
    return f"{name}#{digest(body)}"


def _filled(cell: Any) -> bool:
    try:
        _ = cell.cell_contents
    except ValueError:  # an empty cell (a name not yet bound)
        return False
    return True


def _consts(consts: tuple) -> tuple:
    return tuple(c.co_code if hasattr(c, "co_code") else repr(c) for c in consts)


def public_fields(obj: Any) -> dict[str, Any]:
    """The dataclass fields, or else the public attributes, of ``obj``."""
    fields = getattr(obj, "__dataclass_fields__", None)
    if fields is not None:
        return {k: getattr(obj, k) for k in fields if not k.startswith("_")}
    return {k: v for k, v in vars(obj).items() if not k.startswith("_")}


def _describe(obj: Any, depth: int) -> str:
    if obj is None or isinstance(obj, (bool, int, float, str, np.generic, np.dtype)):
        return repr(obj)
    if depth > _DEPTH:
        return type(obj).__name__
    if isinstance(obj, types.ModuleType):
        return f"module {obj.__name__}"
    if isinstance(obj, type):
        return f"class {obj.__module__}.{obj.__qualname__}"
    if is_array(obj):
        try:
            return _array(obj)
        except (TypeError, ValueError):  # an array-like that cannot be copied to the host
            return type(obj).__name__
    if isinstance(obj, (list, tuple)):
        return "(" + ", ".join(_describe(v, depth + 1) for v in obj) + ")"
    if isinstance(obj, dict):
        return "{" + ", ".join(f"{k!r}: {_describe(v, depth + 1)}"
                               for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))) + "}"
    if callable(obj) and hasattr(obj, "__code__"):
        return _function(obj, depth)
    if hasattr(obj, "__dict__") or hasattr(obj, "__dataclass_fields__"):
        inner = ", ".join(f"{k}={_describe(v, depth + 1)}" for k, v in public_fields(obj).items())
        text = f"{type(obj).__name__}({inner})"
        return text if len(text) <= _LONG else f"{type(obj).__name__}#{digest(text)}"
    return type(obj).__name__


def describe(obj: Any) -> str:
    """The description of ``obj`` (see the module docstring).

    Cost: one pass over the object's attributes; every array is hashed once (SHA-256, about
    1 GB/s), so a sampler holding a data set costs a hash of that data set.
    """
    return _describe(obj, 0)
