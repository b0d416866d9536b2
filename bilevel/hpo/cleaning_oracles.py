"""Analytic derivative oracles of data hyper-cleaning (per-example weighted softmax regression).

For :func:`bilevel.hpo.problems.hyper_cleaning`, with the features ``X`` (``N × (d+1)``, a
column of ones last), the weights ``W = reshape(w, (d+1, C))``, the probabilities
``P = softmax(X W)`` row by row, the one-hot labels ``Y``, the example weights ``s = σ(λ)``
and ``D = diag(s)/N``::

    g(w, λ)   = (1/N) Σ_i s_i CE(x_iᵀW, y_i) + (c/2)‖w‖²
    ∇_w g     = Xᵀ D (P − Y) + c W
    H v       = Xᵀ D R{P} + c V,   R{P} = P ⊙ (X V) − P ⊙ rowsum(P ⊙ X V)     (R-operator)
    Mᵀu       = s ⊙ (1 − s)/N ⊙ rowsum((P − Y) ⊙ X U)
    M e       = Xᵀ diag(s ⊙ (1 − s) ⊙ e / N)(P − Y)
    ∇_w f     = X_vᵀ (P_v − Y_v)/N_v,   ∇_λ f = 0

(Pearlmutter, *Fast exact multiplication by the Hessian*, Neural Computation 1994, for the
R-operator.) Each oracle is two or three matrix products of ``N × (d+1) × C`` on the arrays'
own namespace (NumPy, CuPy or any Array API library), with no tracing. The probabilities
``P`` of the last point and the product ``X V`` of the last direction are kept, so the
Hessian and mixed products of one reverse step of gradient descent (``H a`` and ``Mᵀa`` at
one ``(w, λ)``) share one forward pass: a reverse step costs three matrix products, the
forward step two. Memory: ``O(N·C)`` for the cache. Checked against autograd to rounding in
``tests/test_fast_oracles.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..backend import device, namespace_of

__all__ = ["CleaningOracles"]


@dataclass
class _Point:
    """What every oracle at ``(w, λ)`` on one data set needs."""

    keys: tuple  # the objects (w, X, y) these values were computed from
    P: Any  # softmax(X W)ᵀ, (C, N)
    residual: Any  # (P − Y)ᵀ, (C, N)


@dataclass(eq=False)
class CleaningOracles:
    """The ``oracles=`` table of a hyper-cleaning problem with ``C`` classes and penalty ``c``.

    Every oracle takes the problem's data dictionary (``X``, ``y``, ``X_val``, ``y_val``, the
    features with their column of ones). ``w`` is flat, ``((d+1)·C,)`` (no batch axis, like
    the autograd objectives).
    """

    classes: int
    l2: float
    _points: dict = field(default_factory=dict, repr=False)
    _direction: tuple = field(default=(), repr=False)
    _weights_at: tuple = field(default=(), repr=False)

    # ------------------------------------------------------------------ shared pieces
    def _point(self, w: Any, lam: Any, X: Any, y: Any, which: str) -> _Point:
        """``Pᵀ`` and ``(P − Y)ᵀ`` at ``w`` on ``X`` (kept for the last point of each data set).

        Class-major ``(C, N)`` layout: the softmax reductions over the few classes are then
        elementwise operations across rows, not short reductions along each row.
        """
        last = self._points.get(which)
        if last is not None and all(a is b for a, b in zip(last.keys, (w, X, y), strict=True)):
            return last
        xp = namespace_of(X)
        P = self._matrix(w, X).T @ X.T
        P -= xp.max(P, axis=0)
        P = xp.exp(P)
        P /= xp.sum(P, axis=0)
        classes = xp.arange(self.classes, dtype=y.dtype, device=device(y))
        residual = P - xp.astype(classes[:, None] == y, P.dtype)  # P − Yᵀ
        point = _Point((w, X, y), P, residual)
        self._points[which] = point
        return point

    def _matrix(self, w: Any, X: Any) -> Any:
        """``W = reshape(w, (d+1, C))``."""
        return namespace_of(w).reshape(w, (X.shape[1], self.classes))

    def _times_X(self, X: Any, v: Any) -> Any:
        """``(X V)ᵀ`` for the direction ``v`` (kept for the last direction)."""
        if self._direction and self._direction[0] is v and self._direction[1] is X:
            return self._direction[2]
        XV = self._matrix(v, X).T @ X.T
        self._direction = (v, X, XV)
        return XV

    def _weights(self, lam: Any) -> tuple[Any, Any]:
        """``(s/N, s(1 − s)/N)`` with ``s = σ(λ)`` (kept for the last λ), each ``(N,)``."""
        if self._weights_at and self._weights_at[0] is lam:
            return self._weights_at[1]
        xp = namespace_of(lam)
        s = xp.exp(-xp.logaddexp(0.0, -lam))  # σ(λ) without overflow
        out = (s / lam.shape[0], s * (1.0 - s) / lam.shape[0])
        self._weights_at = (lam, out)
        return out

    @staticmethod
    def _flat(Gt: Any, X: Any) -> Any:
        """``vec(Xᵀ G)`` from ``Gᵀ`` (``(C, N)``): the layout of ``w``."""
        return namespace_of(X).reshape((Gt @ X).T, (-1,))

    # ------------------------------------------------------------------ oracles
    def inner_grad(self, w: Any, lam: Any, data: dict) -> Any:
        """``∇_w g = Xᵀ D (P − Y) + c w``: two matrix products."""
        X = data["X"]
        pt = self._point(w, lam, X, data["y"], "train")
        return self._flat(pt.residual * self._weights(lam)[0], X) + self.l2 * w

    def inner_hvp(self, w: Any, lam: Any, v: Any, data: dict) -> Any:
        """``H v = Xᵀ D R{P} + c v`` (R-operator): two matrix products after the forward pass."""
        X = data["X"]
        pt = self._point(w, lam, X, data["y"], "train")
        PR = pt.P * self._times_X(X, v)
        PR -= pt.P * namespace_of(PR).sum(PR, axis=0)
        PR *= self._weights(lam)[0]
        return self._flat(PR, X) + self.l2 * v

    def inner_mixed_vjp(self, w: Any, lam: Any, u: Any, data: dict) -> Any:
        """``Mᵀu = s(1 − s)/N ⊙ rowsum((P − Y) ⊙ X U)``: one matrix product (none after
        :meth:`inner_hvp` along the same ``u``)."""
        X = data["X"]
        pt = self._point(w, lam, X, data["y"], "train")
        return self._weights(lam)[1] * namespace_of(u).sum(pt.residual * self._times_X(X, u),
                                                         axis=0)

    def inner_mixed_jvp(self, w: Any, lam: Any, e: Any, data: dict) -> Any:
        """``M e = Xᵀ diag(s(1 − s) e/N)(P − Y)``: one matrix product."""
        X = data["X"]
        pt = self._point(w, lam, X, data["y"], "train")
        return self._flat(pt.residual * (self._weights(lam)[1] * e), X)

    def outer_grads(self, w: Any, lam: Any, data: dict) -> tuple[Any, Any]:
        """``(X_vᵀ (P_v − Y_v)/N_v, 0)``: two matrix products."""
        Xv = data["X_val"]
        pt = self._point(w, lam, Xv, data["y_val"], "val")
        return self._flat(pt.residual, Xv) / Xv.shape[0], namespace_of(lam).zeros_like(lam)

    def table(self) -> dict[str, Any]:
        """The ``oracles=`` dictionary of :class:`bilevel.BilevelProblem`."""
        return {"inner_grad": self.inner_grad, "inner_hvp": self.inner_hvp,
                "inner_mixed_vjp": self.inner_mixed_vjp,
                "inner_mixed_jvp": self.inner_mixed_jvp, "outer_grads": self.outer_grads}
