"""(Preconditioned) conjugate gradients for an SPD ``(A + δI) x = b``, with breakdowns.

Every per-problem quantity (flags, iteration counts, the residual history, what a breakdown
looked like) stays on the arrays' device while CG iterates; the convergence test reads one
flag every ``check_every`` iterations and the result is read back once, at the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from bilevel.backend import namespace
from bilevel.batch import to_host
from bilevel.linalg.result import SolveResult
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

__all__ = ["CG", "CHECK_EVERY", "cg", "jacobi"]

Array = Any

#: Iterations between two convergence reads on a device (``check_every=None``, not NumPy).
CHECK_EVERY = 5


def jacobi(diagonal: Array) -> Array:
    """The Jacobi preconditioner ``M = diag(A)⁻¹`` from the diagonal of ``A + δI``.

    ``diagonal`` has the shape of ``b`` (or broadcasts to it); entries that are not positive
    get ``M = 1`` (no scaling), so ``M`` stays positive definite. Pass the result as
    ``CG()(matvec, b, M=jacobi(d))``.
    """
    xp = namespace(diagonal)
    good = diagonal > 0
    return xp.where(good, 1.0 / xp.where(good, diagonal, 1.0), 1.0)


@register("solver")
@dataclass(frozen=True)
class CG(LinearSolver):
    """Conjugate gradients: ``CG(tol, atol, maxiter, check_every)(matvec, b, x0, damping, M)``.

    Iterates, per problem (all dot products along the last axis), with the preconditioner
    ``M ≈ (A + δI)⁻¹`` (``z = r`` without one)::

        r₀ = b − (A + δI) x₀,  z₀ = M r₀,  p₀ = z₀
        αⱼ = rⱼᵀzⱼ / pⱼᵀ(A + δI)pⱼ
        xⱼ₊₁ = xⱼ + αⱼ pⱼ,  rⱼ₊₁ = rⱼ − αⱼ (A + δI) pⱼ,  zⱼ₊₁ = M rⱼ₊₁
        pⱼ₊₁ = zⱼ₊₁ + (rⱼ₊₁ᵀzⱼ₊₁ / rⱼᵀzⱼ) pⱼ

    A problem stops when ``‖rⱼ‖ ≤ max(tol·‖b‖, atol)`` (it keeps its iterate while the
    others go on), when ``‖rⱼ‖²`` underflows below the smallest normal number (the residual
    is zero to working precision: counted converged, also with ``tol=0``, instead of
    iterating on denormals), or at a *breakdown*: ``pᵀ(A + δI)p ≤ 0`` (the matrix is not
    positive definite along ``p``) or a non-finite value. A broken-down problem keeps its
    last finite iterate and is reported with ``breakdown=True``, ``converged=False`` and a
    message that suggests a damping large enough to restore positive curvature.

    *Fixed budget* (``tol=None``, or :meth:`CG.fixed`): exactly ``maxiter`` iterations
    (fewer only where the residual is zero or at a breakdown), and the iterate is accepted:
    every problem that did not break down is reported converged, with its residual in
    ``residual_norm``. This is the estimator of iMAML (5 steps) and of memory-reduced
    meta-learning (20 steps), whose released code runs a set number of CG steps with no
    stopping test; a truncated solve is then not a failure.

    Parameters
    ----------
    tol, atol
        Relative and absolute residual tolerances; ``tol=None`` selects the fixed budget
        (``atol`` is then ignored).
    maxiter
        Iteration cap; ``10·n`` by default. In exact arithmetic CG solves an SPD system in
        ``n`` iterations. Required with ``tol=None``.
    check_every
        Iterations between two reads of the convergence flags (each read synchronizes a
        GPU with the host). ``None``: every iteration on NumPy (a read is free there),
        every :data:`CHECK_EVERY` iterations on other backends. Trade-off: the solve may
        run up to ``check_every − 1`` iterations after the last problem stopped; they
        change nothing (stopped problems keep their iterate) but cost a matvec each
        (``n_matvec``), while ``iterations`` and the residual history report the
        iterations that did work.

    Notes
    -----
    The result's ``residual_norm`` is the recursively updated residual ``‖rⱼ‖``. Cost: one
    matvec per iteration (plus one when ``x0`` is given) and one application of ``M``.
    Memory: five work arrays of the shape of ``b`` (``x, r, z, p, Ap``; four without
    ``M``) besides what ``matvec`` holds. The Jacobi preconditioner :func:`jacobi`
    (``M = diag(A + δI)⁻¹``) cuts the iterations of a badly scaled, diagonally dominant
    system from ``O(√κ(A))`` to ``O(√κ(D^{-1/2} A D^{-1/2}))``.

    References
    ----------
    M. R. Hestenes, E. Stiefel, "Methods of conjugate gradients for solving linear
    systems", J. Res. Nat. Bur. Standards 49 (1952).
    Y. Saad, *Iterative Methods for Sparse Linear Systems*, 2nd ed., SIAM 2003, §9.2
    (preconditioned CG).
    """

    name: ClassVar[str] = "cg"

    tol: float | None = option(1e-10, check=optional(nonnegative))
    atol: float = option(0.0, check=nonnegative)
    maxiter: int | None = option(None, check=optional(integer(minimum=0)))
    check_every: int | None = option(None, check=optional(integer(minimum=1)))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tol is None and self.maxiter is None:
            raise ValueError(
                "CG(tol=None) runs a fixed budget of iterations and needs maxiter; "
                "write CG.fixed(J) or CG(tol=None, maxiter=J)"
            )

    def __repr__(self) -> str:
        every = "" if self.check_every is None else f", check_every={self.check_every!r}"
        return f"CG(tol={self.tol!r}, atol={self.atol!r}, maxiter={self.maxiter!r}{every})"

    @classmethod
    def fixed(cls, iterations: int) -> CG:
        """``CG(tol=None, maxiter=iterations)``: exactly ``iterations`` steps, accepted."""
        return cls(tol=None, maxiter=iterations)

    @property
    def fixed_budget(self) -> bool:
        """Whether this solver runs a fixed budget (``tol=None``)."""
        return self.tol is None

    def __call__(
        self, matvec: Matvec, b: Array, x0: Array | None = None, damping: float = 0.0,
        *, M: Any = None,
    ) -> SolveResult:
        """Solve ``(A + δI) x = b`` with ``A v = matvec(v)``, ``δ = damping``, from ``x0``.

        ``M`` (optional) is the preconditioner ``≈ (A + δI)⁻¹``: an array (the inverse of
        a diagonal, e.g. :func:`jacobi`, applied elementwise) or a callable ``r ↦ M r``
        (symmetric positive definite).
        """
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
        every = self.check_every
        if every is None:
            every = 1 if type(b) is np.ndarray else CHECK_EVERY
        run = _Run(xp, op, _preconditioner(M), b, b_norm, start(xp, b, b_norm, x0),
                   x0 is not None)
        run.iterate(threshold, maxiter, every)
        return run.result(self.tol, damping)


def _preconditioner(M: Any) -> Any:
    """``r ↦ M r`` (``None`` for no preconditioner)."""
    if M is None or callable(M):
        return M
    return lambda r: M * r


class _Run:
    """The state of one CG solve: iterates and per-problem flags, all on the device.

    ``active`` problems iterate; the others keep their iterate, ``converged`` or ``broken``.
    A breakdown records, per problem, its iteration (``broke_at``), whether it was the
    curvature test, and ``pᵀAp`` and ``pᵀp`` there (for the message).
    """

    def __init__(self, xp: Any, op: Matvec, precond: Any, b: Array, b_norm: Array,
                 x: Array, warm: bool) -> None:
        self.xp, self.op, self.precond, self.b, self.b_norm = xp, op, precond, b, b_norm
        self.host = type(b) is np.ndarray
        self.x, self.r = x, (b - op(x) if warm else b)
        self.n_matvec = int(warm)
        self.p = self.r if precond is None else precond(self.r)
        self.rr = dot(xp, self.r, self.r)
        self.rz = self.rr if precond is None else dot(xp, self.r, self.p)
        self.r_norm = xp.sqrt(self.rr)
        self.tiny = float(xp.finfo(b.dtype).smallest_normal)
        self.broken = ~(xp.isfinite(self.rr) & xp.isfinite(self.rz))
        self.nonfinite = self.broken
        self.start_broken = self.broken
        never = xp.full_like(self.rr, -1.0)
        self.broke_at, self.curvature = never, xp.zeros_like(self.broken)
        self.bad_pAp, self.bad_pp = never, xp.ones_like(self.rr)
        self.steps = xp.zeros_like(self.rr)
        self.converged = xp.zeros_like(self.broken)
        self.iterations = 0
        self.history = [_largest_ratio(xp, self.r_norm, b_norm)]

    def iterate(self, threshold: Array, maxiter: int, every: int) -> None:
        """Iterate until no problem is active or ``maxiter`` iterations; read the flags
        every ``every`` iterations."""
        xp = self.xp
        self.converged = self._stopped(threshold)  # False for a non-finite start
        active = ~self.converged & ~self.broken
        for j in range(maxiter):
            if j % every == 0 and not bool(xp.any(active)):
                break
            self.steps = self.steps + xp.astype(active, self.steps.dtype)
            active = self._step(active, j + 1)
            done = active & self._stopped(threshold)
            self.converged = self.converged | done
            active = active & ~done
            self.history.append(_largest_ratio(xp, self.r_norm, self.b_norm))

    def _stopped(self, threshold: Array) -> Array:
        """Converged: below the threshold, or ``‖r‖²`` under the smallest normal number."""
        return (self.r_norm <= threshold) | (self.rr < self.tiny)

    def _step(self, active: Array, iteration: int) -> Array:
        """One CG iteration on the ``active`` problems; returns those still active."""
        xp = self.xp
        Ap = self.op(self.p)
        self.n_matvec += 1
        pAp = dot(xp, self.p, Ap)
        bad = active & ~(pAp > 0)  # also catches NaN
        self._broke(bad, bad, iteration, pAp)
        self.nonfinite = self.nonfinite | (bad & ~xp.isfinite(pAp))
        active = active & ~bad
        safe_pAp = xp.where(active, pAp, xp.ones_like(pAp))
        alpha = xp.where(active, self.rz / safe_pAp, xp.zeros_like(self.rz))
        x_new = self.x + column(alpha) * self.p
        r_new = self.r - column(alpha) * Ap
        plain = self.precond is None
        z_new = r_new if plain else self.precond(r_new)
        rr_new = dot(xp, r_new, r_new)
        rz_new = rr_new if plain else dot(xp, r_new, z_new)
        finite = xp.isfinite(rr_new) & xp.all(xp.isfinite(x_new), axis=-1)
        nonfinite = active & ~(finite if plain else finite & xp.isfinite(rz_new))
        self._broke(nonfinite, xp.zeros_like(bad), iteration, pAp)
        self.nonfinite = self.nonfinite | nonfinite
        active = active & ~nonfinite
        keep = column(active)
        self.x = xp.where(keep, x_new, self.x)
        self.r = xp.where(keep, r_new, self.r)
        safe_rz = xp.where(self.rz > 0, self.rz, xp.ones_like(self.rz))
        beta = xp.where(active, rz_new / safe_rz, xp.zeros_like(self.rz))
        self.p = xp.where(keep, z_new + column(beta) * self.p, self.p)
        self.rr = xp.where(active, rr_new, self.rr)
        self.rz = self.rr if plain else xp.where(active, rz_new, self.rz)
        self.r_norm = xp.sqrt(self.rr)
        return active

    def _broke(self, now: Array, curvature: Array, iteration: int, pAp: Array) -> None:
        """Record the problems breaking down ``now`` (at ``iteration``), on the device (on
        NumPy, where a read is free, only when one does)."""
        xp = self.xp
        if self.host and not now.any():
            return
        self.broken = self.broken | now
        self.broke_at = xp.where(now, float(iteration), self.broke_at)
        self.curvature = xp.where(now, curvature, self.curvature)
        self.bad_pAp = xp.where(now, pAp, self.bad_pAp)
        self.bad_pp = xp.where(now, dot(xp, self.p, self.p), self.bad_pp)

    def _read(self) -> dict[str, Any]:
        """Everything the result reports, in one host read."""
        xp, dt = self.xp, self.rr.dtype
        flat = [xp.reshape(xp.astype(a, dt), (-1,)) for a in (
            self.converged, self.broken, self.nonfinite, self.start_broken, self.steps,
            self.broke_at, self.curvature, self.bad_pAp, self.bad_pp)]
        history = xp.stack(self.history)
        values = to_host(xp.concat(flat + [xp.reshape(history, (-1,))]))
        size = flat[0].shape[0]
        names = ("converged", "broken", "nonfinite", "start_broken", "steps", "broke_at",
                 "curvature", "pAp", "pp")
        out = {k: values[i * size:(i + 1) * size] for i, k in enumerate(names)}
        iterations = int(out["steps"].max())
        out["iterations"] = iterations
        out["history"] = [float(h) for h in values[len(names) * size:][: iterations + 1]]
        return out

    def result(self, tol: float | None, damping: float) -> SolveResult:
        """The :class:`SolveResult`, with a message for success, breakdown, the iteration
        cap or the fixed budget."""
        host = self._read()
        self.iterations = iterations = host["iterations"]
        rel = host["history"][-1]
        failure = _failure(host, damping)
        if tol is None:  # the fixed budget: every finite iterate is accepted
            message = (f"CG ran its fixed budget of {iterations} iterations "
                       f"(largest relative residual {rel:.2e}, accepted)")
            if host["broken"].any():
                message += f"; stopped early on some problems: {failure}"
            return self._result(~self.nonfinite, ~host["nonfinite"].astype(bool), message,
                                host)
        if host["converged"].all():
            message = f"CG converged in {iterations} iterations (relative residual {rel:.2e})"
        elif host["broken"].any():
            message = failure
            if self.b.ndim == 2:
                count = int(host["broken"].sum())
                message += f" [{count} of {self.b.shape[0]} problems broke down]"
        else:
            message = (
                f"CG did not converge in {iterations} iterations: relative residual "
                f"{rel:.2e} > tol={tol:g} (raise maxiter, add damping, or precondition; "
                f"CG.fixed({iterations}) accepts a fixed budget)"
            )
        return self._result(self.converged, host["converged"].astype(bool), message, host)

    def _result(self, mask: Array, host_mask: np.ndarray, message: str,
                host: dict) -> SolveResult:
        return SolveResult(
            x=self.x,
            converged=bool(host_mask.all()),
            converged_mask=mask if self.b.ndim == 2 else None,
            iterations=host["iterations"],
            residual_norm=self.r_norm,
            b_norm=self.b_norm,
            breakdown=bool(host["broken"].any()),
            residual_history=host["history"],
            message=message,
            n_matvec=self.n_matvec,
        )


def _largest_ratio(xp: Any, num: Array, den: Array) -> Array:
    """Largest ``num / den`` over problems (``num`` where ``den = 0``), kept on the device."""
    safe = xp.where(den > 0, den, xp.ones_like(den))
    return xp.max(xp.reshape(xp.where(den > 0, num / safe, num), (-1,)))


def _failure(host: dict, damping: float) -> str:
    """Why CG broke down first: a non-finite start, ``pᵀ(A + δI)p ≤ 0`` or a non-finite
    iterate (the earliest iteration; the worst problem there), from the values read."""
    if host["start_broken"].any():
        return "CG breakdown: non-finite initial residual (check b, x0 and matvec)"
    broken = host["broken"].astype(bool) & (host["broke_at"] >= 0)
    if not broken.any():
        return ""
    iteration = int(host["broke_at"][broken].min())
    there = broken & (host["broke_at"] == iteration)
    curved = there & host["curvature"].astype(bool)
    if not curved.any():
        return f"CG breakdown: non-finite iterate at iteration {iteration}"
    pAp, pp = host["pAp"][curved], host["pp"][curved]
    return _curvature_message(float(np.min(pAp)), float(np.min(pAp / pp)), iteration,
                              damping)


def _curvature_message(worst: float, rayleigh: float, iteration: int, damping: float) -> str:
    """Why CG broke down at ``pᵀ(A + δI)p ≤ 0``, and a damping that restores ``A + δI ≻ 0``.

    The Rayleigh quotient ``pᵀ(A + δI)p / pᵀp`` bounds ``λ_min(A + δI)`` from above.
    """
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
    M: Any = None,
    check_every: int | None = None,
) -> SolveResult:
    """Conjugate gradients for a symmetric positive definite ``(A + δI) x = b``.

    ``CG(tol, atol, maxiter, check_every)(matvec, b, x0, damping, M=M)``; see :class:`CG`.

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
    M
        Preconditioner ``≈ (A + δI)⁻¹``: an inverse diagonal (:func:`jacobi`) or a callable.
    check_every
        Iterations between convergence reads (see :class:`CG`).

    Returns
    -------
    SolveResult
    """
    return CG(tol=tol, atol=atol, maxiter=maxiter, check_every=check_every)(
        matvec, b, x0, damping, M=M)
