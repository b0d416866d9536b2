"""Forward mode (Forward-HG, Franceschi et al. 2017; ALGORITHMS §2.3)."""

from __future__ import annotations

import math
import warnings
from typing import Any

from ..api import HypergradResult, HypergradState, HypergradWarning, Method
from ..backend import namespace
from ..dynamics import Dynamics
from ..problem import BilevelProblem, NonFiniteError

__all__ = ["Forward"]


class Forward(Method):
    """Forward-mode hypergradient: propagate ``Z = dw/dλ`` alongside the inner run.

    ::

        Z_0 = C,   Z_{k+1} = A_k Z_k + B_k,   ∇F_K = ∇_λ f + Z_Kᵀ ∇_w f

    One column of Z per scalar hyperparameter; each step costs one JVP per column
    (``H z + M e``, forward over reverse). Exact for the unrolled map, like
    :class:`Reverse`.

    Parameters
    ----------
    warn_ratio : float
        Warn when the number of hyperparameters m exceeds ``warn_ratio · n``: reverse
        mode or implicit differentiation is then cheaper.

    Notes
    -----
    Memory O(n·m) for Z plus O(n), independent of K; time K·m JVPs. Use it for a
    handful of scalar hyperparameters (penalties, a step size, momentum).
    """

    name = "forward"

    def __init__(self, warn_ratio: float = 1.0):
        self.warn_ratio = warn_ratio

    def __repr__(self) -> str:
        return "Forward()"

    def compute(
        self,
        problem: BilevelProblem,
        lam: Any,
        w0: Any,
        inner: Dynamics,
        state: HypergradState | None,
    ) -> HypergradResult:
        xp = namespace(lam, w0)
        batched = len(w0.shape) == 2
        lam_shape = tuple(lam.shape[1:]) if batched else tuple(lam.shape)
        m = math.prod(lam_shape)
        n = w0.shape[-1]
        if m > self.warn_ratio * n:
            warnings.warn(
                f"Forward mode propagates m={m} tangent columns for n={n} inner parameters; "
                "its cost grows with m. Reverse() or Implicit(...) is cheaper here.",
                HypergradWarning,
                stacklevel=4,
            )
        directions = []
        for j in range(m):
            e = xp.zeros((m,), dtype=lam.dtype)
            e = xp.reshape(xp.where(xp.arange(m) == j, xp.ones_like(e), e), lam_shape)
            directions.append(xp.broadcast_to(e, tuple(lam.shape)) if batched else e)
        s0 = inner.init(w0)
        tangents = []
        for e in directions:
            z0 = problem.init_jvp(lam, e) if problem.init is not None else 0 * w0
            tangents.append(inner.cotangent(z0))
        s = s0
        for k in range(inner.steps):
            new_s = None
            try:
                for j, e in enumerate(directions):
                    s_next, tangents[j] = inner.step_jvp(problem, s, lam, k, tangents[j], e)
                    new_s = s_next if new_s is None else new_s
                s = new_s if directions else inner.step(problem, s, lam, k)
            except NonFiniteError as err:
                err.step = k
                raise
        w = inner.weights(s)
        value, gw, gl = problem.outer_value_and_grads(w, lam)
        axes = tuple(range(1, len(w.shape))) if batched else None
        grad = gl
        for e, t in zip(directions, tangents, strict=True):
            proj = xp.sum(inner.weights(t) * gw, axis=axes)
            if batched:
                proj = xp.reshape(proj, (-1,) + (1,) * len(lam_shape))
            grad = grad + proj * e
        return HypergradResult(
            grad=grad, w=w, value=value, success=True, message="ok", tangent_columns=m
        )
