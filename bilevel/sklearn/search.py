"""The outer problem of the estimators: a K-fold validation loss over log-penalties.

With folds ``k = 1..K`` and penalties ``α`` in scikit-learn's scaling, the outer objective
is::

    F(u) = (1/K) Σ_k F_k(u − o_k),      u = log α,   ∇F(u) = (1/K) Σ_k ∇F_k

where ``F_k(λ)`` is the validation loss of fold ``k`` at the inner solution of the
mean-loss problem with per-sample penalties ``exp(λ)`` (the convention of
:mod:`bilevel.hpo.problems`) and ``∇F_k`` its hypergradient (each fold is a callable
returning a :class:`bilevel.HypergradResult`). The fold's ``offset`` ``o_k`` converts the
scaling: ``log N_k`` (its training size) when scikit-learn's penalty multiplies a *sum* of
training losses (ridge, logistic regression), ``0`` when it multiplies a mean (Lasso,
elastic net). :func:`tune` evaluates a coarse grid, then runs L-BFGS-B on ``u`` from the
best grid point within the grid's range; the answer is the best point evaluated with its
hypergradient.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from scipy.optimize import minimize as scipy_minimize

from ..api import HypergradResult

__all__ = ["CVObjective", "Fold", "Tuned", "tune"]

HISTORY_KEYS = ("log_alpha", "value", "grad_norm", "inner_residual", "success", "time")


class Fold(Protocol):
    """One train/validation split: ``fold(λ)`` solves the inner problem at the per-sample
    log-penalties ``λ`` and returns the hypergradient result (``value``, ``grad``,
    ``success``, ``message``, ``inner_residual``); ``fold.value(λ)`` returns the validation
    loss alone (no derivative: the grid needs no more)."""

    offset: float  # log(penalty per sample / scikit-learn's penalty): log N_k or 0

    def __call__(self, lam: np.ndarray) -> HypergradResult: ...

    def value(self, lam: np.ndarray) -> float: ...


@dataclass
class Evaluation:
    """One evaluated point of the outer objective."""

    u: np.ndarray
    value: float
    grad: np.ndarray
    results: list[HypergradResult]


class CVObjective:
    """``u ↦ (F(u), ∇F(u))``: the mean over folds of their validation losses and
    hypergradients (see the module docstring), recording every evaluation.

    Cost per call: one inner solve and one hypergradient per fold.
    """

    def __init__(self, folds: Sequence[Fold]):
        self.folds = list(folds)
        self.history: dict[str, list] = {k: [] for k in HISTORY_KEYS}
        self.best: Evaluation | None = None
        self._start = time.perf_counter()

    def __call__(self, u: np.ndarray) -> tuple[float, np.ndarray]:
        u = np.array(u, dtype=np.float64)
        results = [fold(u - fold.offset) for fold in self.folds]
        value = float(np.mean([float(r.value) for r in results]))
        grad = np.mean([np.asarray(r.grad, dtype=np.float64) for r in results], axis=0)
        finite = np.isfinite(value) and bool(np.all(np.isfinite(grad)))
        self._record(u, value, grad, results)
        if finite and (self.best is None or value < self.best.value):
            self.best = Evaluation(u, value, grad, results)
        if not finite:  # L-BFGS-B backs off from an infinite value
            return float("inf"), np.zeros_like(u)
        return value, grad

    def value(self, u: np.ndarray) -> float:
        """``F(u)`` alone (inner solves, no hypergradient), recorded with a NaN gradient."""
        u = np.array(u, dtype=np.float64)
        value = float(np.mean([fold.value(u - fold.offset) for fold in self.folds]))
        for key, item in {"log_alpha": u, "value": value, "grad_norm": float("nan"),
                          "inner_residual": float("nan"), "success": True,
                          "time": time.perf_counter() - self._start}.items():
            self.history[key].append(item)
        return value

    def _record(self, u: np.ndarray, value: float, grad: np.ndarray,
                results: list[HypergradResult]) -> None:
        residual = max(float(np.max(r.get("inner_residual", np.nan))) for r in results)
        row = {"log_alpha": u, "value": value, "grad_norm": float(np.linalg.norm(grad)),
               "inner_residual": residual, "success": all(bool(r.success) for r in results),
               "time": time.perf_counter() - self._start}
        for key, item in row.items():
            self.history[key].append(item)


@dataclass
class Tuned:
    """What :func:`tune` found: the best evaluation, the history and the stop reason."""

    best: Evaluation
    history: dict[str, np.ndarray]
    n_iter: int
    message: str


def tune(objective: CVObjective, grid: np.ndarray, max_iter: int, tol: float) -> Tuned:
    """Minimize ``objective`` over ``u`` in the box spanned by the rows of ``grid``.

    First the value ``F(u)`` for each row ``u`` of ``grid`` (log-penalties), then L-BFGS-B
    with hypergradients (at most ``max_iter`` iterations, projected-gradient tolerance
    ``tol``) from the best of them. Returns the best point
    evaluated with its hypergradient (with ``max_iter=0``: the best grid point). Cost:
    ``len(grid)`` inner solves per fold, plus one inner solve and one hypergradient per fold
    for each L-BFGS-B evaluation (about 1.1 per iteration).
    """
    values = [objective.value(u) for u in grid]
    if not np.any(np.isfinite(values)):
        raise ValueError("the validation loss is not finite at any penalty of the grid; "
                         "check the data for NaN/inf or extreme scales")
    start = grid[int(np.nanargmin(np.where(np.isfinite(values), values, np.nan)))]
    objective(start)
    n_iter, message = 1, "grid only (max_iter=0)"
    if max_iter > 0:
        opt = scipy_minimize(objective, start, jac=True, method="L-BFGS-B",
                             bounds=list(zip(grid.min(axis=0), grid.max(axis=0), strict=True)),
                             options={"maxiter": int(max_iter), "gtol": float(tol)})
        n_iter, message = 1 + int(opt.nit), str(opt.message)
    if objective.best is None:
        raise ValueError("the hypergradient is not finite at the best penalty of the grid; "
                         "check the data for NaN/inf or extreme scales")
    history = {k: np.asarray(v) for k, v in objective.history.items()}
    return Tuned(objective.best, history, n_iter, message)
