"""Regularisation selection and hyper data cleaning, on generated or bundled data.

Regularisation selection (per-feature L2 logistic regression)::

    g(w, λ) = (1/n) Σ_i log(1 + exp(−y_i x_iᵀw)) + ½ Σ_k exp(λ_k) w_k²
    f(w, λ) = (1/m) Σ_j log(1 + exp(−y_j x_jᵀw)) + (ρ/2)‖λ‖²      (validation)

Hyper data cleaning (multinomial logistic regression, one weight per training sample, the
training labels corrupted with probability p)::

    g(W, λ) = (1/n) Σ_i σ(λ_i) ℓ(W; x_i, y_i) + (reg/2) ‖W‖²
    f(W, λ) = (1/m) Σ_j ℓ(W; x_j, y_j)                            (clean validation)

with ℓ the cross-entropy. Neither has a closed-form optimum: the reference ``F*`` comes from
L-BFGS on the deterministic value function (:func:`~bilevel.stochastic.family.reference_optimum`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import numpy as bnp
from ..backend import to_backend
from .family import DeterministicValue, Family, reference_optimum
from .problem import StochasticProblem

__all__ = ["CleaningLoss", "LogisticLoss", "cleaning", "regularization"]


@dataclass(frozen=True)
class LogisticLoss:
    """Mean logistic loss of a batch ``{"x", "y"}`` (y = ±1), plus ``½ Σ exp(λ_k) w_k²``
    when ``penalty``, plus ``(hyper_reg/2)‖λ‖²``. Cost: O(b·d) for b samples of d
    features."""

    penalty: bool = True
    hyper_reg: float = 0.0

    def __call__(self, w: Any, lam: Any, batch: dict) -> Any:
        loss = bnp.mean(bnp.softplus(-batch["y"] * bnp.matmul(batch["x"], w)))
        if self.penalty:
            loss = loss + 0.5 * bnp.sum(bnp.exp(lam) * w * w)
        if self.hyper_reg:
            loss = loss + 0.5 * self.hyper_reg * bnp.sum(lam * lam)
        return loss


@dataclass(frozen=True)
class CleaningLoss:
    """Cross-entropy of a linear classifier ``W`` (flat, ``(d + 1)·classes``) on a batch
    ``{"x", "y", "index"}``, weighted by ``σ(λ_index)`` when ``weighted``, plus
    ``(reg/2)‖W‖²``. Cost: O(b·d·classes)."""

    features: int
    classes: int
    reg: float = 0.0
    weighted: bool = True

    def __call__(self, w: Any, lam: Any, batch: dict) -> Any:
        W = bnp.reshape(w, (self.features, self.classes))
        ce = bnp.softmax_cross_entropy(bnp.matmul(batch["x"], W), batch["y"], reduction="none")
        if self.weighted:
            ce = bnp.sigmoid(bnp.take(lam, batch["index"])) * ce
        loss = bnp.mean(ce)
        return loss + 0.5 * self.reg * bnp.sum(w * w) if self.reg else loss


def _family(name: str, problem: StochasticProblem, lam0: np.ndarray, w0: np.ndarray,
            backend: str, reference_steps: int, info: dict) -> Family:
    lam0, w0 = to_backend(lam0, backend), to_backend(w0, backend)
    value = DeterministicValue(problem, w0)
    lam_star, value_star = reference_optimum(value, lam0, maxiter=reference_steps)
    value.start(w0)
    return Family(name, problem, lam0, w0, value, value_star, lam_star, info=info)


def regularization(n_train: int = 4096, n_val: int = 1024, features: int = 32, *,
                   hyper_reg: float = 1e-3, seed: int = 0, backend: str = "numpy",
                   reference_steps: int = 100) -> Family:
    """Per-feature L2 regularisation of a logistic regression (``make_classification``).

    λ0 = 0 (unit penalty per feature), w0 = 0. ``value_star`` from L-BFGS
    (``reference_steps`` iterations) on the deterministic value function. ``hyper_reg``
    adds ``(hyper_reg/2)‖λ‖²`` to the outer objective: without it the validation loss is
    minimized by penalties going to 0 or ∞ (λ* at infinity: L-BFGS finds entries of
    size 10–100), where suboptimality measures how far λ drifted, not the method.
    """
    from sklearn.datasets import make_classification

    X, y = make_classification(n_samples=n_train + n_val, n_features=features,
                               n_informative=max(2, features // 4), flip_y=0.1,
                               random_state=seed)
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    y = 2.0 * y - 1.0
    split = {"x": X[:n_train], "y": y[:n_train]}, {"x": X[n_train:], "y": y[n_train:]}
    problem = StochasticProblem(LogisticLoss(True), LogisticLoss(False, hyper_reg),
                                to_backend(split[0], backend), to_backend(split[1], backend),
                                name="regularization")
    return _family("regularization", problem, np.zeros(features), np.zeros(features), backend,
                   reference_steps, dict(n_inner=n_train, n_outer=n_val, dim_inner=features,
                                         dim_outer=features))


def cleaning(n_train: int = 1000, n_val: int = 400, *, corruption: float = 0.5,
             reg: float = 1e-2, seed: int = 0, backend: str = "numpy",
             reference_steps: int = 50) -> Family:
    """Hyper data cleaning of scikit-learn's bundled digits (8×8 images, 10 classes).

    A fraction ``corruption`` of the ``n_train`` training labels is replaced by a uniformly
    drawn class; the ``n_val`` validation samples are clean. λ0 = 0 (all weights ½), W0 = 0.
    """
    from sklearn.datasets import load_digits

    if n_train + n_val > 1797:
        raise ValueError(f"digits has 1797 samples; n_train + n_val = {n_train + n_val}")
    X, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    X = np.hstack([X[order] / 16.0, np.ones((len(y), 1))])
    y = y[order]
    noisy = y[:n_train].copy()
    flip = rng.random(n_train) < corruption
    noisy[flip] = rng.integers(0, 10, int(flip.sum()))
    train = {"x": X[:n_train], "y": noisy, "index": np.arange(n_train)}
    val = {"x": X[n_train:n_train + n_val], "y": y[n_train:n_train + n_val]}
    features = X.shape[1]
    problem = StochasticProblem(CleaningLoss(features, 10, reg, True),
                                CleaningLoss(features, 10, 0.0, False),
                                to_backend(train, backend), to_backend(val, backend),
                                name="cleaning")
    return _family("cleaning", problem, np.zeros(n_train), np.zeros(features * 10), backend,
                   reference_steps, dict(n_inner=n_train, n_outer=n_val,
                                         dim_inner=features * 10, dim_outer=n_train,
                                         corruption=corruption))
