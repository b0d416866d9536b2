"""Fixed-point (Richardson) iteration and its fixed-budget form, the truncated Neumann series.

Both solvers run one loop, ``vⱼ₊₁ = vⱼ − α((A + δI)vⱼ − b)``, per problem along the last
axis. :class:`FixedPoint` stops each problem at ``‖(A + δI)vⱼ − b‖ ≤ tol·‖b‖``;
:class:`Neumann` is the same loop with ``tol = 0``: a fixed budget of terms, after which
``converged`` means "no divergence".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from bilevel.batch import to_host
from bilevel.linalg.cg import CHECK_EVERY
from bilevel.linalg.result import SolveResult
from bilevel.linalg.system import (
    LinearSolver,
    Matvec,
    check_system,
    column,
    damped_operator,
    start,
    zero_solution,
)
from bilevel.registry import register
from bilevel.validation import integer, nonnegative, option, positive

__all__ = ["DIVERGENCE_FACTOR", "GROWTH_FACTOR", "FixedPoint", "Neumann", "fixed_point", "neumann"]

Array = Any

DIVERGENCE_FACTOR = 1e6
"""A residual beyond this factor times ``max(‖b‖, ‖r₀‖)`` counts as divergence."""

GROWTH_FACTOR = 2.0
"""A residual beyond this factor times the smallest residual so far counts as divergence.

For symmetric ``A + δI ≻ 0`` and ``α·λ_max < 2`` the residual ``rⱼ = (I − α(A + δI))ʲ r₀``
never grows (``‖I − α(A + δI)‖₂ < 1``); it grows geometrically, by ``|1 − α·λ_max|`` per
update, once ``α·λ_max > 2`` (or ``A + δI`` has a negative eigenvalue). Growth below
``√ε·max(‖b‖, ‖r₀‖)`` is rounding and does not count.
"""


@register("solver")
@dataclass(frozen=True)
class FixedPoint(LinearSolver):
    """Fixed-point (Richardson) iteration ``vⱼ₊₁ = vⱼ − α((A + δI)vⱼ − b)``.

    The map is a contraction, and the iteration converges at rate ``q = ‖I − α(A + δI)‖``,
    when ``A + δI ≻ 0`` and ``α·λ_max(A + δI) < 2``. Each problem stops once
    ``‖(A + δI)vⱼ − b‖ ≤ tol·‖b‖`` (``tol=0`` disables the test). A residual that grows
    beyond twice its smallest value so far (a series that does not contract:
    ``α·λ_max ≥ 2``), beyond ``1e6·max(‖b‖, ‖r₀‖)``, or a non-finite one is reported as
    divergence: that problem stops at its last finite iterate with ``converged=False``.

    Parameters
    ----------
    alpha
        Step ``α > 0``.
    maxiter
        Number of updates at most.
    tol
        Relative residual tolerance.

    Notes
    -----
    Cost: ``iterations + 1`` matvecs from a given ``x0``, ``iterations`` from zero (the
    residual of the final iterate is always measured). Memory: three arrays of the shape
    of ``b``.

    References
    ----------
    R. Grazzi, L. Franceschi, M. Pontil, S. Salzo, "On the iteration complexity of
    hypergradient computation", ICML 2020 (AID-FP).
    """

    name: ClassVar[str] = "fixed_point"

    alpha: float = option(1.0, check=positive)
    maxiter: int = option(100, check=integer(minimum=0))
    tol: float = option(1e-10, check=nonnegative)

    def __call__(
        self, matvec: Matvec, b: Array, x0: Array | None = None, damping: float = 0.0
    ) -> SolveResult:
        """Solve ``(A + δI) x = b`` with ``A v = matvec(v)``, ``δ = damping``, from ``x0``."""
        return richardson(
            matvec, b, x0, damping, alpha=self.alpha, maxiter=self.maxiter, tol=self.tol,
            label="fixed point",
        )


@register("solver")
@dataclass(frozen=True)
class Neumann(LinearSolver):
    """Truncated Neumann series ``x_J = α Σ_{j<J} (I − α(A + δI))ʲ b``: ``J = maxiter`` terms.

    The :class:`FixedPoint` iteration with ``tol = 0``: from ``v₀ = x0 = 0`` its ``J``
    updates give exactly the partial sums above, so ``Neumann(α, J)`` equals
    ``FixedPoint(α, J, tol=0)`` from zero. A fixed budget of terms: ``converged`` means "no
    divergence", and ``residual_norm``/``b_norm`` tell the accuracy. Divergence (needs
    ``α·λ_max(A + δI) < 2`` and ``A + δI ≻ 0``) is detected as in :class:`FixedPoint`.

    Parameters
    ----------
    alpha
        Step ``α > 0`` (the series scale).
    maxiter
        Number of terms ``J ≥ 1`` (zero terms would give the silent answer ``x = 0``).

    Notes
    -----
    Cost: ``J`` matvecs from zero (``J + 1`` from a given ``x0``). Memory: three arrays of
    the shape of ``b``.

    References
    ----------
    J. Lorraine, P. Vicol, D. Duvenaud, "Optimizing millions of hyperparameters by
    implicit differentiation", AISTATS 2020.
    """

    name: ClassVar[str] = "neumann"

    alpha: float = option(1.0, check=positive)
    maxiter: int = option(100, check=integer(minimum=1))

    def __call__(
        self, matvec: Matvec, b: Array, x0: Array | None = None, damping: float = 0.0
    ) -> SolveResult:
        """Sum ``maxiter`` terms for ``(A + δI) x = b`` with ``A v = matvec(v)``, from ``x0``."""
        return richardson(
            matvec, b, x0, damping, alpha=self.alpha, maxiter=self.maxiter, tol=0.0,
            label="Neumann", fixed_budget=True,
        )


def richardson(
    matvec: Matvec,
    b: Array,
    x0: Array | None,
    damping: float,
    *,
    alpha: float,
    maxiter: int,
    tol: float,
    label: str,
    fixed_budget: bool = False,
) -> SolveResult:
    """The loop of both solvers: ``v ← v − α((A + δI)v − b)`` on the problems still active.

    ``label`` names the solver in messages; with ``fixed_budget`` and ``tol = 0``,
    ``converged`` means "no divergence". Options are taken as checked by the solver classes.
    Per-problem flags and the residual history stay on the device; the loop reads whether
    any problem is still active every iteration on NumPy and every
    :data:`~bilevel.linalg.cg.CHECK_EVERY` iterations elsewhere (the extra updates change
    no stopped problem), and the result is read once.
    """
    xp, damping = check_system(b, x0, damping)
    op = damped_operator(matvec, b, damping)
    b_norm = xp.linalg.vector_norm(b, axis=-1)
    if not bool(xp.any(b_norm > 0)):
        return zero_solution(xp, b, b_norm, label)
    series = _Series(xp, op, b, b_norm, start(xp, b, b_norm, x0))
    every = 1 if type(b) is np.ndarray else CHECK_EVERY
    series.iterate(alpha, maxiter, tol, zero_start=x0 is None, every=every)
    budget = fixed_budget and tol == 0
    if budget:
        series.converged = ~series.diverged
    host = series.read()
    return series.result(host, _message(host, label, alpha, tol, damping, budget))


class _Series:
    """The state of one fixed-point solve: iterate, residual norms and per-problem flags
    (all on the device), and per-problem update counts ``steps``."""

    def __init__(self, xp: Any, op: Matvec, b: Array, b_norm: Array, v: Array) -> None:
        self.xp, self.op, self.b, self.b_norm, self.v = xp, op, b, b_norm, v
        self.active = xp.ones_like(b_norm, dtype=xp.bool)
        self.diverged = xp.zeros_like(b_norm, dtype=xp.bool)
        self.converged = xp.zeros_like(b_norm, dtype=xp.bool)
        self.steps = xp.zeros_like(b_norm)
        self.r_norm = b_norm
        self.limit: Array | None = None
        self.smallest: Array | None = None
        self.floor: Array | None = None
        self.history: list[Array] = []
        self.n_matvec = 0
        self.iterations = 0

    def iterate(self, alpha: float, maxiter: int, tol: float, zero_start: bool,
                every: int = 1) -> None:
        """Update until every problem has converged or diverged, or ``maxiter`` updates.

        The residual of the final iterate is always measured (a zero start skips the first
        matvec: ``(A + δI)·0 − b = −b``). Whether a problem is still active is read every
        ``every`` updates.
        """
        xp, v_prev = self.xp, self.v
        threshold = tol * self.b_norm
        updates = 0
        while True:
            if zero_start and updates == 0:
                r = -self.b
            else:
                r = self.op(self.v) - self.b
                self.n_matvec += 1
            self._record(xp.linalg.vector_norm(r, axis=-1), v_prev)
            if tol > 0:
                done = self.active & (self.r_norm <= threshold)
                self.converged = self.converged | done
                self.active = self.active & ~done
            if updates >= maxiter or (updates % every == 0 and not bool(xp.any(self.active))):
                return
            v_prev = self.v
            self.v = xp.where(column(self.active), self.v - alpha * r, self.v)
            self.steps = self.steps + xp.astype(self.active, self.steps.dtype)
            updates += 1

    def _record(self, new_norm: Array, v_prev: Array) -> None:
        """Take the new residual norms; a diverging problem stops at its last finite iterate."""
        xp = self.xp
        blown = self.active & self.diverging(new_norm)
        self.diverged = self.diverged | blown
        self.active = self.active & ~blown
        self.v = xp.where(column(blown), v_prev, self.v)
        self.r_norm = xp.where(blown, self.r_norm, new_norm)
        safe = xp.where(self.b_norm > 0, self.b_norm, xp.ones_like(self.b_norm))
        ratio = xp.where(self.b_norm > 0, self.r_norm / safe, self.r_norm)
        self.history.append(xp.max(xp.reshape(ratio, (-1,))))

    def diverging(self, new_norm: Array) -> Array:
        """Per-problem divergence test of the series (the one place that decides it).

        Diverging: a non-finite residual, one beyond ``1e6·max(‖b‖, ‖r₀‖)``, or one beyond
        ``2·min_{i<j} ‖rᵢ‖ + √ε·max(‖b‖, ‖r₀‖)`` (the series stopped contracting, see
        :data:`GROWTH_FACTOR`). Cost: elementwise operations on the per-problem norms.
        """
        xp = self.xp
        if self.limit is None:
            scale = xp.maximum(self.b_norm, new_norm)
            self.limit = DIVERGENCE_FACTOR * scale
            self.floor = float(xp.finfo(self.b.dtype).eps) ** 0.5 * scale
            self.smallest = new_norm
        grown = new_norm > GROWTH_FACTOR * self.smallest + self.floor
        self.smallest = xp.minimum(self.smallest, new_norm)
        return ~(new_norm <= self.limit) | grown  # also catches NaN/inf

    def read(self) -> dict[str, Any]:
        """Flags, update count and residual history, in one host read."""
        xp, dt = self.xp, self.r_norm.dtype
        flat = [xp.reshape(xp.astype(a, dt), (-1,))
                for a in (self.converged, self.diverged, self.steps)]
        values = to_host(xp.concat(flat + [xp.stack(self.history)]))
        size = flat[0].shape[0]
        steps = values[2 * size:3 * size]
        self.iterations = iterations = int(steps.max())
        history = [float(h) for h in values[3 * size:][: iterations + 1]]
        return {"converged": bool(values[:size].all()),
                "diverged": bool(values[size:2 * size].any()),
                "iterations": iterations, "history": history}

    def result(self, host: dict, message: str) -> SolveResult:
        """The :class:`SolveResult` of the solve so far."""
        return SolveResult(
            x=self.v,
            converged=host["converged"],
            converged_mask=self.converged if self.v.ndim == 2 else None,
            iterations=host["iterations"],
            residual_norm=self.r_norm,
            b_norm=self.b_norm,
            residual_history=host["history"],
            message=message,
            n_matvec=self.n_matvec,
        )


def _message(
    host: dict, label: str, alpha: float, tol: float, damping: float, budget: bool
) -> str:
    """What happened: divergence, a fixed budget summed, convergence, or the iteration cap."""
    rel, n = host["history"][-1], host["iterations"]
    if host["diverged"]:
        return (
            f"{label} diverged after {n} iterations (the residual grew beyond "
            f"{GROWTH_FACTOR:g}× its smallest value, beyond {DIVERGENCE_FACTOR:.0e}·‖b‖, or "
            "became non-finite): alpha*lambda_max(A) must be < 2 "
            f"and A positive definite; lower alpha (alpha={alpha:g}, damping={damping:g}) or "
            "use CG"
        )
    if budget:
        return f"{label}: {n} terms summed (fixed budget, tol=0), relative residual {rel:.2e}"
    if host["converged"]:
        return f"{label} converged in {n} iterations (relative residual {rel:.2e})"
    return (
        f"{label} did not converge in {n} iterations: relative residual {rel:.2e} > "
        f"tol={tol:g} (contraction factor ‖I − alpha·A‖ too close to 1: raise maxiter "
        "or alpha, or use CG)"
    )


def fixed_point(
    matvec: Matvec,
    b: Array,
    x0: Array | None = None,
    *,
    alpha: float = 1.0,
    maxiter: int = 100,
    tol: float = 1e-10,
    damping: float = 0.0,
) -> SolveResult:
    """Fixed-point iteration: ``FixedPoint(alpha, maxiter, tol)(matvec, b, x0, damping)``.

    See :class:`FixedPoint`.

    Parameters
    ----------
    matvec
        ``v ↦ A v`` on arrays of the shape of ``b``.
    b
        Right-hand side, ``(n,)`` or ``(B, n)``.
    x0
        Initial iterate; zero by default.
    alpha
        Step ``α > 0``.
    maxiter
        Number of updates at most.
    tol
        Relative residual tolerance.
    damping
        ``δ ≥ 0``: solve ``(A + δI) x = b``.

    Returns
    -------
    SolveResult
    """
    return FixedPoint(alpha=alpha, maxiter=maxiter, tol=tol)(matvec, b, x0, damping)


def neumann(
    matvec: Matvec,
    b: Array,
    x0: Array | None = None,
    *,
    alpha: float = 1.0,
    maxiter: int = 100,
    tol: float = 0.0,
    damping: float = 0.0,
) -> SolveResult:
    """Truncated Neumann series: ``Neumann(alpha, maxiter)(matvec, b, x0, damping)``.

    See :class:`Neumann`. With ``tol > 0`` the series stops early, where the residual
    test passes: that is :func:`fixed_point` with the same arguments.

    Parameters
    ----------
    matvec
        ``v ↦ A v`` on arrays of the shape of ``b``.
    b
        Right-hand side, ``(n,)`` or ``(B, n)``.
    x0
        Initial iterate; zero by default.
    alpha
        Step ``α > 0`` (the series scale).
    maxiter
        Number of terms ``J``.
    tol
        Relative residual tolerance for early stopping; ``0`` sums all ``J`` terms.
    damping
        ``δ ≥ 0``.

    Returns
    -------
    SolveResult
    """
    if tol == 0:
        return Neumann(alpha=alpha, maxiter=maxiter)(matvec, b, x0, damping)
    return fixed_point(matvec, b, x0, alpha=alpha, maxiter=maxiter, tol=tol, damping=damping)
