"""Two-loop methods: AmIGO (Arbel & Mairal, 2022) and StocBiO (Ji, Yang & Liang, 2021).

Each outer step first runs ``T`` steps of SGD on the inner problem, warm-started from the
previous outer step's ``w``, then approximates ``v = −H⁻¹ ∇_w f_j`` at the new ``w`` and
takes ``D_λ = ∇_λ f_j + M_iᵀ v`` on fresh batches::

    w ← w − α ∇_w g_{i_k}(w, λ)                      k = 1 .. T
    b = ∇_w f_j(w, λ)
    AmIGO:    v ← v − γ (H_{i_k} v + b)              k = 1 .. S,  v warm-started (amortized)
    StocBiO:  p_0 = b,  p_k = p_{k−1} − γ H_{i_k} p_{k−1},  v = −γ Σ_{k=0..S} p_k
              (stochastic Neumann series of −H⁻¹ b, from scratch)
    D_λ = ∇_λ f_j(w, λ) + M_iᵀ v

Cost per outer step: ``T`` inner gradients, ``S`` HVPs (each one gradient trace and one
reverse pass), one outer gradient and one cross product, all on mini-batches. Memory: ``w``,
``v`` (and the Neumann vectors ``p``, ``Σp`` while StocBiO runs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..registry import register
from ..validation import Validated, integer, option, optional, positive
from .base import StochasticMethod
from .problem import StochasticProblem

__all__ = ["AmIGO", "StocBiO"]


class _TwoLoop(StochasticMethod):
    """The inner SGD loop and the outer terms shared by AmIGO and StocBiO."""

    inner_steps: int
    v_steps: int
    lr_v: float | None

    def _inner(self, problem: StochasticProblem, w: Any, lam: Any, t: int,
               rng: np.random.Generator) -> Any:
        alpha = self.inner_lr(t)
        for _ in range(self.inner_steps):
            w = w - alpha * problem.inner_grad(w, lam, self.draw(problem, "inner", rng))
        return w

    def gamma(self, t: int) -> float:
        """Step size of the linear-system iterations (``lr_v``, else α_t)."""
        return self.inner_lr(t) if self.lr_v is None else self.lr_v


@register("stochastic")
@dataclass(frozen=True)
class AmIGO(Validated, _TwoLoop):
    """AmIGO: amortized implicit gradient optimization (Arbel & Mairal, 2022).

    Parameters
    ----------
    inner_steps : int
        SGD steps ``T`` on ``w`` per outer step (warm-started).
    v_steps : int
        SGD steps ``S`` on the quadratic ``½ vᵀH v + bᵀv`` per outer step (warm-started ``v``).
    lr_v : float, optional
        Their step size γ (default: the inner step α_t).
    """

    name = "AmIGO"
    inner_steps: int = option(10, check=integer(1))
    v_steps: int = option(10, check=integer(1))
    lr_v: float | None = option(None, check=optional(positive))

    def direction(self, problem: StochasticProblem, lam: Any, state: dict[str, Any], t: int,
                  rng: np.random.Generator) -> tuple[Any, dict[str, Any]]:
        w = self._inner(problem, state["w"], lam, t, rng)
        b, fl = problem.outer_grads(w, lam, self.draw(problem, "outer", rng))
        v, gamma = state["v"], self.gamma(t)
        for _ in range(self.v_steps):
            v = v - gamma * (problem.hvp(w, lam, self.draw(problem, "inner", rng), v) + b)
        direction = fl + problem.cross(w, lam, self.draw(problem, "inner", rng), v)
        return direction, {**state, "w": w, "v": v}


@register("stochastic")
@dataclass(frozen=True)
class StocBiO(Validated, _TwoLoop):
    """StocBiO: stochastic bilevel optimizer with a Neumann-series inverse (Ji et al., 2021).

    Parameters
    ----------
    inner_steps : int
        SGD steps ``T`` on ``w`` per outer step (warm-started).
    v_steps : int
        Terms ``S`` of the stochastic Neumann series (``v`` restarts each outer step).
    lr_v : float, optional
        Its step γ, ``γ < 1/L`` for convergence (default: the inner step α_t).
    """

    name = "StocBiO"
    inner_steps: int = option(10, check=integer(1))
    v_steps: int = option(10, check=integer(1))
    lr_v: float | None = option(None, check=optional(positive))

    def direction(self, problem: StochasticProblem, lam: Any, state: dict[str, Any], t: int,
                  rng: np.random.Generator) -> tuple[Any, dict[str, Any]]:
        w = self._inner(problem, state["w"], lam, t, rng)
        b, fl = problem.outer_grads(w, lam, self.draw(problem, "outer", rng))
        gamma = self.gamma(t)
        p = b
        total = b
        for _ in range(self.v_steps):
            p = p - gamma * problem.hvp(w, lam, self.draw(problem, "inner", rng), p)
            total = total + p
        v = -gamma * total
        direction = fl + problem.cross(w, lam, self.draw(problem, "inner", rng), v)
        return direction, {**state, "w": w, "v": v}
