"""BiCGSTAB for a general (non-symmetric) ``(A + δI) x = b``, batched, with breakdowns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from bilevel.linalg.krylov import KrylovRun, KrylovSolver
from bilevel.linalg.result import SolveResult
from bilevel.linalg.system import Matvec, column, dot, start, zero_solution
from bilevel.registry import register

__all__ = ["BiCGSTAB", "bicgstab"]

Array = Any


@register("solver", "bicg-stab")
@dataclass(frozen=True)
class BiCGSTAB(KrylovSolver):
    """BiCGSTAB: ``BiCGSTAB(tol, atol, maxiter)(matvec, b, x0=None, damping=0.0)``.

    Iterates, per problem (``A`` standing for ``A + δI``, ``r̂ = r₀``)::

        ρⱼ = ⟨r̂, rⱼ⟩,   pⱼ = rⱼ + (ρⱼ/ρⱼ₋₁)(αⱼ₋₁/ωⱼ₋₁)(pⱼ₋₁ − ωⱼ₋₁ vⱼ₋₁)
        vⱼ = A pⱼ,   αⱼ = ρⱼ / ⟨r̂, vⱼ⟩,   s = rⱼ − αⱼ vⱼ
        t = A s,     ωⱼ = ⟨t, s⟩ / ⟨t, t⟩
        xⱼ₊₁ = xⱼ + αⱼ pⱼ + ωⱼ s,   rⱼ₊₁ = s − ωⱼ t

    A problem stops when ``‖r‖ ≤ max(tol·‖b‖, atol)`` (also at the half step ``s``), or at
    a *breakdown*: ``ρⱼ = 0``, ``⟨r̂, vⱼ⟩ = 0``, ``ωⱼ = 0`` or a non-finite value; it then
    keeps its last finite iterate and is reported (``breakdown=True``). GMRES, whose
    residual never grows, is the robust choice; BiCGSTAB needs less memory (no basis).

    *Fixed budget* (``tol=None``, or :meth:`BiCGSTAB.fixed`): exactly ``maxiter``
    iterations, the iterate accepted (as :meth:`bilevel.linalg.CG.fixed`).

    Parameters
    ----------
    tol, atol
        Relative and absolute residual tolerances; ``tol=None`` selects the fixed budget.
    maxiter
        Iterations at most (``10·n`` by default).

    Notes
    -----
    Cost: two matvecs per iteration (plus one for a given ``x0``). Memory: seven arrays of
    the shape of ``b``.

    References
    ----------
    H. A. van der Vorst, "Bi-CGSTAB: a fast and smoothly converging variant of Bi-CG for the
    solution of nonsymmetric linear systems", SIAM J. Sci. Stat. Comput. 13 (1992).
    """

    name: ClassVar[str] = "bicgstab"

    def __call__(
        self, matvec: Matvec, b: Array, x0: Array | None = None, damping: float = 0.0
    ) -> SolveResult:
        """Solve ``(A + δI) x = b`` with ``A v = matvec(v)``, ``δ = damping``, from ``x0``."""
        xp, op, b_norm, threshold, maxiter = self.setup(matvec, b, x0, damping)
        if not bool(xp.any(b_norm > 0)):
            return zero_solution(xp, b, b_norm, "BiCGSTAB")
        run = _Run(xp, op, b, b_norm, start(xp, b, b_norm, x0), x0 is not None)
        active = run.start(threshold)
        while run.iterations < maxiter and bool(xp.any(active)):
            active = run.step(active, threshold)
        return run.result(self.tol, "raise maxiter, add damping, precondition, or use GMRES")


class _Run(KrylovRun):
    """The vectors of one BiCGSTAB solve (all per problem, on the device)."""

    def __init__(self, xp: Any, op: Matvec, b: Array, b_norm: Array, x: Array,
                 warm: bool) -> None:
        super().__init__(xp, b, b_norm, x, "BiCGSTAB")
        self.op = op
        self.r = b - op(x) if warm else b
        self.n_matvec = int(warm)
        self.r_hat = self.r
        self.p = xp.zeros_like(b)
        self.v = xp.zeros_like(b)
        one = xp.ones_like(b_norm)
        self.rho, self.alpha, self.omega = one, one, one

    def start(self, threshold: Array) -> Array:
        """Residual of the first iterate; the problems that iterate."""
        xp = self.xp
        self.r_norm = xp.linalg.vector_norm(self.r, axis=-1)
        self.break_down(~xp.isfinite(self.r_norm), "non-finite initial residual")
        self.converged = ~self.broken & (self.r_norm <= threshold)
        self.record()
        return ~self.converged & ~self.broken

    def step(self, active: Array, threshold: Array) -> Array:
        """One iteration on the ``active`` problems; returns those still active."""
        xp = self.xp
        self.iterations += 1
        rho = dot(xp, self.r_hat, self.r)
        active = self._check(active, xp.isfinite(rho) & (rho != 0), "ρ = ⟨r̂, r⟩ = 0")
        beta = _ratio(xp, rho, self.rho, active) * _ratio(xp, self.alpha, self.omega, active)
        p = self.r + column(beta) * (self.p - column(self.omega) * self.v)
        v = self.op(p)
        rv = dot(xp, self.r_hat, v)
        active = self._check(active, xp.isfinite(rv) & (rv != 0), "⟨r̂, A p⟩ = 0")
        alpha = _ratio(xp, rho, rv, active)
        s = self.r - column(alpha) * v
        half = active & (xp.linalg.vector_norm(s, axis=-1) <= threshold)
        t = self.op(s)
        self.n_matvec += 2
        tt = dot(xp, t, t)
        omega = xp.where(half, xp.zeros_like(tt), _ratio(xp, dot(xp, t, s), tt, active))
        x_new = self.x + column(alpha) * p + column(omega) * s
        r_new = s - column(omega) * t
        active = self._check(active, half | (omega != 0), "ω = 0 (stagnation)")
        finite = xp.all(xp.isfinite(x_new), axis=-1) & xp.all(xp.isfinite(r_new), axis=-1)
        moved = (active | half) & finite
        active = self._check(active, finite, "non-finite iterate")
        self._advance(moved, x_new, r_new, p, v, (rho, alpha, omega))
        done = moved & (half | (self.r_norm <= threshold))
        self.converged = self.converged | done
        self.record()
        return active & ~done

    def _check(self, active: Array, ok: Array, why: str) -> Array:
        """Break down the active problems where ``ok`` fails; return the rest."""
        bad = active & ~ok
        self.break_down(bad, why)
        return active & ~bad

    def _advance(self, moved: Array, x: Array, r: Array, p: Array, v: Array,
                 scalars: tuple) -> None:
        """Take the new vectors and scalars for the problems that moved."""
        xp, keep = self.xp, column(moved)
        self.x = xp.where(keep, x, self.x)
        self.r = xp.where(keep, r, self.r)
        self.p = xp.where(keep, p, self.p)
        self.v = xp.where(keep, v, self.v)
        rho, alpha, omega = scalars
        self.rho = xp.where(moved, rho, self.rho)
        self.alpha = xp.where(moved, alpha, self.alpha)
        self.omega = xp.where(moved, omega, self.omega)
        self.r_norm = xp.where(moved, xp.linalg.vector_norm(self.r, axis=-1), self.r_norm)


def _ratio(xp: Any, num: Array, den: Array, active: Array) -> Array:
    """``num / den`` where ``active``, zero elsewhere (no division by zero)."""
    safe = xp.where(active & (den != 0), den, xp.ones_like(den))
    return xp.where(active, num / safe, xp.zeros_like(num))


def bicgstab(
    matvec: Matvec,
    b: Array,
    x0: Array | None = None,
    *,
    tol: float | None = 1e-10,
    atol: float = 0.0,
    maxiter: int | None = None,
    damping: float = 0.0,
) -> SolveResult:
    """BiCGSTAB: ``BiCGSTAB(tol, atol, maxiter)(matvec, b, x0, damping)``; see :class:`BiCGSTAB`.

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
        Iterations at most; ``10·n`` by default.
    damping
        ``δ ≥ 0``: solve ``(A + δI) x = b``.

    Returns
    -------
    SolveResult
    """
    return BiCGSTAB(tol=tol, atol=atol, maxiter=maxiter)(matvec, b, x0, damping)
