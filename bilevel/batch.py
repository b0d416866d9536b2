"""Per-problem reductions: arrays holding one problem ``(n,)`` or a batch ``(B, n)``.

Arrays are a flat vector ``(n,)`` or a batch ``(B, n)`` of independent problems; every
reduction here runs over the non-batch axes, so a batch gets one number per problem.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .backend import namespace, to_numpy

__all__ = [
    "dot_per_problem",
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
        x2, y2 = x.reshape(len(x), -1), y.reshape(len(y), -1)
        if x.dtype.kind == "f" and y.dtype.kind == "f":  # one BLAS dot per problem
            return np.vecdot(x2, y2)
        return np.einsum("ij,ij->i", x2, y2)
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
