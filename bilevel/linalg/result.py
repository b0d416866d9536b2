"""The result of a linear solve, :class:`SolveResult`, and its per-problem summaries."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bilevel.backend import namespace

__all__ = ["SolveResult", "max_ratio"]

Array = Any


def max_ratio(num: Array, den: Array) -> float:
    """Largest ``num / den`` over problems, with ``num`` itself where ``den = 0``.

    Reads one scalar from the device.
    """
    xp = namespace(num, den)
    safe = xp.where(den > 0, den, xp.ones_like(den))
    ratio = xp.where(den > 0, num / safe, num)
    return float(xp.max(xp.reshape(ratio, (-1,))))


@dataclass
class SolveResult:
    """Solution of ``(A + δI) x = b`` and what it took to get it.

    Attributes
    ----------
    x
        Solution, shape of ``b``: ``(n,)`` or ``(B, n)``.
    converged
        All problems met ``‖A x − b‖ ≤ max(tol·‖b‖, atol)`` (for a fixed-budget Neumann
        series: all terms were summed without divergence).
    iterations
        Iterations run (the maximum over problems).
    residual_norm
        Final ``‖(A + δI) x − b‖`` per problem, shape ``()`` or ``(B,)``.
    b_norm
        ``‖b‖`` per problem.
    breakdown
        CG only: some ``pᵀAp ≤ 0`` or a non-finite value was met. ``False`` for the others.
    converged_mask
        Per-problem flags for batched ``b``; ``None`` for a single problem.
    residual_history
        Largest relative residual ``‖r‖/‖b‖`` over problems after each iteration
        (the first entry is the start).
    message
        Human-readable summary.
    n_matvec
        Products with ``A`` used.
    """

    x: Array
    converged: bool
    iterations: int
    residual_norm: Array
    b_norm: Array
    breakdown: bool = False
    converged_mask: Array | None = None
    residual_history: list[float] = field(default_factory=list)
    message: str = ""
    n_matvec: int = 0

    @classmethod
    def of(cls, x: Array, mask: Array, **diagnostics: Any) -> SolveResult:
        """The result for per-problem convergence flags ``mask`` (shape ``()`` or ``(B,)``).

        ``converged`` is ``all(mask)``; ``converged_mask`` is ``mask`` for a batch ``x`` of
        shape ``(B, n)`` and ``None`` for a single problem. ``diagnostics`` fill the other
        fields.
        """
        xp = namespace(mask)
        return cls(
            x=x,
            converged=bool(xp.all(mask)),
            converged_mask=mask if x.ndim == 2 else None,
            **diagnostics,
        )

    @property
    def relative_residual(self) -> float:
        """Largest ``‖A x − b‖ / ‖b‖`` over problems (``0`` when ``b = 0`` was solved)."""
        return max_ratio(self.residual_norm, self.b_norm)
