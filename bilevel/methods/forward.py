"""Forward mode (Forward-HG, Franceschi et al. 2017)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

from ..backend import device, namespace
from ..dynamics import Dynamics
from ..nonfinite import deferred_checks
from ..problem import BilevelProblem
from ..registry import register
from ..validation import Validated, number, option
from .base import (
    HypergradResult,
    HypergradState,
    HypergradWarning,
    Method,
    at_step,
    require_step_derivatives,
)

__all__ = ["Forward"]


def _ratio(name: str, value: Any) -> float:
    """Check: a number ``≥ 0`` (``inf`` allowed: never warn)."""
    return math.inf if value == math.inf else number(0)(name, value)


@register("method")
@dataclass(frozen=True, repr=False)
class Forward(Validated, Method):
    """Forward-mode hypergradient: propagate ``Z = dw/dλ`` alongside the inner run.

    ::

        Z_0 = C,   Z_{k+1} = A_k Z_k + B_k,   ∇F_K = ∇_λ f + Z_Kᵀ ∇_w f

    One column of Z per scalar hyperparameter; each step costs one JVP per column
    (``H z + M e``, forward over reverse). Exact for the unrolled map, like
    :class:`~bilevel.methods.Reverse`. See :doc:`/methods/forward`.

    Parameters
    ----------
    warn_ratio : float
        Warn when the number of hyperparameters m exceeds ``warn_ratio · n``: reverse
        mode or implicit differentiation is then cheaper.

    Notes
    -----
    Memory O(n·m) for Z plus O(n), independent of K; time K·m JVPs. Use it for a
    handful of scalar hyperparameters (penalties, a step size, momentum).

    The m columns are propagated one JVP each, not as one batched sweep: autograd's forward
    mode carries one tangent of the shape of its input per trace (it has no vectorizing
    map), and stacking the directions as a problem batch would need objectives that accept
    an extra leading axis, which a user's ``g`` need not. The columns stay on the device
    and the loop reads nothing from it (the finiteness checks of the JVPs are read once,
    after the last step).
    """

    warn_ratio: float = option(1.0, check=_ratio)

    name = "forward"
    differentiable = True  # every step is traced by autograd through the oracles

    def check_dynamics(self, dynamics: Dynamics) -> None:
        require_step_derivatives(dynamics)

    def compute(
        self,
        problem: BilevelProblem,
        lam: Any,
        w0: Any,
        dynamics: Dynamics,
        state: HypergradState | None,
    ) -> HypergradResult:
        directions = _unit_directions(lam, batched=len(w0.shape) == 2)
        self._warn_if_costly(len(directions), w0.shape[-1])
        s = dynamics.init(w0)
        tangents = [dynamics.cotangent(problem.init_jvp(lam, e) if problem.init is not None
                                       else 0 * w0) for e in directions]   # Z_0 = C
        with deferred_checks():
            for k in range(dynamics.steps):  # Z_{k+1} = A_k Z_k + B_k, column by column
                with at_step(k):
                    s, tangents = _step_with_tangents(problem, dynamics, s, lam, k,
                                                      tangents, directions)
        w = dynamics.weights(s)
        value, gw, gl = problem.outer_value_and_grads(w, lam)
        grad = _add_projections(gl, gw, [dynamics.weights(t) for t in tangents], directions)
        return HypergradResult(grad=grad, w=w, value=value, success=True, message="ok",
                               tangent_columns=len(directions))

    def _warn_if_costly(self, m: int, n: int) -> None:
        if m > self.warn_ratio * n:
            warnings.warn(
                f"Forward mode propagates m={m} tangent columns for n={n} inner parameters; "
                "its cost grows with m. Reverse() or Implicit(...) is cheaper here.",
                HypergradWarning,
                stacklevel=5,
            )


def _unit_directions(lam: Any, batched: bool) -> list:
    """The ``m`` unit tangents ``e_j`` of λ (broadcast over the batch axis when batched)."""
    xp = namespace(lam)
    shape = tuple(lam.shape[1:]) if batched else tuple(lam.shape)
    m = math.prod(shape)
    out = []
    for j in range(m):
        e = xp.zeros((m,), dtype=lam.dtype, device=device(lam))
        e = xp.reshape(xp.where(xp.arange(m, device=device(lam)) == j, xp.ones_like(e), e),
                       shape)
        out.append(xp.broadcast_to(e, tuple(lam.shape)) if batched else e)
    return out


def _step_with_tangents(problem, dynamics, s, lam, k, tangents, directions):
    """One step of the dynamics and of every tangent column (one JVP per column)."""
    if not directions:
        return dynamics.step(problem, s, lam, k), tangents
    new_s, out = None, []
    for t, e in zip(tangents, directions, strict=True):
        s_next, t_next = dynamics.step_jvp(problem, s, lam, k, t, e)
        new_s = s_next if new_s is None else new_s
        out.append(t_next)
    return new_s, out


def _add_projections(total: Any, gw: Any, columns: list, directions: list) -> Any:
    """``total + Z_Kᵀ ∇_w f``, i.e. ``+ Σ_j ⟨z_j, ∇_w f⟩ e_j`` (per problem for a batch)."""
    xp = namespace(gw)
    batched = len(gw.shape) > 1
    axes = tuple(range(1, len(gw.shape))) if batched else None
    for z, e in zip(columns, directions, strict=True):
        proj = xp.sum(z * gw, axis=axes)
        if batched:
            proj = xp.reshape(proj, (-1,) + (1,) * (len(e.shape) - 1))
        total = total + proj * e
    return total
