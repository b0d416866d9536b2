"""Single-loop methods: SOBA and SABA (Dagréou, Ablin, Vaiter & Moreau, NeurIPS 2022).

Each outer step draws one inner batch ``i`` and one outer batch ``j`` and moves the three
variables together along directions evaluated at the same point ``(w_t, v_t, λ_t)``::

    D_w = ∇_w g_i(w, λ)
    D_v = ∇²_ww g_i(w, λ) v + ∇_w f_j(w, λ)          (v → −H⁻¹ ∇_w f)
    D_λ = ∇²_λw g_i(w, λ) v + ∇_λ f_j(w, λ)          (→ ∇F(λ) when w, v are exact)
    w ← w − α_t D_w,   v ← v − α_t D_v,   λ ← λ − β_t D_λ

SOBA uses the mini-batch directions as they are, with decreasing steps ``α_t, β_t ∝ t^{−1/2}``.
SABA replaces each of the five mini-batch terms by its SAGA estimate (Defazio et al., 2014)
``d = o_i − m_i + m̄`` with a memory row ``m_i`` per batch and their mean ``m̄``, which makes
the directions' variance vanish at the solution and allows constant steps (linear
convergence on strongly convex problems).

Cost per outer step: one trace of ``(w, λ) ↦ ∇_w g_i`` and one reverse pass over it (the
three inner terms), and one gradient of ``f_j``. Memory: ``w``, ``v`` (SOBA); SABA adds the
tables, ``N_in·(2n + m) + N_out·(n + m)`` numbers for ``N_in`` inner and ``N_out`` outer
batches of ``n`` inner variables and ``m`` hyperparameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..registry import register
from ..validation import Validated, number, one_of, option
from .base import StochasticMethod
from .problem import StochasticProblem

__all__ = ["SABA", "SOBA", "saga"]

_INNER_TERMS = ("grad", "hvp", "cross")
_OUTER_TERMS = ("outer_w", "outer_lam")


def _directions(problem: StochasticProblem, w: Any, v: Any, lam: Any, inner: Any,
                outer: Any) -> dict[str, Any]:
    """The five mini-batch terms at (w, v, λ): ∇_w g_i, H_i v, M_iᵀ v, ∇_w f_j, ∇_λ f_j."""
    grad, hv, mv = problem.inner_products(w, lam, inner, v)
    fw, fl = problem.outer_grads(w, lam, outer)
    return {"grad": grad, "hvp": hv, "cross": mv, "outer_w": fw, "outer_lam": fl}


def _step(state: dict[str, Any], d: dict[str, Any], alpha: float) -> tuple[Any, dict]:
    """D_λ and the state after ``w ← w − α D_w``, ``v ← v − α D_v``."""
    new = dict(state)
    new["w"] = state["w"] - alpha * d["grad"]
    new["v"] = state["v"] - alpha * (d["hvp"] + d["outer_w"])
    return d["cross"] + d["outer_lam"], new


@register("stochastic")
@dataclass(frozen=True)
class SOBA(Validated, StochasticMethod):
    """SOBA: stochastic single-loop bilevel optimization (Dagréou et al., 2022).

    See the module docstring for the update; defaults follow the paper's benchmark
    (decreasing steps, ``exponent=0.5``).
    """

    name = "SOBA"
    exponent: float = option(0.5, check=number(0.0, maximum=1.0))

    def direction(self, problem: StochasticProblem, lam: Any, state: dict[str, Any], t: int,
                  rng: np.random.Generator) -> tuple[Any, dict[str, Any]]:
        inner, outer = self.draw(problem, "inner", rng), self.draw(problem, "outer", rng)
        d = _directions(problem, state["w"], state["v"], lam, inner, outer)
        return _step(state, d, self.inner_lr(t))


def saga(table: Any, mean: Any, k: int, new: Any, weight: float) -> tuple[Any, Any, Any]:
    """SAGA estimate ``new − table[k] + mean`` and the updated ``(table, mean)``.

    ``mean = Σ_k weight_k · table[k]`` is kept in step: ``mean += weight·(new − table[k])``,
    ``table[k] = new``. Cost: two vector operations; the table is updated in place.
    """
    diff = new - table[k]
    estimate = diff + mean
    table[k] = new
    return estimate, table, mean + weight * diff


@register("stochastic")
@dataclass(frozen=True)
class SABA(Validated, StochasticMethod):
    """SABA: SOBA with SAGA variance reduction of all five terms (Dagréou et al., 2022).

    Parameters
    ----------
    init_memory : {"zero", "full"}
        Start the memory tables at zero (the paper's benchmark default) or fill them with
        one full pass over the data at ``(w0, 0, λ0)`` (costs one epoch).

    Notes
    -----
    With one batch (``batch_size ≥ n``) every estimate equals the full-batch term, so SABA
    is the deterministic single-loop method (SOBA on full batches) up to rounding.
    """

    name = "SABA"
    init_memory: str = option("zero", check=one_of(("zero", "full")))

    def init(self, problem: StochasticProblem, w0: Any, lam: Any) -> dict[str, Any]:
        """``w``, ``v`` and the memory tables (one row per batch) with their means."""
        state = super().init(problem, w0, lam)
        n_in = problem.n_batches("inner", self.batch_size)
        n_out = problem.n_batches("outer", self.batch_size)
        shapes = {"grad": (w0, n_in), "hvp": (w0, n_in), "cross": (lam, n_in),
                  "outer_w": (w0, n_out), "outer_lam": (lam, n_out)}
        memory = {k: problem.zeros(like, rows) for k, (like, rows) in shapes.items()}
        means = {k: 0 * like for k, (like, _) in shapes.items()}
        state["memory"], state["means"] = memory, means
        if self.init_memory == "full":
            self._fill(problem, state, lam)
        return state

    def _fill(self, problem: StochasticProblem, state: dict, lam: Any) -> None:
        """One pass over all batches at ``(w0, v0, λ0)``: memory rows and their means."""
        w, v, b = state["w"], state["v"], self.batch_size
        for which, terms, n in (("inner", _INNER_TERMS, problem.n_inner),
                                ("outer", _OUTER_TERMS, problem.n_outer)):
            for k in range(problem.n_batches(which, b)):
                batch = problem.batch(which, k, b)
                values = problem.inner_products(w, lam, batch, v) if which == "inner" \
                    else problem.outer_grads(w, lam, batch)
                for term, value in zip(terms, values, strict=True):
                    state["memory"][term][k] = value
                    state["means"][term] = state["means"][term] + (batch[1] / n) * value

    def direction(self, problem: StochasticProblem, lam: Any, state: dict[str, Any], t: int,
                  rng: np.random.Generator) -> tuple[Any, dict[str, Any]]:
        n_in = problem.n_batches("inner", self.batch_size)
        n_out = problem.n_batches("outer", self.batch_size)
        i, j = int(rng.integers(n_in)), int(rng.integers(n_out))
        inner = problem.batch("inner", i, self.batch_size)
        outer = problem.batch("outer", j, self.batch_size)
        d = _directions(problem, state["w"], state["v"], lam, inner, outer)
        memory, means = dict(state["memory"]), dict(state["means"])
        for term in d:
            k, (n, size) = (i, (problem.n_inner, inner[1])) if term in _INNER_TERMS \
                else (j, (problem.n_outer, outer[1]))
            d[term], memory[term], means[term] = saga(memory[term], means[term], k, d[term],
                                                      size / n)
        direction, new = _step(state, d, self.inner_lr(t))
        new["memory"], new["means"] = memory, means
        return direction, new
