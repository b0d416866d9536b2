"""Per-problem inner products and the Lanczos estimate of the largest Hessian eigenvalue.

Arrays are a flat vector ``(n,)`` or a batch ``(B, n)`` of independent problems; every
reduction here runs over the non-batch axes, so a batch gets one number per problem.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .backend import namespace, to_numpy

__all__ = [
    "dot_per_problem",
    "lanczos_max_eigenvalue",
    "largest",
    "norm_per_problem",
    "per_problem",
    "to_host",
]


def dot_per_problem(x: Any, y: Any) -> Any:
    """⟨x, y⟩ over all axes, or per problem (over the non-batch axes) for ``(B, ...)``."""
    if type(x) is np.ndarray and type(y) is np.ndarray:  # fast path, once per step
        if x.ndim <= 1:
            return np.vdot(x, y)
        return np.einsum("ij,ij->i", x.reshape(len(x), -1), y.reshape(len(y), -1))
    xp = namespace(x, y)
    if len(x.shape) <= 1:
        return xp.sum(x * y)
    return xp.sum(x * y, axis=tuple(range(1, len(x.shape))))


def norm_per_problem(x: Any) -> Any:
    """‖x‖ over all axes, or per problem (over the non-batch axes) for ``(B, ...)``."""
    xp = namespace(x)
    if len(x.shape) <= 1:
        return xp.sqrt(xp.sum(x * x))
    return xp.sqrt(xp.sum(x * x, axis=tuple(range(1, len(x.shape)))))


def per_problem(s: Any, x: Any) -> Any:
    """Per-problem scalars ``s`` (``()`` or ``(B,)``) shaped to broadcast against ``x``."""
    if len(x.shape) <= 1:
        return s
    return namespace(s).reshape(s, (-1,) + (1,) * (len(x.shape) - 1))


def largest(x: Any) -> float:
    """Largest entry of a per-problem array (or the scalar itself) as a Python float."""
    xp = namespace(x)
    return float(xp.max(xp.reshape(xp.asarray(x), (-1,))))


def to_host(x: Any) -> np.ndarray:
    """``x`` as a flat float NumPy array on the host (one device synchronization)."""
    return np.asarray(to_numpy(x), dtype=float).reshape(-1)


def lanczos_max_eigenvalue(hvp: Callable[[Any], Any], v0: Any, iters: int) -> np.ndarray:
    """Largest Ritz value of ``H`` after ``iters`` Lanczos steps from ``v0`` (per problem).

    Ritz values lie in ``[λ_min(H), λ_max(H)]``, so the result is a lower bound on
    ``λ_max`` that is usually sharp for a separated top eigenvalue. Memory: three vectors
    (no reorthogonalization); cost: ``iters`` HVPs. Returns a NumPy array of shape ``()``
    or ``(B,)``.
    """
    xp = namespace(v0)
    v = v0 / per_problem(norm_per_problem(v0), v0)
    v_prev = xp.zeros_like(v)
    beta = xp.zeros_like(norm_per_problem(v))
    alphas, betas = [], []
    for j in range(iters):
        w = hvp(v)
        alpha = dot_per_problem(w, v)
        w = w - per_problem(alpha, w) * v - per_problem(beta, w) * v_prev
        beta_next = norm_per_problem(w)
        # breakdown: an invariant Krylov space; the remaining rows decouple (β = 0)
        ok = beta_next > 1e-12 * (xp.abs(alpha) + beta + 1e-300)
        beta_next = xp.where(ok, beta_next, xp.zeros_like(beta_next))
        safe = xp.where(ok, beta_next, xp.ones_like(beta_next))
        alphas.append(alpha)
        if j + 1 < iters:
            betas.append(beta_next)
        v_prev, v = v, w / per_problem(safe, w)
        v = xp.where(per_problem(ok, v), v, xp.zeros_like(v))
        beta = beta_next
    return _top_ritz_value(alphas, betas, batched=len(v0.shape) > 1)


def _top_ritz_value(alphas: list, betas: list, batched: bool) -> np.ndarray:
    """Largest eigenvalue of the tridiagonal matrix ``tridiag(β, α, β)`` per problem."""
    a = np.stack([np.atleast_1d(to_host(x)) for x in alphas], axis=-1)  # (B, m)
    b = (np.stack([np.atleast_1d(to_host(x)) for x in betas], axis=-1) if betas
         else np.zeros((a.shape[0], 0)))
    T = np.zeros(a.shape + (a.shape[-1],))
    idx = np.arange(a.shape[-1])
    T[:, idx, idx] = a
    T[:, idx[:-1], idx[1:]] = b
    T[:, idx[1:], idx[:-1]] = b
    top = np.linalg.eigvalsh(T)[:, -1]
    return top if batched else top.reshape(())
