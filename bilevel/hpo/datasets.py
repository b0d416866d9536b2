"""Real data for the hyperparameter-optimization examples: scikit-learn's bundled sets.

No downloads: :func:`diabetes`, :func:`breast_cancer` and :func:`digits_corrupted` read the
copies that ship with scikit-learn, split them with a seed into train / validation / test
and standardize with training statistics only. Each returns a dict of NumPy float64 arrays
``X, y, Xv, yv, Xt, yt`` (plus set-specific keys).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["breast_cancer", "diabetes", "digits_corrupted", "split_indices", "time_to_target"]


def _sklearn_datasets() -> Any:
    try:
        from sklearn import datasets
    except ImportError as err:  # pragma: no cover - scikit-learn is in the test/bench extras
        raise ImportError(
            "the example data ship with scikit-learn: pip install \"bilevel[bench]\" "
            "(or scikit-learn)"
        ) from err
    return datasets


def split_indices(
    n: int, seed: int, fractions: tuple[float, float] = (0.5, 0.25)
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded train / validation / test index split of ``range(n)``.

    ``fractions`` are the train and validation shares; the test set is the rest.
    """
    if not (0 < fractions[0] and 0 < fractions[1] and sum(fractions) < 1):
        raise ValueError(f"fractions must be two positive shares summing below 1, got {fractions}")
    idx = np.random.default_rng(seed).permutation(n)
    a, b = int(fractions[0] * n), int((fractions[0] + fractions[1]) * n)
    return idx[:a], idx[a:b], idx[b:]


def _standardize(X: np.ndarray, train: np.ndarray) -> np.ndarray:
    """``(X − μ) / σ`` with the training mean and deviation (constant features kept at 0)."""
    mu, sd = X[train].mean(0), X[train].std(0)
    sd = np.where(sd == 0, 1.0, sd)
    return (X - mu) / sd


def diabetes(seed: int = 0, fractions: tuple[float, float] = (0.5, 0.25)) -> dict:
    """Diabetes regression (442 × 10): standardized features, centred and scaled targets.

    Ridge without intercept is then appropriate. ``y_scale`` is the target deviation, to
    report errors in the original units (MSE × ``y_scale²``).
    """
    X, y = _sklearn_datasets().load_diabetes(return_X_y=True)
    tr, va, te = split_indices(len(y), seed, fractions)
    Z = _standardize(X, tr)
    ym, ys = y[tr].mean(), y[tr].std()
    t = (y - ym) / ys
    return {"X": Z[tr], "y": t[tr], "Xv": Z[va], "yv": t[va], "Xt": Z[te], "yt": t[te],
            "y_scale": ys}


def breast_cancer(seed: int = 0, fractions: tuple[float, float] = (0.5, 0.25)) -> dict:
    """Breast-cancer classification (569 × 30): standardized features, labels 0/1 (int64)."""
    X, y = _sklearn_datasets().load_breast_cancer(return_X_y=True)
    tr, va, te = split_indices(len(y), seed, fractions)
    Z = _standardize(X, tr)
    y = y.astype(np.int64)
    return {"X": Z[tr], "y": y[tr], "Xv": Z[va], "yv": y[va], "Xt": Z[te], "yt": y[te]}


def digits_corrupted(
    seed: int = 0, n_train: int = 600, n_val: int = 400, noise: float = 0.5
) -> dict:
    """Digits (1797 × 64, 10 classes) with a seeded share ``noise`` of training labels
    replaced by a different random class (data hyper-cleaning).

    Extra keys: ``y_clean`` (the true training labels) and ``corrupt`` (a boolean mask).
    Each training label is corrupted independently with probability ``noise``.
    """
    if not 0 <= noise < 1:
        raise ValueError(f"noise must be in [0, 1), got {noise}")
    X, y = _sklearn_datasets().load_digits(return_X_y=True)
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(y))
    if n_train + n_val >= len(y):
        raise ValueError(f"n_train + n_val must leave test examples (< {len(y)})")
    tr, va, te = idx[:n_train], idx[n_train : n_train + n_val], idx[n_train + n_val :]
    Z = _standardize(X, tr)
    y = y.astype(np.int64)
    corrupt = rng.random(n_train) < noise
    noisy = np.where(corrupt, (y[tr] + rng.integers(1, 10, n_train)) % 10, y[tr])
    return {"X": Z[tr], "y": noisy, "y_clean": y[tr], "corrupt": corrupt, "Xv": Z[va],
            "yv": y[va], "Xt": Z[te], "yt": y[te]}


def time_to_target(history: dict, target: float) -> tuple[float, int]:
    """Seconds and hypergradients until ``history["value"]`` first reaches ``target``.

    Returns ``(nan, -1)`` when it never does.
    """
    hit = np.flatnonzero(np.asarray(history["value"]) <= target)
    if hit.size == 0:
        return float("nan"), -1
    k = int(hit[0])
    return float(np.asarray(history["time"])[: k + 1].sum()), k + 1
