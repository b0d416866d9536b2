"""Newton's method with any linear solver and an Armijo line search, as inner dynamics.

Each step, per problem of a batch::

    d_k = −(H(w_k) + δI)⁻¹ ∇g(w_k)            (the given solver of bilevel.linalg)
    w_{k+1} = w_k + t_k d_k,   t_k = β^j, the first j with Armijo's decrease

With ``Direct(cache=True)`` the Hessian is materialised once (a few batched products when
the objective takes a batch axis) and refactored only when it changes: a quadratic inner
problem (ridge) is solved in one step, and the same solver object passed to
``Implicit(solver)`` reuses the factorisation for the hypergradient. Not differentiated:
use it with :class:`bilevel.methods.Implicit` or ``FirstOrder``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from ..backend import namespace
from ..batch import norm_per_problem, per_problem
from ..conditions import Stationarity
from ..linalg import CG
from ..problem import BilevelProblem
from ..registry import register
from ..validation import Validated, function, integer, nonnegative, number, option
from .base import Dynamics, State
from .line_search import SearchedSteps, armijo_step, descent_direction

__all__ = ["Newton"]


@register("dynamics")
@dataclass(frozen=True, repr=False)
class Newton(SearchedSteps, Validated, Dynamics):
    """Newton's method ``Newton(steps, solver=CG(), damping=0.0, tol=1e-12)``.

    Parameters
    ----------
    steps : int
        Newton steps at most.
    solver : callable
        Linear solver of :mod:`bilevel.linalg` for the Newton system: ``CG()`` (default),
        ``Direct(cache=True)`` (medium ``n``: materialise and factor once, reuse across
        steps and outer iterations), ``GMRES()``... One ``Direct(cache=True)`` object
        must not be shared between different problems at the same time.
    damping : float
        ``δ ≥ 0`` added to the Hessian.
    tol : float
        A problem stops once ``‖∇g(w_k)‖ ≤ tol·max(1, ‖∇g(w_0)‖)`` (the test is made on
        the gradient each step computes anyway).
    shrink, armijo, backtracks
        Line search: step factor, sufficient-decrease constant, most trials per step.
    batches : callable, optional
        ``k -> data`` for stochastic inner objectives.

    Notes
    -----
    Cost per step: one traced gradient, the solver's products, one value of ``g`` per
    line-search trial. Memory: the solver's. Not differentiated (unrolled methods refuse
    it).
    """

    name: ClassVar[str] = "newton"
    not_differentiated: ClassVar[str | None] = (
        "Newton's line search is not differentiated: use it with Implicit (implicit "
        "differentiation at its solution) or FirstOrder, or GradientDescent for unrolled "
        "methods"
    )
    steps: int = option(check=integer(1))
    solver: Callable = option(CG(), check=function)
    damping: float = option(0.0, check=nonnegative)
    tol: float = option(1e-12, check=nonnegative)
    shrink: float = option(0.5, check=number(0, strict=True, maximum=1, below=True))
    armijo: float = option(1e-4, check=number(0, strict=True, maximum=1, below=True))
    backtracks: int = option(30, check=integer(0))
    batches: Callable[[int], Any] | None = option(None, repr=False)

    def init(self, w0: Any) -> State:
        unknown = -namespace(w0).ones(tuple(w0.shape[:-1]), dtype=w0.dtype)
        return (w0, unknown, unknown > 0)

    def step(self, problem: BilevelProblem, state: State, lam: Any, k: int) -> State:
        w, g0, done = state
        xp = namespace(w)
        if bool(xp.all(done)):
            return state
        data = self.data(problem, k)
        lin = Stationarity().linearize(problem, w, lam, data)
        g = lin.residual
        g_norm = norm_per_problem(g)
        g0 = xp.where(g0 < 0, g_norm, g0)
        active = g_norm > self.tol * xp.maximum(g0, xp.ones_like(g0))
        if not bool(xp.any(active)):
            return (w, g0, ~active)
        d = self.solver(lin.transpose_matvec, -g, damping=self.damping).x
        d, slope = descent_direction(d, g)
        t = armijo_step(problem, w, lam, data, d, slope, shrink=self.shrink,
                        armijo=self.armijo, backtracks=self.backtracks)
        t = xp.where(active, t, xp.zeros_like(t))
        return (w + per_problem(t, w) * d, g0, ~active)
