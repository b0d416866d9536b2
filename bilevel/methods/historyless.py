"""The memory-free single-loop estimator (ALGORITHMS §2.4, §2.7 "single-loop AID").

The auxiliary vector ``v ≈ H⁻¹∇_w f`` of implicit differentiation is updated in the same
loop as the inner iterate, one Richardson step per inner step::

    v_{k+1} = v_k − β_k ((H(w_k) + δI) v_k − ∇_w f(w_k)),    w_{k+1} = Φ_k(w_k, λ)
    ∇F ≈ ∇_λ f(w_K) − M(w_K)ᵀ v_K

Nothing from the trajectory is kept. With a :class:`bilevel.HypergradState`, ``v`` (and
``w`` when the problem has no ``init``) continue from the previous outer iteration, so a
short inner loop accumulates accuracy over an outer run.
"""

from __future__ import annotations

import math
from typing import Any

from ..api import HypergradResult, HypergradState, Method, norm_per_problem
from ..backend import namespace
from ..dynamics import Dynamics, GradientDescent
from ..problem import BilevelProblem, NonFiniteError

__all__ = ["Historyless"]

_DIVERGENCE_FACTOR = 1e6


def _max(x: Any) -> float:
    xp = namespace(x)
    return float(xp.max(xp.reshape(xp.asarray(x), (-1,))))


def _col(a: Any) -> Any:
    return a[..., None] if a.ndim else a


class Historyless(Method):
    """Single-loop hypergradient: ``v`` follows the inner iterate, no history is stored.

    Computes, alongside the inner dynamics (one HVP and one outer gradient per step)::

        v_{k+1} = v_k − β_k ((H(w_k) + δI) v_k − ∇_w f(w_k))
        ∇F ≈ ∇_λ f(w_K) − M(w_K)ᵀ v_K

    and reports the final linear residual ``‖(H(w_K) + δI) v_K − ∇_w f(w_K)‖``.

    When it is accurate: the ``v`` recursion is Richardson iteration on ``H v = ∇_w f``
    at a moving point. It contracts when ``g`` is μ-strongly convex near the inner
    solution (``H + δI ⪰ μI``) and ``β < 2/L`` with ``L ≥ λ_max(H + δI)``, at rate
    ``q = max(|1 − βμ|, |1 − βL|)`` per step; its error then tracks ``‖w_k − w*‖`` plus
    ``q^k`` times the starting error of ``v``. So the estimate is accurate after
    ``K ≳ log(1/ε)/log(1/q)`` steps — or after a few outer iterations of a short inner
    loop when ``v`` and ``w`` are warm-started through a :class:`HypergradState`, since λ
    moves little between outer iterations. Without strong convexity (indefinite or
    singular ``H``) ``v`` diverges or drifts in the null space: this is detected
    (residual growing beyond ``1e6×`` its start, or non-finite) and reported.

    Parameters
    ----------
    beta : float, optional
        Step ``β`` of the ``v`` update. Default: the step size ``α_k`` of a
        :class:`~bilevel.GradientDescent` inner solver (then ``v`` and ``w`` contract at
        the same rate); required for other dynamics.
    damping : float
        ``δ ≥ 0``: track ``(H + δI)⁻¹∇_w f`` instead.
    tol : float, optional
        When given, ``success=False`` (a warning, or an error under ``strict=True``) if the
        final relative residual ``‖(H + δI)v − ∇_w f‖ / ‖∇_w f‖`` exceeds ``tol``.
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

    name = "historyless"

    def __init__(
        self,
        beta: float | None = None,
        damping: float = 0.0,
        *,
        tol: float | None = None,
        warm_start: bool = True,
    ):
        if beta is not None and not (
            isinstance(beta, (int, float)) and math.isfinite(beta) and beta > 0
        ):
            raise ValueError(f"beta must be a positive number or None, got {beta!r}")
        if not (isinstance(damping, (int, float)) and math.isfinite(damping) and damping >= 0):
            raise ValueError(f"damping must be a finite number >= 0, got {damping!r}")
        if tol is not None and not (isinstance(tol, (int, float)) and tol > 0):
            raise ValueError(f"tol must be a positive number or None, got {tol!r}")
        self.beta = beta
        self.damping = float(damping)
        self.tol = tol
        self.warm_start = bool(warm_start)

    def __repr__(self) -> str:
        args = []
        if self.beta is not None:
            args.append(f"beta={self.beta!r}")
        if self.damping:
            args.append(f"damping={self.damping!r}")
        if self.tol is not None:
            args.append(f"tol={self.tol!r}")
        return f"Historyless({', '.join(args)})"

    def check_dynamics(self, inner: Dynamics) -> None:
        if self.beta is None and not isinstance(inner, GradientDescent):
            raise ValueError(
                f"Historyless() takes its step beta from a GradientDescent inner solver; with "
                f"{type(inner).__name__} pass it explicitly, e.g. Historyless(beta=0.1) "
                "(needs beta < 2/L, L the largest Hessian eigenvalue)"
            )

    def _step_size(self, inner: Dynamics, k: int) -> float:
        if self.beta is not None:
            return self.beta
        return float(inner.lr_at(k))

    def compute(
        self,
        problem: BilevelProblem,
        lam: Any,
        w0: Any,
        inner: Dynamics,
        state: HypergradState | None,
    ) -> HypergradResult:
        xp = namespace(lam, w0)
        v = None
        if self.warm_start and state is not None and state.v is not None:
            if tuple(getattr(state.v, "shape", ())) == tuple(w0.shape):
                v = state.v
        warm = v is not None
        v = xp.zeros_like(w0) if v is None else v
        s = inner.init(w0)
        gd = isinstance(inner, GradientDescent)
        delta = self.damping
        limit = None
        diverged = None
        diverged_step = None
        for k in range(inner.steps):
            w = inner.weights(s)
            try:
                lin = problem.linearize(w, lam, data=inner.data(problem, k))
                b = problem.outer_grads(w, lam)[0]
                r = lin.hvp(v) - b
                if delta:
                    r = r + delta * v
                r_norm = norm_per_problem(r)
                if limit is None:
                    limit = _DIVERGENCE_FACTOR * xp.maximum(r_norm, norm_per_problem(b))
                    diverged = xp.zeros(r_norm.shape, dtype=xp.bool)
                blown = ~(r_norm <= limit) & ~diverged  # also NaN
                if bool(xp.any(blown)):
                    diverged = diverged | blown
                    if diverged_step is None:
                        diverged_step = k
                v = xp.where(_col(diverged), v, v - self._step_size(inner, k) * r)
                if gd:
                    s = (w - inner.lr_at(k) * lin.grad,)
                else:
                    s = inner.step(problem, s, lam, k)
            except NonFiniteError as err:
                err.step = k
                raise
        w = inner.weights(s)
        value, b, grad_lam = problem.outer_value_and_grads(w, lam)
        lin = problem.linearize(w, lam)
        hv, mv = lin.vjp(v)
        residual = norm_per_problem(hv + delta * v - b if delta else hv - b)
        b_norm = norm_per_problem(b)
        rel = _max(xp.where(b_norm > 0, residual / xp.where(b_norm > 0, b_norm, 1.0), residual))
        grad = grad_lam - mv

        problems = []
        if diverged is not None and bool(xp.any(diverged)):
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
        return HypergradResult(
            grad=grad,
            w=w,
            value=value,
            success=not problems,
            message="; ".join(problems) if problems else "ok",
            v=v,
            linear_residual=residual,
            relative_linear_residual=rel,
            diverged=bool(diverged is not None and bool(xp.any(diverged))),
            diverged_step=diverged_step,
            warm_started=warm,
            inner_residual=norm_per_problem(lin.grad),
        )
