"""Adjoint method for gradient-flow inner problems (A-MAML).

The inner problem is the ODE ``du/dt = −∇_w g(u, λ)``, ``u(0) = w_0`` on ``[0, T]``,
integrated by :class:`bilevel.GradientFlow` with ``K`` steps of ``h = T/K`` of its
Runge–Kutta scheme. With the adjoint ``a(t) = ∂f(u_T)/∂u(t)``::

    a(T) = ∇_w f(u_T, λ),     da/dt = H(u(t), λ) a(t)     (integrated from T back to 0)
    ∇F   = ∇_λ f − ∫_0^T M(u(t), λ)ᵀ a(t) dt + Cᵀ a(0)

(``C = ∂w_0/∂λ`` when the problem has an ``init`` map, e.g. A-MAML's ``u(0) = θ``). The
*discrete* adjoint of the scheme is reverse mode over the scheme's step: it runs
:func:`bilevel.methods.reverse.unrolled_vjp`, the code of :class:`~bilevel.methods.Reverse`.
What is this module's own: the continuous adjoint (:class:`ContinuousAdjointStep`), the
backward reconstruction of the trajectory, and the step-condition diagnostics
(:mod:`bilevel.stability`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from ..backend import device, namespace
from ..dynamics import Dynamics, GradientFlow, StabilityWatch
from ..linalg.lanczos import lanczos_max_eigenvalue
from ..nonfinite import all_finite, at_step, defer_check, settle_checks
from ..ode import rk_step
from ..problem import BilevelProblem, NonFiniteError
from ..recompute import default_checkpoints, reverse_sweep
from ..registry import register
from ..stability import StabilityMonitor, real_stability_bound
from ..validation import Validated, integer, one_of, option, optional, positive
from .base import (
    HypergradResult,
    HypergradState,
    HypergradWarning,
    Method,
    failure_result,
    flag,
    largest,
    norm_per_problem,
    outcome,
    per_problem,
)
from .reverse import unrolled_vjp

__all__ = ["Adjoint", "ContinuousAdjointStep", "lanczos_max_eigenvalue", "real_stability_bound"]

TRAJECTORIES = ("store", "checkpoint", "reconstruct")


class ContinuousAdjointStep:
    """One backward step of the adjoint ODE from ``t_{k+1}`` to ``t_k`` (optimize, then
    discretize), as a ``step_vjp(state_k, k, (a,)) -> ((a_k,), b_k)`` for
    :func:`~bilevel.methods.reverse.unrolled_vjp`.

    ``euler=True``: explicit Euler with ``H`` at the later state, ``a_k = a − h H(u_{k+1}) a``,
    ``b_k = −h M(u_{k+1})ᵀ a`` (one HVP per step; A-MAML's released code pairs it with an
    RK4 forward pass). ``euler=False``: Heun's step, ``ã = a − h H(u_{k+1}) a``,
    ``a_k = a − (h/2)(H(u_{k+1}) a + H(u_k) ã)``, ``b_k = −(h/2)(M(u_{k+1})ᵀ a + M(u_k)ᵀ ã)``
    (two HVPs per step, second order).
    ``u_next`` must hold ``u_K`` before the first call; each call moves it to ``u_k``.
    Each HVP's Rayleigh quotient goes to the monitor; at ``k = K − 1`` ``stiffness_iters``
    Lanczos steps estimate ``λ_max(H(u_K))``.
    """

    def __init__(self, problem: BilevelProblem, lam: Any, flow: GradientFlow,
                 monitor: StabilityMonitor, stiffness_iters: int, euler: bool | None = None):
        self.problem, self.lam, self.flow = problem, lam, flow
        self.euler = flow.scheme.order == 1 if euler is None else euler
        self.monitor, self.stiffness_iters = monitor, stiffness_iters
        self.u_next: Any = None
        self.cached: tuple[int, Any] | None = None  # (k, trace of ∇g at u_k) for Heun

    def __call__(self, s: tuple, k: int, cot: tuple) -> tuple[tuple, Any]:
        (a,), h, data = cot, self.flow.h, self.flow.data(self.problem, k)
        if self.cached is not None and self.cached[0] == k + 1 and self.flow.batches is None:
            lin_next = self.cached[1]
        else:
            lin_next = self.problem.linearize(self.u_next, self.lam, data=data)
        if k == self.flow.steps - 1 and self.stiffness_iters > 0:
            self.monitor.top = _lanczos_top(lin_next, a, self.stiffness_iters)
        hu1, mu1 = lin_next.vjp(a)
        self.monitor.backward(k, a, hu1)
        self.u_next, self.cached = s[0], None
        if self.euler:
            return (a - h * hu1,), -h * mu1
        a_pred = a - h * hu1
        lin_k = self.problem.linearize(s[0], self.lam, data=data)
        hu0, mu0 = lin_k.vjp(a_pred)
        self.monitor.backward(k, a_pred, hu0)
        self.cached = (k, lin_k)
        return (a - (0.5 * h) * (hu1 + hu0),), -(0.5 * h) * (mu1 + mu0)


def _lanczos_top(lin: Any, a: Any, iters: int) -> np.ndarray:
    """Lanczos estimate of ``λ_max(H)`` started from ``a/‖a‖`` plus a fixed random vector."""
    xp = namespace(a)
    r = xp.asarray(np.random.default_rng(0).standard_normal(tuple(a.shape)), dtype=a.dtype,
                   device=device(a))
    an = norm_per_problem(a)
    v0 = a / per_problem(xp.where(an > 0, an, xp.ones_like(an)), a) + r / per_problem(
        norm_per_problem(r), r
    )
    return lanczos_max_eigenvalue(lin.hvp, v0, iters)


class _ReconstructionFailed(Exception):
    def __init__(self, step: int, cause: str, w: Any):
        super().__init__(cause)
        self.step, self.cause, self.w = step, cause, w


def _reconstructing_sweep(problem: BilevelProblem, lam: Any, flow: GradientFlow) -> Any:
    """A sweep for :func:`unrolled_vjp` holding one state: forward to ``u_K``, then ``u``
    integrated backward (step ``−h``) jointly with the adjoint. Returns the round-trip
    error ``‖ũ_0 − u_0‖ / max(‖u_0‖, ‖u_K‖)``; raises ``_ReconstructionFailed``. On a
    device the finiteness of the reconstructed states is tracked there and read once."""

    def sweep(advance, backward, s0, K, *, on_final):
        s = s0
        for k in range(K):
            s = advance(s, k)
        on_final(s)
        u = s[0]
        for k in range(K - 1, -1, -1):
            try:
                with at_step(k):
                    u_prev = rk_step(flow.field(problem, lam, k), u, -flow.h, flow.scheme)
                    _check_state(k, u_prev, s[0])
                backward((u_prev,), k)
            except NonFiniteError as err:
                raise _ReconstructionFailed(k, f"non-finite {err.what}", s[0]) from err
            u = u_prev
        _settle_reconstruction(s[0])
        xp, w0 = namespace(u), s0[0]
        scale = xp.maximum(norm_per_problem(w0), norm_per_problem(s[0]))
        tiny = float(xp.finfo(w0.dtype).smallest_normal)
        return largest(norm_per_problem(u - w0) / xp.maximum(scale, xp.full_like(scale, tiny)))

    return sweep


_STATE = "reconstructed state"


def _check_state(k: int, u_prev: Any, w: Any) -> None:
    """A reconstructed state must be finite: checked at once on NumPy, deferred (read with
    the other checks, in order) on a device."""
    if not defer_check(_STATE, "the backward reconstruction", u_prev) and not all_finite(u_prev):
        raise _ReconstructionFailed(k, "non-finite state", w)


def _settle_reconstruction(w: Any) -> None:
    """Read the deferred checks of the backward reconstruction; the first failure in time
    becomes ``_ReconstructionFailed``."""
    try:
        settle_checks()
    except NonFiniteError as err:
        cause = "non-finite state" if err.what == _STATE else f"non-finite {err.what}"
        raise _ReconstructionFailed(err.step, cause, w) from err


@register("method")
@dataclass(frozen=True, repr=False)
class Adjoint(Validated, Method):
    """Adjoint sensitivity of a gradient flow, discrete or continuous, with a memory policy.

    See :doc:`/methods/adjoint` for the formulas, costs and failure modes.

    Parameters
    ----------
    trajectory : {"store", "checkpoint", "reconstruct"}
        How the backward pass gets the forward states ``u_k``: ``"store"`` keeps all
        ``K + 1`` (O(K·n)); ``"checkpoint"`` recomputes them from ``checkpoints`` snapshots
        (binomial checkpointing, :func:`bilevel.recompute.reverse_sweep`, default
        ``⌈log₂K⌉ + 1``; O(c·n)); ``"reconstruct"`` keeps only ``u_K`` and integrates ``u``
        backward with step ``−h`` (O(n)). Gradient flow contracts forward, so the backward
        integration expands errors like ``e^{λ_max(H)·T}``: the round-trip error of the
        reconstructed start is reported as ``reconstruction_error``, with a
        :class:`~bilevel.api.HypergradWarning` above ``reconstruct_warn`` and
        ``success=False`` above ``reconstruct_tol``.
    discrete : bool
        ``True`` (default): the exact discrete adjoint of the scheme — reverse mode over
        its step (the code of :class:`~bilevel.methods.Reverse`; for Euler, reverse mode
        through gradient descent with ``lr = h``). ``False``: the continuous adjoint
        (optimize-then-discretize, as in A-MAML, :class:`ContinuousAdjointStep`), O(h)
        from the discrete gradient with Euler, O(h²) with the Heun-type backward step.
        :meth:`Adjoint.paper` is A-MAML's pairing.
    backward : {"euler", "heun"}, optional
        The backward step of the continuous adjoint (``discrete=False`` only): explicit
        Euler with the Hessian at the later state (one HVP per step), or Heun's step (two).
        Default: Euler after an Euler forward pass, Heun after Heun or RK4.
    checkpoints : int, optional
        Snapshots for ``trajectory="checkpoint"``.
    reconstruct_warn, reconstruct_tol : float
        Thresholds on ``reconstruction_error``.
    stiffness_iters : int
        Lanczos steps (HVPs) for the estimate of ``h·λ_max(H(u_K))`` checked against the
        continuous adjoint's step condition (``discrete=False`` only; 0 turns it off).

    Notes
    -----
    Step conditions (:mod:`bilevel.stability`) are checked for free along the way: a
    violation gives ``success=False`` with the first offending step in ``unstable_step``
    and the largest ``h·λ_max(H)`` seen in ``step_stiffness``. For a batch of problems,
    ``problem_success`` (``(B,)``) flags the problems whose steps met every condition
    (meta-learning averages the meta-gradient over those tasks). Memory: O(K·n) stored,
    O(c·n) checkpointed, O(n) reconstructed; costs per scheme and trajectory are listed on
    :doc:`/methods/adjoint`.

    References
    ----------
    Li et al., "Meta-learning with adjoint methods", AISTATS 2023 (A-MAML).
    Chen et al., "Neural ordinary differential equations", NeurIPS 2018.
    """

    trajectory: str = option("checkpoint", check=one_of(TRAJECTORIES))
    discrete: bool = option(True, check=flag)
    checkpoints: int | None = option(None, check=optional(integer(1)), kw_only=True)
    reconstruct_warn: float = option(1e-8, check=positive, kw_only=True)
    reconstruct_tol: float = option(1e-4, check=positive, kw_only=True)
    stiffness_iters: int = option(8, check=integer(0), kw_only=True)
    backward: str | None = option(None, check=optional(one_of(("euler", "heun"))),
                                  kw_only=True)

    name = "adjoint"
    _repr_always = ("trajectory", "discrete")

    @classmethod
    def paper(cls) -> Adjoint:
        """A-MAML's continuous adjoint (Li et al., 2023, and its released code).

        ``Adjoint("store", discrete=False, backward="euler")``: the forward states on the
        grid are stored, the adjoint ODE is integrated backwards by explicit Euler with the
        Hessian at the later state. With an RK4 forward pass the gradient is O(h) from
        the exact derivative of the discretized flow; ``Adjoint()`` (the discrete adjoint)
        is exact.
        """
        return cls("store", discrete=False, backward="euler")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.backward is not None and self.discrete:
            raise ValueError(
                f"backward={self.backward!r} chooses the step of the continuous adjoint; "
                "pass discrete=False with it (the discrete adjoint follows the forward scheme)"
            )
        if self.checkpoints is not None and self.trajectory != "checkpoint":
            raise ValueError(
                f"checkpoints={self.checkpoints!r} applies to trajectory='checkpoint' only, "
                f"not {self.trajectory!r}"
            )

    def check_dynamics(self, dynamics: Dynamics) -> None:
        if not isinstance(dynamics, GradientFlow):
            raise TypeError(
                f"Adjoint needs GradientFlow inner dynamics (the ODE dw/dt = −∇_w g), got "
                f"{type(dynamics).__name__}; use dynamics=GradientFlow(horizon, steps, "
                "scheme='rk4'), or Reverse() for discrete dynamics"
            )

    def compute(
        self,
        problem: BilevelProblem,
        lam: Any,
        w0: Any,
        dynamics: Dynamics,
        state: HypergradState | None,
    ) -> HypergradResult:
        self.check_dynamics(dynamics)
        monitor = StabilityMonitor(dynamics.scheme, dynamics.h, dynamics.steps)
        euler = None if self.backward is None else self.backward == "euler"
        vjp = None if self.discrete else ContinuousAdjointStep(
            problem, lam, dynamics, monitor, self.stiffness_iters, euler)
        step = _monitored_step(problem, lam, dynamics, monitor, vjp)
        watch = StabilityWatch(dynamics) if self.discrete else None
        try:  # the discrete adjoint is reverse mode over the monitored scheme step
            sweep = unrolled_vjp(problem, lam, dynamics.init(w0), dynamics,
                                 sweep=self._sweep(problem, lam, dynamics),
                                 step=step, step_vjp=vjp, watch=watch)
        except NonFiniteError as err:
            if not _in_forward_pass(err, monitor):
                raise
            return self._diverged(err, lam, monitor, dynamics)
        except _ReconstructionFailed as fail:
            return self._reconstruction_failed(fail, problem, lam, dynamics, monitor)
        problems: list[str] = []
        report = monitor.report(not self.discrete, problems, self._backward_name(dynamics))
        if watch is not None:  # the cotangent's growth through Euler steps beyond h·λ = 2
            _, unstable = watch.report()
            problems += [unstable] if unstable else []
        if self.trajectory == "reconstruct":
            report["reconstruction_error"] = self._judge_reconstruction(sweep.stats, problems)
        else:
            report.update(steps_recomputed=sweep.stats.steps_recomputed,
                          max_states_held=sweep.stats.max_states_held)
        return HypergradResult(grad=sweep.grad, w=sweep.w, value=sweep.value,
                               adjoint_initial=sweep.cotangent[0], **outcome(problems),
                               problem_success=monitor.problem_stable(not self.discrete),
                               **self._keys(dynamics), **report)

    def _sweep(self, problem: BilevelProblem, lam: Any, flow: GradientFlow) -> Any:
        """The schedule of the backward pass for this ``trajectory``."""
        if self.trajectory == "reconstruct":
            return _reconstructing_sweep(problem, lam, flow)
        c = None
        if self.trajectory == "checkpoint":
            c = self.checkpoints if self.checkpoints is not None else default_checkpoints(
                flow.steps)
        return partial(reverse_sweep, checkpoints=c)

    def _backward_name(self, flow: GradientFlow) -> str:
        """``"Euler"`` or ``"Heun"``: the continuous adjoint's backward step."""
        if self.backward is not None:
            return self.backward.capitalize()
        return "Euler" if flow.scheme.order == 1 else "Heun"

    def _keys(self, flow: GradientFlow) -> dict[str, Any]:
        return dict(trajectory=self.trajectory, discrete=self.discrete, scheme=flow.scheme.name)

    def _judge_reconstruction(self, err: float, problems: list[str]) -> float:
        """Append a failure above ``reconstruct_tol``; warn above ``reconstruct_warn``."""
        if err > self.reconstruct_tol:
            problems.append(
                f"backward reconstruction of the trajectory lost accuracy: round-trip "
                f"error ‖ũ_0 − w_0‖/max(‖w_0‖, ‖u_K‖) = {err:.3e} > reconstruct_tol="
                f"{self.reconstruct_tol:g} (gradient flow contracts forward, so the "
                "backward integration amplifies errors like e^(λ_max(H)·T)); use "
                "trajectory='checkpoint', a shorter horizon, or more steps"
            )
        elif err > self.reconstruct_warn:
            warnings.warn(
                f"{self!r}: backward reconstruction round-trip error {err:.3e} > "
                f"reconstruct_warn={self.reconstruct_warn:g}; the hypergradient may be "
                "inaccurate (trajectory='checkpoint' avoids this)",
                HypergradWarning,
                stacklevel=4,
            )
        return err

    def _reconstruction_failed(self, fail, problem, lam, flow, monitor) -> HypergradResult:
        """Result for a backward reconstruction that produced non-finite values."""
        problems = [
            f"backward reconstruction of the trajectory diverged at step {fail.step} "
            f"({fail.cause}): gradient flow contracts forward, so integrating it backward "
            "amplifies errors like e^(λ_max(H)·T); use trajectory='checkpoint' "
            "(O(log K) states) or 'store'"
        ]
        report = monitor.report(not self.discrete, problems, self._backward_name(flow))
        return failure_result(
            lam, "; ".join(problems), w=fail.w, value=problem.outer_value(fail.w, lam),
            inner_residual=norm_per_problem(problem.inner_grad(fail.w, lam)),
            reconstruction_error=math.inf, nonfinite_step=fail.step, **self._keys(flow),
            **report)

    def _diverged(self, err: NonFiniteError, lam: Any, monitor: StabilityMonitor,
                  flow: GradientFlow) -> HypergradResult:
        """Result for a forward integration that produced non-finite values."""
        step, first = getattr(err, "step", None), monitor.worst("forward")[1]
        return failure_result(
            lam,
            f"forward integration diverged: non-finite {err.what} at inner step {step}"
            f"{monitor.divergence_note()}",
            nonfinite_step=step,
            unstable_step=step if first is None else first,
            step_stiffness=monitor.worst("forward")[0],
            forward_stability_bound=monitor.bound,
            **self._keys(flow),
        )


def _monitored_step(problem: BilevelProblem, lam: Any, flow: GradientFlow,
                    monitor: StabilityMonitor, continuous: Any) -> Any:
    """``GradientFlow.step`` that hands ``(u_k, ∇g(u_k))`` (its first stage) to the monitor
    and ``u_K`` to the continuous adjoint step, if any."""

    def step(s: tuple, k: int) -> tuple:
        field = flow.field(problem, lam, k)
        first: list[Any] = []

        def recorded(u: Any) -> Any:
            out = field(u)
            if not first:
                first.append(out)
            return out

        u_next = rk_step(recorded, s[0], flow.h, flow.scheme)
        monitor.forward(k, s[0], -first[0])
        if k == flow.steps - 1 and continuous is not None:
            continuous.u_next = u_next
        return (u_next,)

    return step


def _in_forward_pass(err: NonFiniteError, monitor: StabilityMonitor) -> bool:
    """Did ``err`` come from the forward integration (or ``f(u_K)``), or follow an unstable
    forward step? (Backward errors of a stable forward pass are left to
    :func:`~bilevel.api.hypergrad`.)"""
    K = monitor.steps
    return (getattr(err, "forward_pass", False) or monitor.next_k < K or err.step == K
            or monitor.worst("forward")[1] is not None)


