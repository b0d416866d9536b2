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

from ..backend import namespace
from ..batch import dot_per_problem, per_problem
from ..linalg import CG
from ..problem import BilevelProblem
from ..registry import register
from ..validation import Validated, integer, nonnegative, number, option
from .base import Dynamics, State

__all__ = ["NewtonCG"]


@register("dynamics", "hessian-free")
@dataclass(frozen=True, repr=False)
class NewtonCG(Validated, Dynamics):
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
        slope = dot_per_problem(g, d)
        descent = slope < 0
        d = _where(descent, d, -g)
        slope = _where(descent, slope, -dot_per_problem(g, g))
        return (w + per_problem(self._search(problem, w, lam, data, d, slope), w) * d,)

    def _search(self, problem: BilevelProblem, w: Any, lam: Any, data: Any, d: Any,
                slope: Any) -> Any:
        """Per-problem step lengths ``t`` passing the Armijo test (0 where none did)."""
        xp = namespace(w)
        g0 = problem.evaluate("inner", w, lam, data)
        t = xp.ones_like(slope)
        done = xp.zeros_like(slope, dtype=bool)
        for _ in range(self.backtracks + 1):
            trial = problem.evaluate("inner", w + per_problem(t, w) * d, lam, data)
            problem.counts.value += 1
            ok = xp.isfinite(trial) & (trial <= g0 + self.armijo * t * slope)
            done = done | ok
            if bool(xp.all(done)):
                break
            t = xp.where(done, t, self.shrink * t)
        return xp.where(done, t, xp.zeros_like(t))

    def step_vjp(self, problem: BilevelProblem, state: State, lam: Any, k: int,
                 cot: State) -> tuple[State, Any]:
        raise NotImplementedError(self.not_differentiated)

    def step_jvp(self, problem: BilevelProblem, state: State, lam: Any, k: int, tan: State,
                 tan_lam: Any) -> tuple[State, State]:
        raise NotImplementedError(self.not_differentiated)


def _where(mask: Any, a: Any, b: Any) -> Any:
    """``a`` where ``mask`` else ``b``, with ``mask`` per problem."""
    return namespace(a).where(per_problem(mask, a), a, b)
