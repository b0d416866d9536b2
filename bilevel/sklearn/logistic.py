"""L2-regularized logistic regression whose penalties (one shared, or one per feature) are
tuned by hypergradient on a K-fold validation log-loss."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.linalg import cho_factor, cho_solve
from scipy.special import expit
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model._base import LinearClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from ..api import HypergradResult, HypergradState
from ..hpo import problems
from .base import CholeskySolve, HypergradCVMixin, diagnostics, implicit_at
from .search import Tuned

__all__ = ["HypergradLogisticRegression", "fit_logistic"]


def _objective(w: np.ndarray, X: np.ndarray, s: np.ndarray, rho: np.ndarray) -> tuple:
    """``g(w) = mean log(1 + e^{−s(Xβ + b)}) + ½ Σ ρ_j β_j²``, its gradient and the
    weights ``p(1 − p)`` of its Hessian (NumPy)."""
    beta, b = w[:-1], w[-1]
    margin = s * (X @ beta + b)
    loss = float(np.mean(np.logaddexp(0.0, -margin)) + 0.5 * np.sum(rho * beta * beta))
    q = expit(-margin)
    r = -s * q / len(s)
    return loss, np.concatenate([X.T @ r + rho * beta, [np.sum(r)]]), q * (1.0 - q)


def _hessian(X: np.ndarray, weights: np.ndarray, rho: np.ndarray) -> np.ndarray:
    """``[X 1]ᵀ diag(weights) [X 1] / N + diag(ρ, 0)``: O(N d²)."""
    Xa = np.column_stack([X, np.ones(len(X))])
    H = (Xa.T * (weights / len(X))) @ Xa
    H[np.arange(len(rho)), np.arange(len(rho))] += rho
    return H


def fit_logistic(X: np.ndarray, y01: np.ndarray, rho: np.ndarray, w0: np.ndarray | None = None,
                 tol: float = 1e-10, max_iter: int = 100) -> tuple[np.ndarray, Any]:
    """The inner solution ``w = (β, b)`` at per-sample penalties ``ρ`` by Newton's method
    with a backtracking line search (warm-started from ``w0``), until
    ``‖∇g‖ ≤ tol · max(1, ‖∇g(w0)‖)``; returns ``w`` and the Cholesky factor of the
    Hessian there (reused by the implicit hypergradient).

    Cost: O(N d² + d³) per iteration, about ten iterations from a warm start (quadratic
    convergence), where first-order solvers crawl on nearly separable data.
    """
    s = 2.0 * y01 - 1.0
    w = np.zeros(X.shape[1] + 1) if w0 is None else np.array(w0, dtype=np.float64)
    loss, grad, weights = _objective(w, X, s, rho)
    stop = tol * max(1.0, float(np.linalg.norm(grad)))
    for _ in range(max_iter):
        factor = cho_factor(_hessian(X, weights, rho) + 1e-12 * np.eye(len(w)))
        if np.linalg.norm(grad) <= stop:
            break
        step, t = cho_solve(factor, grad), 1.0
        while t > 1e-10:
            trial = _objective(w - t * step, X, s, rho)
            if trial[0] <= loss - 1e-4 * t * float(grad @ step):
                break
            t *= 0.5
        w = w - t * step
        loss, grad, weights = trial
    return w, factor


class LogisticFold:
    """One split of binary L2 logistic regression: inner solve by Newton's method
    (warm-started across calls), hypergradient of :func:`bilevel.hpo.problems.logistic` by
    implicit differentiation at that solution, the linear system solved with the Newton
    Hessian's Cholesky factor."""

    def __init__(self, X: np.ndarray, y01: np.ndarray, X_val: np.ndarray,
                 y01_val: np.ndarray):
        self.offset = float(np.log(len(y01)))
        self.X, self.y = X, y01
        self.problem = problems.logistic(X, y01, X_val, y01_val)
        self.state = HypergradState()

    def solve(self, lam: np.ndarray) -> tuple[np.ndarray, Any]:
        """``w*(λ)`` (warm-started from the last solution) and the Hessian's factor."""
        rho = np.broadcast_to(np.exp(lam), (self.X.shape[1],))
        w, factor = fit_logistic(self.X, self.y, rho, self.state.w)
        self.state.w = w
        return w, factor

    def value(self, lam: np.ndarray) -> float:
        """The validation log-loss ``f(w*(λ))``."""
        return float(self.problem.outer_value(self.solve(lam)[0], lam))

    def __call__(self, lam: np.ndarray) -> HypergradResult:
        w, factor = self.solve(lam)
        return implicit_at(self.problem, lam, w, CholeskySolve(factor), self.state)


class HypergradLogisticRegression(LinearClassifierMixin, ClassifierMixin, HypergradCVMixin,
                                  BaseEstimator):
    """L2 logistic regression with penalties tuned by hypergradient on a K-fold log-loss.

    Fits ``min_{β,b} Σ_i log(1 + e^{−s_i(x_iᵀβ + b)}) + ½ Σ_j α_j β_j²`` (scikit-learn's
    :class:`~sklearn.linear_model.LogisticRegression` with ``C = 1/α``; one shared
    ``α`` by default, one per feature with ``per_feature=True``; the intercept is not
    penalized), choosing ``α`` to minimize the mean over ``cv`` folds of the validation
    log-loss: a grid over one shared ``α``, then L-BFGS-B on ``log α`` with the implicit
    hypergradient of each fold at its Newton inner solution, then a refit on all the
    data. More than two classes are fitted one-vs-rest, each class with its own penalties.
    See :doc:`/sklearn`.

    Parameters
    ----------
    per_feature : bool
        One penalty per feature, or one shared penalty (default).
    alphas, alpha_range, cv, max_iter, tol
        As in :class:`~bilevel.sklearn.HypergradRidge` (``cv``: stratified 5-fold by
        default).

    Attributes
    ----------
    classes_ : ndarray (n_classes,)
    coef_ : ndarray (1, n_features) or (n_classes, n_features)
    intercept_ : ndarray (1,) or (n_classes,)
    alpha_ : ndarray
        Tuned penalties: shape ``(1,)`` or ``(n_features,)`` per binary problem, stacked
        over classes for one-vs-rest.
    C_ : ndarray
        ``1 / alpha_``, scikit-learn's ``C``.
    hypergradient_ : dict or list of dicts
        As in :class:`~bilevel.sklearn.HypergradRidge` (one per class for one-vs-rest).
    history_ : dict or list of dicts
    n_iter_ : int
        L-BFGS-B iterations of the search (summed over classes).
    n_features_in_ : int

    Notes
    -----
    Cost per evaluation of the K-fold loss: per fold a warm-started Newton inner solve
    (O(N d² + d³) per iteration, a few iterations) and one hypergradient that reuses the
    Newton Hessian's factor.
    """

    def __init__(self, per_feature: bool = False, *, alphas: Any = 7,
                 alpha_range: tuple[float, float] = (1e-6, 1e3), cv: Any = 5,
                 max_iter: int = 100, tol: float = 1e-6):
        self.per_feature = per_feature
        self.alphas = alphas
        self.alpha_range = alpha_range
        self.cv = cv
        self.max_iter = max_iter
        self.tol = tol

    def fit(self, X: Any, y: Any) -> HypergradLogisticRegression:
        """Tune the penalties on ``cv`` stratified folds of ``(X, y)``, then refit."""
        X, y = validate_data(self, X, y, dtype=np.float64, ensure_min_samples=2)
        check_classification_targets(y)
        self.classes_, codes = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"{type(self).__name__} needs samples of at least 2 classes in "
                             f"the data, but the data contains only one class: "
                             f"{self.classes_[0]!r}")
        splits = self._splits(X, codes)
        Xc = X - X.mean(axis=0)
        scale = float(np.mean(np.sum(Xc * Xc, axis=0))) or 1.0
        n_problems = 1 if len(self.classes_) == 2 else len(self.classes_)
        targets = [codes == 1] if n_problems == 1 else [codes == k for k in range(n_problems)]
        self._set_fitted([self._fit_binary(X, t.astype(np.int64), splits, scale)
                          for t in targets])
        return self

    def _set_fitted(self, fits: list[tuple[np.ndarray, Tuned]]) -> None:
        """The fitted attributes from one ``(w, search)`` pair per binary problem."""
        self.coef_ = np.array([w[:-1] for w, _ in fits])
        self.intercept_ = np.array([w[-1] for w, _ in fits])
        alphas = np.array([np.exp(found.best.u) for _, found in fits])
        self.alpha_ = alphas[0] if len(fits) == 1 else alphas
        self.C_ = 1.0 / self.alpha_
        hypergradients = [diagnostics(found) for _, found in fits]
        histories = [found.history for _, found in fits]
        one = len(fits) == 1
        self.hypergradient_ = hypergradients[0] if one else hypergradients
        self.history_ = histories[0] if one else histories
        self.n_iter_ = int(sum(found.n_iter for _, found in fits))

    def _fit_binary(self, X: np.ndarray, y01: np.ndarray, splits: list, scale: float) -> tuple:
        folds = [LogisticFold(X[tr], y01[tr], X[va], y01[va]) for tr, va in splits]
        found = self._tune(folds, self._shared_grid(scale, X.shape[1]))
        rho = np.broadcast_to(np.exp(found.best.u) / len(y01), (X.shape[1],))
        return fit_logistic(X, y01, rho)[0], found

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities: ``σ(decision)`` for two classes; one-vs-rest probabilities
        normalized to sum to one otherwise."""
        check_is_fitted(self)
        scores = self.decision_function(X)
        if scores.ndim == 1:
            p = expit(scores)
            return np.column_stack([1.0 - p, p])
        p = expit(scores)
        return p / p.sum(axis=1, keepdims=True)

    def predict_log_proba(self, X: Any) -> np.ndarray:
        """``log predict_proba(X)``."""
        return np.log(self.predict_proba(X))
