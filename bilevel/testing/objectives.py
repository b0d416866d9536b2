"""Objectives of the generated problems, written with :mod:`bilevel.numpy`.

Each builder returns ``(g, f)`` taking ``(w, λ, data)`` with ``w`` of shape ``(n,)``, or
``(B, n)`` when ``batched`` (then every data array has a leading ``B`` axis and the
objectives return ``(B,)``). All are O(n²) (quadratics) or O(N·n) (data terms) per call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._ops import ops
from .ridge import ridge_objectives

__all__ = ["mlp", "proximal_quadratic", "quadratic", "ridge"]

Objectives = tuple[Callable[..., Any], Callable[..., Any]]


def _mv(batched: bool) -> str:
    return "bij,bj->bi" if batched else "ij,j->i"


def quadratic(batched: bool) -> Objectives:
    """``g = ½wᵀHw − wᵀ(Bλ + c)``, ``f = ½‖Cw − d‖² + ½γ‖λ‖²`` (data keys H, B, c, C, d, gamma)."""
    mv = _mv(batched)

    def g(w: Any, lam: Any, data: dict) -> Any:
        hw = ops.einsum(mv, data["H"], w)
        lin = ops.einsum(mv, data["B"], lam) + data["c"]
        return ops.sum(0.5 * w * hw - w * lin, axis=-1)

    def f(w: Any, lam: Any, data: dict) -> Any:
        r = ops.einsum(mv, data["C"], w) - data["d"]
        return 0.5 * ops.sum(r * r, axis=-1) + 0.5 * data["gamma"] * ops.sum(lam * lam, axis=-1)

    return g, f


def ridge(batched: bool) -> Objectives:
    """``g = ½‖Xw − y‖² + ½Σ_j e^{λ_j} w_j²``, ``f = ½‖X_v w − y_v‖²`` (keys X, y, X_val, y_val).

    The objectives of :func:`bilevel.testing.ridge.ridge_objectives` (they handle batched
    data themselves; ``batched`` is kept for the uniform signature of this module).
    """
    return ridge_objectives()


def proximal_quadratic(batched: bool) -> Objectives:
    """``g = ½(w − a)ᵀP(w − a) + (r/2)‖w − θ‖²`` with θ = λ, ``f = ½(w − b)ᵀQ(w − b)``.

    Data keys P, a, Q, b, prox (the scalar r).
    """
    mv = _mv(batched)

    def g(w: Any, lam: Any, data: dict) -> Any:
        e = w - data["a"]
        t = w - lam
        return ops.sum(0.5 * e * ops.einsum(mv, data["P"], e) + 0.5 * data["prox"] * t * t, axis=-1)

    def f(w: Any, lam: Any, data: dict) -> Any:
        e = w - data["b"]
        return ops.sum(0.5 * e * ops.einsum(mv, data["Q"], e), axis=-1)

    return g, f


def mlp_shapes(inputs: int, hidden: int) -> tuple[int, ...]:
    """Offsets of (W₁ ∈ R^{h×d}, b₁ ∈ R^h, v ∈ R^h, c ∈ R) in the flat parameter vector."""
    o1 = hidden * inputs
    return (0, o1, o1 + hidden, o1 + 2 * hidden, o1 + 2 * hidden + 1)


def mlp(batched: bool, inputs: int, hidden: int, penalties: int) -> Objectives:
    """One-hidden-layer tanh regression network with log-parameterized weight decay.

    ``u(x) = vᵀ tanh(W₁x + b₁) + c``;
    ``g = (1/2N) Σ (u(x_i) − y_i)² + ½ e^{λ_0}‖W₁‖² + ½ e^{λ_1}‖v‖²`` (one shared penalty
    ``e^{λ_0}`` on both when ``penalties == 1``), ``f = (1/2N_v) Σ (u(x_i) − y_i)²`` on the
    validation data. Keys X, y, Xv, yv. Smooth (C^∞) but not convex in w.
    """
    o = mlp_shapes(inputs, hidden)
    lead = (-1,) if batched else ()

    def parts(w: Any) -> tuple[Any, Any, Any, Any]:
        W1 = ops.reshape(w[..., o[0]:o[1]], lead + (hidden, inputs))
        b1 = ops.reshape(w[..., o[1]:o[2]], lead + ((1,) if batched else ()) + (hidden,))
        v = w[..., o[2]:o[3]]
        c = w[..., o[3]:o[4]]
        return W1, b1, v, c

    xw = "bnd,bhd->bnh" if batched else "nd,hd->nh"
    hv = "bnh,bh->bn" if batched else "nh,h->n"

    def predict(w: Any, X: Any) -> Any:
        W1, b1, v, c = parts(w)
        return ops.einsum(hv, ops.tanh(ops.einsum(xw, X, W1) + b1), v) + c

    def mse(w: Any, X: Any, y: Any) -> Any:
        r = predict(w, X) - y
        return 0.5 * ops.sum(r * r, axis=-1) / y.shape[-1]

    def g(w: Any, lam: Any, data: dict) -> Any:
        W1, _, v, _ = parts(w)
        axes = (-2, -1)
        s1 = ops.sum(W1 * W1, axis=axes)
        s2 = ops.sum(v * v, axis=-1)
        decay1 = ops.exp(lam[..., 0])
        decay2 = decay1 if penalties == 1 else ops.exp(lam[..., 1])
        return mse(w, data["X"], data["y"]) + 0.5 * (decay1 * s1 + decay2 * s2)

    def f(w: Any, lam: Any, data: dict) -> Any:
        return mse(w, data["Xv"], data["yv"])

    return g, f
