"""The entry point :func:`hypergrad` and the :class:`HypergradResult` object.

``hypergrad(problem, lam, w0, dynamics=GradientDescent(lr, steps), method=Implicit(CG()))``
runs the inner dynamics from ``w0`` and returns ∇F(λ) with diagnostics. The method is a
strategy object (:mod:`bilevel.methods`); any method works with any problem.
"""

from __future__ import annotations

import abc
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .backend import namespace
from .dynamics import Dynamics
from .problem import BilevelProblem, NonFiniteError

__all__ = [
    "HypergradError",
    "HypergradResult",
    "HypergradState",
    "HypergradWarning",
    "Method",
    "failure_result",
    "hypergrad",
    "norm_per_problem",
    "value_and_hypergrad",
]


class HypergradWarning(UserWarning):
    """A hypergradient was computed but its diagnostics say it may be wrong."""


class HypergradError(RuntimeError):
    """Raised under ``strict=True`` when the diagnostics report a failure.

    Attributes
    ----------
    result : HypergradResult
        The full result, with the diagnostics that triggered the error.
    """

    def __init__(self, message: str, result: HypergradResult):
        super().__init__(message)
        self.result = result


class HypergradResult(dict):
    """Result of :func:`hypergrad` with attribute access (like ``scipy.optimize.OptimizeResult``).

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

    Pass the same object to successive :func:`hypergrad` calls: the inner iterate ``w``
    (when the problem has no ``init`` map) and the auxiliary vector ``v`` of the implicit
    and historyless methods start where the previous call ended, and ``t`` counts calls
    (used by HOAG-style decreasing tolerances).
    """

    w: Any = None
    v: Any = None
    t: int = 0
    extra: dict = field(default_factory=dict)


class Method(abc.ABC):
    """Base class of hypergradient methods (strategy objects).

    A method implements ``compute(problem, lam, w0, inner, state)`` returning a
    :class:`HypergradResult` with at least ``grad``, ``w``, ``value``, ``success`` and
    ``message``; :func:`hypergrad` adds the shared diagnostics.
    """

    name = "method"

    @abc.abstractmethod
    def compute(
        self,
        problem: BilevelProblem,
        lam: Any,
        w0: Any,
        inner: Dynamics,
        state: HypergradState | None,
    ) -> HypergradResult:
        """Run the inner dynamics from ``w0`` and return the hypergradient with diagnostics."""

    def check_dynamics(self, inner: Dynamics) -> None:
        """Raise when this method cannot run with ``inner`` (default: any dynamics)."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def norm_per_problem(x: Any) -> Any:
    """‖x‖ over all axes, or per problem (over the non-batch axes) for ``(B, ...)``."""
    xp = namespace(x)
    if len(x.shape) <= 1:
        return xp.sqrt(xp.sum(x * x))
    return xp.sqrt(xp.sum(x * x, axis=tuple(range(1, len(x.shape)))))


def _finite(x: Any) -> bool:
    xp = namespace(x)
    return bool(xp.all(xp.isfinite(x)))


def failure_result(lam: Any, message: str, **diagnostics: Any) -> HypergradResult:
    """The result of a failed computation: a NaN hypergradient, ``success=False``, ``message``.

    Never a zero or a stale value: whoever ignores ``success`` still sees NaN.
    """
    xp = namespace(lam)
    res = HypergradResult(
        grad=xp.full(tuple(lam.shape), float("nan"), dtype=lam.dtype),
        w=None,
        value=float("nan"),
        success=False,
        message=message,
        inner_residual=float("nan"),
    )
    res.update(diagnostics)
    return res


ON_FAILURE = ("warn", "raise", "ignore")


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


def hypergrad(
    problem: BilevelProblem,
    lam: Any,
    w0: Any = None,
    dynamics: Dynamics | None = None,
    method: Method | None = None,
    *,
    state: HypergradState | None = None,
    strict: bool = False,
    on_failure: str = "warn",
    inner: Dynamics | None = None,
) -> HypergradResult:
    """Hypergradient ∇F(λ) of ``F(λ) = f(w(λ), λ)`` with ``w(λ)`` from the inner dynamics.

    Parameters
    ----------
    problem : BilevelProblem
        Inner and outer objectives and their oracles.
    lam : array
        Hyperparameters λ, shape ``(m,)`` (any shape without a batch axis), or ``(B, m)``
        when ``w0`` has a batch axis.
    w0 : array, optional
        Starting point, ``(n,)`` or ``(B, n)``. Defaults to ``problem.init(lam)``. When
        the problem has an ``init`` map, a given ``w0`` is taken to *be* ``init(lam)``
        (e.g. precomputed): the unrolled methods still add the ``Cᵀa₀`` term of the map.
    dynamics : Dynamics
        Inner solver, e.g. ``GradientDescent(lr=0.1, steps=100)``. (Its old keyword
        ``inner=`` still works with a ``DeprecationWarning``.)
    method : Method
        Hypergradient strategy: ``Reverse()``, ``Forward()``, ``Implicit(CG())``,
        ``Adjoint()``, ``Historyless()``. Default ``Reverse()`` (the exact derivative of
        the unrolled map).
    state : HypergradState, optional
        Warm start across calls (implicit / historyless ``v``; ``w`` when the problem has
        no ``init``). Updated in place.
    strict : bool
        Raise :class:`HypergradError` instead of warning when a diagnostic fails
        (unconverged linear solve, CG breakdown, NaN, diverged ODE reconstruction).
        Same as ``on_failure="raise"``.
    on_failure : {"warn", "raise", "ignore"}
        What a failed diagnostic does besides ``success=False`` in the result: a
        :class:`HypergradWarning` (default), a :class:`HypergradError`, or nothing (for
        callers that read ``success`` themselves, e.g. an outer loop that skips the step).

    Returns
    -------
    HypergradResult
        ``grad`` (shape of ``lam``), ``w``, ``value``, ``success``, ``message``,
        ``inner_residual``, ``n_grad``, ``n_hvp``, ``n_jvp`` and method diagnostics.

    Examples
    --------
    >>> import numpy as np
    >>> from bilevel import BilevelProblem, GradientDescent, Reverse, hypergrad
    >>> g = lambda w, lam: 0.5 * ((w - lam) ** 2).sum()
    >>> f = lambda w, lam: 0.5 * (w ** 2).sum()
    >>> res = hypergrad(BilevelProblem(g, f), np.ones(2), np.zeros(2),
    ...                 dynamics=GradientDescent(0.5, 30), method=Reverse())
    >>> np.allclose(res.grad, 1.0)
    True
    """
    from .methods import Reverse

    if not isinstance(problem, BilevelProblem):
        raise TypeError(
            f"problem must be a BilevelProblem, got {type(problem).__name__}; build one with "
            "BilevelProblem(inner=g, outer=f)"
        )
    inner = resolve_dynamics(dynamics, inner)
    if on_failure not in ON_FAILURE:
        raise ValueError(f"on_failure must be one of {ON_FAILURE}, got {on_failure!r}")
    if strict:
        on_failure = "raise"
    if inner is None:
        raise TypeError(
            "hypergrad needs inner dynamics, e.g. dynamics=GradientDescent(lr=0.1, steps=100)"
        )
    if not isinstance(inner, Dynamics):
        raise TypeError(f"dynamics must be a Dynamics object, got {type(inner).__name__}")
    method = Reverse() if method is None else method
    if not isinstance(method, Method):
        raise TypeError(
            f"method must be a hypergradient method object such as Reverse() or "
            f"Implicit(CG()), got {type(method).__name__}"
        )
    method.check_dynamics(inner)
    if w0 is None:
        if state is not None and state.w is not None and problem.init is None:
            w0 = state.w
        elif problem.init is not None:
            w0 = problem.initial_point(lam)
        else:
            raise ValueError(
                "no starting point: pass w0=... or give the problem an init map "
                "(BilevelProblem(..., init=lambda lam: w0))"
            )
    elif state is not None and state.w is not None and problem.init is None:
        w0 = state.w
    problem.validate(w0, lam)

    before = problem.counts.snapshot()
    t0 = time.perf_counter()
    try:
        res = method.compute(problem, lam, w0, inner, state)
    except NonFiniteError as err:
        step = getattr(err, "step", None)
        where = f" at inner step {step}" if step is not None else ""
        res = failure_result(lam, f"non-finite {err.what}{where}: {err}", nonfinite_step=step)
    res.setdefault("success", True)
    res.setdefault("message", "ok")
    if res.get("w") is not None and "inner_residual" not in res:
        res.inner_residual = norm_per_problem(problem.inner_grad(res.w, lam))
    after = problem.counts.snapshot()
    res.n_grad = (after["grad"] - before["grad"]) + (after["outer_grad"] - before["outer_grad"])
    res.n_hvp = after["hvp"] - before["hvp"]
    res.n_jvp = after["jvp"] - before["jvp"]
    res.method = repr(method)
    res.time = time.perf_counter() - t0
    if res.success and not _finite(res.grad):
        res.success = False
        res.message = "the hypergradient contains NaN or inf"
    if state is not None and res.get("w") is not None:
        if problem.init is None:
            state.w = res.w
        if res.get("v") is not None:
            state.v = res.v
        state.t += 1
    if not res.success:
        if on_failure == "raise":
            raise HypergradError(f"{method!r}: {res.message}", res)
        if on_failure == "warn":
            warnings.warn(f"{method!r}: {res.message}", HypergradWarning, stacklevel=2)
    return res


def value_and_hypergrad(
    problem: BilevelProblem, lam: Any, w0: Any = None, **kwargs: Any
) -> tuple[Any, Any]:
    """``(F(λ), ∇F(λ))``: the outer value at the final iterate and the hypergradient.

    Keyword arguments are those of :func:`hypergrad`.
    """
    res = hypergrad(problem, lam, w0, **kwargs)
    return res.value, res.grad
