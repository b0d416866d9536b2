"""Gradient descent and heavy-ball momentum, with hand-written step VJPs and JVPs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from numbers import Real
from typing import Any, ClassVar

from ..batch import dot_per_problem
from ..problem import BilevelProblem
from ..registry import register
from ..validation import function, integer, option, optional
from .base import Dynamics, State
from .schedules import StepSize, step_size

__all__ = ["GradientDescent", "Momentum"]


def _unit_interval(name: str, value: Any) -> float:
    """Check: a number in [0, 1)."""
    if not (isinstance(value, Real) and 0.0 <= value < 1.0):
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return float(value)


@register("dynamics", "gd")
@dataclass(frozen=True, repr=False)
class GradientDescent(StepSize, Dynamics):
    """Gradient descent ``w_{k+1} = w_k − α_k ∇_w g(w_k, λ; batch_k)``.

    Parameters
    ----------
    lr : float, sequence of float, or callable
        Step size α, a per-step schedule of length ``steps``, or ``k -> α_k``.
    steps : int
        Number of inner steps K.
    batches : callable, optional
        ``k -> data`` for stochastic inner objectives (see module docstring).

    Notes
    -----
    Jacobians of the step map: A_k = I − α_k H(w_k), B_k = −α_k M(w_k). One VJP of the
    step costs one HVP; one JVP costs one forward-over-reverse product.
    """

    name: ClassVar[str] = "gradient-descent"
    lr: Any = option(check=step_size)
    steps: int = option(check=integer(1))
    batches: Callable[[int], Any] | None = option(None, check=optional(function), repr=False)

    def step(self, problem: BilevelProblem, state: State, lam: Any, k: int) -> State:
        (w,) = state
        return (w - self.lr_at(k) * problem.inner_grad(w, lam, data=self.data(problem, k)),)

    def step_vjp(
        self, problem: BilevelProblem, state: State, lam: Any, k: int, cot: State
    ) -> tuple[State, Any]:
        """(A_kᵀa, B_kᵀa) = (a − α_k H a, −α_k Mᵀa): one HVP at (w_k, λ), no gradient."""
        (w,), (a,) = state, cot
        hu, mu = problem.linearize(w, lam, data=self.data(problem, k), trace=False).vjp(a)
        lr = self.lr_at(k)
        return (a - lr * hu,), -lr * mu

    stability_bound: ClassVar[float] = 2.0

    def step_curvature(self, cot: State, cot_prev: State, k: int) -> tuple[Any, Any]:
        """``α_k⟨a, Ha⟩ = ‖a‖² − ⟨a, A_kᵀa⟩`` and ``‖a‖²`` from ``A_kᵀa = a − α_k H a``: two
        inner products, no temporary (the difference loses ``log10(‖a‖²/α⟨a, Ha⟩)`` of
        the sixteen digits of the quotient, which is only compared with the bound)."""
        (a,), (a_prev,) = cot, cot_prev
        aa = dot_per_problem(a, a)
        return aa - dot_per_problem(a, a_prev), aa

    def instability_message(self, step: int, stiffness: float) -> str:
        return _unstable(self, step, stiffness, "|1 − lr·λ|^K")

    def step_jvp(
        self, problem: BilevelProblem, state: State, lam: Any, k: int, tan: State, tan_lam: Any
    ) -> tuple[State, State]:
        """Next state and tangent ``z − α_k (H z + M e)``: one JVP."""
        (w,), (z,) = state, tan
        gw, t = problem.inner_grad_jvp(w, lam, z, tan_lam, data=self.data(problem, k))
        lr = self.lr_at(k)
        return (w - lr * gw,), (z - lr * t,)


@register("dynamics")
@dataclass(frozen=True, repr=False)
class Momentum(StepSize, Dynamics):
    """Heavy-ball momentum on the state (w, v): ``v ← βv + ∇g(w)``, ``w ← w − α v``.

    The hypergradient methods differentiate the whole state: with cotangents (ā_w, ā_v)
    and ``u = ā_v − α ā_w`` the VJP is ``(ā_w + H u, β u, Mᵀu)``: one HVP per step. The
    velocity starts at zero.

    Parameters
    ----------
    lr, steps, batches
        As in :class:`GradientDescent`.
    beta : float
        Momentum coefficient in [0, 1).
    """

    name: ClassVar[str] = "momentum"
    lr: Any = option(check=step_size)
    beta: float = option(check=_unit_interval)
    steps: int = option(check=integer(1))
    batches: Callable[[int], Any] | None = option(None, check=optional(function), repr=False)

    def init(self, w0: Any) -> State:
        return (w0, 0 * w0)

    def step(self, problem: BilevelProblem, state: State, lam: Any, k: int) -> State:
        w, v = state
        v = self.beta * v + problem.inner_grad(w, lam, data=self.data(problem, k))
        return (w - self.lr_at(k) * v, v)

    def step_vjp(
        self, problem: BilevelProblem, state: State, lam: Any, k: int, cot: State
    ) -> tuple[State, Any]:
        """``(ā_w + H u, β u)`` and ``Mᵀu`` with ``u = ā_v − α_k ā_w``: one HVP, no gradient."""
        (w, _), (aw, av) = state, cot
        u = av - self.lr_at(k) * aw
        hu, mu = problem.linearize(w, lam, data=self.data(problem, k), trace=False).vjp(u)
        return (aw + hu, self.beta * u), mu

    @property
    def stability_bound(self) -> float:  # type: ignore[override]
        """Heavy ball contracts while ``α·λ_max(H) < 2(1 + β)``."""
        return 2.0 * (1.0 + self.beta)

    def step_curvature(self, cot: State, cot_prev: State, k: int) -> tuple[Any, Any]:
        """``α_k⟨u, Hu⟩`` and ``‖u‖²`` with ``u = ā_v − α_k ā_w``, ``Hu = ā_w' − ā_w``."""
        (aw, av), (aw_prev, _) = cot, cot_prev
        lr = self.lr_at(k)
        u = av - lr * aw
        return lr * dot_per_problem(u, aw_prev - aw), dot_per_problem(u, u)

    def instability_message(self, step: int, stiffness: float) -> str:
        return _unstable(self, step, stiffness, "the heavy-ball growth factor")

    def step_jvp(
        self, problem: BilevelProblem, state: State, lam: Any, k: int, tan: State, tan_lam: Any
    ) -> tuple[State, State]:
        """Next state and tangent ``ζ' = βζ + Hz + Me``, ``z' = z − α_k ζ'``: one JVP."""
        (w, v), (z, zeta) = state, tan
        gw, t = problem.inner_grad_jvp(w, lam, z, tan_lam, data=self.data(problem, k))
        lr = self.lr_at(k)
        v = self.beta * v + gw
        zeta = self.beta * zeta + t
        return (w - lr * v, v), (z - lr * zeta, zeta)


def _unstable(dynamics: Any, step: int, stiffness: float, growth: str) -> str:
    """The failure sentence of an unrolled step beyond its stability bound, naming ``lr``."""
    lr = dynamics.lr_at(step)
    bound = dynamics.stability_bound
    return (
        f"unrolled {type(dynamics).__name__} is unstable from inner step {step}: "
        f"lr·λ_max(H) ≥ {stiffness:.4g} exceeds {bound:g} (step size lr={lr:g}), so the "
        f"derivative of the unrolled map grows like {growth} and the hypergradient is "
        f"meaningless; lower the step size below {bound:g}/λ_max(H) ≤ {lr * bound / stiffness:.3g}"
    )
