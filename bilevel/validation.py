"""Argument validation in one place: checks for the fields of the library's option objects.

Every option object (methods, linear solvers, dynamics, meta algorithms, outer-loop options)
is a frozen dataclass whose fields carry their check in the field metadata::

    @dataclass(frozen=True)
    class Reverse(Validated, Method):
        truncate: int | None = option(None, check=optional(integer(minimum=1)))

:class:`Validated` runs each check once, at construction, and stores the normalised value
(``5.0`` for ``5``, ``int`` for a NumPy integer). A check is a callable ``(name, value) ->
value`` that raises ``ValueError``/``TypeError`` with a message naming the argument, what it
must be and what it got.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import field, fields
from numbers import Integral, Real
from typing import Any

__all__ = [
    "Check",
    "Validated",
    "boolean",
    "function",
    "integer",
    "nonnegative",
    "number",
    "one_of",
    "option",
    "optional",
    "positive",
]

Check = Callable[[str, Any], Any]


def _is_real(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def number(minimum: float | None = None, *, strict: bool = False,
           maximum: float | None = None, below: bool = False) -> Check:
    """A finite real number ``≥ minimum`` (``> minimum`` when ``strict``) and ``≤ maximum``
    (``< maximum`` when ``below``)."""
    op = ">" if strict else ">="
    bound = "" if minimum is None else f" {op} {minimum:g}"
    bound += "" if maximum is None else f" and {'<' if below else '<='} {maximum:g}"

    def check(name: str, value: Any) -> float:
        ok = _is_real(value) and math.isfinite(float(value))
        if ok and minimum is not None:
            ok = value > minimum if strict else value >= minimum
        if ok and maximum is not None:
            ok = value < maximum if below else value <= maximum
        if not ok:
            raise ValueError(f"{name} must be a finite number{bound}, got {value!r}")
        return float(value)

    return check


def positive(name: str, value: Any) -> float:
    """Check: a finite number ``> 0``; returns it as ``float``."""
    return number(0, strict=True)(name, value)


def nonnegative(name: str, value: Any) -> float:
    """Check: a finite number ``≥ 0``; returns it as ``float``."""
    return number(0)(name, value)


def boolean(name: str, value: Any) -> bool:
    """Check: ``True`` or ``False`` (NumPy booleans accepted); a ``TypeError`` otherwise."""
    if not isinstance(value, bool) and type(value).__name__ != "bool_":
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def function(name: str, value: Any) -> Any:
    """Check: a callable, returned as given; a ``TypeError`` otherwise."""
    if not callable(value):
        raise TypeError(f"{name} must be a function, got {type(value).__name__} {value!r}")
    return value


def integer(minimum: int = 1) -> Check:
    """Check factory: an integer ``≥ minimum`` (NumPy integers and integral floats accepted)."""

    def check(name: str, value: Any) -> int:
        if isinstance(value, bool) or not (
            isinstance(value, Integral) or (_is_real(value) and float(value).is_integer())
        ) or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
        return int(value)

    return check


def optional(check: Check) -> Check:
    """Check factory: ``None`` or what ``check`` accepts."""

    def wrapped(name: str, value: Any) -> Any:
        return None if value is None else check(name, value)

    return wrapped


def one_of(options: Iterable[Any]) -> Check:
    """Check factory: one of ``options`` (strings compared case-insensitively)."""
    choices = tuple(options)

    def check(name: str, value: Any) -> Any:
        for c in choices:
            if value == c or (isinstance(value, str) and isinstance(c, str)
                              and value.lower() == c.lower()):
                return c
        raise ValueError(
            f"{name} must be one of {', '.join(repr(c) for c in choices)}; got {value!r}"
        )

    return check


def option(default: Any = None, *, check: Check | None = None, **kwargs: Any) -> Any:
    """A dataclass field with a default and a check run by :class:`Validated`."""
    return field(default=default, metadata={"check": check}, **kwargs)


class Validated:
    """Mixin for (frozen) dataclasses: run each field's ``check`` once, store its result."""

    def __post_init__(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]
            check = f.metadata.get("check")
            if check is not None:
                object.__setattr__(self, f.name, check(f.name, getattr(self, f.name)))
