"""Dense solve of a small ``(A + δI) x = b``: the matrix from matvecs, then a factorisation.

``Direct(cache=True)`` keeps the matrix and its Cholesky factor across calls
(:class:`~bilevel.linalg.factored.FactorCache`): the outer steps of a problem whose Hessian
does not depend on ``w``, or changes only on its diagonal (ridge penalties), then cost two
matvecs, one refactorisation and two triangular solves instead of ``n`` matvecs and an LU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from bilevel.backend import device
from bilevel.linalg.factored import FactorCache, materialize, solve_dense
from bilevel.linalg.result import SolveResult, max_ratio
from bilevel.linalg.system import LinearSolver, Matvec, check_system, damped_operator
from bilevel.registry import register
from bilevel.validation import boolean, integer, option

__all__ = ["Direct", "direct"]

Array = Any


@register("solver")
@dataclass(frozen=True)
class Direct(LinearSolver):
    """Dense solve: materialize ``A`` from matvecs, then ``x = (A + δI)⁻¹ b``.

    Column ``i`` of ``A`` is ``matvec(eᵢ)`` (the batch of ``eᵢ`` when batched, giving one
    matrix per problem). When ``matvec`` offers a batched product (its ``block``
    attribute, as the operators of :mod:`bilevel.conditions` do for objectives written
    for a batch axis) the matrix comes from a few batched products instead of ``n``
    matvecs (:func:`~bilevel.linalg.factored.materialize`). The system is solved by LU
    (``xp.linalg.solve``); when that fails or gives non-finite values (a singular matrix)
    the minimum-norm least-squares solution ``pinv(A + δI) b`` is used and the message
    says so. ``converged`` means a finite ``x`` with ``‖(A + δI)x − b‖ ≤ √ε·‖b‖`` (``ε``
    the machine epsilon of ``b``). ``x0`` is accepted for the common signature and ignored.

    Parameters
    ----------
    max_n
        Largest ``n`` accepted; larger systems raise ``ValueError``.
    cache
        Keep ``A`` and the Cholesky factor of ``A + δI`` (LU when not positive definite)
        for the next call. Each later call checks the operator along fixed random probes:
        the same matrix (one probe) reuses the factor; a change on the diagonal only (``A +
        diag(d)``: penalties ``e^λ`` of ridge regression, a damping) updates ``A`` and
        refactors without new matvecs; any other change materialises again. The residual
        ``‖(A + δI)x − b‖`` of a cached solve is measured with ``matvec`` itself (one
        product), and a cached solve that fails it is redone from a fresh matrix. One
        cached solver serves one problem at a time (use separate objects for separate
        problems or threads); the cache is not pickled.

    Notes
    -----
    Cost: ``n`` matvecs (or ``⌈n/256⌉`` batched products) and ``O(B·n³)`` flops; with
    ``cache=True``, 2 matvecs for an unchanged matrix and 3 with ``O(n³/3)`` for a new
    factor after a diagonal change, and ``O(n²)`` for the solves. Memory:
    ``O(B·n²)``. A reference and a fast path for small and medium ``n``, not a scalable
    solver.
    """

    name: ClassVar[str] = "direct"

    max_n: int = option(4096, check=integer(minimum=0))
    cache: bool = option(False, check=boolean)
    _memory: FactorCache = field(default_factory=FactorCache, init=False, repr=False,
                                 compare=False)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_memory", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        object.__setattr__(self, "_memory", FactorCache())

    def clear(self) -> None:
        """Forget the cached matrix and factor."""
        self._memory.clear()

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
        if self.cache:
            return self._cached(xp, matvec, b, damping)
        A, count = materialize(xp, matvec, b)
        if damping:
            A = A + damping * xp.eye(n, dtype=b.dtype, device=device(b))
        if not bool(xp.all(xp.isfinite(A))):
            note = "; matvec returned non-finite entries, no solution computed"
            return _result(xp, xp.zeros_like(b), None, b, note, count)
        x, note = solve_dense(xp, A, b)
        r = (A @ x[..., None])[..., 0] - b
        return _result(xp, x, r, b, note, count)

    def _cached(self, xp: Any, matvec: Matvec, b: Array, damping: float,
                retry: bool = True) -> SolveResult:
        """The solve through :class:`FactorCache`; redone once from scratch when it fails."""
        memory = self._memory
        how, count = memory.update(xp, matvec, b)
        if not bool(xp.all(xp.isfinite(memory.A))):
            memory.clear()
            note = "; matvec returned non-finite entries, no solution computed"
            return _result(xp, xp.zeros_like(b), None, b, note, count)
        x, note = memory.solve(xp, b, damping)
        r = damped_operator(matvec, b, damping)(x) - b
        res = _result(xp, x, r, b, f"{note} (cached: {how})", count + 1)
        if not res.converged and retry and how != "materialised":
            memory.clear()
            return self._cached(xp, matvec, b, damping, retry=False)
        return res


def _result(xp: Any, x: Array, r: Array | None, b: Array, note: str,
            count: int) -> SolveResult:
    """The :class:`SolveResult` of a dense solve with residual ``r`` (``None``: no solution)."""
    n = b.shape[-1]
    b_norm = xp.linalg.vector_norm(b, axis=-1)
    r_norm = b_norm if r is None else xp.linalg.vector_norm(r, axis=-1)
    eps = float(xp.finfo(b.dtype).eps)
    mask = xp.all(xp.isfinite(x), axis=-1) & (r_norm <= math.sqrt(eps) * b_norm)
    if r is None:
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
        n_matvec=count,
    )


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
