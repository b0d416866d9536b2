"""Restarted GMRES for a general (non-symmetric) ``(A + δI) x = b``, batched."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from bilevel.linalg.krylov import KrylovRun, KrylovSolver
from bilevel.linalg.result import SolveResult
from bilevel.linalg.system import Matvec, column, dot, start, zero_solution
from bilevel.registry import register
from bilevel.validation import integer, option

__all__ = ["GMRES", "gmres"]

Array = Any


@register("solver")
@dataclass(frozen=True)
class GMRES(KrylovSolver):
    """Restarted GMRES: ``GMRES(tol, atol, maxiter, restart)(matvec, b, x0=None, damping=0.0)``.

    Each cycle builds an orthonormal basis ``V`` of the Krylov space
    ``span{r₀, A r₀, …, A^{m−1} r₀}`` of the residual ``r₀ = b − (A + δI)x₀`` by Arnoldi
    (modified Gram–Schmidt), so that ``(A + δI) Vₘ = Vₘ₊₁ H̄ₘ``, and takes
    ``x = x₀ + Vₘ y`` with ``y = argmin ‖β e₁ − H̄ₘ y‖`` (``β = ‖r₀‖``): the iterate of least
    residual in that space. Givens rotations keep ``H̄`` triangular, so the residual
    ``|gⱼ₊₁|`` of every iteration is known without forming ``x``. After ``restart``
    iterations (or when every problem has converged) ``x`` is formed, the true residual is
    measured, and a new cycle starts from it.

    All arithmetic runs per problem along the last axis (a batch ``(B, n)`` is one
    vectorised solve; a problem that has converged stops contributing); the loops run over
    the basis vectors only. A problem stops when ``‖r‖ ≤ max(tol·‖b‖, atol)``; a non-finite
    value is a breakdown (the problem keeps its last finite iterate). GMRES needs only
    ``A + δI`` invertible: no symmetry, no definiteness.

    *Fixed budget* (``tol=None``, or :meth:`GMRES.fixed`): exactly ``maxiter`` Arnoldi
    iterations, the iterate accepted (as :meth:`bilevel.linalg.CG.fixed`).

    Parameters
    ----------
    tol, atol
        Relative and absolute residual tolerances; ``tol=None`` selects the fixed budget.
    maxiter
        Total Arnoldi iterations at most (``10·n`` by default).
    restart
        Basis size ``m`` of a cycle (memory ``m + 1`` vectors per problem).

    Notes
    -----
    Cost: one matvec per iteration plus one per cycle (the true residual) and ``O(m·n)``
    per iteration for the orthogonalisation. Memory: ``m + 2`` arrays of the shape of
    ``b``. Without restarts (``restart ≥ n``) GMRES solves an ``n × n`` system in at most
    ``n`` iterations in exact arithmetic.

    References
    ----------
    Y. Saad, M. H. Schultz, "GMRES: a generalized minimal residual algorithm for solving
    nonsymmetric linear systems", SIAM J. Sci. Stat. Comput. 7 (1986).
    """

    name: ClassVar[str] = "gmres"

    restart: int = option(30, check=integer(minimum=1))

    def __call__(
        self, matvec: Matvec, b: Array, x0: Array | None = None, damping: float = 0.0
    ) -> SolveResult:
        """Solve ``(A + δI) x = b`` with ``A v = matvec(v)``, ``δ = damping``, from ``x0``."""
        xp, op, b_norm, threshold, maxiter = self.setup(matvec, b, x0, damping)
        if not bool(xp.any(b_norm > 0)):
            return zero_solution(xp, b, b_norm, "GMRES")
        run = KrylovRun(xp, b, b_norm, start(xp, b, b_norm, x0), "GMRES")
        restart = min(self.restart, b.shape[-1])
        while True:
            active = _residual(run, op, threshold)
            if run.iterations >= maxiter or not bool(xp.any(active)):
                break
            _cycle(run, op, active, threshold, min(restart, maxiter - run.iterations))
        return run.result(self.tol, "raise maxiter or restart, add damping, or precondition")


def _residual(run: KrylovRun, op: Matvec, threshold: Array) -> Array:
    """Measure ``‖b − (A + δI)x‖``; return the problems that still iterate."""
    xp = run.xp
    r = run.b - op(run.x)
    run.n_matvec += 1
    run.r = r
    r_norm = xp.linalg.vector_norm(r, axis=-1)
    run.break_down(~xp.isfinite(r_norm) & ~run.broken, "non-finite residual")
    run.r_norm = xp.where(run.broken, run.r_norm, r_norm)
    run.converged = ~run.broken & (run.r_norm <= threshold)
    if not run.history:
        run.record()
    return ~run.converged & ~run.broken


def _cycle(run: KrylovRun, op: Matvec, active: Array, threshold: Array, m: int) -> None:
    """One GMRES(m) cycle from ``run.x`` for the ``active`` problems; updates ``run.x``."""
    xp = run.xp
    beta = run.r_norm
    basis = [run.r / column(xp.where(active, beta, xp.ones_like(beta)))]
    basis[0] = xp.where(column(active), basis[0], xp.zeros_like(basis[0]))
    ls = _LeastSquares(xp, beta)
    used = xp.zeros(beta.shape, dtype=xp.int64)
    for _ in range(m):
        used = used + xp.astype(active, xp.int64)
        h, v_next = _arnoldi(xp, op, basis, active)
        run.n_matvec += 1
        run.iterations += 1
        basis.append(v_next)
        estimate = ls.add_column(h)
        run.r_norm = xp.where(active, estimate, run.r_norm)
        run.record()
        bad = active & ~xp.isfinite(estimate)
        run.break_down(bad, "non-finite Arnoldi vector")
        active = active & ~bad & ~(estimate <= threshold)
        if not bool(xp.any(active)):
            break
    y = ls.solve(used)
    step = sum(column(y[i]) * basis[i] for i in range(len(y)))
    x_new = run.x + step
    ok = xp.all(xp.isfinite(x_new), axis=-1) & ~run.broken
    run.break_down(~ok & ~run.broken, "non-finite iterate")
    run.x = xp.where(column(ok), x_new, run.x)


def _arnoldi(xp: Any, op: Matvec, basis: list, active: Array) -> tuple[list, Array]:
    """Column ``h`` of ``H̄`` and the next basis vector (zero where a problem stopped).

    Modified Gram–Schmidt: ``w = A vⱼ``, ``hᵢⱼ = ⟨vᵢ, w⟩``, ``w ← w − hᵢⱼ vᵢ``,
    ``hⱼ₊₁ⱼ = ‖w‖``, ``vⱼ₊₁ = w / hⱼ₊₁ⱼ`` (zero at a lucky breakdown ``hⱼ₊₁ⱼ = 0``).
    """
    w = op(basis[-1])
    h = []
    for v in basis:
        hij = dot(xp, v, w)
        w = w - column(hij) * v
        h.append(hij)
    norm = xp.linalg.vector_norm(w, axis=-1)
    h.append(norm)
    ok = active & (norm > 0)
    v_next = w / column(xp.where(ok, norm, xp.ones_like(norm)))
    return h, xp.where(column(ok), v_next, xp.zeros_like(v_next))


class _LeastSquares:
    """``min ‖β e₁ − H̄ y‖`` per problem, kept triangular by Givens rotations.

    ``R`` holds the rotated columns (lists of per-problem scalars), ``g`` the rotated
    right-hand side; ``|g[j+1]|`` is the residual norm after column ``j``.
    """

    def __init__(self, xp: Any, beta: Array) -> None:
        self.xp, self.g, self.R, self.cs, self.sn = xp, [beta], [], [], []

    def add_column(self, h: list) -> Array:
        """Rotate the new column ``h`` (length ``j + 2``); return the residual ``|g[j+1]|``."""
        xp, j = self.xp, len(self.R)
        for i in range(j):
            a, c = h[i], h[i + 1]
            h[i], h[i + 1] = self.cs[i] * a + self.sn[i] * c, self.cs[i] * c - self.sn[i] * a
        den = xp.sqrt(h[j] * h[j] + h[j + 1] * h[j + 1])
        nonzero = den > 0
        safe = xp.where(nonzero, den, xp.ones_like(den))
        c = xp.where(nonzero, h[j] / safe, xp.ones_like(den))
        s = xp.where(nonzero, h[j + 1] / safe, xp.zeros_like(den))
        h[j] = den
        self.g.append(-s * self.g[j])
        self.g[j] = c * self.g[j]
        self.cs.append(c)
        self.sn.append(s)
        self.R.append(h[: j + 1])
        return xp.abs(self.g[j + 1])

    def solve(self, used: Array) -> list:
        """Back substitution ``R y = g``; ``yᵢ = 0`` for the columns a problem did not use."""
        xp, k = self.xp, len(self.R)
        y = [None] * k
        for i in reversed(range(k)):
            s = self.g[i]
            for col in range(i + 1, k):
                s = s - self.R[col][i] * y[col]
            diag = self.R[i][i]
            keep = (i < used) & (diag != 0)
            y[i] = xp.where(keep, s / xp.where(keep, diag, xp.ones_like(diag)),
                            xp.zeros_like(s))
        return y


def gmres(
    matvec: Matvec,
    b: Array,
    x0: Array | None = None,
    *,
    tol: float | None = 1e-10,
    atol: float = 0.0,
    maxiter: int | None = None,
    restart: int = 30,
    damping: float = 0.0,
) -> SolveResult:
    """Restarted GMRES: ``GMRES(tol, atol, maxiter, restart)(matvec, b, x0, damping)``.

    See :class:`GMRES`.

    Parameters
    ----------
    matvec
        ``v ↦ A v`` on arrays of the shape of ``b`` (per problem when batched).
    b
        Right-hand side, ``(n,)`` or ``(B, n)``.
    x0
        Initial guess (warm start); zero by default.
    tol, atol
        Relative and absolute residual tolerances (``tol=None``: fixed budget).
    maxiter
        Total iterations at most; ``10·n`` by default.
    restart
        Krylov basis size per cycle.
    damping
        ``δ ≥ 0``: solve ``(A + δI) x = b``.

    Returns
    -------
    SolveResult
    """
    return GMRES(tol=tol, atol=atol, maxiter=maxiter, restart=restart)(matvec, b, x0, damping)
