"""L-BFGS with an Armijo line search as inner dynamics (backend-generic, batched).

Each step, per problem of a batch (Nocedal, 1980; Liu and Nocedal, 1989)::

    g_k = ∇g(w_k);  store s = w_k − w_{k−1}, y = g_k − g_{k−1}  when sᵀy > 0
    d_k = −H_k g_k        (two-loop recursion over the last m pairs, H⁰ = γI, γ = sᵀy/yᵀy)
    w_{k+1} = w_k + t_k d_k,   t_k = 2⁻ʲ, the first j with Armijo's decrease

A problem stops (keeps ``w``) once ``‖∇g(w_k)‖ ≤ tol·max(1, ‖∇g(w_0)‖)``; when every
problem has stopped a step costs nothing but one host read. All arithmetic runs on the
arrays' own namespace (NumPy or CuPy), the loops only over the m stored pairs.

The line search has data-dependent branches, so the steps are not differentiated: use it
with :class:`bilevel.methods.Implicit` (or ``FirstOrder``), which need only the solution.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from ..backend import namespace
from ..batch import dot_per_problem, norm_per_problem, per_problem
from ..problem import BilevelProblem
from ..registry import register
from ..validation import Validated, integer, nonnegative, number, option
from .base import Dynamics, State
from .line_search import SearchedSteps, armijo_step, descent_direction

__all__ = ["LBFGS"]


@register("dynamics", "l-bfgs")
@dataclass(frozen=True, repr=False)
class LBFGS(SearchedSteps, Validated, Dynamics):
    """Limited-memory BFGS with Armijo backtracking: ``LBFGS(steps, memory, tol)``.

    Parameters
    ----------
    steps : int
        Iterations at most (each one gradient and the line-search values).
    memory : int
        Pairs ``(s, y)`` kept: ``m``.
    tol : float
        Relative gradient tolerance: a problem stops once ``‖∇g(w_k)‖ ≤ tol·max(1,
        ‖∇g(w_0)‖)`` (0: run all ``steps``). Match it to ``Implicit(inner_tol=...)``,
        which tests the same quantity.
    shrink, armijo, backtracks
        Line search: step factor, sufficient-decrease constant, most trials per step.
    batches : callable, optional
        ``k -> data`` for stochastic inner objectives (L-BFGS assumes a fixed objective:
        use it with full batches).

    Notes
    -----
    State: ``(w, w_prev, g_prev, S, Y, ρ, γ, ‖∇g(w_0)‖, done)`` with ``S, Y`` of shape
    ``(m,) + w.shape``; once every problem is done the remaining steps cost nothing.
    Memory ``O(m·n)`` per problem; cost per step one gradient, ``O(m·n)`` for the
    recursion and one value of ``g`` per line-search trial (usually one). There are no
    step derivatives: unrolled methods refuse it.

    References
    ----------
    D. C. Liu, J. Nocedal, "On the limited memory BFGS method for large scale
    optimization", Math. Programming 45 (1989).
    """

    name: ClassVar[str] = "lbfgs"
    not_differentiated: ClassVar[str | None] = (
        "LBFGS's line search and memory updates are not differentiated: use it with "
        "Implicit (implicit differentiation at its solution) or FirstOrder, or "
        "GradientDescent for unrolled methods"
    )
    steps: int = option(check=integer(1))
    memory: int = option(10, check=integer(1))
    tol: float = option(1e-10, check=nonnegative)
    shrink: float = option(0.5, check=number(0, strict=True, maximum=1, below=True))
    armijo: float = option(1e-4, check=number(0, strict=True, maximum=1, below=True))
    backtracks: int = option(30, check=integer(0))
    batches: Callable[[int], Any] | None = option(None, repr=False)

    def init(self, w0: Any) -> State:
        xp = namespace(w0)
        per = xp.zeros(tuple(w0.shape[:-1]), dtype=w0.dtype)
        pairs = xp.zeros((self.memory,) + tuple(w0.shape), dtype=w0.dtype)
        rho = xp.zeros((self.memory,) + tuple(w0.shape[:-1]), dtype=w0.dtype)
        return (w0, w0, xp.zeros_like(w0), pairs, pairs, rho, per + 1, per - 1, per > 0)

    def step(self, problem: BilevelProblem, state: State, lam: Any, k: int) -> State:
        w, w_prev, g_prev, S, Y, rho, gamma, g0, done = state
        xp = namespace(w)
        if bool(xp.all(done)):
            return state
        data = self.data(problem, k)
        g = problem.inner_grad(w, lam, data=data)
        g_norm = norm_per_problem(g)
        g0 = xp.where(g0 < 0, g_norm, g0)  # the first step records ‖∇g(w_0)‖
        active = g_norm > self.tol * xp.maximum(g0, xp.ones_like(g0))
        if not bool(xp.any(active)):
            return (w, w_prev, g_prev, S, Y, rho, gamma, g0, ~active)
        if k > 0:
            S, Y, rho, gamma = _remember(xp, S, Y, rho, gamma, w - w_prev, g - g_prev)
        d, slope = descent_direction(_two_loop(S, Y, rho, gamma, g), g)
        t = armijo_step(problem, w, lam, data, d, slope, shrink=self.shrink,
                        armijo=self.armijo, backtracks=self.backtracks)
        t = xp.where(active, t, xp.zeros_like(t))
        return (w + per_problem(t, w) * d, w, g, S, Y, rho, gamma, g0, ~active)


def _remember(xp: Any, S: Any, Y: Any, rho: Any, gamma: Any, s: Any,
              y: Any) -> tuple[Any, Any, Any, Any]:
    """Push ``(s, y)`` as the newest pair; ``ρ = 1/sᵀy`` (0 where ``sᵀy ≤ 0``: no-op pair)."""
    sy = dot_per_problem(s, y)
    yy = dot_per_problem(y, y)
    ok = (sy > 0) & (yy > 0)
    new_rho = xp.where(ok, 1 / xp.where(ok, sy, xp.ones_like(sy)), xp.zeros_like(sy))
    gamma = xp.where(ok, sy / xp.where(ok, yy, xp.ones_like(yy)), gamma)
    S = xp.concat([S[1:], s[None]], axis=0)
    Y = xp.concat([Y[1:], y[None]], axis=0)
    rho = xp.concat([rho[1:], new_rho[None]], axis=0)
    return S, Y, rho, gamma


def _two_loop(S: Any, Y: Any, rho: Any, gamma: Any, g: Any) -> Any:
    """``−H g`` by the two-loop recursion over the stored pairs (oldest first in ``S``)."""
    q = g
    alphas = []
    for i in reversed(range(S.shape[0])):
        a = rho[i] * dot_per_problem(S[i], q)
        q = q - per_problem(a, q) * Y[i]
        alphas.append(a)
    r = per_problem(gamma, q) * q
    for i, a in zip(range(S.shape[0]), reversed(alphas), strict=True):
        b = rho[i] * dot_per_problem(Y[i], r)
        r = r + per_problem(a - b, r) * S[i]
    return -r
