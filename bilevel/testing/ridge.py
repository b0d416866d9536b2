"""Per-feature ridge regression (V7): the one builder of the ridge bilevel problem.

::

    g(w, λ) = (c/2)‖Xw − y‖² + ½ Σ_j ρ_j w_j²        ρ = exp(λ) (or λ, or a constant)
    f(w)    = (c_v/2)‖X_v w − y_v‖²

with ``c = c_v = 1`` (sums of squares) or ``c = 1/N``, ``c_v = 1/N_v`` (means). The data
dict has keys ``X, y, X_val, y_val``; ``X`` is ``(N, d)`` (shared by a batch of ``w`` of
shape ``(B, d)``) or ``(B, N, d)`` (one data set per problem). Its closed-form
hypergradients are :func:`bilevel.testing.closed_forms.ridge_hypergrads`. Used by the
generated problems (:func:`~bilevel.testing.ridge_problems`), by
:func:`bilevel.hpo.problems.ridge` and by the tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..backend import namespace
from ..problem import BilevelProblem
from ._ops import ops

__all__ = ["RidgeInner", "RidgeOracles", "RidgeOuter", "linear", "ridge_objectives",
           "ridge_oracles", "ridge_problem"]

Objectives = tuple[Callable[..., Any], Callable[..., Any]]


def linear(w: Any, X: Any) -> Any:
    """``X w``: ``(d,)`` or ``(B, d)`` against ``(N, d)``, or ``(B, d)`` against ``(B, N, d)``."""
    if len(X.shape) == 2:
        if len(w.shape) == 1:  # X w: BLAS on X as stored (w Xᵀ would copy Xᵀ per call)
            return ops.matmul(X, w)
        return ops.matmul(w, ops.transpose(X))
    return ops.einsum("bij,bj->bi", X, w)


def _squared_error(w: Any, X: Any, y: Any, mean: bool) -> Any:
    r = linear(w, X) - y
    total = 0.5 * ops.sum(r * r, axis=-1)
    return total / y.shape[-1] if mean else total


@dataclass(frozen=True)
class RidgeInner:
    """``g(w, λ) = (c/2)‖Xw − y‖² + ½ Σ_j ρ_j w_j²`` with ``ρ = penalty(λ)`` (default exp);
    a picklable callable ``(w, λ, data)``."""

    mean: bool = False
    penalty: Callable[[Any], Any] | None = None

    def __call__(self, w: Any, lam: Any, data: dict) -> Any:
        rho = ops.exp if self.penalty is None else self.penalty
        fit = _squared_error(w, data["X"], data["y"], self.mean)
        return fit + 0.5 * ops.sum(rho(lam) * w * w, axis=-1)


@dataclass(frozen=True)
class RidgeOuter:
    """``f(w) = (c_v/2)‖X_v w − y_v‖²``; a picklable callable ``(w, λ, data)``."""

    mean: bool = False

    def __call__(self, w: Any, lam: Any, data: dict) -> Any:
        return _squared_error(w, data["X_val"], data["y_val"], self.mean)


def ridge_objectives(
    *, mean: bool = False, penalty: Callable[[Any], Any] | None = None
) -> Objectives:
    """``(g, f)`` of ridge regression taking ``(w, λ, data)``: :class:`RidgeInner` and
    :class:`RidgeOuter` (picklable with a picklable ``penalty``).

    Parameters
    ----------
    mean : bool
        Divide each squared norm by its number of rows.
    penalty : callable, optional
        ``λ ↦ ρ``, the per-feature penalties (default ``exp``, so λ is unconstrained).

    Cost of ``g``: O(N d) per problem; its Hessian is ``c XᵀX + diag ρ``.
    """
    return RidgeInner(mean, penalty), RidgeOuter(mean)


def _identity(lam: Any) -> Any:
    return lam


def ridge_problem(
    X: Any,
    y: Any,
    X_val: Any,
    y_val: Any,
    *,
    mean: bool = False,
    log_penalty: bool = True,
    penalty: Callable[[Any], Any] | None = None,
    name: str = "ridge",
    **problem_options: Any,
) -> BilevelProblem:
    """The ridge bilevel problem on the given arrays (NumPy or CuPy; no copies).

    Parameters
    ----------
    X, y, X_val, y_val : arrays
        Training and validation data, ``(N, d)``/``(N,)`` or batched ``(B, N, d)``/``(B, N)``.
    mean : bool
        Mean squared errors (``1/N``, ``1/N_v``) instead of sums.
    log_penalty : bool
        ``ρ = exp(λ)`` (default) or ``ρ = λ``.
    penalty : callable, optional
        ``λ ↦ ρ`` of shape ``(d,)``, overriding ``log_penalty`` (e.g. one penalty per group
        of features: ``exp(λ) @ Gᵀ``).
    name : str
        The problem's name.
    **problem_options
        Passed to :class:`~bilevel.problem.BilevelProblem` (``oracles=``, ``init=`` ...).

    Returns
    -------
    BilevelProblem
        ``w`` of shape ``(d,)`` or ``(B, d)``, ``λ`` of shape ``(d,)`` (or ``(1,)``: one
        shared penalty) or ``(B, ·)``.
    """
    if penalty is None and not log_penalty:
        penalty = _identity
    g, f = ridge_objectives(mean=mean, penalty=penalty)
    data = {"X": X, "y": y, "X_val": X_val, "y_val": y_val}
    return BilevelProblem(g, f, data=data, name=name, **problem_options)


def ridge_oracles(X: Any, y: Any, X_val: Any, y_val: Any, groups: Any = None) -> dict:
    """Closed-form oracles of sum-of-squares ridge with log-penalties (no autodiff tape).

    With ``d = e^{λ_G}`` (``G`` the ``(n, m)`` 0/1 matrix ``groups`` assigning each feature
    to one penalty; the identity when ``None``, i.e. one penalty per feature)::

        ∇_w g = Xᵀ(Xw − y) + d ⊙ w      H v = XᵀX v + d ⊙ v
        Mᵀu = Gᵀ(d ⊙ w ⊙ u)              M e = (G (e^λ ⊙ e)) ⊙ w        ∇_w f = X_vᵀ(X_v w − y_v)

    Cost per oracle: two matrix-vector products with ``X`` (O(N n)); unbatched ``w``. Pass
    the result as ``oracles=`` of :func:`ridge_problem` (with the matching ``penalty``).
    """
    return RidgeOracles(X, y, X_val, y_val, groups).as_dict()


def _spread(v: Any, groups: Any) -> Any:
    """Per-penalty values onto the features."""
    return v if groups is None else v @ groups.T


def _gather(v: Any, groups: Any) -> Any:
    """Per-feature values summed per penalty."""
    return v if groups is None else v @ groups


def _transposed(r: Any, X: Any) -> Any:
    """``Xᵀr`` for ``r = linear(w, X)``: ``(N,)`` → ``(d,)``, ``(B, N)`` → ``(B, d)``."""
    if len(X.shape) == 3:
        return (r[:, None, :] @ X)[:, 0, :]
    return X.T @ r if len(r.shape) == 1 else r @ X


def _to_shape(v: Any, lam: Any) -> Any:
    """Per-feature ``v`` summed into one shared penalty when ``λ`` has one entry."""
    if v.shape[-1] != lam.shape[-1] and lam.shape[-1] == 1:
        return namespace(v).sum(v, axis=-1, keepdims=True)
    return v


@dataclass(frozen=True, eq=False)
class RidgeOracles:
    """The oracles of :func:`ridge_oracles` as methods of a record of the data (they
    pickle, unlike closures).

    ``mean``: the objectives of ``ridge_problem(..., mean=True)`` (``c = 1/N``,
    ``c_v = 1/N_v``); ``log_penalty=False``: ``ρ = λ`` (``ρ' = 1``) instead of ``e^λ``.
    ``w`` may be ``(n,)`` or a batch ``(B, n)`` against a shared ``X``; a single shared
    penalty (``λ`` of shape ``(1,)``) gets its mixed products summed over the features.
    """

    X: Any
    y: Any
    X_val: Any
    y_val: Any
    groups: Any = None
    mean: bool = False
    log_penalty: bool = True

    def as_dict(self) -> dict:
        """The ``oracles=`` dict of :class:`~bilevel.problem.BilevelProblem`."""
        return {"inner_grad": self.inner_grad, "inner_hvp": self.inner_hvp,
                "inner_mixed_vjp": self.inner_mixed_vjp,
                "inner_mixed_jvp": self.inner_mixed_jvp, "outer_grads": self.outer_grads}

    def _rho(self, lam: Any) -> Any:
        return namespace(self.X).exp(lam) if self.log_penalty else lam

    def _penalty(self, lam: Any) -> Any:
        return _spread(self._rho(lam), self.groups)

    def _slope(self, lam: Any) -> Any:
        """``dρ/dλ``: ``e^λ`` or one."""
        return self._rho(lam) if self.log_penalty else 1.0

    def _gram(self, X: Any, v: Any) -> Any:
        """``c Xᵀ(X v)`` (two matrix-vector products, no ``XᵀX``)."""
        out = _transposed(linear(v, X), X)
        return out / X.shape[-2] if self.mean else out

    def inner_grad(self, w: Any, lam: Any, data: Any) -> Any:
        r = _transposed(linear(w, self.X) - self.y, self.X)
        return (r / self.X.shape[-2] if self.mean else r) + self._penalty(lam) * w

    def inner_hvp(self, w: Any, lam: Any, v: Any, data: Any) -> Any:
        return self._gram(self.X, v) + self._penalty(lam) * v

    def _feature_slope(self, lam: Any) -> Any:
        """``dρ_j/dλ`` on the features."""
        s = self._slope(lam)
        return _spread(namespace(lam).ones_like(lam) if isinstance(s, float) else s,
                       self.groups)

    def inner_mixed_vjp(self, w: Any, lam: Any, u: Any, data: Any) -> Any:
        return _to_shape(_gather(self._feature_slope(lam) * w * u, self.groups), lam)

    def inner_mixed_jvp(self, w: Any, lam: Any, e: Any, data: Any) -> Any:
        return _spread(self._slope(lam) * e, self.groups) * w

    def outer_grads(self, w: Any, lam: Any, data: Any) -> Any:
        Xv = self.X_val
        r = _transposed(linear(w, Xv) - self.y_val, Xv)
        return (r / Xv.shape[-2] if self.mean else r), namespace(Xv).zeros_like(lam)
