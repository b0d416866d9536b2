"""Conjugate gradients for a symmetric positive definite ``(A + δI) x = b``, with breakdowns."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from bilevel.linalg.result import SolveResult, max_ratio
from bilevel.linalg.system import (
    LinearSolver,
    Matvec,
    check_system,
    column,
    damped_operator,
    dot,
    start,
    zero_solution,
)
from bilevel.registry import register
from bilevel.validation import integer, nonnegative, option, optional

__all__ = ["CG", "cg"]

Array = Any


@register("solver")
@dataclass(frozen=True)
class CG(LinearSolver):
    """Conjugate gradients: ``CG(tol, atol, maxiter)(matvec, b, x0=None, damping=0.0)``.

    Iterates, per problem (all dot products along the last axis)::

        r₀ = b − (A + δI) x₀,  p₀ = r₀
        αⱼ = rⱼᵀrⱼ / pⱼᵀ(A + δI)pⱼ
        xⱼ₊₁ = xⱼ + αⱼ pⱼ,  rⱼ₊₁ = rⱼ − αⱼ (A + δI) pⱼ
        pⱼ₊₁ = rⱼ₊₁ + (rⱼ₊₁ᵀrⱼ₊₁ / rⱼᵀrⱼ) pⱼ

    A problem stops when ``‖rⱼ‖ ≤ max(tol·‖b‖, atol)`` (it keeps its iterate while the
    others go on), or at a *breakdown*: ``pᵀ(A + δI)p ≤ 0`` (the matrix is not positive
    definite along ``p``) or a non-finite value. A broken-down problem keeps its last
    finite iterate and is reported with ``breakdown=True``, ``converged=False`` and a
    message that suggests a damping large enough to restore positive curvature.

    *Fixed budget* (``tol=None``, or :meth:`CG.fixed`): exactly ``maxiter`` iterations
    (fewer only where the residual is exactly 0 or at a breakdown), and the iterate is
    accepted: every problem that did not break down is reported converged, with its
    residual in ``residual_norm``. This is the estimator of iMAML (5 steps) and of
    memory-reduced meta-learning (20 steps), whose released code runs a set number of CG
    steps with no stopping test; a truncated solve is then not a failure.

    Parameters
    ----------
    tol, atol
        Relative and absolute residual tolerances; ``tol=None`` selects the fixed budget
        (``atol`` is then ignored).
    maxiter
        Iteration cap; ``10·n`` by default. In exact arithmetic CG solves an SPD system in
        ``n`` iterations. Required with ``tol=None``.

    Notes
    -----
    The result's ``residual_norm`` is the recursively updated residual ``‖rⱼ‖``. Cost: one
    matvec per iteration (plus one when ``x0`` is given). Memory: four work arrays of the
    shape of ``b`` (``x, r, p, Ap``) besides what ``matvec`` holds.

    References
    ----------
    M. R. Hestenes, E. Stiefel, "Methods of conjugate gradients for solving linear
    systems", J. Res. Nat. Bur. Standards 49 (1952).
    """

    name: ClassVar[str] = "cg"

    tol: float | None = option(1e-10, check=optional(nonnegative))
    atol: float = option(0.0, check=nonnegative)
    maxiter: int | None = option(None, check=optional(integer(minimum=0)))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tol is None and self.maxiter is None:
            raise ValueError(
                "CG(tol=None) runs a fixed budget of iterations and needs maxiter; "
                "write CG.fixed(J) or CG(tol=None, maxiter=J)"
            )

    @classmethod
    def fixed(cls, iterations: int) -> CG:
        """``CG(tol=None, maxiter=iterations)``: exactly ``iterations`` steps, accepted."""
        return cls(tol=None, maxiter=iterations)

    @property
    def fixed_budget(self) -> bool:
        """Whether this solver runs a fixed budget (``tol=None``)."""
        return self.tol is None

    def __call__(
        self, matvec: Matvec, b: Array, x0: Array | None = None, damping: float = 0.0
    ) -> SolveResult:
        """Solve ``(A + δI) x = b`` with ``A v = matvec(v)``, ``δ = damping``, from ``x0``."""
        xp, damping = check_system(b, x0, damping)
        op = damped_operator(matvec, b, damping)
        b_norm = xp.linalg.vector_norm(b, axis=-1)
        if not bool(xp.any(b_norm > 0)):
            return zero_solution(xp, b, b_norm, "CG")
        maxiter = 10 * b.shape[-1] if self.maxiter is None else self.maxiter
        if self.fixed_budget:
            threshold = xp.zeros_like(b_norm)
        else:
            threshold = xp.maximum(self.tol * b_norm, xp.full_like(b_norm, self.atol))
        run = _Run(xp, op, b, b_norm, start(xp, b, b_norm, x0), x0 is not None, damping)
        run.iterate(threshold, maxiter)
        if self.fixed_budget:
            return run.accepted()
        return run.result(self.tol)


class _Run:
    """The state of one CG solve: iterates and per-problem flags (all arrays on the device).

    ``active`` problems iterate; the others keep their iterate, ``converged`` or ``broken``.
    """

    def __init__(
        self, xp: Any, op: Matvec, b: Array, b_norm: Array, x: Array, warm: bool, damping: float
    ) -> None:
        self.xp, self.op, self.b, self.b_norm, self.damping = xp, op, b, b_norm, damping
        self.x, self.r = x, (b - op(x) if warm else b)
        self.n_matvec = int(warm)
        self.p = self.r
        self.rr = dot(xp, self.r, self.r)
        self.r_norm = xp.sqrt(self.rr)
        self.broken = ~xp.isfinite(self.rr)
        self.nonfinite = self.broken
        self.failure = ""
        if bool(xp.any(self.broken)):
            self.failure = "CG breakdown: non-finite initial residual (check b, x0 and matvec)"
        self.converged = xp.zeros_like(self.broken)
        self.iterations = 0
        self.history = [max_ratio(self.r_norm, b_norm)]

    def iterate(self, threshold: Array, maxiter: int) -> None:
        """Run until every problem has converged or broken down, or ``maxiter`` iterations."""
        xp = self.xp
        self.converged = self.r_norm <= threshold  # False for a non-finite start
        active = ~self.converged & ~self.broken
        while self.iterations < maxiter and bool(xp.any(active)):
            active = self._step(active)
            done = active & (self.r_norm <= threshold)
            self.converged = self.converged | done
            active = active & ~done
            self.history.append(max_ratio(self.r_norm, self.b_norm))

    def _step(self, active: Array) -> Array:
        """One CG iteration on the ``active`` problems; returns those still active."""
        xp = self.xp
        Ap = self.op(self.p)
        self.n_matvec += 1
        self.iterations += 1
        pAp = dot(xp, self.p, Ap)
        bad = active & ~(pAp > 0)  # also catches NaN
        if bool(xp.any(bad)) and not self.failure:
            self.failure = _curvature_message(xp, self.p, pAp, bad, self.iterations, self.damping)
        self.broken = self.broken | bad
        self.nonfinite = self.nonfinite | (bad & ~xp.isfinite(pAp))
        active = active & ~bad
        safe_pAp = xp.where(active, pAp, xp.ones_like(pAp))
        alpha = xp.where(active, self.rr / safe_pAp, xp.zeros_like(self.rr))
        x_new = self.x + column(alpha) * self.p
        r_new = self.r - column(alpha) * Ap
        rr_new = dot(xp, r_new, r_new)
        nonfinite = active & ~(xp.isfinite(rr_new) & xp.all(xp.isfinite(x_new), axis=-1))
        if bool(xp.any(nonfinite)):
            self.broken = self.broken | nonfinite
            self.nonfinite = self.nonfinite | nonfinite
            active = active & ~nonfinite
            if not self.failure:
                self.failure = f"CG breakdown: non-finite iterate at iteration {self.iterations}"
        keep = column(active)
        self.x = xp.where(keep, x_new, self.x)
        self.r = xp.where(keep, r_new, self.r)
        safe_rr = xp.where(self.rr > 0, self.rr, xp.ones_like(self.rr))
        beta = xp.where(active, rr_new / safe_rr, xp.zeros_like(self.rr))
        self.p = xp.where(keep, r_new + column(beta) * self.p, self.p)
        self.rr = xp.where(active, rr_new, self.rr)
        self.r_norm = xp.sqrt(self.rr)
        return active

    def accepted(self) -> SolveResult:
        """The fixed-budget result: every problem with a finite iterate is accepted.

        A problem stopped by negative curvature keeps its last iterate, as truncated CG
        does (the message says so); only a non-finite value fails a problem.
        """
        xp = self.xp
        rel = max_ratio(self.r_norm, self.b_norm)
        message = (f"CG ran its fixed budget of {self.iterations} iterations "
                   f"(largest relative residual {rel:.2e}, accepted)")
        if bool(xp.any(self.broken)):
            message += f"; stopped early on some problems: {self.failure}"
        return self._result(~self.nonfinite, message, self.nonfinite)

    def result(self, tol: float) -> SolveResult:
        """The :class:`SolveResult` with a message for success, breakdown or the iteration cap."""
        xp, b = self.xp, self.b
        rel = max_ratio(self.r_norm, self.b_norm)
        any_broken = bool(xp.any(self.broken))
        if bool(xp.all(self.converged)):
            message = f"CG converged in {self.iterations} iterations (relative residual {rel:.2e})"
        elif any_broken:
            message = self.failure
            if b.ndim == 2:
                count = int(xp.sum(xp.astype(self.broken, xp.int64)))
                message += f" [{count} of {b.shape[0]} problems broke down]"
        else:
            message = (
                f"CG did not converge in {self.iterations} iterations: relative residual "
                f"{rel:.2e} > tol={tol:g} (raise maxiter, add damping, or precondition; "
                f"CG.fixed({self.iterations}) accepts a fixed budget)"
            )
        return self._result(self.converged, message, self.broken)

    def _result(self, mask: Array, message: str, broken: Array) -> SolveResult:
        return SolveResult.of(
            self.x,
            mask,
            iterations=self.iterations,
            residual_norm=self.r_norm,
            b_norm=self.b_norm,
            breakdown=bool(self.xp.any(broken)),
            residual_history=self.history,
            message=message,
            n_matvec=self.n_matvec,
        )


def _curvature_message(
    xp: Any, p: Array, pAp: Array, bad: Array, iteration: int, damping: float
) -> str:
    """Why CG broke down at ``pᵀ(A + δI)p ≤ 0``, and a damping that restores ``A + δI ≻ 0``.

    The Rayleigh quotient ``pᵀ(A + δI)p / pᵀp`` bounds ``λ_min(A + δI)`` from above.
    """
    zero = xp.zeros_like(pAp)
    pp = xp.where(bad, dot(xp, p, p), xp.ones_like(pAp))
    worst = float(xp.min(xp.reshape(xp.where(bad, pAp, zero), (-1,))))
    rayleigh = float(xp.min(xp.reshape(xp.where(bad, pAp / pp, zero), (-1,))))
    if not math.isfinite(worst):
        return f"CG breakdown: non-finite pᵀAp at iteration {iteration} (matvec returned inf/NaN)"
    gap = max(-rayleigh, 0.0)
    return (
        f"CG breakdown: pᵀAp={worst:.3g} <= 0 at iteration {iteration} "
        f"(matrix not positive definite: λ_min(A + δI) <= pᵀAp/pᵀp={rayleigh:.3g}, "
        f"so damping must exceed {damping + gap:.3g}); "
        f"try damping={damping + 2 * gap + 1e-8:.3g} or Neumann/FixedPoint"
    )


def cg(
    matvec: Matvec,
    b: Array,
    x0: Array | None = None,
    *,
    tol: float | None = 1e-10,
    atol: float = 0.0,
    maxiter: int | None = None,
    damping: float = 0.0,
) -> SolveResult:
    """Conjugate gradients for a symmetric positive definite ``(A + δI) x = b``.

    ``CG(tol, atol, maxiter)(matvec, b, x0, damping)``; see :class:`CG`.

    Parameters
    ----------
    matvec
        ``v ↦ A v`` on arrays of the shape of ``b`` (per problem when batched).
    b
        Right-hand side, ``(n,)`` or ``(B, n)``.
    x0
        Initial guess (warm start); zero by default.
    tol, atol
        Relative and absolute residual tolerances (``tol=None``: fixed budget of
        ``maxiter`` iterations, accepted; see :class:`CG`).
    maxiter
        Iteration cap; ``10·n`` by default.
    damping
        ``δ ≥ 0``: solve ``(A + δI) x = b``.

    Returns
    -------
    SolveResult
    """
    return CG(tol=tol, atol=atol, maxiter=maxiter)(matvec, b, x0, damping)
