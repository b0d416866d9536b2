"""Ridge regression whose penalties (one per feature, or one shared) are tuned by
hypergradient on a K-fold validation loss."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.linalg import cho_factor, cho_solve
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import validate_data

from ..api import HypergradResult, HypergradState
from ..hpo import problems
from .base import CholeskySolve, HypergradCVMixin, LinearPrediction, implicit_at

__all__ = ["HypergradRidge", "RidgeFold"]


def _center(X: np.ndarray, y: np.ndarray, fit_intercept: bool) -> tuple:
    """Means of ``X`` and ``y`` (zero without intercept) and the scale of ``y``."""
    if not fit_intercept:
        return np.zeros(X.shape[1]), 0.0, max(float(np.sqrt(np.mean(y * y))), 1e-12)
    return X.mean(axis=0), float(y.mean()), max(float(y.std()), 1e-12)


class RidgeFold:
    """One split of per-feature ridge: the inner solution by Cholesky, the hypergradient by
    implicit differentiation with the same factor.

    The problem is :func:`bilevel.hpo.problems.ridge` on data centred with the training
    means and ``y`` divided by its training standard deviation (the validation loss is
    then ½(1 − R²)-like, of order one). At per-sample log-penalties ``λ``::

        w* = (XᵀX/N + diag e^λ)⁻¹ Xᵀy/N        (Cholesky, O(N d² + d³))
        ∇F = −e^λ ⊙ w* ⊙ v,   v = H⁻¹ ∇_w f    (the same factor, O(d²))
    """

    def __init__(self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray, y_val: np.ndarray,
                 fit_intercept: bool = True):
        x_mean, y_mean, y_scale = _center(X, y, fit_intercept)
        Xc, yc = X - x_mean, (y - y_mean) / y_scale
        self.offset = float(np.log(len(y)))
        self.problem = problems.ridge(Xc, yc, X_val - x_mean, (y_val - y_mean) / y_scale)
        self.gram = Xc.T @ Xc / len(y)
        self.rhs = Xc.T @ yc / len(y)
        self.state = HypergradState()

    def solve(self, lam: np.ndarray) -> tuple[np.ndarray, Any]:
        """``w*(λ)`` and the Cholesky factor of the Hessian."""
        factor = cho_factor(self.gram + np.diag(np.broadcast_to(np.exp(lam), self.rhs.shape)))
        return cho_solve(factor, self.rhs), factor

    def value(self, lam: np.ndarray) -> float:
        """The validation loss ``f(w*(λ))``."""
        return float(self.problem.outer_value(self.solve(lam)[0], lam))

    def __call__(self, lam: np.ndarray) -> HypergradResult:
        w, factor = self.solve(lam)
        return implicit_at(self.problem, lam, w, CholeskySolve(factor), self.state)


class HypergradRidge(LinearPrediction, RegressorMixin, HypergradCVMixin, BaseEstimator):
    """Ridge regression with penalties tuned by hypergradient on a K-fold validation loss.

    Fits ``min_w ‖y − Xw − b‖² + Σ_j α_j w_j²`` (scikit-learn's :class:`~sklearn.linear_model.Ridge`
    with one penalty per feature, or one shared ``α``), choosing ``α`` to minimize the mean
    over ``cv`` folds of the validation squared error: a grid over one shared ``α`` first,
    then L-BFGS-B on ``log α`` with the exact hypergradient of each fold (inner solve by
    Cholesky, implicit differentiation with the same factor), then a refit on all the
    data. See :doc:`/sklearn`.

    Parameters
    ----------
    per_feature : bool
        One penalty per feature, or one shared penalty (default: the safer choice when
        validation data are few; per-feature penalties pay off with many features of
        unequal relevance, see :doc:`/sklearn`).
    alphas : int or array-like
        Starting grid of shared penalties: an int gives that many points geometrically
        spaced over ``alpha_range`` times the mean diagonal of the centred ``XᵀX``; an
        array gives the penalties themselves. The hypergradient search stays within the
        grid's range.
    alpha_range : (low, high)
        Relative range of the default grid (ignored when ``alphas`` is an array).
    cv : int, cross-validation generator or iterable
        Splits of the outer objective, as in :func:`sklearn.model_selection.check_cv`
        (default 5-fold). K-fold rather than one validation split guards against
        overfitting the validation data with many penalties.
    max_iter : int
        L-BFGS-B iterations of the hypergradient search (0: the grid only).
    tol : float
        L-BFGS-B's projected-gradient tolerance on ``∇_{log α}`` of the validation loss
        (``y`` is scaled to unit variance).
    fit_intercept : bool
        Fit an unpenalized intercept (centre ``X`` and ``y``).

    Attributes
    ----------
    coef_ : ndarray (n_features,)
    intercept_ : float
    alpha_ : ndarray (n_features,) or float
        The tuned penalties.
    hypergradient_ : dict
        ``grad`` (∇ of the K-fold loss in ``log α`` at ``alpha_``), ``norm``, ``value``
        (the K-fold loss), ``success``, ``inner_residual``, ``messages`` (per fold),
        ``search`` (why L-BFGS-B stopped).
    history_ : dict of ndarrays
        Per evaluation of the K-fold loss: ``log_alpha``, ``value``, ``grad_norm``,
        ``inner_residual``, ``success``, ``time`` (seconds since the start).
    n_iter_ : int
        L-BFGS-B iterations done.
    n_features_in_ : int

    Notes
    -----
    Cost per evaluation: per fold one Cholesky factorization O(d³) (the Gram matrix is
    formed once, O(N d²)) and one hypergradient (a few O(N d) oracle calls).
    """

    def __init__(self, per_feature: bool = False, *, alphas: Any = 7,
                 alpha_range: tuple[float, float] = (1e-6, 1e3), cv: Any = 5,
                 max_iter: int = 100, tol: float = 1e-6, fit_intercept: bool = True):
        self.per_feature = per_feature
        self.alphas = alphas
        self.alpha_range = alpha_range
        self.cv = cv
        self.max_iter = max_iter
        self.tol = tol
        self.fit_intercept = fit_intercept

    def fit(self, X: Any, y: Any) -> HypergradRidge:
        """Tune the penalties on ``cv`` folds of ``(X, y)``, then refit on all of it."""
        X, y = validate_data(self, X, y, y_numeric=True, dtype=np.float64,
                             ensure_min_samples=2)
        folds = [RidgeFold(X[tr], y[tr], X[va], y[va], self.fit_intercept)
                 for tr, va in self._splits(X, y)]
        x_mean, y_mean, _ = _center(X, y, self.fit_intercept)
        Xc = X - x_mean
        scale = float(np.mean(np.sum(Xc * Xc, axis=0))) or 1.0
        found = self._tune(folds, self._shared_grid(scale, X.shape[1]))
        alpha = np.broadcast_to(np.exp(found.best.u), (X.shape[1],))
        self.coef_ = cho_solve(cho_factor(Xc.T @ Xc + np.diag(alpha)), Xc.T @ (y - y_mean))
        self.intercept_ = float(y_mean - x_mean @ self.coef_)
        self.alpha_ = alpha.copy() if self.per_feature else float(alpha[0])
        self._record(found)
        return self
