"""Lasso and elastic net whose penalties are tuned by hypergradient through the
proximal-gradient fixed point (:class:`bilevel.conditions.ProximalGradient`)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import ElasticNet
from sklearn.utils.validation import validate_data

import bilevel.numpy as bnp

from ..api import HypergradResult, HypergradState
from ..conditions import ProximalGradient
from ..problem import BilevelProblem
from .base import HypergradCVMixin, LinearPrediction, implicit_at

__all__ = ["ElasticNetFold", "HypergradElasticNet", "HypergradLasso"]


def _smooth(w: Any, lam: Any, data: dict) -> Any:
    """``h(w, λ) = (1/2N)‖Xw − y‖² + ½ e^{λ₁}‖w‖²`` (no ℓ2 term for the Lasso, ``λ`` of
    length 1)."""
    r = bnp.matmul(data["X"], w) - data["y"]
    h = 0.5 * bnp.mean(r * r)
    return h + 0.5 * bnp.exp(lam[1]) * bnp.sum(w * w) if lam.shape[0] > 1 else h


def _l1(lam: Any, data: dict) -> Any:
    """``c(λ) = e^{λ₀}``, the ℓ1 weight."""
    return bnp.exp(lam[0])


def _inner(w: Any, lam: Any, data: dict) -> Any:
    return _smooth(w, lam, data) + _l1(lam, data) * bnp.sum(bnp.abs(w))


def _outer(w: Any, lam: Any, data: dict) -> Any:
    r = bnp.matmul(data["X_val"], w) - data["y_val"]
    return 0.5 * bnp.mean(r * r) / data["y_var"]


class ElasticNetFold:
    """One split of the elastic net ``(1/2N)‖Xw − y‖² + α₁‖w‖₁ + ½α₂‖w‖²`` at
    ``λ = (log α₁, log α₂)`` (the Lasso: ``λ = (log α₁,)``), in scikit-learn's scaling.

    The inner solution comes from scikit-learn's coordinate descent (warm-started, dual
    gap 1e-12, exact zeros off the support); the hypergradient from implicit
    differentiation of the proximal-gradient fixed point ``w = S_{ηα₁}(w − η∇h)`` with
    ``η = 1/(L + α₂)`` (GMRES), which on the support ``S`` is the support-restricted formula
    ``dw_S/dλ = −(X_SᵀX_S/N + α₂I)⁻¹ ∂_λ∇h_S`` (Bertrand et al., 2020). The validation loss
    is divided by the training variance of ``y``.
    """

    offset = 0.0

    def __init__(self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray, y_val: np.ndarray,
                 fit_intercept: bool = True):
        x_mean = X.mean(axis=0) if fit_intercept else np.zeros(X.shape[1])
        y_mean = float(y.mean()) if fit_intercept else 0.0
        self.X, self.y = X - x_mean, y - y_mean
        data = {"X": self.X, "y": self.y, "X_val": X_val - x_mean, "y_val": y_val - y_mean,
                "y_var": max(float(np.mean(self.y * self.y)), 1e-24)}
        self.problem = BilevelProblem(_inner, _outer, data=data, name="elastic_net")
        self.lipschitz = float(np.linalg.eigvalsh(self.X.T @ self.X / len(y))[-1])
        self.model = ElasticNet(fit_intercept=False, warm_start=True, tol=1e-12,
                                max_iter=100_000, precompute=True)
        self.state = HypergradState()

    def solve(self, lam: np.ndarray) -> np.ndarray:
        """``w*(λ)`` by coordinate descent."""
        l1 = float(np.exp(lam[0]))
        l2 = float(np.exp(lam[1])) if len(lam) > 1 else 0.0
        self.model.set_params(alpha=l1 + l2, l1_ratio=l1 / (l1 + l2))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return self.model.fit(self.X, self.y).coef_.copy()

    def value(self, lam: np.ndarray) -> float:
        """The validation loss ``f(w*(λ))``."""
        return float(self.problem.outer_value(self.solve(lam), lam))

    def __call__(self, lam: np.ndarray) -> HypergradResult:
        w = self.solve(lam)
        l2 = float(np.exp(lam[1])) if len(lam) > 1 else 0.0
        condition = ProximalGradient(_smooth, _l1, step=1.0 / (self.lipschitz + l2))
        return implicit_at(self.problem, lam, w, None, self.state, condition)


class _SparseBase(LinearPrediction, RegressorMixin, HypergradCVMixin, BaseEstimator):
    """Fit, predict and the shared attributes of :class:`HypergradLasso` and
    :class:`HypergradElasticNet` (subclasses give the grid of ``log α``)."""

    per_feature = False
    fit_intercept: bool

    def _log_grid(self, alpha_max: float) -> np.ndarray:
        raise NotImplementedError

    def fit(self, X: Any, y: Any) -> Any:
        """Tune the penalties on ``cv`` folds of ``(X, y)``, then refit on all of it."""
        X, y = validate_data(self, X, y, y_numeric=True, dtype=np.float64,
                             ensure_min_samples=2)
        folds = [ElasticNetFold(X[tr], y[tr], X[va], y[va], self.fit_intercept)
                 for tr, va in self._splits(X, y)]
        Xc = X - X.mean(axis=0) if self.fit_intercept else X
        yc = y - y.mean() if self.fit_intercept else y
        alpha_max = float(np.max(np.abs(Xc.T @ yc))) / len(y) or 1.0
        found = self._tune(folds, self._log_grid(alpha_max))
        l1 = float(np.exp(found.best.u[0]))
        l2 = float(np.exp(found.best.u[1])) if len(found.best.u) > 1 else 0.0
        self.alpha_, self.l1_ratio_ = l1 + l2, l1 / (l1 + l2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model = ElasticNet(alpha=self.alpha_, l1_ratio=self.l1_ratio_, tol=1e-10,
                               max_iter=100_000, fit_intercept=self.fit_intercept).fit(X, y)
        self.coef_, self.intercept_ = model.coef_, float(model.intercept_)
        self._record(found)
        return self


class HypergradLasso(_SparseBase):
    """Lasso with its penalty tuned by hypergradient on a K-fold validation loss.

    Fits ``min_w (1/2N)‖y − Xw − b‖² + α‖w‖₁`` (scikit-learn's
    :class:`~sklearn.linear_model.Lasso`), choosing ``α`` to minimize the mean over ``cv``
    folds of the validation squared error: a grid of ``α``, then L-BFGS-B on ``log α``
    with each fold's hypergradient through the proximal-gradient fixed point at the
    coordinate-descent solution, then a refit on all the data. See :doc:`/sklearn`.

    Parameters
    ----------
    alphas : int or array-like
        Starting grid: an int gives that many points geometrically spaced over
        ``alpha_range`` times ``α_max = ‖Xᵀy‖_∞/N`` (the smallest ``α`` with ``w = 0``); an
        array gives the penalties. The search stays within the grid's range.
    alpha_range : (low, high)
        Relative range of the default grid.
    cv, max_iter, tol, fit_intercept
        As in :class:`~bilevel.sklearn.HypergradRidge`.

    Attributes
    ----------
    coef_, intercept_, alpha_ (float), l1_ratio_ (1.0), hypergradient_, history_, n_iter_
        As in :class:`~bilevel.sklearn.HypergradRidge`.
    """

    def __init__(self, *, alphas: Any = 7, alpha_range: tuple[float, float] = (1e-3, 1.0),
                 cv: Any = 5, max_iter: int = 50, tol: float = 1e-6,
                 fit_intercept: bool = True):
        self.alphas = alphas
        self.alpha_range = alpha_range
        self.cv = cv
        self.max_iter = max_iter
        self.tol = tol
        self.fit_intercept = fit_intercept

    def _log_grid(self, alpha_max: float) -> np.ndarray:
        return self._grid(alpha_max)[:, None]


class HypergradElasticNet(_SparseBase):
    """Elastic net with both penalties tuned by hypergradient on a K-fold validation loss.

    Fits ``min_w (1/2N)‖y − Xw − b‖² + α₁‖w‖₁ + ½α₂‖w‖²`` (scikit-learn's
    :class:`~sklearn.linear_model.ElasticNet` with ``α = α₁ + α₂``, ``l1_ratio = α₁/α``),
    tuning ``(log α₁, log α₂)`` jointly: a grid over ``alphas × l1_ratio``, then L-BFGS-B
    with the hypergradient through the proximal-gradient fixed point, then a refit.

    Parameters
    ----------
    l1_ratio : sequence of floats in (0, 1)
        Mixing ratios of the starting grid.
    alphas, alpha_range, cv, max_iter, tol, fit_intercept
        As in :class:`HypergradLasso` (the grid's ℓ1 weights ``α₁`` span ``alpha_range ×
        α_max``; ``α₂ = α₁ (1 − r)/r``).

    Attributes
    ----------
    alpha_, l1_ratio_ : float
        The tuned penalties in scikit-learn's terms.
    coef_, intercept_, hypergradient_, history_, n_iter_
        As in :class:`~bilevel.sklearn.HypergradRidge`.
    """

    def __init__(self, *, l1_ratio: Any = (0.1, 0.5, 0.9), alphas: Any = 7,
                 alpha_range: tuple[float, float] = (1e-3, 1.0), cv: Any = 5,
                 max_iter: int = 50, tol: float = 1e-6, fit_intercept: bool = True):
        self.l1_ratio = l1_ratio
        self.alphas = alphas
        self.alpha_range = alpha_range
        self.cv = cv
        self.max_iter = max_iter
        self.tol = tol
        self.fit_intercept = fit_intercept

    def _log_grid(self, alpha_max: float) -> np.ndarray:
        ratios = np.asarray(self.l1_ratio, dtype=np.float64).reshape(-1)
        if ratios.size == 0 or not np.all((ratios > 0) & (ratios < 1)):
            raise ValueError(f"l1_ratio must be ratios in (0, 1), got {self.l1_ratio!r}; "
                             "for l1_ratio=1 use HypergradLasso")
        l1 = self._grid(alpha_max)
        return np.array([(a, a + np.log((1 - r) / r)) for r in ratios for a in l1])
