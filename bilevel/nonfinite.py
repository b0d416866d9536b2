"""What can silently go wrong evaluating an objective: non-finite values and cut traces.

Every oracle of a problem built with ``check_finite=True`` checks its result with
:func:`all_finite` and raises :class:`NonFiniteError`; loops over inner steps wrap each step
in :func:`at_step` so the error says where it happened. An objective that takes w or λ out
of autograd's trace (NumPy on a traced value, ``float()``) would make a derivative silently
zero: :func:`traced_vjp` sees it and :class:`TracingError` says so.

On a device (CuPy, any non-NumPy array) reading a flag back stalls the device, so the loops
of the methods run inside :class:`deferred_checks`: each check then stays on the device (one
reduction, no read), the first failing check is tracked there, and one host read at the end
of the loop raises the same :class:`NonFiniteError`, naming the same quantity and step.
NumPy arrays are still checked at once (a read costs nothing on the host).
"""

from __future__ import annotations

import contextvars
from array import array
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
    "defer_check",
    "at_step",
    "deferred_checks",
    "has_box",
    "nonfinite_message",
    "settle_checks",
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


def nonfinite_message(what: str, name: str) -> str:
    """The message of a :class:`NonFiniteError` for quantity ``what`` of problem ``name``."""
    return (f"{what} of problem {name!r} contains NaN or inf. Check the objective for "
            "overflow (large exponents, log of 0) or lower the inner step size.")


#: Deferred checks: ``first`` is ``index + BIG·ok`` minimized over the checks (int64).
_BIG = 2**40


class _Ledger:
    """The open deferred checks: the first failure's index on the device; on the host, per
    check, its step and label id (16 bytes a check, labels stored once)."""

    __slots__ = ("first", "ids", "labels", "step", "steps")

    def __init__(self) -> None:
        self.labels: dict[tuple[str, str], int] = {}
        self.ids, self.steps = array("H"), array("q")
        self.first: Any = None
        self.step: int | None = None

    def record(self, what: str, name: str, x: Any) -> None:
        """Track ``all(isfinite(x))`` on the device (one reduction, no read)."""
        xp = namespace(x)
        code = xp.astype(xp.all(xp.isfinite(x)), xp.int64) * _BIG + len(self.ids)
        self.ids.append(self.labels.setdefault((what, name), len(self.labels)))
        self.steps.append(-1 if self.step is None else self.step)
        self.first = code if self.first is None else xp.minimum(self.first, code)

    def settle(self) -> None:
        """One host read; raise the first failed check's :class:`NonFiniteError`."""
        first, labels, ids, steps = self.first, self.labels, self.ids, self.steps
        self.first, self.labels, self.ids, self.steps = None, {}, array("H"), array("q")
        if first is None:
            return
        index = int(first)
        if index < _BIG:
            what, name = next(label for label, i in labels.items() if i == ids[index])
            err = NonFiniteError(what, nonfinite_message(what, name))
            err.step = None if steps[index] < 0 else steps[index]
            raise err


_LEDGER: contextvars.ContextVar[_Ledger | None] = contextvars.ContextVar(
    "bilevel_deferred_checks", default=None)


class deferred_checks:  # lower case: used like contextlib's context managers
    """Context manager: finiteness checks of device arrays inside are read once, at the end.

    Inside, :meth:`~bilevel.oracles.DerivedOracles.require_finite` keeps the flag of each
    non-NumPy array on its device; leaving the outermost block reads the first failure
    (one host synchronization) and raises its :class:`NonFiniteError` with the quantity
    and the :func:`at_step` step it was recorded at. Nested blocks share the outer one.
    An exception leaving the block is preceded by the deferred failure, if any (a NaN
    reached first). Trade-off: a loop runs to its end on NaN values before the error.
    """

    __slots__ = ("ledger", "token")

    def __enter__(self) -> None:
        self.token = None
        if _LEDGER.get() is None:
            self.ledger = _Ledger()
            self.token = _LEDGER.set(self.ledger)

    def __exit__(self, kind: Any, err: Any, tb: Any) -> bool:
        if self.token is None:
            return False
        _LEDGER.reset(self.token)
        if kind is None:
            self.ledger.settle()
        elif issubclass(kind, Exception) and not issubclass(kind, NonFiniteError):
            try:
                self.ledger.settle()
            except NonFiniteError as first:
                raise first from err
        return False


def defer_check(what: str, name: str, x: Any) -> bool:
    """Record the check of a non-NumPy array ``x`` in the open :class:`deferred_checks`
    block and return True; False (check it now) for NumPy values or outside a block."""
    ledger = _LEDGER.get()
    if ledger is None:
        return False
    x = unbox(x)
    if type(x) is np.ndarray or isinstance(x, (float, int, np.generic)):
        return False
    ledger.record(what, name, x)
    return True


def settle_checks() -> None:
    """Read the open :class:`deferred_checks` now (one host read) and raise the first
    failure; the block stays open. No-op outside a block."""
    ledger = _LEDGER.get()
    if ledger is not None:
        ledger.settle()


class at_step:  # lower case: used like contextlib's context managers
    """Context manager: a :class:`NonFiniteError` raised inside gets ``err.step = k``.

    ``with at_step(k): s = dynamics.step(...)`` reports which inner step produced a
    non-finite value; :func:`bilevel.hypergrad` turns the error into a failed result whose
    message names the step. Checks deferred inside (:class:`deferred_checks`) are labelled
    with ``k``. Cheap (no generator): used once per step in the hot loops.
    """

    __slots__ = ("k", "ledger", "prev")

    def __init__(self, k: int):
        self.k = k

    def __enter__(self) -> None:
        self.ledger = ledger = _LEDGER.get()
        if ledger is not None:
            self.prev, ledger.step = ledger.step, self.k

    def __exit__(self, kind: Any, err: Any, tb: Any) -> bool:
        if self.ledger is not None:
            self.ledger.step = self.prev
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
