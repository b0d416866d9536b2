"""Inner dynamics whose own coefficients are hyperparameters: step size and momentum.

:class:`TunedGradientDescent` (``α = exp λ_i``) and :class:`TunedMomentum` (``α = exp λ_i``,
``β = σ(λ_j)``) carry their dependence on λ in the step map, so :class:`~bilevel.Forward`
and :class:`~bilevel.Reverse` differentiate it; the implicit methods do not see it (the
inner solution does not depend on the step size). Used by
:func:`bilevel.hpo.problems.optimizer_tuning`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import bilevel.numpy as bnp

from ..backend import namespace
from ..dynamics import Dynamics, State
from ..problem import BilevelProblem

__all__ = ["TunedGradientDescent", "TunedMomentum"]


def _component(lam: Any, i: int) -> Any:
    """``λ[..., i:i+1]``: shape ``(1,)`` or ``(B, 1)`` (broadcasts against ``w``)."""
    return lam[..., i : i + 1]


def _basis_times(lam: Any, i: int, coef: Any) -> Any:
    """An array of the shape of λ with ``coef`` (``(1,)`` or ``(B, 1)``) at index ``i``."""
    xp = namespace(lam)
    m = lam.shape[-1]
    mask = xp.astype(xp.arange(m) == i, lam.dtype)
    return coef * mask


def _vdot(a: Any, b: Any) -> Any:
    """⟨a, b⟩ along the last axis, keeping it: ``(1,)`` or ``(B, 1)``."""
    xp = namespace(a, b)
    return xp.sum(a * b, axis=-1, keepdims=True)


def _check_index(name: str, i: int) -> int:
    if int(i) != i or i < 0:
        raise ValueError(f"{name} must be a non-negative integer index into λ, got {i!r}")
    return int(i)


def _check_lam(lam: Any, need: int) -> None:
    if len(lam.shape) == 0 or lam.shape[-1] < need:
        raise ValueError(
            f"the tuned dynamics read λ[..., :{need}]; λ must have shape (m,) or (B, m) with "
            f"m ≥ {need}, got {tuple(lam.shape)}"
        )


class TunedGradientDescent(Dynamics):
    """Gradient descent whose step size is a hyperparameter: ``α = exp(λ_i)``.

    ::

        w_{k+1} = w_k − exp(λ_i) ∇_w g(w_k, λ)

    Jacobians: ``A_k = I − αH``, ``B_k = −α M − α ∇g e_iᵀ`` (the step-size column needs
    only the gradient already computed). One VJP costs one HVP; one JVP one
    forward-over-reverse product. Memory: one state ``(w,)``.

    Parameters
    ----------
    steps : int
        Number of steps K.
    lr_index : int
        Position of ``log α`` in λ (the other entries are passed to ``g`` unchanged).
    batches : callable, optional
        ``k -> data`` for stochastic inner objectives.
    """

    def __init__(
        self, steps: int, lr_index: int = 0, batches: Callable[[int], Any] | None = None
    ):
        self.steps = self._check_steps(steps)
        self.lr_index = _check_index("lr_index", lr_index)
        self.batches = batches

    def __repr__(self) -> str:
        return f"TunedGradientDescent(steps={self.steps}, lr_index={self.lr_index})"

    def lr(self, lam: Any) -> Any:
        """α = exp(λ_i), shape ``(1,)`` or ``(B, 1)``."""
        _check_lam(lam, self.lr_index + 1)
        return bnp.exp(_component(lam, self.lr_index))

    def step(self, problem: BilevelProblem, state: State, lam: Any, k: int) -> State:
        (w,) = state
        return (w - self.lr(lam) * problem.inner_grad(w, lam, data=self.data(problem, k)),)

    def step_vjp(
        self, problem: BilevelProblem, state: State, lam: Any, k: int, cot: State
    ) -> tuple[State, Any]:
        """``(a − αHa, −α Mᵀa − α⟨∇g, a⟩ e_i)``: one HVP."""
        (w,), (a,) = state, cot
        lin = problem.linearize(w, lam, data=self.data(problem, k))
        hu, mu = lin.vjp(a)
        lr = self.lr(lam)
        return (a - lr * hu,), -lr * mu + _basis_times(lam, self.lr_index, -lr * _vdot(lin.grad, a))

    def step_jvp(
        self, problem: BilevelProblem, state: State, lam: Any, k: int, tan: State, tan_lam: Any
    ) -> tuple[State, State]:
        """Next state and tangent ``z − α(Hz + Me) − α e_i ∇g``: one JVP."""
        (w,), (z,) = state, tan
        gw, t = problem.inner_grad_jvp(w, lam, z, tan_lam, data=self.data(problem, k))
        lr = self.lr(lam)
        dlr = lr * _component(tan_lam, self.lr_index)
        return (w - lr * gw,), (z - lr * t - dlr * gw,)


class TunedMomentum(Dynamics):
    """Heavy-ball momentum with step size ``α = exp(λ_i)`` and momentum ``β = σ(λ_j)``.

    ::

        v_{k+1} = β v_k + ∇_w g(w_k, λ),     w_{k+1} = w_k − α v_{k+1}

    VJP with cotangents ``(ā_w, ā_v)`` and ``u = ā_v − α ā_w``: ``(ā_w + H u, β u)`` for
    the state and ``Mᵀu − α⟨v_{k+1}, ā_w⟩ e_i + β(1−β)⟨v_k, u⟩ e_j`` for λ (one HVP).
    JVP along ``(z, ζ, e)``: ``ζ' = βζ + β(1−β)e_j v + Hz + Me``,
    ``z' = z − αζ' − α e_i v_{k+1}``. Memory: one state ``(w, v)``.

    Parameters
    ----------
    steps : int
        Number of steps K.
    lr_index, beta_index : int
        Positions of ``log α`` and ``logit β`` in λ.
    batches : callable, optional
        ``k -> data`` for stochastic inner objectives.
    """

    def __init__(
        self,
        steps: int,
        lr_index: int = 0,
        beta_index: int = 1,
        batches: Callable[[int], Any] | None = None,
    ):
        self.steps = self._check_steps(steps)
        self.lr_index = _check_index("lr_index", lr_index)
        self.beta_index = _check_index("beta_index", beta_index)
        if self.lr_index == self.beta_index:
            raise ValueError("lr_index and beta_index must differ")
        self.batches = batches

    def __repr__(self) -> str:
        return (
            f"TunedMomentum(steps={self.steps}, lr_index={self.lr_index}, "
            f"beta_index={self.beta_index})"
        )

    def init(self, w0: Any) -> State:
        return (w0, 0 * w0)

    def coefficients(self, lam: Any) -> tuple[Any, Any]:
        """``(α, β) = (exp λ_i, σ(λ_j))``, each of shape ``(1,)`` or ``(B, 1)``."""
        _check_lam(lam, max(self.lr_index, self.beta_index) + 1)
        return (
            bnp.exp(_component(lam, self.lr_index)),
            bnp.sigmoid(_component(lam, self.beta_index)),
        )

    def step(self, problem: BilevelProblem, state: State, lam: Any, k: int) -> State:
        w, v = state
        lr, beta = self.coefficients(lam)
        v = beta * v + problem.inner_grad(w, lam, data=self.data(problem, k))
        return (w - lr * v, v)

    def step_vjp(
        self, problem: BilevelProblem, state: State, lam: Any, k: int, cot: State
    ) -> tuple[State, Any]:
        (w, v), (aw, av) = state, cot
        lr, beta = self.coefficients(lam)
        lin = problem.linearize(w, lam, data=self.data(problem, k))
        v_next = beta * v + lin.grad
        u = av - lr * aw
        hu, mu = lin.vjp(u)
        cot_lam = (
            mu
            + _basis_times(lam, self.lr_index, -lr * _vdot(v_next, aw))
            + _basis_times(lam, self.beta_index, beta * (1 - beta) * _vdot(v, u))
        )
        return (aw + hu, beta * u), cot_lam

    def step_jvp(
        self, problem: BilevelProblem, state: State, lam: Any, k: int, tan: State, tan_lam: Any
    ) -> tuple[State, State]:
        (w, v), (z, zeta) = state, tan
        lr, beta = self.coefficients(lam)
        gw, t = problem.inner_grad_jvp(w, lam, z, tan_lam, data=self.data(problem, k))
        v_next = beta * v + gw
        zeta = beta * zeta + beta * (1 - beta) * _component(tan_lam, self.beta_index) * v + t
        z = z - lr * zeta - lr * _component(tan_lam, self.lr_index) * v_next
        return (w - lr * v_next, v_next), (z, zeta)
