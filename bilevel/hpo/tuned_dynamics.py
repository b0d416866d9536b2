"""Inner dynamics whose own coefficients are hyperparameters: step sizes, momenta, Adam.

:class:`TunedGradientDescent` (``α = exp λ_i``) and :class:`TunedMomentum` (``α = exp λ_i``,
``β = σ(λ_j)``) carry their dependence on λ in the step map, so :class:`~bilevel.Forward`
and :class:`~bilevel.Reverse` differentiate it; the implicit methods do not see it (the
inner solution does not depend on the step size). Their step products are written by hand.
Used by :func:`bilevel.hpo.problems.optimizer_tuning`.

:class:`DerivedDynamics` is the base of tuned dynamics that only write their step map: its
step VJP and JVP are autograd's derivatives of :meth:`~DerivedDynamics.step` (each
``inner_grad`` the step takes is differentiated by the problem's oracles, one HVP or JVP).
:class:`TunedSchedule` (one step size per step, ``α_k = exp λ_{o+k}``) and
:class:`TunedAdam` (Adam with ``α = exp λ_i`` and optionally ``β₁ = σ(λ_j)``) are built on
it; their derivatives are tested against finite differences of the unrolled outer loss.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import bilevel.numpy as bnp

from ..backend import device, namespace
from ..dynamics import Dynamics, State
from ..problem import BilevelProblem

__all__ = ["DerivedDynamics", "TunedAdam", "TunedGradientDescent", "TunedMomentum",
           "TunedSchedule"]


def _component(lam: Any, i: int) -> Any:
    """``λ[..., i:i+1]``: shape ``(1,)`` or ``(B, 1)`` (broadcasts against ``w``)."""
    return lam[..., i : i + 1]


def _basis_times(lam: Any, i: int, coef: Any) -> Any:
    """An array of the shape of λ with ``coef`` (``(1,)`` or ``(B, 1)``) at index ``i``."""
    xp = namespace(lam)
    m = lam.shape[-1]
    mask = xp.astype(xp.arange(m, device=device(lam)) == i, lam.dtype)
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


class DerivedDynamics(Dynamics):
    """Tuned dynamics whose step derivatives are derived from the step map by autograd.

    A subclass writes :meth:`step` (and :meth:`init` for a state beyond ``(w,)``) with
    :mod:`bilevel.numpy` operations on the state and λ; :meth:`step_vjp` and :meth:`step_jvp`
    differentiate it (reverse mode over one step, forward mode over one step)::

        (∂Φ_k/∂s)ᵀ ā,  (∂Φ_k/∂λ)ᵀ ā          and          (∂Φ_k/∂s) ṡ + (∂Φ_k/∂λ) λ̇

    Every ``problem.inner_grad`` inside the step is an autograd primitive whose derivatives
    are the problem's oracles (``(H u, Mᵀu)``: one HVP; ``H z + M e``: one JVP), so analytic
    oracles are used where the problem has them. Cost of one VJP: the step replayed (one
    gradient) plus one HVP; memory: the trace of one step.
    """

    def coefficient(self, lam: Any, index: int) -> Any:
        """``λ[..., index]`` as a column, ``(1,)`` or ``(B, 1)`` (broadcasts against ``w``)."""
        _check_lam(lam, index + 1)
        return _component(lam, index)


class TunedSchedule(DerivedDynamics):
    """Gradient descent with one tuned step size per step: ``α_k = exp(λ_{o+k})``.

    ::

        w_{k+1} = w_k − exp(λ_{o+k}) ∇_w g(w_k, λ)

    λ holds ``K`` log step sizes from ``offset`` on (``m ≥ offset + K``); the entries before
    are passed to ``g`` unchanged. Derivatives by :class:`DerivedDynamics` (one HVP per
    reverse step). Memory: one state ``(w,)``.

    Parameters
    ----------
    steps : int
        Number of steps K (and of tuned step sizes).
    offset : int
        Position of ``log α_0`` in λ.
    batches : callable, optional
        ``k -> data`` for stochastic inner objectives.
    """

    def __init__(self, steps: int, offset: int = 0,
                 batches: Callable[[int], Any] | None = None):
        self.steps = self._check_steps(steps)
        self.offset = _check_index("offset", offset)
        self.batches = batches

    def __repr__(self) -> str:
        return f"TunedSchedule(steps={self.steps}, offset={self.offset})"

    def lr(self, lam: Any, k: int) -> Any:
        """``α_k = exp(λ_{o+k})``, shape ``(1,)`` or ``(B, 1)``."""
        _check_lam(lam, self.offset + self.steps)
        return bnp.exp(self.coefficient(lam, self.offset + k))

    def step(self, problem: BilevelProblem, state: State, lam: Any, k: int) -> State:
        (w,) = state
        return (w - self.lr(lam, k) * problem.inner_grad(w, lam, data=self.data(problem, k)),)


class TunedAdam(DerivedDynamics):
    """Adam (Kingma & Ba 2015) with a tuned step size ``α = exp(λ_i)`` (and ``β₁ = σ(λ_j)``).

    ::

        m_{k+1} = β₁ m_k + (1 − β₁) ∇g,     v_{k+1} = β₂ v_k + (1 − β₂) ∇g²
        w_{k+1} = w_k − α m̂ / (√(v̂ + ε_root) + ε),   m̂ = m_{k+1}/(1 − β₁^{k+1}),
                                                      v̂ = v_{k+1}/(1 − β₂^{k+1})

    ``ε_root > 0`` keeps the square root differentiable where a gradient entry is zero (as
    optax's ``eps_root`` for meta-learning). Derivatives by :class:`DerivedDynamics` (one HVP
    per reverse step, one JVP per forward step). Memory: one state ``(w, m, v)``.

    Parameters
    ----------
    steps : int
        Number of steps K.
    lr_index : int
        Position of ``log α`` in λ.
    beta1_index : int, optional
        Position of ``logit β₁`` in λ; ``None`` (default) keeps ``beta1`` fixed.
    beta1, beta2, eps, eps_root : float
        The fixed coefficients.
    batches : callable, optional
        ``k -> data`` for stochastic inner objectives.
    """

    def __init__(self, steps: int, lr_index: int = 0, beta1_index: int | None = None, *,
                 beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                 eps_root: float = 1e-16, batches: Callable[[int], Any] | None = None):
        self.steps = self._check_steps(steps)
        self.lr_index = _check_index("lr_index", lr_index)
        self.beta1_index = None if beta1_index is None else _check_index("beta1_index",
                                                                         beta1_index)
        if self.beta1_index == self.lr_index:
            raise ValueError("lr_index and beta1_index must differ")
        for name, value in (("beta1", beta1), ("beta2", beta2)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")
        if not (eps >= 0 and eps_root > 0):
            raise ValueError(f"eps must be >= 0 and eps_root > 0, got {eps!r}, {eps_root!r}")
        self.beta1, self.beta2 = float(beta1), float(beta2)
        self.eps, self.eps_root = float(eps), float(eps_root)
        self.batches = batches

    def __repr__(self) -> str:
        return (f"TunedAdam(steps={self.steps}, lr_index={self.lr_index}, "
                f"beta1_index={self.beta1_index})")

    def init(self, w0: Any) -> State:
        return (w0, 0 * w0, 0 * w0)

    def coefficients(self, lam: Any) -> tuple[Any, Any]:
        """``(α, β₁)``: ``exp λ_i`` and ``σ(λ_j)`` (or the fixed ``beta1``)."""
        lr = bnp.exp(self.coefficient(lam, self.lr_index))
        if self.beta1_index is None:
            return lr, self.beta1
        return lr, bnp.sigmoid(self.coefficient(lam, self.beta1_index))

    def step(self, problem: BilevelProblem, state: State, lam: Any, k: int) -> State:
        w, m, v = state
        lr, beta1 = self.coefficients(lam)
        g = problem.inner_grad(w, lam, data=self.data(problem, k))
        m = beta1 * m + (1.0 - beta1) * g
        v = self.beta2 * v + (1.0 - self.beta2) * g * g
        m_hat = m / (1.0 - beta1 ** (k + 1))
        v_hat = v / (1.0 - self.beta2 ** (k + 1))
        return (w - lr * m_hat / (bnp.sqrt(v_hat + self.eps_root) + self.eps), m, v)
