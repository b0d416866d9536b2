"""What the Krylov solvers for general (non-symmetric) systems share: options and outcome.

:class:`~bilevel.linalg.gmres.GMRES` and :class:`~bilevel.linalg.bicgstab.BiCGSTAB` take the
same options as :class:`~bilevel.linalg.CG` (``tol``, ``atol``, ``maxiter``, the fixed budget
``tol=None``) and report their outcome the same way; :class:`KrylovRun` holds the per-problem
flags (``converged``, ``broken``) and turns them into a :class:`SolveResult`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bilevel.linalg.result import SolveResult, max_ratio
from bilevel.linalg.system import LinearSolver, Matvec, check_system, damped_operator
from bilevel.validation import integer, nonnegative, option, optional

__all__ = ["KrylovRun", "KrylovSolver"]

Array = Any


@dataclass(frozen=True)
class KrylovSolver(LinearSolver):
    """Base of the tolerance-or-budget Krylov solvers (options ``tol``, ``atol``, ``maxiter``).

    ``tol=None`` (or :meth:`fixed`) runs exactly ``maxiter`` iterations and accepts the
    iterate, as :meth:`bilevel.linalg.CG.fixed` does; only a non-finite value fails a problem.
    """

    tol: float | None = option(1e-10, check=optional(nonnegative))
    atol: float = option(0.0, check=nonnegative)
    maxiter: int | None = option(None, check=optional(integer(minimum=0)))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tol is None and self.maxiter is None:
            label = type(self).__name__
            raise ValueError(
                f"{label}(tol=None) runs a fixed budget of iterations and needs maxiter; "
                f"write {label}.fixed(J) or {label}(tol=None, maxiter=J)"
            )

    @classmethod
    def fixed(cls, iterations: int) -> KrylovSolver:
        """``cls(tol=None, maxiter=iterations)``: exactly ``iterations`` steps, accepted."""
        return cls(tol=None, maxiter=iterations)

    @property
    def fixed_budget(self) -> bool:
        """Whether this solver runs a fixed budget (``tol=None``)."""
        return self.tol is None

    def setup(self, matvec: Matvec, b: Array, x0: Array | None,
              damping: float) -> tuple[Any, Matvec, Array, Array, int]:
        """``(xp, (A + δI)·, ‖b‖, threshold, maxiter)`` of one call, checked.

        The threshold per problem is ``max(tol·‖b‖, atol)``, zero for a fixed budget.
        """
        xp, damping = check_system(b, x0, damping)
        op = damped_operator(matvec, b, damping)
        b_norm = xp.linalg.vector_norm(b, axis=-1)
        maxiter = 10 * b.shape[-1] if self.maxiter is None else self.maxiter
        if self.fixed_budget:
            threshold = xp.zeros_like(b_norm)
        else:
            threshold = xp.maximum(self.tol * b_norm, xp.full_like(b_norm, self.atol))
        return xp, op, b_norm, threshold, maxiter


class KrylovRun:
    """Per-problem state of one solve: iterate ``x``, residual norms, flags, counts.

    ``converged`` and ``broken`` are boolean arrays of shape ``()`` or ``(B,)`` kept on the
    device; ``failure`` is the first breakdown's explanation.
    """

    def __init__(self, xp: Any, b: Array, b_norm: Array, x: Array, label: str) -> None:
        self.xp, self.b, self.b_norm, self.x, self.label = xp, b, b_norm, x, label
        self.r_norm = b_norm
        self.converged = xp.zeros(b_norm.shape, dtype=xp.bool)
        self.broken = xp.zeros_like(self.converged)
        self.failure = ""
        self.iterations = 0
        self.n_matvec = 0
        self.history: list[float] = []

    def record(self) -> None:
        """Append the largest relative residual (one host read)."""
        self.history.append(max_ratio(self.r_norm, self.b_norm))

    def break_down(self, bad: Array, why: str) -> None:
        """Mark the problems ``bad`` broken (they keep their iterate) and remember why."""
        xp = self.xp
        if bool(xp.any(bad)) and not self.failure:
            self.failure = f"{self.label} breakdown: {why} at iteration {self.iterations}"
        self.broken = self.broken | bad

    def result(self, tol: float | None, advice: str) -> SolveResult:
        """The :class:`SolveResult`: converged, broken down, capped, or a fixed budget."""
        xp, rel = self.xp, max_ratio(self.r_norm, self.b_norm)
        if tol is None:
            message = (f"{self.label} ran its fixed budget of {self.iterations} iterations "
                       f"(largest relative residual {rel:.2e}, accepted)")
            if bool(xp.any(self.broken)):
                message += f"; stopped early on some problems: {self.failure}"
            return self._result(~self.broken, message)
        if bool(xp.all(self.converged)):
            message = (f"{self.label} converged in {self.iterations} iterations "
                       f"(relative residual {rel:.2e})")
        elif bool(xp.any(self.broken)):
            message = self.failure
            if self.b.ndim == 2:
                count = int(xp.sum(xp.astype(self.broken, xp.int64)))
                message += f" [{count} of {self.b.shape[0]} problems broke down]"
        else:
            message = (f"{self.label} did not converge in {self.iterations} iterations: "
                       f"relative residual {rel:.2e} > tol={tol:g} ({advice})")
        return self._result(self.converged, message)

    def _result(self, mask: Array, message: str) -> SolveResult:
        return SolveResult.of(
            self.x, mask, iterations=self.iterations, residual_norm=self.r_norm,
            b_norm=self.b_norm, breakdown=bool(self.xp.any(self.broken)),
            residual_history=self.history, message=message, n_matvec=self.n_matvec,
        )
