"""Objectives of the generated problems, written with :mod:`bilevel.numpy`.

Each builder returns ``(g, f)`` (module-level functions bound by :class:`Bound`, or methods
of a small record: they pickle) taking ``(w, λ, data)`` with ``w`` of shape ``(n,)``, or
``(B, n)`` when ``batched`` (then every data array has a leading ``B`` axis and the
objectives return ``(B,)``). All are O(n²) (quadratics) or O(N·n) (data terms) per call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._ops import ops
from .ridge import ridge_objectives

__all__ = ["Bound", "MLPObjectives", "mlp", "proximal_inner", "proximal_outer",
           "proximal_quadratic", "quadratic", "quadratic_inner", "quadratic_outer", "ridge"]

Objectives = tuple[Callable[..., Any], Callable[..., Any]]


@dataclass(frozen=True)
class Bound:
    """``fn(w, λ, data, mv=mv)``: an objective with its ``einsum`` layout bound (a
    picklable callable; no keyword dict built per call, unlike :func:`functools.partial`)."""

    fn: Callable[..., Any]
    mv: str

    def __call__(self, w: Any, lam: Any, data: dict) -> Any:
        return self.fn(w, lam, data, mv=self.mv)


def _mv(batched: bool) -> str:
    return "bij,bj->bi" if batched else "ij,j->i"


def quadratic_inner(w: Any, lam: Any, data: dict, *, mv: str = "ij,j->i") -> Any:
    """``g = ½wᵀHw − wᵀ(Bλ + c)`` (``mv``: the matrix-vector ``einsum`` of the batch layout)."""
    hw = ops.einsum(mv, data["H"], w)
    lin = ops.einsum(mv, data["B"], lam) + data["c"]
    return ops.sum(0.5 * w * hw - w * lin, axis=-1)


def quadratic_outer(w: Any, lam: Any, data: dict, *, mv: str = "ij,j->i") -> Any:
    """``f = ½‖Cw − d‖² + ½γ‖λ‖²``."""
    r = ops.einsum(mv, data["C"], w) - data["d"]
    return 0.5 * ops.sum(r * r, axis=-1) + 0.5 * data["gamma"] * ops.sum(lam * lam, axis=-1)


def quadratic(batched: bool) -> Objectives:
    """``g = ½wᵀHw − wᵀ(Bλ + c)``, ``f = ½‖Cw − d‖² + ½γ‖λ‖²`` (data keys H, B, c, C, d, gamma)."""
    mv = _mv(batched)
    return Bound(quadratic_inner, mv), Bound(quadratic_outer, mv)


def ridge(batched: bool) -> Objectives:
    """``g = ½‖Xw − y‖² + ½Σ_j e^{λ_j} w_j²``, ``f = ½‖X_v w − y_v‖²`` (keys X, y, X_val, y_val).

    The objectives of :func:`bilevel.testing.ridge.ridge_objectives` (they handle batched
    data themselves; ``batched`` is kept for the uniform signature of this module).
    """
    return ridge_objectives()


def proximal_inner(w: Any, lam: Any, data: dict, *, mv: str = "ij,j->i") -> Any:
    """``g = ½(w − a)ᵀP(w − a) + (r/2)‖w − θ‖²`` with θ = λ."""
    e = w - data["a"]
    t = w - lam
    return ops.sum(0.5 * e * ops.einsum(mv, data["P"], e) + 0.5 * data["prox"] * t * t, axis=-1)


def proximal_outer(w: Any, lam: Any, data: dict, *, mv: str = "ij,j->i") -> Any:
    """``f = ½(w − b)ᵀQ(w − b)``."""
    e = w - data["b"]
    return ops.sum(0.5 * e * ops.einsum(mv, data["Q"], e), axis=-1)


def proximal_quadratic(batched: bool) -> Objectives:
    """``g = ½(w − a)ᵀP(w − a) + (r/2)‖w − θ‖²`` with θ = λ, ``f = ½(w − b)ᵀQ(w − b)``.

    Data keys P, a, Q, b, prox (the scalar r).
    """
    mv = _mv(batched)
    return Bound(proximal_inner, mv), Bound(proximal_outer, mv)


def mlp_shapes(inputs: int, hidden: int) -> tuple[int, ...]:
    """Offsets of (W₁ ∈ R^{h×d}, b₁ ∈ R^h, v ∈ R^h, c ∈ R) in the flat parameter vector."""
    o1 = hidden * inputs
    return (0, o1, o1 + hidden, o1 + 2 * hidden, o1 + 2 * hidden + 1)


@dataclass(frozen=True)
class MLPObjectives:
    """The objectives of :func:`mlp` as methods of a picklable record of its sizes."""

    batched: bool
    inputs: int
    hidden: int
    penalties: int

    def parts(self, w: Any) -> tuple[Any, Any, Any, Any]:
        """``(W₁, b₁, v, c)`` as views of the flat ``w``."""
        o, hidden = mlp_shapes(self.inputs, self.hidden), self.hidden
        lead = (-1,) if self.batched else ()
        W1 = ops.reshape(w[..., o[0]:o[1]], lead + (hidden, self.inputs))
        b1 = ops.reshape(w[..., o[1]:o[2]], lead + ((1,) if self.batched else ()) + (hidden,))
        return W1, b1, w[..., o[2]:o[3]], w[..., o[3]:o[4]]

    def predict(self, w: Any, X: Any) -> Any:
        """``u(x) = vᵀ tanh(W₁x + b₁) + c`` on the rows of ``X``."""
        xw = "bnd,bhd->bnh" if self.batched else "nd,hd->nh"
        hv = "bnh,bh->bn" if self.batched else "nh,h->n"
        W1, b1, v, c = self.parts(w)
        return ops.einsum(hv, ops.tanh(ops.einsum(xw, X, W1) + b1), v) + c

    def mse(self, w: Any, X: Any, y: Any) -> Any:
        """``(1/2N) Σ (u(x_i) − y_i)²``."""
        r = self.predict(w, X) - y
        return 0.5 * ops.sum(r * r, axis=-1) / y.shape[-1]

    def inner(self, w: Any, lam: Any, data: dict) -> Any:
        """``g``: training error plus the weight decays."""
        W1, _, v, _ = self.parts(w)
        s1 = ops.sum(W1 * W1, axis=(-2, -1))
        s2 = ops.sum(v * v, axis=-1)
        decay1 = ops.exp(lam[..., 0])
        decay2 = decay1 if self.penalties == 1 else ops.exp(lam[..., 1])
        return self.mse(w, data["X"], data["y"]) + 0.5 * (decay1 * s1 + decay2 * s2)

    def outer(self, w: Any, lam: Any, data: dict) -> Any:
        """``f``: validation error."""
        return self.mse(w, data["Xv"], data["yv"])


def mlp(batched: bool, inputs: int, hidden: int, penalties: int) -> Objectives:
    """One-hidden-layer tanh regression network with log-parameterized weight decay.

    ``u(x) = vᵀ tanh(W₁x + b₁) + c``;
    ``g = (1/2N) Σ (u(x_i) − y_i)² + ½ e^{λ_0}‖W₁‖² + ½ e^{λ_1}‖v‖²`` (one shared penalty
    ``e^{λ_0}`` on both when ``penalties == 1``), ``f = (1/2N_v) Σ (u(x_i) − y_i)²`` on the
    validation data. Keys X, y, Xv, yv. Smooth (C^∞) but not convex in w.
    """
    objectives = MLPObjectives(batched, inputs, hidden, penalties)
    return objectives.inner, objectives.outer
