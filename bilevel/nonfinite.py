"""What can silently go wrong evaluating an objective: non-finite values and cut traces.

Every oracle of a problem built with ``check_finite=True`` checks its result with
:func:`all_finite` and raises :class:`NonFiniteError`; loops over inner steps wrap each step
in :func:`at_step` so the error says where it happened. An objective that takes w or λ out
of autograd's trace (NumPy on a traced value, ``float()``) would make a derivative silently
zero: :func:`traced_vjp` sees it and :class:`TracingError` says so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from autograd.core import VJPNode, backward_pass
from autograd.tracer import isbox, trace

from .backend import namespace, unbox

__all__ = [
    "TRACE_ADVICE",
    "NonFiniteError",
    "TracingError",
    "all_finite",
    "at_step",
    "has_box",
    "traced_vjp",
]


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

    def __reduce__(self) -> tuple:  # pickles (re-raised from a worker process)
        return type(self), (self.what, str(self)), self.__dict__


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


TRACE_ADVICE = (
    "Write objectives with autograd.numpy (import autograd.numpy as anp) or bilevel.numpy "
    "(bnp) functions: np.asarray, other NumPy (np.) functions, float(x) or x.item() on w or "
    "lam take the value out of autograd's trace, so its derivative silently becomes zero."
)


class TracingError(TypeError):
    """An objective cut w or λ out of autograd's trace (a NumPy call or a float conversion
    on a traced value), which would make a derivative silently zero."""


def traced_vjp(fun: Callable, x: Any) -> tuple[Callable | None, Any]:
    """``(vjp, fun(x))`` like autograd's ``make_vjp``, with ``vjp = None`` when the output
    does not depend on ``x`` through traced operations (a structural zero derivative),
    which autograd itself only warns about. Cost: one traced evaluation of ``fun``."""
    end_value, end_node = trace(VJPNode.new_root(), fun, x)
    if end_node is None:
        return None, end_value

    def vjp(g: Any) -> Any:
        try:
            return backward_pass(g, end_node)
        except TypeError as err:  # e.g. object arrays of boxes made by a NumPy function
            raise TracingError(
                f"autograd's reverse pass failed ({type(err).__name__}: {err}); most likely "
                f"an objective applied a NumPy function to a traced value. {TRACE_ADVICE}"
            ) from err

    return vjp, end_value


def has_box(data: Any) -> bool:
    """Whether ``data`` (an array or a nested tuple/list/dict of them) holds an autograd box."""
    if isinstance(data, (tuple, list)):
        return any(has_box(x) for x in data)
    if isinstance(data, dict):
        return any(has_box(x) for x in data.values())
    return isbox(data)
