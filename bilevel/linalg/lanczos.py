"""Lanczos estimate of the largest eigenvalue of a symmetric operator (per problem).

Used by the stability checks of explicit ODE schemes (:mod:`bilevel.stability`): a step
``h`` of gradient flow is stable only while ``h·λ_max(H)`` stays inside the scheme's real
stability interval.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from bilevel.backend import namespace, unbox
from bilevel.batch import dot_per_problem, norm_per_problem, per_problem, to_host

__all__ = ["lanczos_max_eigenvalue"]


def lanczos_max_eigenvalue(hvp: Callable[[Any], Any], v0: Any, iters: int) -> np.ndarray:
    """Largest Ritz value of ``H`` after ``iters`` Lanczos steps from ``v0`` (per problem).

    Ritz values lie in ``[λ_min(H), λ_max(H)]``, so the result is a lower bound on
    ``λ_max`` that is usually sharp for a separated top eigenvalue. Memory: three vectors
    (no reorthogonalization); cost: ``iters`` HVPs and one host read (the coefficients
    ``α_j, β_j`` stay on the device until the end). Returns a NumPy array of shape ``()``
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
    # the coefficients stay on the device through the loop and are read once, together:
    # (2·iters − 1,) or (B, 2·iters − 1)
    coefficients = xp.stack([unbox(c) for c in alphas + betas], axis=-1)
    host = to_host(coefficients).reshape(-1, coefficients.shape[-1])  # the one host read
    top = _top_ritz_value(host[:, :iters], host[:, iters:])
    return top if len(v0.shape) > 1 else top.reshape(())


def _top_ritz_value(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Largest eigenvalue of the tridiagonal matrix ``tridiag(b, a, b)`` per row ``(B,)``."""
    m = a.shape[-1]
    T = np.zeros(a.shape + (m,))
    idx = np.arange(m)
    T[:, idx, idx] = a
    T[:, idx[:-1], idx[1:]] = b
    T[:, idx[1:], idx[:-1]] = b
    return np.linalg.eigvalsh(T)[:, -1]
