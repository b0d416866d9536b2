"""∇F_K(λ) of an unrolled map by extrapolated central finite differences.

The reference of :func:`~bilevel.testing.check_hypergrad` by default, and of the generated
problems without a closed form (:func:`~bilevel.testing.mlp_problems`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..api import resolve_dynamics
from ..backend import namespace
from ..dynamics import Dynamics, run
from ..problem import BilevelProblem

__all__ = ["finite_difference_hypergrad"]


def _as_float64(x: Any) -> Any:
    xp = namespace(x)
    return xp.astype(x, xp.float64)


def finite_difference_hypergrad(
    problem: BilevelProblem,
    lam: Any,
    w0: Any = None,
    *,
    dynamics: Dynamics | None = None,
    eps: float = 1e-3,
    inner: Dynamics | None = None,
) -> Any:
    """∇F_K(λ) of the unrolled map ``λ ↦ f(w_K(λ), λ)`` by extrapolated central differences.

    For each coordinate j, with ``D(h) = (F_K(λ + h e_j) − F_K(λ − h e_j)) / 2h`` and
    ``h = eps·(1 + |λ_j|)``, returns the Richardson extrapolation ``(4D(h/2) − D(h)) / 3``,
    whose truncation error is O(h⁴). ``w_K(λ)`` runs ``dynamics`` from ``w0`` (held fixed)
    or from ``problem.init(λ ± h e_j)``. The computation is done in float64 whatever the
    dtype of ``lam``. With a batch axis (``lam`` of shape ``(B, m)``) coordinate j of every
    problem is perturbed at once (the problems are independent). ``inner=`` is the
    deprecated name of ``dynamics=``.

    Cost: 4m runs of the inner dynamics (m = number of hyperparameters per problem), no
    derivatives beyond the inner gradients; memory O(n).
    """
    dynamics = resolve_dynamics(dynamics, inner, "finite_difference_hypergrad")
    if not isinstance(dynamics, Dynamics):
        raise TypeError(
            "dynamics must be a Dynamics object such as GradientDescent(lr=0.1, steps=100), "
            f"got {type(dynamics).__name__}"
        )
    lam64 = _as_float64(lam)
    xp = namespace(lam64)
    fixed_w0 = None if w0 is None else _as_float64(w0)
    if fixed_w0 is None and problem.init is None:
        raise ValueError(
            "finite differences need a starting point: pass w0=... or give the problem an "
            "init map"
        )
    start_shape = (problem.initial_point(lam64) if fixed_w0 is None else fixed_w0).shape
    batched = len(start_shape) == 2
    shape = tuple(lam64.shape)
    per = shape[1:] if batched else shape
    m = int(np.prod(per)) if per else 1

    def F(lam_: Any) -> Any:
        start = problem.initial_point(lam_) if fixed_w0 is None else fixed_w0
        w = dynamics.weights(run(problem, dynamics, start, lam_))
        return problem.outer_value(w, lam_)

    grad = xp.zeros(shape, dtype=xp.float64)
    flat_lam = xp.reshape(lam64, (shape[0], m) if batched else (m,))
    for j in range(m):
        onehot = xp.asarray(np.arange(m) == j, dtype=xp.float64)
        step = eps * (1.0 + xp.abs(flat_lam[..., j]))
        step = xp.reshape(step, (-1, 1)) if batched else step
        direction = xp.reshape(onehot * step, shape)

        def central(scale: float, direction: Any = direction) -> Any:
            return (F(lam64 + scale * direction) - F(lam64 - scale * direction)) / (2 * scale)

        d = (4 * central(0.5) - central(1.0)) / 3
        h = step[..., 0] if batched else step
        col = xp.reshape(d / h, (-1, 1)) if batched else d / h
        grad = grad + xp.reshape(onehot * col, shape)
    return grad
