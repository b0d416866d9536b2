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
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import bilevel.numpy as bnp

from ..backend import is_array, namespace
from ..dynamics import Dynamics, State
from ..problem import BilevelProblem

__all__ = [
    "TunedGradientDescent",
    "TunedMomentum",
    "hyper_cleaning",
    "logistic",
    "optimizer_tuning",
    "ridge",
]


# ----------------------------------------------------------------------- input checks
def _matrix(name: str, X: Any) -> Any:
    if not is_array(X) or len(X.shape) != 2:
        shape = tuple(getattr(X, "shape", ())) if is_array(X) else type(X).__name__
        raise ValueError(f"{name} must be a 2-D float array (samples, features), got {shape}")
    if getattr(X.dtype, "kind", "f") != "f":
        raise TypeError(f"{name} must have a floating dtype, got {X.dtype}")
    return X


def _vector(name: str, y: Any, n: int, kind: str) -> Any:
    if not is_array(y) or tuple(y.shape) != (n,):
        shape = tuple(getattr(y, "shape", ())) if is_array(y) else type(y).__name__
        raise ValueError(f"{name} must be a 1-D array of length {n} (one per sample), got {shape}")
    want = {"f": "floating", "i": "integer"}[kind]
    if (y.dtype.kind in "iu") != (kind == "i"):
        raise TypeError(f"{name} must have an {want} dtype, got {y.dtype}")
    return y


def _pair(names: tuple[str, str], X: Any, y: Any, kind: str) -> tuple[Any, Any]:
    X = _matrix(names[0], X)
    return X, _vector(names[1], y, X.shape[0], kind)


def _same_features(X: Any, Xv: Any) -> None:
    if X.shape[1] != Xv.shape[1]:
        raise ValueError(
            f"X_val has {Xv.shape[1]} features but X_train has {X.shape[1]}; they must match"
        )


def _linear(w: Any, X: Any) -> Any:
    """``X w`` for ``w`` of shape ``(d,)`` → ``(N,)``, or ``(B, d)`` → ``(B, N)``."""
    return bnp.matmul(w, bnp.transpose(X))


# ----------------------------------------------------------------------- ridge
def ridge(
    X_train: Any,
    y_train: Any,
    X_val: Any,
    y_val: Any,
    *,
    per_feature: bool = True,
    log_penalty: bool = True,
) -> BilevelProblem:
    """Ridge regression with one penalty per feature (or one shared penalty).

    ::

        g(w, λ) = (1/2N) ‖X w − y‖² + ½ Σ_j ρ_j w_j²        ρ = exp(λ)  (or ρ = λ)
        f(w)    = (1/2N_v) ‖X_v w − y_v‖²

    with ``ρ_j = ρ`` for every feature when ``per_feature=False`` (``λ`` of shape ``(1,)``).
    The inner solution is ``w*(λ) = (XᵀX/N + diag ρ)⁻¹ Xᵀy/N``. No intercept: center ``y``
    (and standardize ``X``) first.

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

    Returns
    -------
    BilevelProblem
        ``w`` of shape ``(d,)``. Cost of ``g``: O(N d); Hessian ``XᵀX/N + diag ρ``.
    """
    X, y = _pair(("X_train", "y_train"), X_train, y_train, "f")
    Xv, yv = _pair(("X_val", "y_val"), X_val, y_val, "f")
    _same_features(X, Xv)

    def penalty(lam: Any) -> Any:
        return bnp.exp(lam) if log_penalty else lam

    def g(w: Any, lam: Any, data: dict) -> Any:
        r = _linear(w, data["X"]) - data["y"]
        fit = bnp.sum(r * r, axis=-1) / (2 * data["X"].shape[0])
        return fit + 0.5 * bnp.sum(penalty(lam) * w * w, axis=-1)

    def f(w: Any, lam: Any, data: dict) -> Any:
        r = _linear(w, data["X_val"]) - data["y_val"]
        return bnp.sum(r * r, axis=-1) / (2 * data["X_val"].shape[0])

    data = {"X": X, "y": y, "X_val": Xv, "y_val": yv}
    name = "ridge_per_feature" if per_feature else "ridge"
    return BilevelProblem(g, f, data=data, name=name)


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
    X, y = _pair(("X_train", "y_train"), X_train, y_train, "i")
    Xv, yv = _pair(("X_val", "y_val"), X_val, y_val, "i")
    _same_features(X, Xv)
    d = X.shape[1]

    def loss(w: Any, Xd: Any, s: Any) -> Any:
        margin = s * (_linear(w[..., :d], Xd) + w[..., d:])
        return bnp.mean(bnp.softplus(-margin), axis=-1)

    def g(w: Any, lam: Any, data: dict) -> Any:
        coef = w[..., :d]
        return loss(w, data["X"], data["s"]) + 0.5 * bnp.sum(bnp.exp(lam) * coef * coef, axis=-1)

    def f(w: Any, lam: Any, data: dict) -> Any:
        return loss(w, data["X_val"], data["s_val"])

    data = {
        "X": X,
        "s": _labels_pm("y_train", y),
        "X_val": Xv,
        "s_val": _labels_pm("y_val", yv),
    }
    name = "logistic_per_feature" if per_feature else "logistic"
    return BilevelProblem(g, f, data=data, name=name)


# ----------------------------------------------------------------------- hyper-cleaning
def hyper_cleaning(
    X_train: Any,
    y_train: Any,
    X_val: Any,
    y_val: Any,
    *,
    n_classes: int | None = None,
    l2: float = 1e-3,
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

    Returns
    -------
    BilevelProblem
        ``w`` of shape ``((d + 1) C,)``, ``λ`` of shape ``(N,)``. Cost of ``g``: O(N d C).
    """
    X, y = _pair(("X_train", "y_train"), X_train, y_train, "i")
    Xv, yv = _pair(("X_val", "y_val"), X_val, y_val, "i")
    _same_features(X, Xv)
    if not l2 > 0:
        raise ValueError(f"l2 must be positive (strong convexity of g), got {l2!r}")
    xp = namespace(X)
    top = int(max(int(xp.max(y)), int(xp.max(yv)))) + 1
    C = top if n_classes is None else int(n_classes)
    if C < top or C < 2:
        raise ValueError(
            f"n_classes must be at least 2 and exceed every label ({top - 1}), got {C}"
        )
    d = X.shape[1]
    ones = xp.ones((X.shape[0], 1), dtype=X.dtype)
    ones_v = xp.ones((Xv.shape[0], 1), dtype=X.dtype)

    def logits(w: Any, Xa: Any) -> Any:
        return bnp.matmul(Xa, bnp.reshape(w, (d + 1, C)))

    def g(w: Any, lam: Any, data: dict) -> Any:
        ce = bnp.softmax_cross_entropy(logits(w, data["X"]), data["y"], reduction="none")
        return bnp.mean(bnp.sigmoid(lam) * ce) + 0.5 * l2 * bnp.sum(w * w)

    def f(w: Any, lam: Any, data: dict) -> Any:
        return bnp.softmax_cross_entropy(logits(w, data["X_val"]), data["y_val"])

    data = {
        "X": xp.concat([X, ones], axis=1),
        "y": y,
        "X_val": xp.concat([Xv, ones_v], axis=1),
        "y_val": yv,
    }
    return BilevelProblem(g, f, data=data, name="hyper_cleaning")


# ----------------------------------------------------------------------- optimizer tuning
def _component(lam: Any, i: int) -> Any:
    """``λ[..., i:i+1]``: shape ``(1,)`` or ``(B, 1)`` (broadcasts against ``w``)."""
    return lam[..., i : i + 1]


def _basis_times(lam: Any, i: int, coef: Any) -> Any:
    """An array of the shape of λ with ``coef`` (``(1,)`` or ``(B, 1)``) at index ``i``."""
    xp = namespace(lam)
    m = lam.shape[-1]
    mask = xp.astype(xp.arange(m) == i, lam.dtype)
    return coef * mask


def _vdot(a: Any, b: Any) -> Any:
    """⟨a, b⟩ along the last axis, keeping it: ``(1,)`` or ``(B, 1)``."""
    xp = namespace(a, b)
    return xp.sum(a * b, axis=-1, keepdims=True)


def _check_index(name: str, i: int) -> int:
    if int(i) != i or i < 0:
        raise ValueError(f"{name} must be a non-negative integer index into λ, got {i!r}")
    return int(i)


def _check_lam(lam: Any, need: int) -> None:
    if len(lam.shape) == 0 or lam.shape[-1] < need:
        raise ValueError(
            f"the tuned dynamics read λ[..., :{need}]; λ must have shape (m,) or (B, m) with "
            f"m ≥ {need}, got {tuple(lam.shape)}"
        )


class TunedGradientDescent(Dynamics):
    """Gradient descent whose step size is a hyperparameter: ``α = exp(λ_i)``.

    ::

        w_{k+1} = w_k − exp(λ_i) ∇_w g(w_k, λ)

    Jacobians: ``A_k = I − αH``, ``B_k = −α M − α ∇g e_iᵀ`` (the step-size column needs
    only the gradient already computed). One VJP costs one HVP; one JVP one
    forward-over-reverse product. Memory: one state ``(w,)``.

    Parameters
    ----------
    steps : int
        Number of steps K.
    lr_index : int
        Position of ``log α`` in λ (the other entries are passed to ``g`` unchanged).
    batches : callable, optional
        ``k -> data`` for stochastic inner objectives.
    """

    def __init__(
        self, steps: int, lr_index: int = 0, batches: Callable[[int], Any] | None = None
    ):
        self.steps = self._check_steps(steps)
        self.lr_index = _check_index("lr_index", lr_index)
        self.batches = batches

    def __repr__(self) -> str:
        return f"TunedGradientDescent(steps={self.steps}, lr_index={self.lr_index})"

    def lr(self, lam: Any) -> Any:
        """α = exp(λ_i), shape ``(1,)`` or ``(B, 1)``."""
        _check_lam(lam, self.lr_index + 1)
        return bnp.exp(_component(lam, self.lr_index))

    def step(self, problem: BilevelProblem, state: State, lam: Any, k: int) -> State:
        (w,) = state
        return (w - self.lr(lam) * problem.inner_grad(w, lam, data=self.data(problem, k)),)

    def step_vjp(
        self, problem: BilevelProblem, state: State, lam: Any, k: int, cot: State
    ) -> tuple[State, Any]:
        """``(a − αHa, −α Mᵀa − α⟨∇g, a⟩ e_i)``: one HVP."""
        (w,), (a,) = state, cot
        lin = problem.linearize(w, lam, data=self.data(problem, k))
        hu, mu = lin.vjp(a)
        lr = self.lr(lam)
        return (a - lr * hu,), -lr * mu + _basis_times(lam, self.lr_index, -lr * _vdot(lin.grad, a))

    def step_jvp(
        self, problem: BilevelProblem, state: State, lam: Any, k: int, tan: State, tan_lam: Any
    ) -> tuple[State, State]:
        """Next state and tangent ``z − α(Hz + Me) − α e_i ∇g``: one JVP."""
        (w,), (z,) = state, tan
        gw, t = problem.inner_grad_jvp(w, lam, z, tan_lam, data=self.data(problem, k))
        lr = self.lr(lam)
        dlr = lr * _component(tan_lam, self.lr_index)
        return (w - lr * gw,), (z - lr * t - dlr * gw,)


class TunedMomentum(Dynamics):
    """Heavy-ball momentum with step size ``α = exp(λ_i)`` and momentum ``β = σ(λ_j)``.

    ::

        v_{k+1} = β v_k + ∇_w g(w_k, λ),     w_{k+1} = w_k − α v_{k+1}

    VJP with cotangents ``(ā_w, ā_v)`` and ``u = ā_v − α ā_w``: ``(ā_w + H u, β u)`` for
    the state and ``Mᵀu − α⟨v_{k+1}, ā_w⟩ e_i + β(1−β)⟨v_k, u⟩ e_j`` for λ (one HVP).
    JVP along ``(z, ζ, e)``: ``ζ' = βζ + β(1−β)e_j v + Hz + Me``,
    ``z' = z − αζ' − α e_i v_{k+1}``. Memory: one state ``(w, v)``.

    Parameters
    ----------
    steps : int
        Number of steps K.
    lr_index, beta_index : int
        Positions of ``log α`` and ``logit β`` in λ.
    batches : callable, optional
        ``k -> data`` for stochastic inner objectives.
    """

    def __init__(
        self,
        steps: int,
        lr_index: int = 0,
        beta_index: int = 1,
        batches: Callable[[int], Any] | None = None,
    ):
        self.steps = self._check_steps(steps)
        self.lr_index = _check_index("lr_index", lr_index)
        self.beta_index = _check_index("beta_index", beta_index)
        if self.lr_index == self.beta_index:
            raise ValueError("lr_index and beta_index must differ")
        self.batches = batches

    def __repr__(self) -> str:
        return (
            f"TunedMomentum(steps={self.steps}, lr_index={self.lr_index}, "
            f"beta_index={self.beta_index})"
        )

    def init(self, w0: Any) -> State:
        return (w0, 0 * w0)

    def coefficients(self, lam: Any) -> tuple[Any, Any]:
        """``(α, β) = (exp λ_i, σ(λ_j))``, each of shape ``(1,)`` or ``(B, 1)``."""
        _check_lam(lam, max(self.lr_index, self.beta_index) + 1)
        return (
            bnp.exp(_component(lam, self.lr_index)),
            bnp.sigmoid(_component(lam, self.beta_index)),
        )

    def step(self, problem: BilevelProblem, state: State, lam: Any, k: int) -> State:
        w, v = state
        lr, beta = self.coefficients(lam)
        v = beta * v + problem.inner_grad(w, lam, data=self.data(problem, k))
        return (w - lr * v, v)

    def step_vjp(
        self, problem: BilevelProblem, state: State, lam: Any, k: int, cot: State
    ) -> tuple[State, Any]:
        (w, v), (aw, av) = state, cot
        lr, beta = self.coefficients(lam)
        lin = problem.linearize(w, lam, data=self.data(problem, k))
        v_next = beta * v + lin.grad
        u = av - lr * aw
        hu, mu = lin.vjp(u)
        cot_lam = (
            mu
            + _basis_times(lam, self.lr_index, -lr * _vdot(v_next, aw))
            + _basis_times(lam, self.beta_index, beta * (1 - beta) * _vdot(v, u))
        )
        return (aw + hu, beta * u), cot_lam

    def step_jvp(
        self, problem: BilevelProblem, state: State, lam: Any, k: int, tan: State, tan_lam: Any
    ) -> tuple[State, State]:
        (w, v), (z, zeta) = state, tan
        lr, beta = self.coefficients(lam)
        gw, t = problem.inner_grad_jvp(w, lam, z, tan_lam, data=self.data(problem, k))
        v_next = beta * v + gw
        zeta = beta * zeta + beta * (1 - beta) * _component(tan_lam, self.beta_index) * v + t
        z = z - lr * zeta - lr * _component(tan_lam, self.lr_index) * v_next
        return (w - lr * v_next, v_next), (z, zeta)


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
        The problem and the tuned dynamics to pass as ``inner=``.
    """
    X, y = _pair(("X_train", "y_train"), X_train, y_train, "f")
    Xv, yv = _pair(("X_val", "y_val"), X_val, y_val, "f")
    _same_features(X, Xv)
    if not l2 >= 0:
        raise ValueError(f"l2 must be non-negative, got {l2!r}")

    def g(w: Any, lam: Any, data: dict) -> Any:
        r = _linear(w, data["X"]) - data["y"]
        return bnp.sum(r * r, axis=-1) / (2 * data["X"].shape[0]) + 0.5 * l2 * bnp.sum(
            w * w, axis=-1
        )

    def f(w: Any, lam: Any, data: dict) -> Any:
        r = _linear(w, data["X_val"]) - data["y_val"]
        return bnp.sum(r * r, axis=-1) / (2 * data["X_val"].shape[0])

    data = {"X": X, "y": y, "X_val": Xv, "y_val": yv}
    problem = BilevelProblem(g, f, data=data, name="optimizer_tuning")
    inner = TunedMomentum(steps) if momentum else TunedGradientDescent(steps)
    return problem, inner
