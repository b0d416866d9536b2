"""Gradient flow integrated by a fixed-step Runge–Kutta scheme."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from ..batch import dot_per_problem
from ..ode import get_scheme, rk_step, rk_step_jvp, rk_step_vjp
from ..problem import BilevelProblem
from ..registry import register
from ..validation import Validated, function, integer, option, optional, positive
from .base import Dynamics, State

__all__ = ["GradientFlow"]


@register("dynamics", "flow")
@dataclass(frozen=True, repr=False)
class GradientFlow(Validated, Dynamics):
    """Gradient flow ``dw/dt = −∇_w g(w, λ)`` on ``[0, horizon]``, ``steps`` fixed steps.

    The scheme (``"euler"``, ``"heun"``, ``"rk4"``, see :mod:`bilevel.ode`) belongs to the
    dynamics; explicit Euler with ``h = horizon / steps`` is gradient descent with
    ``lr = h``. :meth:`step_vjp` is the exact discrete adjoint of one scheme step (one
    HVP per stage); the continuous adjoint lives in :class:`bilevel.methods.Adjoint`.

    Parameters
    ----------
    horizon : float
        Integration time T.
    steps : int
        Number of steps K; the step is ``h = T / K``.
    scheme : str or Tableau
        Runge–Kutta scheme name; stored as its :class:`bilevel.ode.Tableau`.
    batches : callable, optional
        ``k -> data`` (all stages of step ``k`` use the same batch).
    """

    name: ClassVar[str] = "gradient-flow"
    horizon: float = option(check=positive)
    steps: int = option(check=integer(1))
    scheme: Any = option("rk4", check=lambda name, value: get_scheme(value))
    batches: Callable[[int], Any] | None = option(None, check=optional(function), repr=False)

    @property
    def h(self) -> float:
        """The step ``h = horizon / steps``."""
        return self.horizon / self.steps

    def field(self, problem: BilevelProblem, lam: Any, k: int) -> Callable[[Any], Any]:
        """The vector field ``u ↦ −∇_w g(u, λ; batch_k)``."""
        data = self.data(problem, k)
        return lambda u: -problem.inner_grad(u, lam, data=data)

    def field_vjp(self, problem: BilevelProblem, lam: Any, k: int) -> Callable:
        """``(u, c) ↦ (−H(u) c, −M(u)ᵀc)``: VJP of the vector field, one HVP."""
        data = self.data(problem, k)

        def vjp(u: Any, c: Any) -> tuple[Any, Any]:
            hu, mu = problem.linearize(u, lam, data=data, trace=False).vjp(c)
            return -hu, -mu

        return vjp

    def field_jvp(self, problem: BilevelProblem, lam: Any, k: int) -> Callable:
        """``(u, z, e) ↦ (−∇g(u), −(H z + M e))``: JVP of the vector field, one JVP."""
        data = self.data(problem, k)

        def jvp(u: Any, z: Any, e: Any) -> tuple[Any, Any]:
            gw, t = problem.inner_grad_jvp(u, lam, z, e, data=data)
            return -gw, -t

        return jvp

    def step(self, problem: BilevelProblem, state: State, lam: Any, k: int) -> State:
        return (rk_step(self.field(problem, lam, k), state[0], self.h, self.scheme),)

    @property
    def stability_bound(self) -> float:  # type: ignore[override]
        """Explicit Euler (gradient descent with ``lr = h``) contracts while ``h·λ_max < 2``."""
        return 2.0 if self.scheme.stages == 1 else float("inf")

    def step_curvature(self, cot: State, cot_prev: State, k: int) -> tuple[Any, Any] | None:
        """Euler: ``h⟨a, Ha⟩`` and ``‖a‖²`` from ``a − A_kᵀa = hHa`` (two inner products);
        ``None`` for multi-stage schemes (the adjoint's own monitor checks those)."""
        if self.scheme.stages != 1:
            return None
        (a,), (a_prev,) = cot, cot_prev
        aa = dot_per_problem(a, a)
        return aa - dot_per_problem(a, a_prev), aa

    def lr_at(self, k: int) -> float:
        """The step of the scheme, ``h`` (named like gradient descent's step size)."""
        return self.h

    def instability_message(self, step: int, stiffness: float) -> str:
        return (
            f"the discrete adjoint of explicit Euler is unstable from step {step}: "
            f"h·λ_max(H) ≥ {stiffness:.4g} exceeds 2 (h = T/K = {self.h:.4g}), so the "
            "derivative of the discretized flow grows like |1 − h·λ|^K; use more steps K "
            "for this horizon or a smaller horizon"
        )

    def step_vjp(
        self, problem: BilevelProblem, state: State, lam: Any, k: int, cot: State
    ) -> tuple[State, Any]:
        """Exact discrete adjoint of one scheme step: one HVP per stage."""
        a_u, a_lam = rk_step_vjp(
            self.field(problem, lam, k),
            self.field_vjp(problem, lam, k),
            state[0],
            self.h,
            self.scheme,
            cot[0],
        )
        return (a_u,), a_lam

    def step_jvp(
        self, problem: BilevelProblem, state: State, lam: Any, k: int, tan: State, tan_lam: Any
    ) -> tuple[State, State]:
        """Next state and tangent of one scheme step: one JVP of the field per stage."""
        u, t = rk_step_jvp(
            self.field(problem, lam, k),
            self.field_jvp(problem, lam, k),
            state[0],
            self.h,
            self.scheme,
            tan[0],
            tan_lam,
        )
        return (u,), (t,)
