"""The entry point :func:`hypergrad` (and :func:`value_and_hypergrad`).

``hypergrad(problem, lam, w0, dynamics=GradientDescent(lr, steps), method=Implicit(CG()))``
runs the inner dynamics from ``w0`` and returns ∇F(λ) with diagnostics. The method is a
strategy object (:mod:`bilevel.methods`); any method works with any problem. The result,
state, warning and error types are defined in :mod:`bilevel.methods.base` and re-exported
here.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from typing import Any

import numpy as np

from .backend import namespace
from .dynamics import Dynamics, Solved
from .input_checks import bad_inputs, validate_once
from .methods import Reverse
from .methods.base import (
    ON_FAILURE,
    HypergradError,
    HypergradResult,
    HypergradState,
    HypergradWarning,
    Method,
    failure_result,
    norm_per_problem,
    resolve_dynamics,
)
from .nonfinite import TRACE_ADVICE, TracingError, has_box
from .problem import BilevelProblem, NonFiniteError
from .validation import boolean

__all__ = [
    "ON_FAILURE",
    "HypergradError",
    "HypergradResult",
    "HypergradState",
    "HypergradWarning",
    "Method",
    "TracingError",
    "failure_result",
    "hypergrad",
    "norm_per_problem",
    "resolve_dynamics",
    "value_and_hypergrad",
]


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
        ``Adjoint()``, ``Historyless()``, ``FirstOrder()``. Default ``Reverse()`` (the
        exact derivative of the unrolled map).
    state : HypergradState, optional
        Warm start across calls (implicit / historyless ``v``; ``w`` when the problem has
        no ``init``). Updated in place.
    strict : bool
        Same as ``on_failure="raise"``.
    on_failure : {"warn", "raise", "ignore"}
        What a failed diagnostic (unconverged linear solve, CG breakdown, NaN, diverged ODE
        reconstruction) does besides ``success=False`` in the result: a
        :class:`HypergradWarning` (default), a :class:`HypergradError`, or nothing (for
        callers that read ``success`` themselves, e.g. an outer loop that skips the step).

    Returns
    -------
    HypergradResult
        ``grad`` (shape of ``lam``), ``w``, ``value``, ``success``, ``message``,
        ``inner_residual``, ``n_grad``, ``n_hvp``, ``n_jvp`` and method diagnostics.
        NaN or inf in ``lam``, ``w0`` or the problem's data gives ``success=False`` with
        a message naming that input (and ``nonfinite_inputs``).

    Raises
    ------
    TracingError
        An objective took w or λ out of autograd's trace (``np.`` instead of ``anp.``/
        ``bnp.``, ``float()`` on a traced value): the derivative would be silently zero.
    TypeError
        Autograd differentiates ``hypergrad`` itself (λ or ``w0`` traced) with a method
        other than ``Reverse()`` or ``Forward()``.

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
    dynamics = resolve_dynamics(dynamics, inner)
    method = Reverse() if method is None else method
    on_failure = _check_arguments(problem, dynamics, method, strict, on_failure)
    if state is not None and not isinstance(state, HypergradState):
        raise TypeError(
            f"state must be a HypergradState (state=HypergradState()) or None, got "
            f"{type(state).__name__}"
        )
    w0 = _starting_point(problem, lam, w0, state, dynamics)
    _require_differentiable(method, lam, w0)

    before = problem.counts.snapshot()
    t0 = time.perf_counter()
    try:
        with _reported_overflow(problem):
            validate_once(problem, lam, w0)
            res = method.compute(problem, lam, w0, dynamics, state)
    except NonFiniteError as err:
        res = _nonfinite_failure(err, problem, lam, w0)
    _finish(res, problem, lam, w0, method, before, t0)
    _require_traced(res, problem, lam, w0)
    _carry_state(res, problem, state)
    if not res.success:
        if on_failure == "raise":
            raise HypergradError(f"{method!r}: {res.message}", res)
        if on_failure == "warn":
            warnings.warn(f"{method!r}: {res.message}", HypergradWarning, stacklevel=2)
    return res


def _reported_overflow(problem: BilevelProblem) -> Any:
    """Silence NumPy's overflow/invalid/divide RuntimeWarnings while the problem checks its
    values for NaN/inf (``check_finite``): a diverging inner loop is then reported once, as
    the failed result (and its :class:`HypergradWarning`), not as dozens of raw warnings."""
    if problem.check_finite:
        return np.errstate(over="ignore", invalid="ignore", divide="ignore")
    return contextlib.nullcontext()


def _require_differentiable(method: Method, lam: Any, w0: Any) -> None:
    """Refuse to be differentiated (λ or ``w0`` traced by autograd) with a method whose
    computation autograd cannot follow (linear solves, in-place recursions)."""
    if not method.differentiable and has_box((lam, w0)):
        raise TypeError(
            f"hypergrad is not differentiable with method {method!r} (autograd is tracing lam "
            "or w0, e.g. a second derivative through res.grad); use Reverse() or Forward(), "
            "whose unrolled computation autograd differentiates exactly"
        )


def _nonfinite_failure(err: NonFiniteError, problem: BilevelProblem, lam: Any,
                       w0: Any) -> HypergradResult:
    """The failed result of a NaN/inf: the inputs that hold one, else the step it came from."""
    step = getattr(err, "step", None)
    bad = bad_inputs(problem, lam, w0)
    if bad:
        return failure_result(
            lam, f"the input {', '.join(bad)} contains NaN or inf (before any inner step): "
            "fix the input; the objectives and step size are not the cause",
            nonfinite_step=step, nonfinite_inputs=bad)
    where = f" at inner step {step}" if step is not None else ""
    return failure_result(lam, f"non-finite {err.what}{where}: {err}", nonfinite_step=step)


def _require_traced(res: HypergradResult, problem: BilevelProblem, lam: Any, w0: Any) -> None:
    """Raise :class:`TracingError` for an exactly zero hypergradient that is a cut trace:
    ∇_w g, f or the init map changes with λ, but not through traced operations (an
    objective used NumPy on a traced value). Costs nothing unless the gradient is all zero;
    then about two gradients of g and four evaluations of f."""
    if not res.success or problem.oracles or has_box((lam, w0)):
        return
    grad = res.grad
    if bool(namespace(grad).any(grad != 0)):
        return
    w = res.get("w")
    cut = problem.untraced_lam(w0 if w is None else w, lam)
    if cut:
        raise TracingError(
            f"the hypergradient is exactly zero because λ was cut out of autograd's trace: "
            f"{' and '.join(cut)} change(s) with lam, but not through traced operations. "
            + TRACE_ADVICE
        )


def _check_arguments(
    problem: Any, dynamics: Any, method: Any, strict: bool, on_failure: str
) -> str:
    """Type checks of :func:`hypergrad`'s arguments; returns the failure policy."""
    if not isinstance(problem, BilevelProblem):
        raise TypeError(
            f"problem must be a BilevelProblem, got {type(problem).__name__}; build one with "
            "BilevelProblem(inner=g, outer=f)"
        )
    if on_failure not in ON_FAILURE:
        raise ValueError(f"on_failure must be one of {ON_FAILURE}, got {on_failure!r}")
    if dynamics is None:
        raise TypeError(
            "hypergrad needs inner dynamics, e.g. dynamics=GradientDescent(lr=0.1, steps=100)"
        )
    if not isinstance(dynamics, Dynamics):
        raise TypeError(f"dynamics must be a Dynamics object, got {type(dynamics).__name__}")
    if not isinstance(method, Method):
        raise TypeError(
            f"method must be a hypergradient method object such as Reverse() or "
            f"Implicit(CG()), got {type(method).__name__}"
        )
    method.check_dynamics(dynamics)
    return "raise" if boolean("strict", strict) else on_failure


def _starting_point(
    problem: BilevelProblem, lam: Any, w0: Any, state: HypergradState | None,
    dynamics: Any = None,
) -> Any:
    """``w0``: a warm-started ``state.w`` (no init map), the given one, or ``init(λ)``.

    With ``Solved()`` a given ``w0`` is the solution itself and always wins over ``state.w``.
    """
    given = isinstance(dynamics, Solved) and w0 is not None
    if state is not None and state.w is not None and problem.init is None and not given:
        return state.w
    if w0 is not None:
        return w0
    if problem.init is not None:
        return problem.initial_point(lam)
    raise ValueError(
        "no starting point: pass w0=... or give the problem an init map "
        "(BilevelProblem(..., init=lambda lam: w0))"
    )


def _finish(
    res: HypergradResult, problem: BilevelProblem, lam: Any, w0: Any, method: Method,
    before: dict, t0: float,
) -> None:
    """Add the shared diagnostics: status defaults, inner residual, work counts, time."""
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
        bad = bad_inputs(problem, lam, w0)
        if bad:
            res.message += f": the input {', '.join(bad)} contains NaN or inf"


def _carry_state(res: HypergradResult, problem: BilevelProblem,
                 state: HypergradState | None) -> None:
    """Store the final ``w`` (no init map) and ``v`` into the warm-start state."""
    if state is None or res.get("w") is None:
        return
    if problem.init is None:
        state.w = res.w
    if res.get("v") is not None:
        state.v = res.v
    state.t += 1


def _finite(x: Any) -> bool:
    xp = namespace(x)
    return bool(xp.all(xp.isfinite(x)))


def value_and_hypergrad(
    problem: BilevelProblem, lam: Any, w0: Any = None, **kwargs: Any
) -> tuple[Any, Any]:
    """``(F(λ), ∇F(λ))``: the outer value at the final iterate and the hypergradient.

    Keyword arguments are those of :func:`hypergrad`.
    """
    res = hypergrad(problem, lam, w0, **kwargs)
    return res.value, res.grad
