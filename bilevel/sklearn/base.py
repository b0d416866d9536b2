"""What the estimators share: the hypergradient at a given inner solution, the folds, the
penalty grid, and the tuning step that sets the fitted attributes.

Every estimator tunes ``u = log α`` (penalties in scikit-learn's convention, multiplying a
*sum* of training losses) on the K-fold objective of :mod:`bilevel.sklearn.search`, then
refits on all the data at the best ``α``.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.linalg import cho_solve
from sklearn.base import is_classifier
from sklearn.model_selection import check_cv
from sklearn.utils.validation import check_is_fitted, validate_data

from ..api import HypergradResult, HypergradState, hypergrad
from ..conditions import Condition, Stationarity
from ..dynamics import Solved
from ..linalg import SolveResult
from ..methods import Implicit
from ..problem import BilevelProblem
from .search import CVObjective, Fold, Tuned, tune

__all__ = ["CholeskySolve", "HypergradCVMixin", "diagnostics", "implicit_at"]


def implicit_at(problem: BilevelProblem, lam: Any, w: Any, solver: Callable | None,
                state: HypergradState, condition: Condition | None = None) -> HypergradResult:
    """Implicit hypergradient at a solution ``w`` from any inner solver:
    ``hypergrad(problem, lam, w, dynamics=Solved(), method=Implicit(solver, condition))``.

    ``∇F(λ) = ∇_λ f − (∂_λ F)ᵀ v`` with ``(∂_w F)ᵀ v = ∇_w f`` at the optimality condition
    ``F(w, λ) = 0`` (``∇_w g`` by default; the implicit function theorem), the linear
    solve (``solver``; ``None``: chosen by the condition) warm-started from ``state.v``. The
    result carries ``inner_residual = ‖F(w, λ)‖``
    (how well ``w`` solves the inner problem; ``success`` is False above
    ``1e-6·max(1, ‖F(0, λ)‖)``) and the solver's diagnostics. Cost: one trace of ``F`` at
    ``(w, λ)``, the solver's products, one mixed product and one outer gradient.
    """
    method = Implicit(solver, inner_tol=1e-6, condition=condition or Stationarity())
    return hypergrad(problem, lam, w, dynamics=Solved(), method=method, state=state,
                     on_failure="ignore")


class CholeskySolve:
    """A linear solver (``solver(matvec, b, x0, damping) -> SolveResult``) that reuses the
    Cholesky factor of the Hessian computed by the inner solve: ``x = H⁻¹ b`` by two
    triangular solves, O(d²); one ``matvec`` checks the residual ``‖H x − b‖``."""

    def __init__(self, factor: Any):
        self.factor = factor

    def __call__(self, matvec: Any, b: Any, x0: Any = None, damping: float = 0.0) -> SolveResult:
        x = cho_solve(self.factor, b)
        if damping:
            raise ValueError("CholeskySolve holds the factor of H itself: damping must be 0")
        r = float(np.linalg.norm(matvec(x) - b))
        b_norm = float(np.linalg.norm(b))
        ok = bool(np.all(np.isfinite(x))) and r <= 1e-6 * max(b_norm, 1e-300)
        return SolveResult(x=x, converged=ok, iterations=1, residual_norm=r, b_norm=b_norm,
                           message=f"Cholesky solve, residual {r:.2e}", n_matvec=1)


def _check_params(est: Any) -> None:
    """Refuse invalid hyperparameters of the search with a message saying what to pass."""
    alphas = est.alphas
    if isinstance(alphas, numbers.Integral):
        if alphas < 1:
            raise ValueError(f"alphas must be a positive number of grid points, got {alphas}")
    elif np.ndim(alphas) != 1 or not np.all(np.asarray(alphas, dtype=float) > 0):
        raise ValueError(f"alphas must be an int or a 1-d array of positive penalties, "
                         f"got {alphas!r}")
    low, high = (float(a) for a in est.alpha_range)
    if not 0 < low < high:
        raise ValueError(f"alpha_range must be (low, high) with 0 < low < high, "
                         f"got {est.alpha_range!r}")
    if not isinstance(est.max_iter, numbers.Integral) or est.max_iter < 0:
        raise ValueError(f"max_iter must be a non-negative int, got {est.max_iter!r}")
    if not est.tol > 0:
        raise ValueError(f"tol must be positive, got {est.tol!r}")


class HypergradCVMixin:
    """The tuning step of the estimators (a mixin for :class:`sklearn.base.BaseEstimator`).

    Subclasses hold the parameters ``per_feature``, ``alphas``, ``alpha_range``, ``cv``,
    ``max_iter`` and ``tol`` and call :meth:`_tune` with one :class:`Fold` per split.
    """

    per_feature: bool
    alphas: Any
    alpha_range: tuple[float, float]
    cv: Any
    max_iter: int
    tol: float

    def _grid(self, scale: float) -> np.ndarray:
        """Log-penalties of the starting grid: ``log alphas`` when given as an array,
        else ``alphas`` points geometrically spaced over ``scale · alpha_range``."""
        _check_params(self)
        if not isinstance(self.alphas, numbers.Integral):
            return np.log(np.asarray(self.alphas, dtype=np.float64))
        low, high = (np.log(scale * float(a)) for a in self.alpha_range)
        return np.linspace(low, high, int(self.alphas)) if self.alphas > 1 else np.array([low])

    def _splits(self, X: np.ndarray, y: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """The (train, validation) index pairs of ``cv`` (``check_cv``: K-fold, stratified
        for classifiers)."""
        splitter = check_cv(self.cv, y, classifier=is_classifier(self))
        return list(splitter.split(X, y))

    def _tune(self, folds: list[Fold], grid: np.ndarray) -> Tuned:
        """Minimize the K-fold objective from the rows of ``grid`` (log-penalties, shape
        ``(points, m)``); returns the search (see :func:`.search.tune`)."""
        return tune(CVObjective(folds), grid, self.max_iter, self.tol)

    def _record(self, found: Tuned) -> None:
        """The fitted search attributes: ``hypergradient_``, ``history_``, ``n_iter_``."""
        self.hypergradient_ = diagnostics(found)
        self.history_ = found.history
        self.n_iter_ = found.n_iter

    def _shared_grid(self, scale: float, n_features: int) -> np.ndarray:
        """:meth:`_grid` as rows of ``n_features`` equal penalties (``per_feature``) or one."""
        values = self._grid(scale)
        return np.repeat(values[:, None], n_features if self.per_feature else 1, axis=1)


def diagnostics(found: Tuned) -> dict:
    """The ``hypergradient_`` attribute: the hypergradient ∇_{log α} F at the chosen α and
    how it was obtained (per-fold success, largest inner residual, messages)."""
    results = found.best.results
    return {
        "grad": found.best.grad,
        "norm": float(np.linalg.norm(found.best.grad)),
        "value": found.best.value,
        "success": all(bool(r.success) for r in results),
        "inner_residual": max(float(np.max(r.get("inner_residual", np.nan))) for r in results),
        "messages": [str(r.message) for r in results],
        "search": found.message,
    }


class LinearPrediction:
    """``predict(X) = X @ coef_ + intercept_`` for the fitted linear regressors (a mixin)."""

    coef_: np.ndarray
    intercept_: float

    def predict(self, X: Any) -> np.ndarray:
        """``X @ coef_ + intercept_``."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return X @ self.coef_ + self.intercept_
