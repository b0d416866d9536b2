"""Hyperparameter-optimization problems: :class:`~bilevel.BilevelProblem` factories on arrays.

Each factory takes training and validation arrays (NumPy or CuPy; the objectives use
:mod:`bilevel.numpy`, so they run on either) and returns a problem whose inner objective
``g`` is a regularized training loss and whose outer objective ``f`` is the validation
loss. Hyperparameters are unconstrained: penalties are ``exp(λ)``, example weights
``σ(λ)``, step sizes ``exp(λ)``, momenta ``σ(λ)``, so any outer optimizer may move them
freely. Parameters ``w`` are flat vectors ``(n,)``; the regression objectives also accept a batch
``(B, n)`` with ``λ`` of shape ``(B, m)``.

=============================  ======================  ===========================  ==========
factory                        w                       λ                            m
=============================  ======================  ===========================  ==========
:func:`ridge`                  coefficients (d,)       log penalty per feature      d or 1
:func:`logistic`               (coef (d,), intercept)  log penalty (per feature)    1 or d
:func:`hyper_cleaning`         softmax weights         logit weight per example     N_train
:func:`optimizer_tuning`       coefficients (d,)       (log lr, logit β)            1 or 2
=============================  ======================  ===========================  ==========

:func:`optimizer_tuning` puts its hyperparameters in the inner *dynamics*
(:class:`TunedGradientDescent`, :class:`TunedMomentum`), not in ``g``: they are
differentiated by :class:`~bilevel.Forward` or :class:`~bilevel.Reverse`; the implicit
methods see no dependence on them (the inner solution does not depend on the step size).
Those dynamics live in :mod:`bilevel.hpo.tuned_dynamics`, the argument checks in
:mod:`bilevel.hpo.inputs`; :func:`ridge` is :func:`bilevel.testing.ridge_problem` with mean
squared errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import bilevel.numpy as bnp

from ..backend import device, namespace
from ..dynamics import Dynamics
from ..problem import BilevelProblem
from ..testing.ridge import RidgeOracles, linear, ridge_objectives, ridge_problem
from ..validation import boolean
from .cleaning_oracles import CleaningOracles
from .inputs import pair, same_features
from .tuned_dynamics import TunedGradientDescent, TunedMomentum

__all__ = [
    "TunedGradientDescent",
    "TunedMomentum",
    "hyper_cleaning",
    "logistic",
    "optimizer_tuning",
    "ridge",
]


# ----------------------------------------------------------------------- ridge
def ridge(
    X_train: Any,
    y_train: Any,
    X_val: Any,
    y_val: Any,
    *,
    per_feature: bool = True,
    log_penalty: bool = True,
    fast_oracles: bool = True,
) -> BilevelProblem:
    """Ridge regression with one penalty per feature (or one shared penalty).

    ::

        g(w, λ) = (1/2N) ‖X w − y‖² + ½ Σ_j ρ_j w_j²        ρ = exp(λ)  (or ρ = λ)
        f(w)    = (1/2N_v) ‖X_v w − y_v‖²

    with ``ρ_j = ρ`` for every feature when ``per_feature=False`` (``λ`` of shape ``(1,)``).
    The inner solution is ``w*(λ) = (XᵀX/N + diag ρ)⁻¹ Xᵀy/N``. No intercept: center ``y``
    (and standardize ``X``) first. The problem is :func:`bilevel.testing.ridge_problem` with
    mean squared errors; its closed-form hypergradient is
    ``bilevel.testing.ridge_hypergrads(..., mean=True)``.

    Parameters
    ----------
    X_train, y_train : arrays (N, d), (N,)
        Training data of the inner objective.
    X_val, y_val : arrays (N_v, d), (N_v,)
        Validation data of the outer objective.
    per_feature : bool
        ``λ`` of shape ``(d,)`` (default) or ``(1,)``.
    log_penalty : bool
        ``ρ = exp(λ)`` (default; unconstrained) or ``ρ = λ`` (then keep ``λ > 0``, e.g.
        with ``minimize(..., transform="exp")``).
    fast_oracles : bool
        Closed-form derivative oracles (:class:`bilevel.testing.ridge.RidgeOracles`:
        ``H v = Xᵀ(X v)/N + ρ ⊙ v``, two matrix-vector products and no autodiff trace per
        product; equal to autograd's to rounding). ``False``: autograd (the reference).

    Returns
    -------
    BilevelProblem
        ``w`` of shape ``(d,)``. Cost of ``g``: O(N d); Hessian ``XᵀX/N + diag ρ``.
    """
    X, y = pair(("X_train", "y_train"), X_train, y_train, "f")
    Xv, yv = pair(("X_val", "y_val"), X_val, y_val, "f")
    same_features(X, Xv)
    name = "ridge_per_feature" if per_feature else "ridge"
    oracles = (RidgeOracles(X, y, Xv, yv, mean=True, log_penalty=log_penalty).as_dict()
               if boolean("fast_oracles", fast_oracles) else None)
    return ridge_problem(X, y, Xv, yv, mean=True, log_penalty=log_penalty, name=name,
                         oracles=oracles)


# ----------------------------------------------------------------------- logistic
def _labels_pm(name: str, y: Any) -> Any:
    xp = namespace(y)
    ok = xp.all((y == 0) | (y == 1))
    if not bool(ok):
        raise ValueError(f"{name} must hold binary labels 0/1")
    return 2.0 * xp.astype(y, xp.float64) - 1.0


def logistic(
    X_train: Any,
    y_train: Any,
    X_val: Any,
    y_val: Any,
    *,
    per_feature: bool = False,
) -> BilevelProblem:
    """L2-regularized logistic regression with an unpenalized intercept.

    ::

        w = (β ∈ R^d, b),   s_i = ±1 for labels 1/0,   ℓ(t) = log(1 + e^{−t})
        g(w, λ) = (1/N) Σ_i ℓ(s_i (x_iᵀβ + b)) + ½ Σ_j exp(λ_j) β_j²
        f(w)    = (1/N_v) Σ_i ℓ(s_i (x_iᵀβ + b))     on the validation set

    Parameters
    ----------
    X_train, y_train : arrays (N, d), (N,)
        Features and integer labels in {0, 1}.
    X_val, y_val : arrays (N_v, d), (N_v,)
        Validation data.
    per_feature : bool
        One log-penalty per coefficient (``λ`` of shape ``(d,)``) or one shared (``(1,)``,
        default).

    Returns
    -------
    BilevelProblem
        ``w`` of shape ``(d + 1,)`` (intercept last). ``g`` is strictly convex for every λ.
        Cost of ``g``: O(N d).
    """
    X, y = pair(("X_train", "y_train"), X_train, y_train, "i")
    Xv, yv = pair(("X_val", "y_val"), X_val, y_val, "i")
    same_features(X, Xv)
    objectives = _Logistic(X.shape[1])
    data = {
        "X": X,
        "s": _labels_pm("y_train", y),
        "X_val": Xv,
        "s_val": _labels_pm("y_val", yv),
    }
    name = "logistic_per_feature" if per_feature else "logistic"
    return BilevelProblem(objectives.inner, objectives.outer, data=data, name=name)


@dataclass(frozen=True)
class _Logistic:
    """The objectives of :func:`logistic` for ``d`` features (picklable methods)."""

    d: int

    def loss(self, w: Any, Xd: Any, s: Any) -> Any:
        d = self.d
        margin = s * (linear(w[..., :d], Xd) + w[..., d:])
        return bnp.mean(bnp.softplus(-margin), axis=-1)

    def inner(self, w: Any, lam: Any, data: dict) -> Any:
        coef = w[..., : self.d]
        return (self.loss(w, data["X"], data["s"])
                + 0.5 * bnp.sum(bnp.exp(lam) * coef * coef, axis=-1))

    def outer(self, w: Any, lam: Any, data: dict) -> Any:
        return self.loss(w, data["X_val"], data["s_val"])


# ----------------------------------------------------------------------- hyper-cleaning
def hyper_cleaning(
    X_train: Any,
    y_train: Any,
    X_val: Any,
    y_val: Any,
    *,
    n_classes: int | None = None,
    l2: float = 1e-3,
    fast_oracles: bool = True,
) -> BilevelProblem:
    """Data hyper-cleaning (Franceschi et al. 2017; Ji et al. 2021).

    A linear softmax classifier ``W ∈ R^{(d+1)×C}`` (bias row last) is trained on possibly
    corrupted labels with one weight ``σ(λ_i)`` per training example; the outer objective
    is the cross-entropy on clean validation labels::

        g(W, λ) = (1/N) Σ_i σ(λ_i) CE(x_iᵀW, ỹ_i) + (c/2) ‖W‖²
        f(W)    = (1/N_v) Σ_i CE(x_iᵀW, y_i)

    Learning λ lowers the weights of mislabeled examples.

    Parameters
    ----------
    X_train, y_train : arrays (N, d), (N,)
        Features and (noisy) integer labels in ``0 .. C−1``.
    X_val, y_val : arrays (N_v, d), (N_v,)
        Clean validation data.
    n_classes : int, optional
        ``C``; default ``max(label) + 1`` over both label arrays.
    l2 : float
        ``c > 0``: makes ``g`` strongly convex (softmax cross-entropy alone has a null space
        along the all-classes direction), so the implicit methods apply.
    fast_oracles : bool
        Use the analytic gradient, Hessian-vector and mixed products of
        :class:`~bilevel.hpo.cleaning_oracles.CleaningOracles` (default) instead of
        autograd's: the same derivatives to rounding, 2–3 matrix products each with no
        tracing. ``False`` keeps autograd (needed to differentiate the hypergradient itself).

    Returns
    -------
    BilevelProblem
        ``w`` of shape ``((d + 1) C,)``, ``λ`` of shape ``(N,)``. Cost of ``g``: O(N d C).
    """
    X, y = pair(("X_train", "y_train"), X_train, y_train, "i")
    Xv, yv = pair(("X_val", "y_val"), X_val, y_val, "i")
    same_features(X, Xv)
    if not l2 > 0:
        raise ValueError(f"l2 must be positive (strong convexity of g), got {l2!r}")
    xp = namespace(X)
    top = int(max(int(xp.max(y)), int(xp.max(yv)))) + 1
    C = top if n_classes is None else int(n_classes)
    if C < top or C < 2:
        raise ValueError(
            f"n_classes must be at least 2 and exceed every label ({top - 1}), got {C}"
        )
    ones = xp.ones((X.shape[0], 1), dtype=X.dtype, device=device(X))
    ones_v = xp.ones((Xv.shape[0], 1), dtype=X.dtype, device=device(Xv))
    d = X.shape[1]
    data = {
        "X": xp.concat([X, ones], axis=1),
        "y": y,
        "X_val": xp.concat([Xv, ones_v], axis=1),
        "y_val": yv,
    }
    oracles = CleaningOracles(C, float(l2)).table() if boolean("fast_oracles", fast_oracles) \
        else None
    return BilevelProblem(_CleaningInner(d, C, float(l2)), _CleaningOuter(d, C), data=data,
                          oracles=oracles, name="hyper_cleaning")


def _cleaning_logits(w: Any, Xa: Any, d: int, C: int) -> Any:
    return bnp.matmul(Xa, bnp.reshape(w, (d + 1, C)))


@dataclass(frozen=True)
class _CleaningInner:
    """``g`` of :func:`hyper_cleaning` (a picklable callable)."""

    d: int
    C: int
    l2: float

    def __call__(self, w: Any, lam: Any, data: dict) -> Any:
        logits = _cleaning_logits(w, data["X"], self.d, self.C)
        ce = bnp.softmax_cross_entropy(logits, data["y"], reduction="none")
        return bnp.mean(bnp.sigmoid(lam) * ce) + 0.5 * self.l2 * bnp.sum(w * w)


@dataclass(frozen=True)
class _CleaningOuter:
    """``f`` of :func:`hyper_cleaning` (a picklable callable)."""

    d: int
    C: int

    def __call__(self, w: Any, lam: Any, data: dict) -> Any:
        logits = _cleaning_logits(w, data["X_val"], self.d, self.C)
        return bnp.softmax_cross_entropy(logits, data["y_val"])


# ----------------------------------------------------------------------- optimizer tuning
class _Constant:
    """``λ ↦ c``: a fixed penalty (picklable, unlike a lambda)."""

    def __init__(self, value: float):
        self.value = value

    def __call__(self, lam: Any) -> Any:
        return self.value


def optimizer_tuning(
    X_train: Any,
    y_train: Any,
    X_val: Any,
    y_val: Any,
    *,
    steps: int,
    momentum: bool = True,
    l2: float = 1e-2,
) -> tuple[BilevelProblem, Dynamics]:
    """Tune the inner optimizer's step size (and momentum) on a fixed ridge regression.

    ::

        g(w) = (1/2N) ‖X w − y‖² + (c/2) ‖w‖²        (independent of λ)
        f(w) = (1/2N_v) ‖X_v w − y_v‖²
        λ = (log α, logit β):  w_K = K steps of TunedMomentum (or TunedGradientDescent)

    The hypergradient is the derivative of the validation loss after ``K`` steps with
    respect to the step size and momentum: it lives in the dynamics (``B_k`` of the step
    map), so use :class:`~bilevel.Forward` (m ≤ 2 tangent columns) or
    :class:`~bilevel.Reverse`.

    Parameters
    ----------
    X_train, y_train, X_val, y_val : arrays
        Regression data as in :func:`ridge`.
    steps : int
        Inner steps K.
    momentum : bool
        λ = (log α, logit β) with :class:`TunedMomentum` (default) or λ = (log α,) with
        :class:`TunedGradientDescent`.
    l2 : float
        Fixed ridge penalty ``c ≥ 0``.

    Returns
    -------
    (BilevelProblem, Dynamics)
        The problem and the tuned dynamics to pass as ``dynamics=``.
    """
    X, y = pair(("X_train", "y_train"), X_train, y_train, "f")
    Xv, yv = pair(("X_val", "y_val"), X_val, y_val, "f")
    same_features(X, Xv)
    if not l2 >= 0:
        raise ValueError(f"l2 must be non-negative, got {l2!r}")
    g, f = ridge_objectives(mean=True, penalty=_Constant(l2))
    data = {"X": X, "y": y, "X_val": Xv, "y_val": yv}
    problem = BilevelProblem(g, f, data=data, name="optimizer_tuning")
    dynamics = TunedMomentum(steps) if momentum else TunedGradientDescent(steps)
    return problem, dynamics
