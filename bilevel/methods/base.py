"""What every hypergradient method shares: the method base class, the result and state
types, the warning and error classes, and the helpers that build and tag results.

:mod:`bilevel.api` (the entry point :func:`~bilevel.api.hypergrad`) sits above this module and
re-exports its public names; the methods import from here, so imports point one way.
"""

from __future__ import annotations

import abc
import dataclasses
import warnings
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
        ‖∇_w g(w, λ)‖ at the final iterate (per problem).
    n_grad, n_hvp, n_jvp : int
        Inner gradients (incl. outer gradients), Hessian/mixed vector products and
        Jacobian-vector products spent.
    method : str
        The method's ``repr``.
    time : float
        Wall-clock seconds.

    Method-specific diagnostics (``linear_solve``, ``reconstruction_error``,
    ``nonfinite_step``, ...) are further keys; ``keys()`` lists them.
    """

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

    def __repr__(self) -> str:
        args = []
        if dataclasses.is_dataclass(self):
            for f in dataclasses.fields(self):
                value = getattr(self, f.name)
                if f.name in self._repr_always or _differs(value, f.default):
                    args.append(f"{f.name}={value!r}")
        return f"{type(self).__name__}({', '.join(args)})"


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
