"""Non-finite values: the error raised for NaN/inf and the tag of the step it came from.

Every oracle of a problem built with ``check_finite=True`` checks its result with
:func:`all_finite` and raises :class:`NonFiniteError`; loops over inner steps wrap each step
in :func:`at_step` so the error says where it happened.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .backend import namespace, unbox

__all__ = ["NonFiniteError", "all_finite", "at_step"]


class NonFiniteError(FloatingPointError):
    """An objective value or a derivative contained NaN or inf.

    Attributes
    ----------
    what : str
        Which quantity was not finite (e.g. ``"inner_grad"``).
    step : int or None
        The inner step at which it happened, when known (set by :func:`at_step`).
    """

    step: int | None = None

    def __init__(self, what: str, message: str):
        super().__init__(message)
        self.what = what


class at_step:  # lower case: used like contextlib's context managers
    """Context manager: a :class:`NonFiniteError` raised inside gets ``err.step = k``.

    ``with at_step(k): s = dynamics.step(...)`` reports which inner step produced a
    non-finite value; :func:`bilevel.hypergrad` turns the error into a failed result whose
    message names the step. Cheap (no generator): used once per step in the hot loops.
    """

    __slots__ = ("k",)

    def __init__(self, k: int):
        self.k = k

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, err: Any, tb: Any) -> bool:
        if kind is not None and issubclass(kind, NonFiniteError):
            err.step = self.k
        return False


def all_finite(x: Any) -> bool:
    """True when every entry of the array (or scalar) ``x`` is finite. Reads one scalar."""
    x = unbox(x)
    if type(x) is np.ndarray or isinstance(x, (float, int, np.generic)):
        return bool(np.isfinite(x).all())
    xp = namespace(x)
    return bool(xp.all(xp.isfinite(x)))
