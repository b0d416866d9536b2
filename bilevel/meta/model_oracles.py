"""Analytic derivative oracles of the built-in MLP: backpropagation and the R-operator.

For the multilayer perceptron of :class:`bilevel.meta.models.MLP` the derivatives the
unrolled meta-gradient needs have closed forms, batched over the task axis: the inner
gradient by backpropagation and the Hessian-vector product by Pearlmutter's R-operator
(Pearlmutter, *Fast exact multiplication by the Hessian*, Neural Computation 1994). With
the layers ``z_l = h_l W_l + b_l``, ``h_{l+1} = σ(z_l)`` (no ``σ`` on the last layer of a
stack) and the loss derivative ``δ_L = ∂L/∂z_L``::

    δ_{l−1} = (δ_l W_lᵀ) ⊙ σ'(z_{l−1}),      ∇_{W_l} = h_lᵀ δ_l,   ∇_{b_l} = Σ_n δ_l
    R{z_l}  = R{h_l} W_l + h_l V_l + c_l,     R{h_{l+1}} = σ'(z_l) ⊙ R{z_l}
    R{δ_L}  = ∇²L · R{z_L}
    R{δ_{l−1}} = (R{δ_l} W_lᵀ + δ_l V_lᵀ) ⊙ σ'(z_{l−1}) + (δ_l W_lᵀ) ⊙ σ''(z_{l−1}) ⊙ R{z_{l−1}}
    H v = (h_lᵀ R{δ_l} + R{h_l}ᵀ δ_l,  Σ_n R{δ_l})_l

for the direction ``v = (V_l, c_l)_l``. Each product is a handful of batched matrix
products per layer (``O(T·N·Σ sizes[l]·sizes[l+1])``, like one gradient) and runs on the
arrays' own namespace (NumPy, CuPy or any Array API library) with no tracing. Memory:
the activations of one forward pass, ``O(T·N·Σ sizes)``.

:class:`DenseStack` is a stack of dense layers in the sense of
:mod:`bilevel.meta.network_oracles`, and :class:`MLPOracles` (a
:class:`~bilevel.meta.network_oracles.NetworkOracles`) turns it into the oracle table of
:class:`bilevel.BilevelProblem` for the two inner problems of the meta-learning algorithms:
all weights (MAML, A-MAML, iMAML with its proximal term) and the head on backbone features
(ANIL). Conv4's head is a :class:`DenseStack` too (:mod:`bilevel.meta.conv_oracles`). The
autograd path stays the reference they are tested against (``tests/test_fast_oracles.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backend import namespace_of as namespace
from .models import MLP
from .network_oracles import NetworkOracles, _astype, _mT, _reshape, _sum

__all__ = ["DenseStack", "MLPOracles", "supports"]

Layers = list[tuple[Any, Any]]


def supports(model: Any) -> bool:
    """Whether :class:`MLPOracles` covers ``model`` (an :class:`MLP`, relu or tanh)."""
    return type(model) is MLP and model.activation in ("relu", "tanh")


# ------------------------------------------------------------------ layout
def unpack(flat: Any, shapes: list[tuple[int, ...]]) -> Layers:
    """``[(W_l (T, i, o), b_l (T, o))]`` as views of ``flat (T, n)`` (layout ``W, b, W, b``)."""
    out, start, T = [], 0, flat.shape[0]
    for i in range(0, len(shapes), 2):
        (fi, fo), k = shapes[i], math.prod(shapes[i])
        out.append((_reshape(flat[:, start:start + k], (T, fi, fo)),
                    flat[:, start + k:start + k + fo]))
        start += k + fo
    return out


def flat_output(like: Any, layers: Layers) -> tuple[Any, Layers]:
    """A fresh flat ``(T, n)`` array and its per-layer views (the layout of ``like``), for
    the backward passes to write their ``(∇W_l, ∇b_l)`` into: no concatenation after."""
    out = namespace(like).empty_like(like)
    return out, unpack(out, [s for W, b in layers for s in (W.shape[1:], b.shape[1:])])


def _matmul_into(a: Any, b: Any, dest: Any) -> Any:
    """``a @ b`` written into ``dest`` (a view of a flat output)."""
    if type(dest) is np.ndarray:
        return np.matmul(a, b, out=dest)
    dest[...] = a @ b
    return dest


def _sum_into(d: Any, dest: Any) -> Any:
    """``Σ_n d`` over the examples axis, written into ``dest``."""
    if type(dest) is np.ndarray:
        return np.sum(d, axis=1, out=dest)
    dest[...] = _sum(d, 1)
    return dest


# ------------------------------------------------------------------ activations
def act(name: str, z: Any) -> Any:
    xp = namespace(z)
    return xp.maximum(z, 0.0) if name == "relu" else xp.tanh(z)


def act_d1(name: str, z: Any, h: Any) -> Any:
    """``σ'(z)`` from ``z`` and ``h = σ(z)``."""
    return _astype(z > 0, z.dtype) if name == "relu" else 1.0 - h * h


def act_d2(name: str, z: Any, h: Any) -> Any | None:
    """``σ''(z)`` (``None`` for relu, whose second derivative is zero almost everywhere)."""
    return None if name == "relu" else -2.0 * h * (1.0 - h * h)


def affine(h: Any, W: Any, b: Any) -> Any:
    """``h W + b`` per task (the bias added in place into the fresh product)."""
    z = h @ W
    z += b[:, None, :]
    return z


# ------------------------------------------------------------------ stacks of layers
@dataclass
class Trace:
    """One forward pass: inputs ``h_l``, pre-activations ``z_l``, output, ``σ'(z_l)``; after
    an R-forward pass also ``R{z_l}``, the input direction and ``R{out}``."""

    hs: list[Any]
    zs: list[Any]
    out: Any
    d1s: list[Any]
    rzs: list[Any] | None = None
    r_in: Any = None
    r_out: Any = None


def forward(layers: Layers, x: Any, activation: str, last: bool) -> Trace:
    """Forward pass; ``last``: apply ``σ`` after the last layer too (a backbone)."""
    hs, zs, d1s, h = [], [], [], x
    for li, (W, b) in enumerate(layers):
        hs.append(h)
        z = affine(h, W, b)
        zs.append(z)
        if last or li < len(layers) - 1:
            h = act(activation, z)
            d1s.append(act_d1(activation, z, h))
        else:
            h = z
    return Trace(hs, zs, h, d1s)


def _outputs(tr: Trace, last: bool) -> list[Any]:
    """``σ(z_l)`` per layer (the next input; ``out`` for the last)."""
    return tr.hs[1:] + [tr.out] if last else tr.hs[1:]


def backward(layers: Layers, tr: Trace, activation: str, last: bool, d_out: Any, out: Layers,
             need_input: bool = False) -> Any:
    """``∂/∂x`` for the cotangent ``d_out`` of the stack's output; ``(∇W_l, ∇b_l)`` are
    written into the views ``out`` (:func:`flat_output`)."""
    d = d_out * tr.d1s[-1] if last else d_out
    for li in range(len(layers) - 1, -1, -1):
        W, _ = layers[li]
        _matmul_into(_mT(tr.hs[li]), d, out[li][0])
        _sum_into(d, out[li][1])
        if li or need_input:
            d = d @ _mT(W)
            if li:
                d = d * tr.d1s[li - 1]
    return d if need_input else None


def r_forward(layers: Layers, dirs: Layers | None, tr: Trace, activation: str, last: bool,
              r_in: Any = None) -> list[Any]:
    """``R{z_l}`` per layer along the parameter direction ``dirs`` (``None``: zero) and the
    input direction ``r_in`` (``None``: the input is fixed)."""
    rzs, rh = [], r_in
    for li, (W, _) in enumerate(layers):
        rz = None if dirs is None else affine(tr.hs[li], *dirs[li])
        if rh is not None:
            rz = rh @ W if rz is None else rz + rh @ W
        rzs.append(rz)
        if last or li < len(layers) - 1:
            rh = tr.d1s[li] * rz
    return rzs


def r_backward(layers: Layers, dirs: Layers | None, tr: Trace, rzs: list[Any], activation: str,
               last: bool, d_out: Any, rd_out: Any, out: Layers, need_input: bool = False,
               r_in: Any = None) -> Any:
    """``(∂/∂x, R{∂/∂x})`` from ``d_out = ∂L/∂out`` and ``R{d_out}`` (``None`` unless
    ``need_input``); ``R{∇θ}`` per layer is written into the views ``out`` (:func:`flat_output`).

    ``dirs`` and ``r_in`` are the directions given to :func:`r_forward` (``None``: zero).
    """
    outs = _outputs(tr, last)
    n = len(layers)
    d, rd = d_out, rd_out
    if last:
        d, rd = _through_act(activation, tr, n - 1, outs[-1], d, rd, rzs[-1])
    rhs = [r_in] + [tr.d1s[i] * rzs[i] for i in range(n - 1)]
    for li in range(n - 1, -1, -1):
        W = layers[li][0]
        if rhs[li] is None:
            _matmul_into(_mT(tr.hs[li]), rd, out[li][0])
        else:  # h_lᵀ R{δ_l} + R{h_l}ᵀ δ_l as one product over the stacked examples
            xp = namespace(rd)
            _matmul_into(_mT(xp.concat([tr.hs[li], rhs[li]], axis=1)),
                         xp.concat([rd, d], axis=1), out[li][0])
        _sum_into(rd, out[li][1])
        if li or need_input:
            rd = rd @ _mT(W)
            if dirs is not None:
                rd = rd + d @ _mT(dirs[li][0])
            d = d @ _mT(W)
            if li:
                d, rd = _through_act(activation, tr, li - 1, outs[li - 1], d, rd, rzs[li - 1])
    return (d, rd) if need_input else None


def _through_act(activation: str, tr: Trace, li: int, h: Any, d: Any, rd: Any, rz: Any
                 ) -> tuple[Any, Any]:
    """``(d ⊙ σ'(z_l), R{d} ⊙ σ'(z_l) + d ⊙ σ''(z_l) ⊙ R{z_l})``."""
    d1, d2 = tr.d1s[li], act_d2(activation, tr.zs[li], h)
    rd = rd * d1 if d2 is None else rd * d1 + d * d2 * rz
    return d * d1, rd


# ------------------------------------------------------------------ the network
@dataclass(frozen=True)
class DenseStack:
    """Dense layers ``shapes`` (``W, b, W, b, …``) as a stack of
    :mod:`bilevel.meta.network_oracles`; ``last``: ``σ`` after the last layer too."""

    shapes: tuple[tuple[int, ...], ...]
    activation: str
    last: bool = False

    @property
    def size(self) -> int:
        return sum(math.prod(s) for s in self.shapes)

    def forward(self, theta: Any, x: Any, v: Any = None, r_in: Any = None) -> Trace:
        """:func:`forward`, then :func:`r_forward` along ``(v, r_in)`` when either is given."""
        layers = unpack(theta, self.shapes)
        tr = forward(layers, x, self.activation, self.last)
        if v is None and r_in is None:
            return tr
        dirs = None if v is None else unpack(v, self.shapes)
        tr.rzs = r_forward(layers, dirs, tr, self.activation, self.last, r_in)
        tr.r_in = r_in
        tr.r_out = tr.d1s[-1] * tr.rzs[-1] if self.last else tr.rzs[-1]
        return tr

    def backward(self, theta: Any, tr: Trace, d_out: Any, out: Any,
                 need_input: bool = False) -> Any:
        """:func:`backward` into the flat ``out``."""
        return backward(unpack(theta, self.shapes), tr, self.activation, self.last, d_out,
                        unpack(out, self.shapes), need_input)

    def r_backward(self, theta: Any, v: Any, tr: Trace, d_out: Any, rd_out: Any, out: Any,
                   need_input: bool = False) -> Any:
        """:func:`r_backward` into the flat ``out``."""
        dirs = None if v is None else unpack(v, self.shapes)
        return r_backward(unpack(theta, self.shapes), dirs, tr, tr.rzs, self.activation,
                          self.last, d_out, rd_out, unpack(out, self.shapes), need_input,
                          tr.r_in)


@dataclass(frozen=True)
class MLPOracles(NetworkOracles):
    """The oracles of :class:`~bilevel.meta.network_oracles.NetworkOracles` for an
    :class:`MLP`: all layers as one :class:`DenseStack` (``head=False``), or the head
    layers on the backbone layers' features (``head=True``, ANIL).

    Cost per oracle: one forward and one backward (gradient), plus one R-forward and
    R-backward (HVP, mixed VJP), each a few batched matrix products per layer.
    """

    def stacks(self) -> tuple[DenseStack, DenseStack | None]:
        layout, act = self.model._layout, self.model.activation
        bb = tuple(s for _, s in layout["backbone"])
        hd = tuple(s for _, s in layout["head"])
        if not self.head:
            return DenseStack(bb + hd, act), None
        return DenseStack(hd, act), DenseStack(bb, act, last=True)
