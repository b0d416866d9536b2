"""Dense solve of a small ``(A + δI) x = b``: the matrix from ``n`` matvecs, then LU."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from bilevel.linalg.result import SolveResult, max_ratio
from bilevel.linalg.system import LinearSolver, Matvec, check_system, damped_operator
from bilevel.registry import register
from bilevel.validation import integer, option

__all__ = ["Direct", "direct"]

Array = Any


@register("solver")
@dataclass(frozen=True)
class Direct(LinearSolver):
    """Dense solve: materialize ``A`` from ``n`` matvecs, then ``x = (A + δI)⁻¹ b``.

    Column ``i`` of ``A`` is ``matvec(eᵢ)`` (the batch of ``eᵢ`` when batched, giving one
    matrix per problem). The system is solved by LU (``xp.linalg.solve``); when that fails
    or gives non-finite values (a singular matrix) the minimum-norm least-squares
    solution ``pinv(A + δI) b`` is used and the message says so. ``converged`` means a
    finite ``x`` with ``‖(A + δI)x − b‖ ≤ √ε·‖b‖`` (``ε`` the machine epsilon of ``b``).
    ``x0`` is accepted for the common signature and ignored.

    Parameters
    ----------
    max_n
        Largest ``n`` accepted; larger systems raise ``ValueError``.

    Notes
    -----
    Cost: ``n`` matvecs and ``O(B·n³)`` flops. Memory: ``O(B·n²)``. A reference and a
    fallback for small systems, not a scalable solver.
    """

    name: ClassVar[str] = "direct"

    max_n: int = option(4096, check=integer(minimum=0))

    def __call__(
        self, matvec: Matvec, b: Array, x0: Array | None = None, damping: float = 0.0
    ) -> SolveResult:
        """Solve ``(A + δI) x = b`` with ``A v = matvec(v)``, ``δ = damping``; ``x0`` ignored."""
        xp, damping = check_system(b, x0, damping)
        n = b.shape[-1]
        if n > self.max_n:
            raise ValueError(
                f"direct solve refused: n={n} > max_n={self.max_n} (it needs n matvecs and "
                f"O(n^2) memory); use CG, or raise max_n"
            )
        A = _materialize(xp, damped_operator(matvec, b, damping), b)
        finite_A = bool(xp.all(xp.isfinite(A)))
        if finite_A:
            x, note = _solve_dense(xp, A, b)
        else:
            x, note = xp.zeros_like(b), "; matvec returned non-finite entries, no solution computed"
        b_norm = xp.linalg.vector_norm(b, axis=-1)
        r_norm = xp.linalg.vector_norm((A @ x[..., None])[..., 0] - b, axis=-1)
        eps = float(xp.finfo(b.dtype).eps)
        mask = xp.all(xp.isfinite(x), axis=-1) & (r_norm <= math.sqrt(eps) * b_norm)
        if not finite_A:
            mask = xp.zeros_like(mask)
        rel = max_ratio(r_norm, b_norm)
        status = "solved" if bool(xp.all(mask)) else "did not solve the system"
        return SolveResult.of(
            x,
            mask,
            iterations=1,
            residual_norm=r_norm,
            b_norm=b_norm,
            residual_history=[rel],
            message=f"direct {status}: n={n}, relative residual {rel:.2e}{note}",
            n_matvec=n,
        )


def _materialize(xp: Any, op: Matvec, b: Array) -> Array:
    """The matrix ``M[..., :, i] = op(eᵢ)`` (one per problem when ``b`` is a batch)."""
    n = b.shape[-1]
    eye = xp.eye(n, dtype=b.dtype)
    columns = []
    for i in range(n):
        e = eye[i, :]
        if b.ndim == 2:
            e = xp.broadcast_to(e, b.shape)
        columns.append(op(e))
    return xp.stack(columns, axis=-1)


def _solve_dense(xp: Any, A: Array, b: Array) -> tuple[Array, str]:
    """``A⁻¹ b`` by LU, or ``pinv(A) b`` for a singular ``A``; and a note saying which."""
    try:
        x = xp.linalg.solve(A, b[..., None])[..., 0]
        if bool(xp.all(xp.isfinite(x))):
            return x, ""
    except Exception:  # LinAlgError for an exactly singular matrix
        pass
    x = (xp.linalg.pinv(A) @ b[..., None])[..., 0]
    return x, "; matrix singular, used the minimum-norm least-squares solution pinv(A) b"


def direct(
    matvec: Matvec,
    b: Array,
    x0: Array | None = None,
    *,
    damping: float = 0.0,
    max_n: int = 4096,
) -> SolveResult:
    """Dense solve: ``Direct(max_n)(matvec, b, x0, damping)``; see :class:`Direct`.

    Parameters
    ----------
    matvec
        ``v ↦ A v`` on arrays of the shape of ``b``.
    b
        Right-hand side, ``(n,)`` or ``(B, n)``.
    x0
        Ignored.
    damping
        ``δ ≥ 0``.
    max_n
        Largest ``n`` accepted; larger systems raise ``ValueError``.

    Returns
    -------
    SolveResult
    """
    return Direct(max_n=max_n)(matvec, b, x0, damping)
