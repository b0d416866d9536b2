"""What the line-search inner solvers share: Armijo backtracking per problem of a batch,
and the refusal of step derivatives (their branches are not differentiated)."""

from __future__ import annotations

from typing import Any

from ..backend import namespace
from ..batch import dot_per_problem, per_problem
from ..problem import BilevelProblem

__all__ = ["SearchedSteps", "armijo_step", "descent_direction"]


class SearchedSteps:
    """Mixin of dynamics whose steps take a line search: no step derivatives.

    ``not_differentiated`` (set by the subclass) makes ``Reverse``/``Forward`` refuse the
    dynamics up front; these methods raise it too, should anything call them directly.
    """

    not_differentiated: str | None

    def step_vjp(self, problem: BilevelProblem, state: tuple, lam: Any, k: int,
                 cot: tuple) -> tuple[tuple, Any]:
        raise NotImplementedError(self.not_differentiated)

    def step_jvp(self, problem: BilevelProblem, state: tuple, lam: Any, k: int, tan: tuple,
                 tan_lam: Any) -> tuple[tuple, tuple]:
        raise NotImplementedError(self.not_differentiated)


def descent_direction(d: Any, g: Any) -> tuple[Any, Any]:
    """``(d, ⟨g, d⟩)`` where ``d`` descends (``⟨g, d⟩ < 0``), ``(−g, −‖g‖²)`` elsewhere."""
    xp = namespace(d)
    slope = dot_per_problem(g, d)
    descent = slope < 0
    d = xp.where(per_problem(descent, d), d, -g)
    return d, xp.where(descent, slope, -dot_per_problem(g, g))


def armijo_step(problem: BilevelProblem, w: Any, lam: Any, data: Any, d: Any, slope: Any,
                *, shrink: float = 0.5, armijo: float = 1e-4, backtracks: int = 20) -> Any:
    """Per-problem step lengths ``t = shrinkʲ`` (first ``j``) with the Armijo decrease
    ``g(w + t d) ≤ g(w) + armijo·t·⟨∇g, d⟩``; 0 where no trial passed.

    Cost: one value of ``g`` plus one per trial (counted as values); one host read per
    trial (to stop when every problem has passed).
    """
    xp = namespace(w)
    g0 = problem.evaluate("inner", w, lam, data)
    t = xp.ones_like(slope)
    done = xp.zeros_like(slope, dtype=bool)
    for _ in range(backtracks + 1):
        trial = problem.evaluate("inner", w + per_problem(t, w) * d, lam, data)
        problem.counts.value += 1
        ok = xp.isfinite(trial) & (trial <= g0 + armijo * t * slope)
        done = done | ok
        if bool(xp.all(done)):
            break
        t = xp.where(done, t, shrink * t)
    return xp.where(done, t, xp.zeros_like(t))
