"""Dense matrices from matvecs, and a factorisation kept across solves (``Direct(cache=True)``).

:func:`materialize` builds ``A`` (``A[..., :, i] = A eᵢ``) with one batched product per
chunk of basis vectors when the operator offers one (a ``block`` attribute, see
:func:`materialize`), else column by column. :class:`FactorCache` keeps the last matrix and
its Cholesky factor; on the next solve one or two random probes tell whether the operator
is the same matrix (one probe: reuse the factor), the same up to a diagonal change
(``A + diag(d)``: update the matrix, refactor, no new matvecs, the case of ridge penalties
that change with λ), or a new one (materialise again). The true residual of every cached
solve is measured with the operator itself, so a stale cache cannot pass unnoticed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import array_api_compat
import numpy as np

from bilevel.backend import device, name_of
from bilevel.linalg.system import Matvec, damped_operator

try:  # optional: triangular solves on the host (NumPy has none)
    import scipy.linalg as _host_linalg
except ImportError:  # pragma: no cover - SciPy is installed with the test extras
    _host_linalg = None

__all__ = ["FactorCache", "materialize", "solve_dense"]

Array = Any

#: Rows of the identity sent through ``matvec.block`` at once.
CHUNK = 256


def materialize(xp: Any, matvec: Matvec, b: Array) -> tuple[Array, int]:
    """The matrix ``M[..., :, i] = matvec(eᵢ)`` and the number of products it took (undamped).

    When ``matvec`` has an attribute ``block`` (a function mapping a stack of vectors
    ``(k, n)`` to the stack of their products, e.g. the problem's batch convention) and
    ``b`` is a single problem, ``M`` comes from ``⌈n/256⌉`` such calls, checked against one
    plain product along a random probe; when ``block`` fails or disagrees, ``n`` plain
    products are used.
    """
    block = getattr(matvec, "block", None)
    matvec = damped_operator(matvec, b, 0.0)  # checks the shape of every product
    if block is not None and b.ndim == 1:
        M = _by_blocks(xp, block, matvec, b)
        if M is not None:
            return M, -(-b.shape[-1] // CHUNK) + 1
    n = b.shape[-1]
    eye = xp.eye(n, dtype=b.dtype, device=device(b))
    columns = []
    for i in range(n):
        e = eye[i, :]
        if b.ndim == 2:
            e = xp.broadcast_to(e, b.shape)
        columns.append(matvec(e))
    return xp.stack(columns, axis=-1), n


def _by_blocks(xp: Any, block: Callable, matvec: Matvec, b: Array) -> Array | None:
    """``M`` from batched products of identity rows, or ``None`` when that is not possible."""
    n = b.shape[-1]
    eye = xp.eye(n, dtype=b.dtype, device=device(b))
    try:  # an objective without the batch convention fails in its own way: fall back
        rows = [block(eye[i:i + CHUNK]) for i in range(0, n, CHUNK)]
        M = xp.concat(rows, axis=0).T
    except Exception:
        return None
    probe = _probes(xp, b, 1)[0]
    if tuple(M.shape) != (n, n) or not _close(xp, M @ probe, matvec(probe), n):
        return None
    return M


def _probes(xp: Any, b: Array, count: int) -> list[Array]:
    """Fixed random vectors of the shape of ``b``, entries in [1, 2] (never near zero)."""
    rng = np.random.default_rng(12345)
    return [xp.asarray(rng.uniform(1.0, 2.0, tuple(b.shape)), dtype=b.dtype)
            for _ in range(count)]


def _tolerance(xp: Any, n: int, *vectors: Array) -> Array:
    """Rounding bound ``100·n·ε·Σ‖vᵢ‖∞`` per problem for differences of products."""
    eps = float(xp.finfo(vectors[0].dtype).eps)
    return 100 * n * eps * sum(xp.max(xp.abs(v), axis=-1) for v in vectors)


def _close(xp: Any, a: Array, c: Array, n: int) -> bool:
    """``a`` and ``c`` agree within rounding (every problem)."""
    return bool(xp.all(xp.max(xp.abs(a - c), axis=-1) <= _tolerance(xp, n, a, c)))


def _matmul_vec(A: Array, v: Array) -> Array:
    return (A @ v[..., None])[..., 0]


def solve_dense(xp: Any, A: Array, b: Array) -> tuple[Array, str]:
    """``A⁻¹ b`` by LU, or ``pinv(A) b`` for a singular ``A``; and a note saying which."""
    try:
        x = xp.linalg.solve(A, b[..., None])[..., 0]
        if bool(xp.all(xp.isfinite(x))):
            return x, ""
    except Exception:  # LinAlgError for an exactly singular matrix
        pass
    x = (xp.linalg.pinv(A) @ b[..., None])[..., 0]
    return x, "; matrix singular, used the minimum-norm least-squares solution pinv(A) b"


class FactorCache:
    """The last materialised matrix ``A`` (undamped), its damped factor, and the probes.

    Not thread-safe: one cache belongs to one solver object used by one caller at a time.
    """

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        """Forget everything (the next solve materialises)."""
        self.key, self.A, self.damping, self.factor, self.probes = None, None, None, None, None

    def update(self, xp: Any, matvec: Matvec, b: Array) -> tuple[str, int]:
        """Bring ``A`` up to date with ``matvec``; returns what was done and the matvecs."""
        key = (name_of(b), tuple(b.shape), str(b.dtype))
        if key != self.key or self.A is None:
            self.clear()
            self.key, self.probes = key, _probes(xp, b, 2)
            self.A, count = materialize(xp, matvec, b)
            return "materialised", count
        matvec_checked = damped_operator(matvec, b, 0.0)
        r1, r2 = self.probes
        n = b.shape[-1]
        a1 = matvec_checked(r1)
        c1 = a1 - _matmul_vec(self.A, r1)
        if bool(xp.all(xp.max(xp.abs(c1), axis=-1) <= _tolerance(xp, n, a1))):
            return "reused", 1  # a change E with E r1 = 0 has probability 0
        a2 = matvec_checked(r2)
        c2 = a2 - _matmul_vec(self.A, r2)
        d = c1 / r1
        if bool(xp.all(xp.max(xp.abs(c2 - d * r2), axis=-1) <= _tolerance(xp, n, a1, a2))):
            self.A = self.A + d[..., None] * xp.eye(n, dtype=b.dtype, device=device(b))
            self.factor = None
            return "diagonal update", 2
        self.A, count = materialize(xp, matvec, b)
        self.factor = None
        return "materialised", count + 2

    def solve(self, xp: Any, b: Array, damping: float) -> tuple[Array, str]:
        """``(A + δI)⁻¹ b`` with the cached factor (computed when missing or δ changed)."""
        if self.factor is None or damping != self.damping:
            self.factor = _factorize(xp, self.A, damping)
            self.damping = damping
        kind, F = self.factor
        if kind == "cholesky":
            y = _triangular(xp, F, b, trans=False)
            return _triangular(xp, F, y, trans=True), ""
        return solve_dense(xp, F, b)


def _factorize(xp: Any, A: Array, damping: float) -> tuple[str, Array]:
    """``("cholesky", L)`` with ``A + δI = L Lᵀ`` when symmetric positive definite, else
    ``("lu", A + δI)`` (solved by LU at each call).

    Cost ``O(n³/3)`` per problem for Cholesky.
    """
    M = A + damping * xp.eye(A.shape[-1], dtype=A.dtype, device=device(A)) if damping else A
    if not _symmetric(xp, M):
        return "lu", M
    try:
        L = xp.linalg.cholesky(M)
        if bool(xp.all(xp.isfinite(L))):
            return "cholesky", L
    except Exception:  # LinAlgError: not positive definite
        pass
    return "lu", M


def _symmetric(xp: Any, M: Array) -> bool:
    """``M = Mᵀ`` within ``100·n·ε·max|M|`` (Cholesky reads one triangle only)."""
    eps = float(xp.finfo(M.dtype).eps)
    gap = xp.max(xp.abs(M - xp.matrix_transpose(M)))
    return bool(gap <= 100 * M.shape[-1] * eps * xp.max(xp.abs(M)))


def _triangular(xp: Any, L: Array, b: Array, trans: bool) -> Array:
    """``L⁻¹ b`` (``trans=False``) or ``L⁻ᵀ b`` for a lower-triangular ``L``: ``O(n²)``."""
    solve = _triangular_solver(xp)
    if solve is None:
        M = xp.matrix_transpose(L) if trans else L
        return xp.linalg.solve(M, b[..., None])[..., 0]
    if L.ndim == 2:
        return solve(L, b, lower=True, trans=1 if trans else 0)
    return xp.stack([solve(L[i, ...], b[i, ...], lower=True, trans=1 if trans else 0)
                     for i in range(L.shape[0])])


def _triangular_solver(xp: Any) -> Callable | None:
    """SciPy's (NumPy) or CuPy's ``solve_triangular``; ``None`` for other namespaces or
    without SciPy (then a general solve is used)."""
    if array_api_compat.is_cupy_namespace(xp):
        import cupyx.scipy.linalg  # optional GPU dependency, imported where it is used

        return cupyx.scipy.linalg.solve_triangular
    if array_api_compat.is_numpy_namespace(xp) and _host_linalg is not None:
        return _host_linalg.solve_triangular
    return None
