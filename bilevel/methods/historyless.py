"""The memory-free single-loop estimator ("single-loop AID").

The auxiliary vector ``v ≈ H⁻¹∇_w f`` of implicit differentiation is updated in the same
loop as the inner iterate, one Richardson step per inner step::

    v_{k+1} = v_k − β_k ((H(w_k) + δI) v_k − ∇_w f(w_k)),    w_{k+1} = Φ_k(w_k, λ)
    ∇F ≈ ∇_λ f(w_K) − M(w_K)ᵀ v_K

Nothing from the trajectory is kept. With a :class:`bilevel.HypergradState`, ``v`` (and
``w`` when the problem has no ``init``) continue from the previous outer iteration, so a
short inner loop accumulates accuracy over an outer run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..backend import namespace
from ..batch import to_host
from ..dynamics import Dynamics, GradientDescent
from ..nonfinite import deferred_checks
from ..problem import BilevelProblem
from ..registry import register
from ..validation import Validated, nonnegative, option, optional, positive
from .base import (
    HypergradResult,
    HypergradState,
    Method,
    at_step,
    flag,
    largest,
    norm_per_problem,
    outcome,
    per_problem,
)

__all__ = ["Historyless"]

_DIVERGENCE_FACTOR = 1e6
DEFAULT_TOL = 1e-2
"""Default bound on the final relative residual ``‖(H + δI)v − ∇_w f‖ / ‖∇_w f‖``."""


class _Divergence:
    """Per-problem divergence test of the ``v`` recursion: a residual beyond
    ``1e6 × max(‖r_0‖, max_{j≤k} ‖∇_w f(w_j)‖)`` or non-finite marks that problem diverged
    (and frozen); the first such step is kept. The scale grows with ``∇_w f`` along the run,
    so a zero ``∇_w f(w_0)`` (``w_0`` optimal for f) does not make every later residual a
    divergence. Everything stays on the device; :meth:`read` reads it once, after the loop.
    """

    def __init__(self) -> None:
        self.scale = self.diverged = self.first = None
        self.step: int | None = None

    def update(self, k: int, r_norm: Any, b: Any) -> Any:
        xp = namespace(r_norm)
        if self.scale is None:
            self.scale = r_norm
            self.diverged = xp.zeros_like(r_norm, dtype=xp.bool)
            self.first = xp.full_like(r_norm, -1.0)
        self.scale = xp.maximum(self.scale, norm_per_problem(b))
        blown = ~(r_norm <= _DIVERGENCE_FACTOR * self.scale) & ~self.diverged  # also NaN
        self.diverged = self.diverged | blown
        self.first = xp.where(blown & (self.first < 0), float(k), self.first)
        return self.diverged

    def read(self) -> bool:
        """Whether any problem diverged; sets :attr:`step` (first divergence). One read."""
        if self.first is None:
            return False
        first = to_host(self.first)
        bad = first[first >= 0]
        self.step = int(bad.min()) if bad.size else None
        return self.step is not None


@register("method")
@dataclass(frozen=True, repr=False)
class Historyless(Validated, Method):
    """Single-loop hypergradient: ``v`` follows the inner iterate, no history is stored.

    Computes, alongside the inner dynamics (one HVP and one outer gradient per step)::

        v_{k+1} = v_k − β_k ((H(w_k) + δI) v_k − ∇_w f(w_k))
        ∇F ≈ ∇_λ f(w_K) − M(w_K)ᵀ v_K

    and reports the final linear residual ``‖(H(w_K) + δI) v_K − ∇_w f(w_K)‖``.

    The ``v`` recursion is Richardson iteration on ``H v = ∇_w f`` at a moving point: it
    contracts when ``H + δI ⪰ μI`` near the inner solution and ``β < 2/L`` with
    ``L ≥ λ_max(H + δI)``, at rate ``q = max(|1 − βμ|, |1 − βL|)`` per step, so the
    estimate is accurate after ``K ≳ log(1/ε)/log(1/q)`` steps — or after a few outer
    iterations of a short inner loop when ``v`` and ``w`` are warm-started through a
    :class:`~bilevel.api.HypergradState`. Without strong convexity ``v`` diverges or drifts
    in the null space: this is detected (residual growing beyond ``1e6×`` its start, or
    non-finite) and reported. See :doc:`/methods/historyless`.

    Parameters
    ----------
    beta : float, optional
        Step ``β`` of the ``v`` update. Default: the step size ``α_k`` of a
        :class:`~bilevel.GradientDescent` inner solver (then ``v`` and ``w`` contract at
        the same rate); required for other dynamics.
    damping : float
        ``δ ≥ 0``: track ``(H + δI)⁻¹∇_w f`` instead.
    tol : float, optional
        ``success=False`` if the final relative residual ``‖(H + δI)v − ∇_w f‖ / ‖∇_w f‖``
        (the relative error of ``v`` is at most ``κ(H + δI)`` times it) exceeds ``tol``;
        default ``1e-2``. ``None`` turns the test off.
    warm_start : bool
        Start ``v`` from ``state.v`` when available (default).

    Notes
    -----
    Result keys besides the common ones: ``v``, ``linear_residual`` (per problem),
    ``relative_linear_residual`` (largest over problems), ``diverged``, ``diverged_step``,
    ``warm_started``, ``inner_residual``.

    Memory O(n + m): ``w``, ``v``, one trace of ``∇_w g`` at a time, independent of K.
    Time per inner step: the step of the dynamics + 1 HVP + 1 outer gradient (for
    gradient descent the step reuses the traced gradient). At the end: 1 HVP/mixed VJP.
    """

    beta: float | None = option(None, check=optional(positive))
    damping: float = option(0.0, check=nonnegative)
    tol: float | None = option(DEFAULT_TOL, check=optional(positive), kw_only=True)
    warm_start: bool = option(True, check=flag, kw_only=True)

    name = "historyless"

    def check_dynamics(self, dynamics: Dynamics) -> None:
        if self.beta is None and not isinstance(dynamics, GradientDescent):
            raise ValueError(
                f"Historyless() takes its step beta from a GradientDescent inner solver; with "
                f"{type(dynamics).__name__} pass it explicitly, e.g. Historyless(beta=0.1) "
                "(needs beta < 2/L, L the largest Hessian eigenvalue)"
            )

    def compute(
        self,
        problem: BilevelProblem,
        lam: Any,
        w0: Any,
        dynamics: Dynamics,
        state: HypergradState | None,
    ) -> HypergradResult:
        v0 = self._warm_start(state, w0)
        v = namespace(w0).zeros_like(w0) if v0 is None else v0
        s, watch = dynamics.init(w0), _Divergence()
        with deferred_checks():
            for k in range(dynamics.steps):
                with at_step(k):
                    s, v = self._step(problem, dynamics, s, v, lam, k, watch)
        diverged = watch.read()
        w = dynamics.weights(s)
        value, b, grad_lam = problem.outer_value_and_grads(w, lam)
        lin = problem.linearize(w, lam)
        hv, mv = lin.vjp(v)                      # ∇F ≈ ∇_λ f − Mᵀ v
        residual = norm_per_problem(hv + self.damping * v - b if self.damping else hv - b)
        return HypergradResult(
            grad=grad_lam - mv, w=w, value=value, v=v,
            linear_residual=residual,
            diverged=diverged,
            diverged_step=watch.step,
            warm_started=v0 is not None,
            inner_residual=norm_per_problem(lin.grad),
            **self._diagnostics(residual, b, watch.step),
        )

    def _step(self, problem, dynamics, s, v, lam, k, watch):
        """One inner step and one Richardson step of ``v`` at ``w_k`` (frozen if diverged)."""
        w = dynamics.weights(s)
        lin = problem.linearize(w, lam, data=dynamics.data(problem, k))
        b = problem.outer_grads(w, lam)[0]
        r = lin.hvp(v) - b
        if self.damping:
            r = r + self.damping * v
        diverged = watch.update(k, norm_per_problem(r), b)
        beta = self.beta if self.beta is not None else dynamics.lr_at(k)
        v = namespace(v).where(per_problem(diverged, v), v, v - beta * r)
        if isinstance(dynamics, GradientDescent):  # reuse the traced gradient
            return (w - dynamics.lr_at(k) * lin.grad,), v
        return dynamics.step(problem, s, lam, k), v

    def _diagnostics(self, residual: Any, b: Any, diverged_step: int | None) -> dict:
        """``success``/``message`` and the largest relative residual ``‖r‖/‖∇_w f‖``."""
        xp = namespace(residual)
        b_norm = norm_per_problem(b)
        rel = largest(xp.where(b_norm > 0, residual / xp.where(b_norm > 0, b_norm, 1.0),
                               residual))
        problems = []
        if diverged_step is not None:
            problems.append(
                f"the v recursion diverged at inner step {diverged_step} (residual beyond "
                f"{_DIVERGENCE_FACTOR:.0e}× its start or non-finite): it needs a strongly "
                "convex inner problem (H + δI ≻ 0) and beta < 2/λ_max(H + δI); lower beta, "
                "add damping, or use Implicit(CG())"
            )
        elif self.tol is not None and rel > self.tol:
            problems.append(
                f"final linear residual ‖Hv − ∇_w f‖/‖∇_w f‖ = {rel:.3e} > tol={self.tol:g}: "
                "run more inner steps, warm-start v with a HypergradState, or raise beta "
                "(below 2/λ_max(H))"
            )
        return dict(outcome(problems), relative_linear_residual=rel)

    def _warm_start(self, state: HypergradState | None, w0: Any) -> Any:
        """``state.v`` when warm starts are on and its shape fits, else ``None``."""
        if not self.warm_start or state is None or state.v is None:
            return None
        return state.v if tuple(getattr(state.v, "shape", ())) == tuple(w0.shape) else None
