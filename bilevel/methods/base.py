"""What every hypergradient method shares: the method base class, the result and state
types, the warning and error classes, and the helpers that build and tag results.

:mod:`bilevel.api` (the entry point :func:`~bilevel.api.hypergrad`) sits above this module and
re-exports its public names; the methods import from here, so imports point one way.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import warnings
from collections.abc import Callable, ItemsView, Iterator, KeysView, ValuesView
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..backend import device, namespace
from ..batch import largest, norm_per_problem, per_problem
from ..dynamics import Dynamics
from ..nonfinite import at_step
from ..problem import BilevelProblem
from ..validation import boolean

__all__ = [
    "ON_FAILURE",
    "HypergradError",
    "HypergradResult",
    "HypergradState",
    "HypergradWarning",
    "Method",
    "at_step",
    "defer_inner_residual",
    "failure_result",
    "flag",
    "largest",
    "norm_per_problem",
    "outcome",
    "per_problem",
    "resolve_dynamics",
]

ON_FAILURE = ("warn", "raise", "ignore")


class HypergradWarning(UserWarning):
    """A hypergradient was computed but its diagnostics say it may be wrong."""


class HypergradError(RuntimeError):
    """Raised under ``on_failure="raise"`` (``strict=True``) when a diagnostic fails.

    Attributes
    ----------
    result : HypergradResult
        The full result, with the diagnostics that triggered the error.
    """

    def __init__(self, message: str, result: HypergradResult):
        super().__init__(message)
        self.result = result

    def __reduce__(self) -> tuple:  # pickles (re-raised from a worker process)
        return type(self), (str(self), self.result), self.__dict__


class HypergradResult(dict):
    """Result of :func:`~bilevel.api.hypergrad` with attribute access (like ``OptimizeResult``).

    Attributes
    ----------
    grad : array
        The hypergradient ∇F(λ), shape of ``lam``.
    w : array
        Final inner iterate.
    value : array
        Outer objective f(w, λ) at the final iterate (per problem with a batch axis).
    success : bool
        False when a diagnostic reports a failure (see ``message``).
    message : str
        What happened, in words.
    inner_residual : array
        ‖∇_w g(w, λ)‖ at the final iterate (per problem); computed on its first read
        (one inner gradient, not in ``n_grad``) by the methods that do not test it.
    n_grad, n_hvp, n_jvp : int
        Inner gradients (incl. outer gradients), Hessian/mixed vector products and
        Jacobian-vector products spent.
    method : str
        The method's ``repr``.
    time : float
        Wall-clock seconds.

    Method-specific diagnostics (``linear_solve``, ``reconstruction_error``,
    ``nonfinite_step``, ...) are further keys; ``keys()`` lists them.

    An entry may be *deferred* (:meth:`defer`): a diagnostic that costs work, such as the
    unrolled methods' ``inner_residual`` (one inner gradient), is computed on its first read
    (``res[key]``, ``res.key``, ``res.get``, ``in`` does not read) or when the result is
    listed, compared, printed or pickled, then kept; it costs nothing when nobody reads it.
    """

    def defer(self, key: str, compute: Callable[[], Any]) -> None:
        """Make ``self[key]`` the value of ``compute()``, called on the first read and kept.

        A value stored under ``key`` before the first read wins over ``compute``.
        """
        self.__dict__.setdefault("_pending", {})[key] = compute

    def deferred(self, key: str) -> bool:
        """Whether ``key`` is deferred and not computed yet (reading it would compute it)."""
        return key in self.__dict__.get("_pending", ()) and not dict.__contains__(self, key)

    def settle(self) -> HypergradResult:
        """Compute every deferred entry now and return ``self`` (drops what the deferred
        computations hold: the problem and the final iterate)."""
        self._resolve()
        return self

    def _resolve(self) -> None:
        """Compute every deferred entry (before the result is listed, compared or pickled)."""
        pending = self.__dict__.pop("_pending", None)
        for key, compute in (pending or {}).items():
            if not dict.__contains__(self, key):
                dict.__setitem__(self, key, compute())

    def __missing__(self, key: str) -> Any:
        pending = self.__dict__.get("_pending")
        if not pending or key not in pending:
            raise KeyError(key)
        value = pending.pop(key)()
        dict.__setitem__(self, key, value)
        return value

    def __contains__(self, key: object) -> bool:
        return dict.__contains__(self, key) or key in self.__dict__.get("_pending", ())

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default

    def setdefault(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else dict.setdefault(self, key, default)

    def pop(self, key: str, *default: Any) -> Any:
        if key in self:
            self[key]  # noqa: B018 (computes a deferred entry)
        return dict.pop(self, key, *default)

    def __iter__(self) -> Iterator[str]:
        self._resolve()
        return dict.__iter__(self)

    def __len__(self) -> int:
        self._resolve()
        return dict.__len__(self)

    def keys(self) -> KeysView[str]:
        self._resolve()
        return dict.keys(self)

    def values(self) -> ValuesView[Any]:
        self._resolve()
        return dict.values(self)

    def items(self) -> ItemsView[str, Any]:
        self._resolve()
        return dict.items(self)

    def copy(self) -> dict[str, Any]:
        self._resolve()
        return dict.copy(self)

    def __eq__(self, other: object) -> bool:
        self._resolve()
        if isinstance(other, HypergradResult):
            other._resolve()
        return dict.__eq__(self, other)

    __hash__ = None  # type: ignore[assignment]  # mutable, like dict

    def __reduce__(self) -> tuple:
        """Pickles (results travel between processes) with the deferred entries computed."""
        self._resolve()
        return type(self), (dict(dict.items(self)),)

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as err:
            raise AttributeError(
                f"HypergradResult has no field {name!r}; available: {sorted(self)}"
            ) from err

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __dir__(self) -> list[str]:
        return list(self.keys())

    def __repr__(self) -> str:
        if not self:
            return "HypergradResult()"
        width = max(len(k) for k in self) + 1
        lines = []
        for k in sorted(self):
            v = self[k]
            text = repr(v) if not hasattr(v, "shape") or np.size(v) <= 6 else (
                f"<array shape={tuple(v.shape)} dtype={v.dtype}>"
            )
            lines.append(f"{k.rjust(width)}: {text}")
        return "\n".join(lines)


@dataclass
class HypergradState:
    """Warm-start state carried across outer iterations.

    Pass the same object to successive :func:`~bilevel.api.hypergrad` calls: the inner iterate
    ``w`` (when the problem has no ``init`` map) and the auxiliary vector ``v`` of the
    implicit and historyless methods start where the previous call ended, and ``t`` counts
    calls (used by HOAG-style decreasing tolerances).
    """

    w: Any = None
    v: Any = None
    t: int = 0
    extra: dict = field(default_factory=dict)


def _differs(value: Any, default: Any) -> bool:
    """True unless ``value`` is the field default or reads the same (its ``repr``)."""
    return value is not default and repr(value) != repr(default)


class Method(abc.ABC):
    """Base class of hypergradient methods (strategy objects).

    A method implements ``compute(problem, lam, w0, dynamics, state)`` returning a
    :class:`HypergradResult` with at least ``grad``, ``w``, ``value``, ``success`` and
    ``message``; :func:`~bilevel.api.hypergrad` adds the shared diagnostics. The library's
    methods are frozen dataclasses (their options checked once, at construction); their
    ``repr`` reads like the constructor call, with the options whose ``repr`` differs from
    the default's (and those named in ``_repr_always``).

    A result without ``inner_residual`` gets it deferred (:func:`defer_inner_residual`):
    the methods that need the residual for their own test (Implicit, Historyless) store it;
    for the others (Reverse, Forward, FirstOrder, Adjoint, ...) its inner gradient is spent
    only when someone reads it.
    """

    name = "method"
    _repr_always: tuple[str, ...] = ()
    #: Whether autograd can differentiate :func:`~bilevel.api.hypergrad` with this method
    #: (a function of ``res.grad`` differentiated with respect to λ or ``w0``).
    differentiable = False

    @abc.abstractmethod
    def compute(
        self,
        problem: BilevelProblem,
        lam: Any,
        w0: Any,
        dynamics: Dynamics,
        state: HypergradState | None,
    ) -> HypergradResult:
        """Run the inner dynamics from ``w0`` and return the hypergradient with diagnostics."""

    def check_dynamics(self, dynamics: Dynamics) -> None:
        """Raise when this method cannot run with ``dynamics`` (default: any dynamics)."""
        return None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "compute" in cls.__dict__ and not getattr(cls.compute, "__isabstractmethod__", False):
            cls.compute = _deferring_residual(cls.__dict__["compute"])

    def __repr__(self) -> str:
        args = []
        if dataclasses.is_dataclass(self):
            for f in dataclasses.fields(self):
                value = getattr(self, f.name)
                if f.name in self._repr_always or _differs(value, f.default):
                    args.append(f"{f.name}={value!r}")
        return f"{type(self).__name__}({', '.join(args)})"


def _deferring_residual(compute: Callable[..., Any]) -> Callable[..., Any]:
    """``compute`` whose result gets a deferred ``inner_residual`` where it has none."""

    @functools.wraps(compute)
    def deferring(self: Method, problem: BilevelProblem, lam: Any, *args: Any,
                  **kwargs: Any) -> Any:
        res = compute(self, problem, lam, *args, **kwargs)
        return defer_inner_residual(res, problem, lam) if isinstance(res, HypergradResult) \
            else res

    return deferring


flag = boolean  # the option check of boolean fields (bilevel.validation.boolean)


def require_step_derivatives(dynamics: Dynamics) -> None:
    """``check_dynamics`` of the methods that differentiate every inner step: refuse, before
    any work, dynamics without step derivatives (``dynamics.not_differentiated``)."""
    if dynamics.not_differentiated:
        raise NotImplementedError(dynamics.not_differentiated)


def failure_result(lam: Any, message: str, **diagnostics: Any) -> HypergradResult:
    """The result of a failed computation: a NaN hypergradient, ``success=False``, ``message``.

    Never a zero or a stale value: whoever ignores ``success`` still sees NaN.
    """
    xp = namespace(lam)
    res = HypergradResult(
        grad=xp.full(tuple(lam.shape), float("nan"), dtype=lam.dtype, device=device(lam)),
        w=None,
        value=float("nan"),
        success=False,
        message=message,
        inner_residual=float("nan"),
    )
    res.update(diagnostics)
    return res


def defer_inner_residual(res: HypergradResult, problem: BilevelProblem, lam: Any
                         ) -> HypergradResult:
    """Defer ``res.inner_residual = ‖∇_w g(w, λ)‖`` (per problem) at the final iterate
    ``res.w`` to its first read: one inner gradient, spent only when someone reads it.

    Applied to every method's result (:class:`Method`); a stored residual is kept. The
    deferred gradient is not counted in ``n_grad``.
    """
    w = res.get("w")
    if w is not None and "inner_residual" not in res:
        res.defer("inner_residual", lambda: norm_per_problem(problem.inner_grad(w, lam)))
    return res


def outcome(problems: list[str]) -> dict[str, Any]:
    """``success`` and ``message`` of a result from the list of failed diagnostics."""
    return {"success": not problems, "message": "; ".join(problems) if problems else "ok"}


def resolve_dynamics(dynamics: Any, inner: Any, where: str = "hypergrad") -> Any:
    """The inner solver passed as ``dynamics=`` (or the deprecated ``inner=`` keyword)."""
    if inner is not None:
        if dynamics is not None:
            raise TypeError(
                f"{where} got both dynamics= and its old name inner=; pass dynamics= only"
            )
        warnings.warn(
            f"{where}(inner=...) is deprecated: the inner solver is now passed as dynamics=... "
            "(inner= names the inner objective of BilevelProblem)",
            DeprecationWarning,
            stacklevel=3,
        )
        return inner
    return dynamics
