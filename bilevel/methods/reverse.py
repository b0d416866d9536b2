"""Reverse-mode unrolling: full, truncated (K-RMD) and checkpointed.

:func:`unrolled_vjp` is the one implementation of the reverse recursion of an unrolled
map; :class:`Reverse` and the discrete adjoint of :class:`~bilevel.methods.Adjoint` both
run it (the adjoint supplies its monitored step and, for the continuous adjoint, its own
backward step).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

from ..backend import namespace
from ..dynamics import Dynamics, StabilityWatch, run
from ..nonfinite import NonFiniteError, deferred_checks, settle_checks
from ..problem import BilevelProblem
from ..recompute import reverse_sweep
from ..registry import register
from ..validation import Validated, integer, option, optional
from .base import (
    HypergradResult,
    HypergradState,
    Method,
    at_step,
    outcome,
    require_step_derivatives,
)

__all__ = ["Reverse", "Sweep", "unrolled_vjp"]


class Sweep(NamedTuple):
    """What :func:`unrolled_vjp` returns."""

    grad: Any  # ∇_λ f + Σ_k B_kᵀ a_{k+1} (+ Cᵀ a_0 when the sweep starts at 0)
    w: Any  # w_K
    value: Any  # f(w_K, λ)
    cotangent: tuple  # a_start, the cotangent of the first swept state
    stats: Any  # what the schedule reports (SweepStats for reverse_sweep)


def unrolled_vjp(
    problem: BilevelProblem,
    lam: Any,
    s_start: Any,
    dynamics: Dynamics,
    *,
    start: int = 0,
    sweep: Callable = reverse_sweep,
    step: Callable | None = None,
    step_vjp: Callable | None = None,
    watch: StabilityWatch | None = None,
) -> Sweep:
    """The reverse recursion over steps ``start … K−1`` of the dynamics from ``s_start``::

        a_K = ∇_w f(w_K, λ),   (a_k, b_k) = (A_kᵀ a_{k+1}, B_kᵀ a_{k+1}),
        ∇F  = ∇_λ f + Σ_k b_k + Cᵀ a_0          (Cᵀ a_0 only from start = 0)

    ``sweep(advance, backward, s_start, K − start, on_final=...)`` orders the work
    (:func:`bilevel.recompute.reverse_sweep`: store or binomial recomputation; the adjoint's
    backward reconstruction); ``step(s, k)`` and ``step_vjp(s, k, a) -> (a_prev, b)``
    default to the dynamics' own; ``watch.record(k, a_{k+1}, a_k)`` sees every backward
    step (a free stability test, :class:`~bilevel.dynamics.StabilityWatch`). Raises
    ``ValueError`` when a truncated sweep drops the whole hypergradient (λ only in the
    init map). Cost: one ``step_vjp`` per step. On a device the finiteness checks of the
    forward pass are read once before ``f(w_K)``, those of the reverse sweep once at the
    end (:class:`~bilevel.nonfinite.deferred_checks`); an error from the forward pass has
    ``err.forward_pass = True``.
    """
    K = dynamics.steps
    step = step or (lambda s, k: dynamics.step(problem, s, lam, k))
    step_vjp = step_vjp or (lambda s, k, a: dynamics.step_vjp(problem, s, lam, k, a))
    out: dict[str, Any] = {"mixed": 0}

    def advance(s: Any, j: int) -> Any:
        with at_step(start + j):
            return step(s, start + j)

    def on_final(s: Any) -> None:
        settle_forward_pass()
        w = dynamics.weights(s)
        with at_step(K):
            value, gw, gl = problem.outer_value_and_grads(w, lam)
        out.update(w=w, value=value, grad=gl, a=dynamics.cotangent(gw))

    def backward(s: Any, j: int) -> None:
        with at_step(start + j):
            a, b = step_vjp(s, start + j, out["a"])
        if watch is not None:
            watch.record(start + j, out["a"], a)
        out.update(a=a, grad=out["grad"] + b, mixed=out["mixed"] + b)

    with deferred_checks():
        stats = sweep(advance, backward, s_start, K - start, on_final=on_final)
    grad = out["grad"]
    if problem.init is not None:
        if start == 0:
            grad = grad + problem.init_vjp(lam, dynamics.weights(out["a"]))
        else:
            _require_a_mixed_term(out["mixed"])
    return Sweep(grad, out["w"], out["value"], out["a"], stats)


def settle_forward_pass() -> None:
    """Read the deferred checks of a forward pass; mark a failure ``forward_pass``."""
    try:
        settle_checks()
    except NonFiniteError as err:
        err.forward_pass = True
        raise


def _require_a_mixed_term(mixed: Any) -> None:
    """Raise when ``Σ B_kᵀ a_k`` is exactly zero (autograd's answer for no dependence)."""
    xp = namespace(mixed)
    if bool(xp.all(mixed == 0)):
        raise ValueError(
            "Reverse(truncate=...) dropped the whole hypergradient: λ enters only "
            "through the init map w0 = init(λ) (as in MAML), so the truncated sum "
            "Σ B_kᵀa_k is identically zero. Use Reverse() or "
            "Reverse(checkpoints=c) for bounded memory, Implicit(...) on a "
            "proximal inner problem, or FirstOrder() (first-order MAML)."
        )


@register("method")
@dataclass(frozen=True, repr=False)
class Reverse(Validated, Method):
    """Reverse-mode differentiation of the unrolled inner dynamics.

    Computes the exact derivative of ``F_K(λ) = f(w_K(λ), λ)``::

        a_K = ∇_w f(w_K),   a_k = A_kᵀ a_{k+1},
        ∇F_K = ∇_λ f + Σ_k B_kᵀ a_{k+1} + Cᵀ a_0

    with one VJP of the step map per step (one HVP for gradient descent). The iterates
    are stored, not autodiff graphs. See :doc:`/methods/reverse`.

    Parameters
    ----------
    truncate : int, optional
        Keep only the last ``T`` steps (K-RMD, Shaban et al. 2019): the first ``K − T``
        steps run without storage and the ``Cᵀa_0`` term is dropped. Biased; equals the
        T-term Neumann series at a fixed point. Raises when λ enters only through
        ``init`` (the truncated sum would be identically zero).
    checkpoints : int, optional
        Hold at most ``c + 1`` states and recompute the rest (binomial checkpointing,
        :mod:`bilevel.recompute`): the same gradient to rounding with O(c·n) memory for
        extra step recomputations.

    Notes
    -----
    Memory O(K·n) (O(T·n) truncated, O(c·n) checkpointed); time K gradients + K HVPs.

    Stability: each backward step gives the Rayleigh quotient ``α_k⟨a, Ha⟩/‖a‖²`` for two
    inner products (:class:`~bilevel.dynamics.StabilityWatch`, kept on the device and read
    once). Beyond the dynamics' bound (``α·λ_max < 2`` for gradient descent, ``2(1 + β)``
    for momentum) the unrolled derivative grows geometrically: ``success=False`` with a
    message naming the step size; ``step_stiffness``, ``stability_bound`` and
    ``unstable_step`` are reported.
    """

    truncate: int | None = option(None, check=optional(integer(1)))
    checkpoints: int | None = option(None, check=optional(integer(1)))

    name = "reverse"
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
        K = dynamics.steps
        start = 0 if self.truncate is None else max(K - self.truncate, 0)
        s = run(problem, dynamics, w0, lam, stop=start)  # untaped steps of K-RMD
        schedule = partial(reverse_sweep, checkpoints=self.checkpoints)
        watch = StabilityWatch(dynamics)
        sweep = unrolled_vjp(problem, lam, s, dynamics, start=start, sweep=schedule,
                             watch=watch)
        stability, unstable = watch.report()
        return HypergradResult(
            grad=sweep.grad,
            w=sweep.w,
            value=sweep.value,
            **outcome([unstable] if unstable else []),
            truncated_steps=start,
            steps_recomputed=sweep.stats.steps_recomputed,
            max_states_held=sweep.stats.max_states_held,
            **stability,
        )

