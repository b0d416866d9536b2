"""Matrix-free linear solvers for ``(A + δI) x = b`` with diagnostics.

Every solver has one signature, ``solve(matvec, b, x0=None, *, damping=0.0, ...)``, and
returns a :class:`SolveResult`. ``matvec`` maps an array of the shape of ``b`` to an array of
the same shape. ``b`` is a vector ``(n,)`` or a batch ``(B, n)`` of independent problems; a
batched ``matvec`` acts on each row with that problem's matrix, and every reduction (dot
products, norms, convergence tests) runs along the last axis (ALGORITHMS.md §2.4).

A problem has converged when ``‖A x − b‖ ≤ max(tol·‖b‖, atol)``. Failures are reported,
never hidden: a CG curvature breakdown (``pᵀAp ≤ 0``), a diverging Neumann series and
non-finite values each stop the affected problem at its last finite iterate, set
``converged=False`` and explain themselves in ``message``.

The arrays' own namespace is used throughout (``bilevel.backend.namespace``), so the
solvers run unchanged on NumPy and CuPy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bilevel.backend import namespace

__all__ = [
    "CG",
    "Direct",
    "FixedPoint",
    "Neumann",
    "SolveResult",
    "cg",
    "direct",
    "fixed_point",
    "neumann",
]

Array = Any
Matvec = Callable[[Array], Array]

_DIVERGENCE_FACTOR = 1e6


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

    @property
    def relative_residual(self) -> float:
        """Largest ``‖A x − b‖ / ‖b‖`` over problems (``0`` when ``b = 0`` was solved)."""
        return _max_ratio(self.residual_norm, self.b_norm)


# ---------------------------------------------------------------- helpers


def _max_ratio(num: Array, den: Array) -> float:
    xp = namespace(num, den)
    safe = xp.where(den > 0, den, xp.ones_like(den))
    ratio = xp.where(den > 0, num / safe, num)
    return float(xp.max(xp.reshape(ratio, (-1,))))


def _check_problem(b: Array, x0: Array | None, damping: float) -> Any:
    xp = namespace(b, x0, names=("b", "x0"))
    if not hasattr(b, "shape") or not hasattr(b, "dtype"):
        raise TypeError(f"b must be an array of shape (n,) or (B, n), got {type(b).__name__}")
    if b.ndim not in (1, 2) or b.shape[-1] == 0:
        raise ValueError(f"b must have shape (n,) or (B, n) with n >= 1, got shape {b.shape}")
    if not xp.isdtype(b.dtype, "real floating"):
        raise TypeError(f"b must have a real floating dtype (float32 or float64), got {b.dtype}")
    if x0 is not None and tuple(x0.shape) != tuple(b.shape):
        raise ValueError(f"x0 must have the shape of b {tuple(b.shape)}, got {tuple(x0.shape)}")
    if not (isinstance(damping, (int, float)) and math.isfinite(damping) and damping >= 0):
        raise ValueError(f"damping must be a finite number >= 0, got {damping!r}")
    return xp


def _check_nonneg(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def _check_iters(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")


def _operator(matvec: Matvec, b: Array, damping: float) -> Callable[[Array], Array]:
    """``v ↦ (A + δI) v`` with a shape check on ``matvec``'s output."""
    if not callable(matvec):
        raise TypeError(f"matvec must be callable (v -> A v), got {type(matvec).__name__}")
    shape = tuple(b.shape)

    def apply(v: Array) -> Array:
        out = matvec(v)
        if tuple(getattr(out, "shape", ())) != shape:
            raise ValueError(
                f"matvec must return an array of the shape of b {shape}, "
                f"got {tuple(getattr(out, 'shape', ()))}"
            )
        return out + damping * v if damping else out

    return apply


def _dot(xp: Any, u: Array, v: Array) -> Array:
    """Per-problem inner product along the last axis: shape ``()`` or ``(B,)``."""
    return xp.sum(u * v, axis=-1)


def _col(a: Array) -> Array:
    """Per-problem scalar broadcast against vectors: ``()`` stays, ``(B,)`` -> ``(B, 1)``."""
    return a[..., None] if a.ndim else a


def _any(xp: Any, mask: Array) -> bool:
    return bool(xp.any(mask))


def _mask_out(mask: Array, batched: bool) -> Array | None:
    return mask if batched else None


def _trivial(xp: Any, b: Array, b_norm: Array, name: str) -> SolveResult:
    """``b = 0`` for every problem: ``x = 0`` solves it exactly."""
    batched = b.ndim == 2
    return SolveResult(
        x=xp.zeros_like(b),
        converged=True,
        iterations=0,
        residual_norm=xp.zeros_like(b_norm),
        b_norm=b_norm,
        converged_mask=_mask_out(xp.ones(b_norm.shape, dtype=xp.bool), batched),
        residual_history=[0.0],
        message=f"{name}: b = 0, returned x = 0 (exact)",
        n_matvec=0,
    )


def _start(xp: Any, op: Callable, b: Array, x0: Array | None) -> tuple[Array, Array, int]:
    """Initial iterate and residual ``r = b − (A + δI) x0``; matvecs used."""
    if x0 is None:
        return xp.zeros_like(b), b, 0
    b_norm = xp.linalg.vector_norm(b, axis=-1)
    x = xp.where(_col(b_norm > 0), xp.asarray(x0, dtype=b.dtype), xp.zeros_like(b))
    return x, b - op(x), 1


# ---------------------------------------------------------------- CG


def cg(
    matvec: Matvec,
    b: Array,
    x0: Array | None = None,
    *,
    tol: float = 1e-10,
    atol: float = 0.0,
    maxiter: int | None = None,
    damping: float = 0.0,
) -> SolveResult:
    """Conjugate gradients for a symmetric positive definite ``(A + δI) x = b``.

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

    Parameters
    ----------
    matvec
        ``v ↦ A v`` on arrays of the shape of ``b`` (per problem when batched).
    b
        Right-hand side, ``(n,)`` or ``(B, n)``.
    x0
        Initial guess (warm start); zero by default.
    tol, atol
        Relative and absolute residual tolerances.
    maxiter
        Iteration cap; ``10·n`` by default. In exact arithmetic CG solves an SPD system in
        ``n`` iterations.
    damping
        ``δ ≥ 0``: solve ``(A + δI) x = b``.

    Returns
    -------
    SolveResult
        ``residual_norm`` is the recursively updated residual ``‖rⱼ‖``.

    Notes
    -----
    Cost: one matvec per iteration (plus one when ``x0`` is given). Memory: four work
    arrays of the shape of ``b`` (``x, r, p, Ap``) besides what ``matvec`` holds.
    """
    xp = _check_problem(b, x0, damping)
    _check_nonneg("tol", tol)
    _check_nonneg("atol", atol)
    n = b.shape[-1]
    maxiter = 10 * n if maxiter is None else maxiter
    _check_iters("maxiter", maxiter)
    op = _operator(matvec, b, damping)
    batched = b.ndim == 2
    b_norm = xp.linalg.vector_norm(b, axis=-1)
    if not _any(xp, b_norm > 0):
        return _trivial(xp, b, b_norm, "CG")

    x, r, n_matvec = _start(xp, op, b, x0)
    threshold = xp.maximum(tol * b_norm, xp.full_like(b_norm, atol))
    rr = _dot(xp, r, r)
    r_norm = xp.sqrt(rr)
    active = r_norm > threshold
    converged = ~active
    failure = ""
    broken = ~xp.isfinite(rr)
    active = active & ~broken
    if _any(xp, broken):
        failure = "CG breakdown: non-finite initial residual (check b, x0 and matvec)"
    p = r
    history = [_max_ratio(r_norm, b_norm)]
    iterations = 0
    while iterations < maxiter and _any(xp, active):
        Ap = op(p)
        n_matvec += 1
        iterations += 1
        pAp = _dot(xp, p, Ap)
        bad = active & ~(pAp > 0)  # also catches NaN
        if _any(xp, bad) and not failure:
            zero = xp.zeros_like(pAp)
            pp = xp.where(bad, _dot(xp, p, p), xp.ones_like(pAp))
            worst = float(xp.min(xp.reshape(xp.where(bad, pAp, zero), (-1,))))
            rayleigh = float(xp.min(xp.reshape(xp.where(bad, pAp / pp, zero), (-1,))))
            if math.isfinite(worst):
                gap = max(-rayleigh, 0.0)
                failure = (
                    f"CG breakdown: pᵀAp={worst:.3g} <= 0 at iteration {iterations} "
                    f"(matrix not positive definite: λ_min(A + δI) <= pᵀAp/pᵀp={rayleigh:.3g}, "
                    f"so damping must exceed {damping + gap:.3g}); "
                    f"try damping={damping + 2 * gap + 1e-8:.3g} or Neumann/FixedPoint"
                )
            else:
                failure = (
                    f"CG breakdown: non-finite pᵀAp at iteration {iterations} "
                    "(matvec returned inf/NaN)"
                )
        broken = broken | bad
        active = active & ~bad
        safe_pAp = xp.where(active, pAp, xp.ones_like(pAp))
        alpha = xp.where(active, rr / safe_pAp, xp.zeros_like(rr))
        x_new = x + _col(alpha) * p
        r_new = r - _col(alpha) * Ap
        rr_new = _dot(xp, r_new, r_new)
        finite = xp.isfinite(rr_new) & xp.all(xp.isfinite(x_new), axis=-1)
        nonfinite = active & ~finite
        if _any(xp, nonfinite):
            broken = broken | nonfinite
            active = active & finite
            if not failure:
                failure = f"CG breakdown: non-finite iterate at iteration {iterations}"
        keep = _col(active)
        x = xp.where(keep, x_new, x)
        r = xp.where(keep, r_new, r)
        safe_rr = xp.where(rr > 0, rr, xp.ones_like(rr))
        beta = xp.where(active, rr_new / safe_rr, xp.zeros_like(rr))
        p = xp.where(keep, r_new + _col(beta) * p, p)
        rr = xp.where(active, rr_new, rr)
        r_norm = xp.sqrt(rr)
        done = active & (r_norm <= threshold)
        converged = converged | done
        active = active & ~done
        history.append(_max_ratio(r_norm, b_norm))

    all_conv = bool(xp.all(converged))
    any_broken = _any(xp, broken)
    rel = _max_ratio(r_norm, b_norm)
    if all_conv:
        message = f"CG converged in {iterations} iterations (relative residual {rel:.2e})"
    elif any_broken:
        message = failure
        if batched:
            count = int(xp.sum(xp.astype(broken, xp.int64)))
            message += f" [{count} of {b.shape[0]} problems broke down]"
    else:
        message = (
            f"CG did not converge in {iterations} iterations: relative residual {rel:.2e} > "
            f"tol={tol:g} (raise maxiter, add damping, or precondition)"
        )
    return SolveResult(
        x=x,
        converged=all_conv,
        iterations=iterations,
        residual_norm=r_norm,
        b_norm=b_norm,
        breakdown=any_broken,
        converged_mask=_mask_out(converged, batched),
        residual_history=history,
        message=message,
        n_matvec=n_matvec,
    )


# ---------------------------------------------------------------- Neumann / fixed point


def _richardson(
    name: str,
    matvec: Matvec,
    b: Array,
    x0: Array | None,
    alpha: float,
    maxiter: int,
    tol: float,
    damping: float,
    fixed_budget: bool,
) -> SolveResult:
    """Shared loop of :func:`neumann` and :func:`fixed_point`: ``v ← v − α((A + δI)v − b)``."""
    xp = _check_problem(b, x0, damping)
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
    _check_iters("maxiter", maxiter)
    _check_nonneg("tol", tol)
    op = _operator(matvec, b, damping)
    batched = b.ndim == 2
    b_norm = xp.linalg.vector_norm(b, axis=-1)
    if not _any(xp, b_norm > 0):
        return _trivial(xp, b, b_norm, name)

    if x0 is None:
        v = xp.zeros_like(b)
    else:  # a problem with b = 0 has the solution 0: start there
        v = xp.where(_col(b_norm > 0), xp.asarray(x0, dtype=b.dtype), xp.zeros_like(b))
    threshold = tol * b_norm
    early_stop = tol > 0
    active = xp.ones(b_norm.shape, dtype=xp.bool)
    diverged = xp.zeros(b_norm.shape, dtype=xp.bool)
    converged = xp.zeros(b_norm.shape, dtype=xp.bool)
    r_norm = b_norm
    limit = None
    history: list[float] = []
    n_matvec = 0
    iterations = 0
    v_prev = v
    while True:
        if x0 is None and iterations == 0:
            r = -b  # (A + δI)·0 − b without a matvec
        else:
            r = op(v) - b
            n_matvec += 1
        new_norm = xp.linalg.vector_norm(r, axis=-1)
        if limit is None:
            limit = _DIVERGENCE_FACTOR * xp.maximum(b_norm, new_norm)
        blown = active & ~(new_norm <= limit)  # also catches NaN/inf
        if _any(xp, blown):
            diverged = diverged | blown
            active = active & ~blown
            v = xp.where(_col(blown), v_prev, v)  # keep the last finite iterate
        r_norm = xp.where(blown, r_norm, new_norm)
        history.append(_max_ratio(r_norm, b_norm))
        if early_stop:
            done = active & (r_norm <= threshold)
            converged = converged | done
            active = active & ~done
        if iterations >= maxiter or not _any(xp, active):
            break
        v_prev = v
        v = xp.where(_col(active), v - alpha * r, v)
        iterations += 1

    any_div = _any(xp, diverged)
    if fixed_budget and not early_stop:
        converged = ~diverged
    all_conv = bool(xp.all(converged))
    rel = _max_ratio(r_norm, b_norm)
    if any_div:
        message = (
            f"{name} diverged after {iterations} iterations (residual beyond "
            f"{_DIVERGENCE_FACTOR:.0e}·‖b‖ or non-finite): alpha*lambda_max(A) must be < 2 "
            f"and A positive definite; alpha={alpha:g}, damping={damping:g}"
        )
    elif fixed_budget and not early_stop:
        message = (
            f"{name}: {iterations} terms summed (fixed budget, tol=0), "
            f"relative residual {rel:.2e}"
        )
    elif all_conv:
        message = f"{name} converged in {iterations} iterations (relative residual {rel:.2e})"
    else:
        message = (
            f"{name} did not converge in {iterations} iterations: relative residual {rel:.2e} > "
            f"tol={tol:g} (contraction factor ‖I − alpha·A‖ too close to 1: raise maxiter "
            "or alpha, or use CG)"
        )
    return SolveResult(
        x=v,
        converged=all_conv,
        iterations=iterations,
        residual_norm=r_norm,
        b_norm=b_norm,
        breakdown=False,
        converged_mask=_mask_out(converged, batched),
        residual_history=history,
        message=message,
        n_matvec=n_matvec,
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
    """Fixed-point (Richardson) iteration ``vⱼ₊₁ = vⱼ − α((A + δI)vⱼ − b)``.

    The map is a contraction, and the iteration converges at rate ``q = ‖I − α(A + δI)‖``,
    when ``A + δI ≻ 0`` and ``α·λ_max(A + δI) < 2`` (ALGORITHMS.md §2.4, AID-FP). Each
    problem stops once ``‖(A + δI)vⱼ − b‖ ≤ tol·‖b‖`` (``tol=0`` disables the test). A
    residual beyond ``1e6·max(‖b‖, ‖r₀‖)`` or a non-finite one is reported as divergence:
    that problem stops at its last finite iterate with ``converged=False``.

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

    Notes
    -----
    Cost: ``iterations + 1`` matvecs from a given ``x0``, ``iterations`` from zero (the
    residual of the final iterate is always measured). Memory: three arrays of the
    shape of ``b``.
    """
    return _richardson("fixed point", matvec, b, x0, alpha, maxiter, tol, damping, False)


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
    """Truncated Neumann series ``x_J = α Σ_{j<J} (I − α(A + δI))ʲ b``.

    Computed as ``J = maxiter`` fixed-point updates ``vⱼ₊₁ = vⱼ − α((A + δI)vⱼ − b)`` from
    ``v₀ = x0`` (zero by default), which gives exactly the partial sums above when
    ``x0 = 0``: ``neumann(J)`` equals ``fixed_point(J)`` from zero (ALGORITHMS.md §2.4;
    Lorraine et al. 2020). It is the fixed-point loop without early stopping by default
    (``tol=0``): a fixed budget of terms, after which ``converged`` means "no divergence"
    and ``residual_norm``/``b_norm`` tell the accuracy. With ``tol > 0`` it stops early and
    ``converged`` is the residual test. Divergence (needs ``α·λ_max(A + δI) < 2`` and
    ``A + δI ≻ 0``) is detected as in :func:`fixed_point`.

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

    Notes
    -----
    Cost: ``J`` matvecs from zero (``J + 1`` from a given ``x0``). Memory: three arrays of
    the shape of ``b``.
    """
    return _richardson("Neumann", matvec, b, x0, alpha, maxiter, tol, damping, True)


# ---------------------------------------------------------------- direct


def direct(
    matvec: Matvec,
    b: Array,
    x0: Array | None = None,
    *,
    damping: float = 0.0,
    max_n: int = 4096,
) -> SolveResult:
    """Dense solve: materialize ``A`` from ``n`` matvecs, then ``x = (A + δI)⁻¹ b``.

    Column ``i`` of ``A`` is ``matvec(eᵢ)`` (the batch of ``eᵢ`` when batched, giving one
    matrix per problem). The system is solved by LU (``xp.linalg.solve``); when that fails
    or gives non-finite values (a singular matrix) the minimum-norm least-squares
    solution ``pinv(A + δI) b`` is used and the message says so. ``converged`` means a
    finite ``x`` with ``‖(A + δI)x − b‖ ≤ √ε·‖b‖`` (``ε`` the machine epsilon of ``b``).
    ``x0`` is accepted for the common signature and ignored.

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

    Notes
    -----
    Cost: ``n`` matvecs and ``O(B·n³)`` flops. Memory: ``O(B·n²)``. A reference and a
    fallback for small systems, not a scalable solver.
    """
    xp = _check_problem(b, x0, damping)
    n = b.shape[-1]
    _check_iters("max_n", max_n)
    if n > max_n:
        raise ValueError(
            f"direct solve refused: n={n} > max_n={max_n} (it needs n matvecs and "
            f"O(n^2) memory); use CG, or raise max_n"
        )
    op = _operator(matvec, b, damping)
    batched = b.ndim == 2
    b_norm = xp.linalg.vector_norm(b, axis=-1)
    eye = xp.eye(n, dtype=b.dtype)
    columns = []
    for i in range(n):
        e = eye[i, :]
        if batched:
            e = xp.broadcast_to(e, b.shape)
        columns.append(op(e))
    A = xp.stack(columns, axis=-1)  # A[..., :, i] = (A + δI) eᵢ
    note = ""
    finite_A = bool(xp.all(xp.isfinite(A)))
    if not finite_A:
        x = xp.zeros_like(b)
        note = "; matvec returned non-finite entries, no solution computed"
    else:
        try:
            x = xp.linalg.solve(A, b[..., None])[..., 0]
            ok = bool(xp.all(xp.isfinite(x)))
        except Exception:  # LinAlgError for an exactly singular matrix
            ok = False
        if not ok:
            x = (xp.linalg.pinv(A) @ b[..., None])[..., 0]
            note = "; matrix singular, used the minimum-norm least-squares solution pinv(A) b"
    r_norm = xp.linalg.vector_norm((A @ x[..., None])[..., 0] - b, axis=-1)
    eps = float(xp.finfo(b.dtype).eps)
    finite_x = xp.all(xp.isfinite(x), axis=-1)
    mask = finite_x & (r_norm <= math.sqrt(eps) * b_norm)
    if not finite_A:
        mask = xp.zeros_like(mask)
    all_conv = bool(xp.all(mask))
    rel = _max_ratio(r_norm, b_norm)
    status = "solved" if all_conv else "did not solve the system"
    message = f"direct {status}: n={n}, relative residual {rel:.2e}{note}"
    return SolveResult(
        x=x,
        converged=all_conv,
        iterations=1,
        residual_norm=r_norm,
        b_norm=b_norm,
        breakdown=False,
        converged_mask=_mask_out(mask, batched),
        residual_history=[rel],
        message=message,
        n_matvec=n,
    )


# ---------------------------------------------------------------- strategy objects


class CG:
    """Conjugate gradients as a solver object: ``CG(tol)(matvec, b, x0, damping)``.

    See :func:`cg`. Needs ``A`` symmetric positive definite (after damping); a breakdown
    is reported in the result.
    """

    name = "cg"

    def __init__(self, tol: float = 1e-10, atol: float = 0.0, maxiter: int | None = None):
        _check_nonneg("tol", tol)
        _check_nonneg("atol", atol)
        if maxiter is not None:
            _check_iters("maxiter", maxiter)
        self.tol, self.atol, self.maxiter = tol, atol, maxiter

    def __call__(
        self, matvec: Matvec, b: Array, x0: Array | None = None, damping: float = 0.0
    ) -> SolveResult:
        return cg(
            matvec, b, x0, tol=self.tol, atol=self.atol, maxiter=self.maxiter, damping=damping
        )

    def __repr__(self) -> str:
        return f"CG(tol={self.tol!r}, atol={self.atol!r}, maxiter={self.maxiter!r})"


class Neumann:
    """Truncated Neumann series as a solver object: ``Neumann(alpha, maxiter)``.

    See :func:`neumann`: ``maxiter`` terms of ``α Σ (I − αA)ʲ b``.
    """

    name = "neumann"

    def __init__(self, alpha: float = 1.0, maxiter: int = 100):
        if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
        _check_iters("maxiter", maxiter)
        self.alpha, self.maxiter = alpha, maxiter

    def __call__(
        self, matvec: Matvec, b: Array, x0: Array | None = None, damping: float = 0.0
    ) -> SolveResult:
        return neumann(matvec, b, x0, alpha=self.alpha, maxiter=self.maxiter, damping=damping)

    def __repr__(self) -> str:
        return f"Neumann(alpha={self.alpha!r}, maxiter={self.maxiter!r})"


class FixedPoint:
    """Fixed-point iteration as a solver object: ``FixedPoint(alpha, maxiter, tol)``.

    See :func:`fixed_point`.
    """

    name = "fixed_point"

    def __init__(self, alpha: float = 1.0, maxiter: int = 100, tol: float = 1e-10):
        if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
        _check_iters("maxiter", maxiter)
        _check_nonneg("tol", tol)
        self.alpha, self.maxiter, self.tol = alpha, maxiter, tol

    def __call__(
        self, matvec: Matvec, b: Array, x0: Array | None = None, damping: float = 0.0
    ) -> SolveResult:
        return fixed_point(
            matvec, b, x0, alpha=self.alpha, maxiter=self.maxiter, tol=self.tol, damping=damping
        )

    def __repr__(self) -> str:
        return f"FixedPoint(alpha={self.alpha!r}, maxiter={self.maxiter!r}, tol={self.tol!r})"


class Direct:
    """Dense solve as a solver object: ``Direct(max_n)``. See :func:`direct`."""

    name = "direct"

    def __init__(self, max_n: int = 4096):
        _check_iters("max_n", max_n)
        self.max_n = max_n

    def __call__(
        self, matvec: Matvec, b: Array, x0: Array | None = None, damping: float = 0.0
    ) -> SolveResult:
        return direct(matvec, b, x0, damping=damping, max_n=self.max_n)

    def __repr__(self) -> str:
        return f"Direct(max_n={self.max_n!r})"
