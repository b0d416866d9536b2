"""The estimators of :mod:`bilevel.sklearn` against scikit-learn's cross-validated searches.

Three problems, each over random 75/25 train/test splits (the estimators interleaved within
each split, so that timing drift on a shared machine hits all of them alike), every
estimator behind a ``StandardScaler`` in a pipeline and cross-validated with 5 folds on the
training part:

``diabetes``
    442 × 10 regression (scikit-learn's bundled set): ridge (per-feature and one penalty),
    Lasso, elastic net against ``RidgeCV`` (efficient leave-one-out), ``GridSearchCV(Ridge)``,
    ``LassoCV``, ``ElasticNetCV``.
``breast_cancer``
    569 × 30 binary classification (bundled): L2 logistic regression (one penalty and per
    feature) against ``LogisticRegressionCV`` and ``GridSearchCV(LogisticRegression)`` (both
    scored by log-loss).
``noisy``
    300 × 100 synthetic regression (``make_regression``, noise 200) with 20 informative
    features of varied size and 80 pure noise ones: 100 per-feature penalties, where a grid
    or random search cannot go.

Reported per (problem, estimator): the mean and standard deviation over splits of the test
score (R² or accuracy), the test MSE or log-loss, and the fit seconds.

    bilevel bench sklearn --out bench-results      # a few minutes
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from sklearn.datasets import load_breast_cancer, load_diabetes, make_regression
from sklearn.linear_model import (
    ElasticNetCV,
    LassoCV,
    LogisticRegression,
    LogisticRegressionCV,
    Ridge,
    RidgeCV,
)
from sklearn.metrics import accuracy_score, log_loss, mean_squared_error, r2_score
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ..sklearn import (
    HypergradElasticNet,
    HypergradLasso,
    HypergradLogisticRegression,
    HypergradRidge,
)
from .report import figure, markdown_table, save_figure

__all__ = ["PROBLEMS", "plot", "run", "to_markdown"]

_SIZES = {"quick": dict(splits=1, max_iter=3), "full": dict(splits=3, max_iter=100)}
_GRID = np.logspace(-3, 3, 20)


def _regression(max_iter: int) -> dict[str, Callable[[], Any]]:
    return {
        "HypergradRidge (per feature)":
            lambda: HypergradRidge(per_feature=True, max_iter=max_iter),
        "HypergradRidge (one α)": lambda: HypergradRidge(max_iter=max_iter),
        "RidgeCV (LOO)": lambda: RidgeCV(alphas=np.logspace(-3, 3, 50)),
        "GridSearchCV(Ridge), 20 α": lambda: GridSearchCV(Ridge(), {"alpha": _GRID}, cv=5),
        "HypergradLasso": lambda: HypergradLasso(max_iter=max_iter),
        "LassoCV": lambda: LassoCV(cv=5),
        "HypergradElasticNet": lambda: HypergradElasticNet(max_iter=max_iter),
        "ElasticNetCV": lambda: ElasticNetCV(l1_ratio=[0.1, 0.5, 0.7, 0.9, 0.95, 0.99, 1],
                                             cv=5),
    }


def _classification(max_iter: int) -> dict[str, Callable[[], Any]]:
    grid = {"C": np.logspace(-4, 4, 10)}
    return {
        "HypergradLogisticRegression (one α)":
            lambda: HypergradLogisticRegression(max_iter=max_iter),
        "HypergradLogisticRegression (per feature)":
            lambda: HypergradLogisticRegression(per_feature=True, max_iter=max_iter),
        "LogisticRegressionCV": lambda: LogisticRegressionCV(cv=5, scoring="neg_log_loss"),
        "GridSearchCV(LogisticRegression), 10 C": lambda: GridSearchCV(
            LogisticRegression(), grid, cv=5, scoring="neg_log_loss"),
    }


def _noisy(seed: int) -> tuple[np.ndarray, np.ndarray]:
    X, y = make_regression(n_samples=300, n_features=100, n_informative=20, noise=200.0,
                           random_state=seed)
    return X, y


PROBLEMS: dict[str, tuple[Callable[[int], tuple], str, Callable]] = {
    "diabetes": (lambda seed: load_diabetes(return_X_y=True), "regression", _regression),
    "breast_cancer": (lambda seed: load_breast_cancer(return_X_y=True), "classification",
                      _classification),
    "noisy": (_noisy, "regression", lambda m: {k: v for k, v in _regression(m).items()
                                               if "Elastic" not in k}),
}


def _scores(model: Any, task: str, X: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(R², MSE) or (accuracy, log-loss) on the test data."""
    if task == "regression":
        pred = model.predict(X)
        return float(r2_score(y, pred)), float(mean_squared_error(y, pred))
    return (float(accuracy_score(y, model.predict(X))),
            float(log_loss(y, model.predict_proba(X))))


def _measure(problem: str, seed: int, splits: int, max_iter: int) -> list[dict]:
    load, task, estimators = PROBLEMS[problem]
    X, y = load(seed)
    runs: dict[str, list[tuple[float, float, float]]] = {}
    for split in range(splits):
        Xtr, Xte, ytr, yte = train_test_split(
            X, y, test_size=0.25, random_state=seed + split,
            stratify=y if task == "classification" else None)
        for name, make in estimators(max_iter).items():
            model = make_pipeline(StandardScaler(), make())
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                warnings.simplefilter("ignore", UserWarning)
                model.fit(Xtr, ytr)
            seconds = time.perf_counter() - t0
            runs.setdefault(name, []).append((*_scores(model, task, Xte, yte), seconds))
    rows = []
    for name, values in runs.items():
        arr = np.array(values)
        rows.append({"problem": problem, "estimator": name, "task": task,
                     "score": float(arr[:, 0].mean()), "score_sd": float(arr[:, 0].std()),
                     "loss": float(arr[:, 1].mean()), "seconds": float(arr[:, 2].mean()),
                     "splits": len(values)})
    return rows


def run(quick: bool = False, backend: str = "numpy", seed: int = 0,
        problems: tuple[str, ...] = tuple(PROBLEMS)) -> dict:
    """Every estimator on every problem of ``problems`` (NumPy only: scikit-learn)."""
    if backend != "numpy":
        raise ValueError("bench sklearn runs on NumPy only (scikit-learn estimators)")
    size = _SIZES["quick" if quick else "full"]
    rows = [row for name in problems for row in _measure(name, seed, **size)]
    return dict(rows=rows, quick=quick, seed=seed, splits=size["splits"],
                max_iter=size["max_iter"])


def to_markdown(result: dict) -> str:
    """One table: test score (mean ± sd over splits), test loss and fit seconds."""
    return (
        f"Test scores over {result['splits']} random 75/25 splits (seed {result['seed']}); "
        "score: R² (regression) or accuracy; loss: test MSE or log-loss; seconds: fit time "
        "(5-fold search included), measured interleaved on one machine.\n\n"
        + markdown_table(result["rows"], [
            ("problem", "problem", None), ("estimator", "estimator", None),
            ("test score", "score", lambda v: f"{v:.4f}"),
            ("± sd", "score_sd", lambda v: f"{v:.4f}"),
            ("test loss", "loss", lambda v: f"{v:.4g}"),
            ("fit seconds", "seconds", lambda v: f"{v:.2f}"),
        ])
    )


def plot(result: dict, path: str) -> str:
    """PNG: test score per estimator (bars with the spread over splits), one panel per
    problem."""
    problems = list(dict.fromkeys(r["problem"] for r in result["rows"]))
    fig, axes = figure(1, len(problems), size=(5.0 * len(problems), 4.0))
    for ax, name in zip(axes[0], problems, strict=True):
        rows = [r for r in result["rows"] if r["problem"] == name]
        ax.barh(range(len(rows)), [r["score"] for r in rows],
                xerr=[r["score_sd"] for r in rows])
        ax.set_yticks(range(len(rows)), [r["estimator"] for r in rows], fontsize=7)
        low = min(r["score"] - r["score_sd"] for r in rows)
        ax.set_xlim(max(0.0, low - 0.05), None)
        ax.set_title(f"{name}: test {'R²' if rows[0]['task'] == 'regression' else 'accuracy'}")
    return save_figure(fig, path)
