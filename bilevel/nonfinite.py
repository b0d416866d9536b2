"""Non-finite values: the error raised for NaN/inf and the tag of the step it came from.

Every oracle of a problem built with ``check_finite=True`` checks its result with
:func:`all_finite` and raises :class:`NonFiniteError`; loops over inner steps wrap each step
in :func:`at_step` so the error says where it happened.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def at_step(k: int) -> Iterator[None]:
    """Tag a :class:`NonFiniteError` raised inside the block with ``err.step = k``, re-raise.

    ::

        with at_step(k):
            state = dynamics.step(problem, state, lam, k)
    """
    try:
        yield
    except NonFiniteError as err:
        err.step = k
        raise


def all_finite(x: Any) -> bool:
    """True when every entry of the array (or scalar) ``x`` is finite. Reads one scalar."""
    x = unbox(x)
    if type(x) is np.ndarray or isinstance(x, (float, int, np.generic)):
        return bool(np.isfinite(x).all())
    xp = namespace(x)
    return bool(xp.all(xp.isfinite(x)))
