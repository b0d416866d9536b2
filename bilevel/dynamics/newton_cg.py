"""Hessian-free Newton (Newton-CG with a backtracking line search) as inner dynamics.

iMAML's best Omniglot result (iMAML-HF, Rajeswaran et al., 2019) solves the proximal
inner problem with this method instead of gradient descent. Each step::

    d_k ≈ −(H(w_k) + δI)⁻¹ ∇g(w_k)        (``cg_iters`` CG steps from 0, Hessian-vector products)
    w_{k+1} = w_k + t_k d_k,   t_k = β^j with the first j such that
              g(w_k + t_k d_k) ≤ g(w_k) + c·t_k ⟨∇g(w_k), d_k⟩            (Armijo)

per problem of a batch. Where CG returns a direction that is not a descent direction
(negative curvature) the step falls back to ``d_k = −∇g(w_k)``; where no trial point
passes the test within ``backtracks`` halvings, the problem keeps ``w_k``.

The step map has data-dependent branches (the line search) and is not differentiated:
use it with methods that need only the last iterate — :class:`bilevel.methods.Implicit`
(iMAML-HF) or :class:`bilevel.methods.FirstOrder`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from ..batch import per_problem
from ..linalg import CG
from ..problem import BilevelProblem
from ..registry import register
from ..validation import Validated, integer, nonnegative, number, option
from .base import Dynamics, State
from .line_search import SearchedSteps, armijo_step, descent_direction

__all__ = ["NewtonCG"]


@register("dynamics", "hessian-free")
@dataclass(frozen=True, repr=False)
class NewtonCG(SearchedSteps, Validated, Dynamics):
    """Newton-CG with an Armijo backtracking line search (Hessian-free optimization).

    Parameters
    ----------
    steps : int
        Newton steps K.
    cg_iters : int
        CG iterations per step (a fixed budget, :meth:`bilevel.linalg.CG.fixed`).
    damping : float
        ``δ ≥ 0`` added to the Hessian in the Newton system.
    shrink : float
        Step shrink factor β of the line search, in (0, 1).
    armijo : float
        Sufficient-decrease constant c, in (0, 1).
    backtracks : int
        Most halvings tried per step.
    batches : callable, optional
        ``k -> data`` for stochastic inner objectives.

    Notes
    -----
    Cost per step: one traced gradient, ``cg_iters`` HVPs, and 1 + (trials) values of
    ``g``. Memory: the CG work vectors and one trace of ``∇g`` (O(n) per problem).
    :meth:`step_vjp`/:meth:`step_jvp` are not available (the line search is not
    differentiable); reverse and forward mode reject this dynamics.
    """

    name: ClassVar[str] = "newton-cg"
    not_differentiated: ClassVar[str | None] = (
        "NewtonCG's line search is not differentiated: use it with Implicit (iMAML-HF) or "
        "FirstOrder, which need only the last iterate, or GradientDescent for unrolled methods"
    )
    steps: int = option(check=integer(1))
    cg_iters: int = option(5, check=integer(1))
    damping: float = option(0.0, check=nonnegative)
    shrink: float = option(0.5, check=number(0, strict=True, maximum=1, below=True))
    armijo: float = option(1e-4, check=number(0, strict=True, maximum=1, below=True))
    backtracks: int = option(10, check=integer(0))
    batches: Callable[[int], Any] | None = option(None, repr=False)

    def step(self, problem: BilevelProblem, state: State, lam: Any, k: int) -> State:
        (w,) = state
        data = self.data(problem, k)
        lin = problem.linearize(w, lam, data=data)
        g = lin.grad
        d = CG.fixed(self.cg_iters)(lin.hvp, -g, damping=self.damping).x
        d, slope = descent_direction(d, g)
        t = armijo_step(problem, w, lam, data, d, slope, shrink=self.shrink,
                        armijo=self.armijo, backtracks=self.backtracks)
        return (w + per_problem(t, w) * d,)
