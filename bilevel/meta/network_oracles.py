"""Analytic derivative oracles of a network given as a stack of layers: the shared part.

A *stack* is a piece of a network with flat per-task parameters ``θ (T, n)`` that maps an
input ``x (T, N, ...)`` to an output ``(T, N, ...)`` and provides, with no tracing:

- ``forward(θ, x, v=None, r_in=None)``: the forward pass with the quantities its backward
  passes need; along a parameter direction ``v`` and/or an input direction ``r_in`` also
  Pearlmutter's R-forward pass (the trace's ``r_out`` is ``R{out}``);
- ``backward(θ, trace, d_out, out, need_input)``: backpropagation of the cotangent
  ``d_out = ∂L/∂out``, writing ``∇θ`` into the flat ``(T, n)`` array ``out`` and returning
  ``∂L/∂x`` when ``need_input``;
- ``r_backward(θ, v, trace, d_out, rd_out, out, need_input)``: the R-backward pass, writing
  ``R{∇θ}`` into ``out`` and returning ``(∂L/∂x, R{∂L/∂x})`` when ``need_input``.

With ``R{·}`` the directional derivative along ``(v, r_in)`` (Pearlmutter, *Fast exact
multiplication by the Hessian*, Neural Computation 1994), ``R{∇θ} = H v`` (plus the mixed
term of the input direction). :class:`Chain` composes two stacks; :class:`NetworkOracles`
turns a network's stacks into the oracle table of :class:`bilevel.BilevelProblem` for the
inner problems of the meta-learning algorithms. The stacks are the MLP's
(:mod:`bilevel.meta.model_oracles`) and Conv4's (:mod:`bilevel.meta.conv_oracles`). All of
it runs on the arrays' own namespace (NumPy, CuPy, any Array API library).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from ..backend import device
from ..backend import namespace_of as namespace

__all__ = ["Chain", "ChainTrace", "NetworkOracles", "loss_grad", "loss_hvp", "onehot",
           "softmax"]


# The few array operations below are methods on NumPy arrays (the fast path: a NumPy
# function call costs ~1 µs more than the method, a few hundred times per meta-gradient)
# and namespace functions on every other array (CuPy, array_api_strict's devices).
def _reshape(a: Any, shape: tuple[int, ...]) -> Any:
    return a.reshape(shape) if type(a) is np.ndarray else namespace(a).reshape(a, shape)


def _mT(a: Any) -> Any:
    """The transpose of the last two axes (a view)."""
    return a.swapaxes(-1, -2) if type(a) is np.ndarray else namespace(a).matrix_transpose(a)


def _sum(a: Any, axis: int, keepdims: bool = False) -> Any:
    if type(a) is np.ndarray:
        return a.sum(axis=axis, keepdims=keepdims)
    return namespace(a).sum(a, axis=axis, keepdims=keepdims)


def _astype(a: Any, dtype: Any) -> Any:
    return a.astype(dtype) if type(a) is np.ndarray else namespace(a).astype(a, dtype)


# ------------------------------------------------------------------ losses
def loss_grad(name: str, pred: Any, y: Any) -> Any:
    """``∂L/∂pred`` of the per-task mean loss (``mse`` or ``cross_entropy``)."""
    if name == "mse":
        return (2.0 / (pred.shape[1] * pred.shape[2])) * (pred - y)
    return (softmax(pred) - onehot(y, pred)) / pred.shape[1]


def loss_hvp(name: str, pred: Any, r: Any) -> Any:
    """``∇²L · r`` for a direction ``r`` of the predictions."""
    if name == "mse":
        return (2.0 / (pred.shape[1] * pred.shape[2])) * r
    s = softmax(pred)
    return (s * r - s * _sum(s * r, -1, keepdims=True)) / pred.shape[1]


def softmax(z: Any) -> Any:
    xp = namespace(z)
    e = xp.exp(z - xp.max(z, axis=-1, keepdims=True))
    return e / _sum(e, -1, keepdims=True)


def onehot(y: Any, like: Any) -> Any:
    xp = namespace(like)
    return _astype(y[..., None] == xp.arange(like.shape[-1], device=device(like)), like.dtype)




# ------------------------------------------------------------------ composition
@dataclass
class ChainTrace:
    """The traces of the two stacks of a :class:`Chain`, and the chain's output."""

    first: Any
    second: Any
    out: Any
    r_out: Any


def _cols(a: Any, part: slice) -> Any:
    return None if a is None else a[:, part]


@dataclass(frozen=True)
class Chain:
    """``second ∘ first``: parameters ``θ = (θ_first, θ_second)`` side by side in the flat
    vector, the first stack's output the second's input (the chain rule, both ways)."""

    first: Any
    second: Any

    @property
    def size(self) -> int:
        return self.first.size + self.second.size

    def _parts(self) -> tuple[slice, slice]:
        n = self.first.size
        return slice(0, n), slice(n, self.size)

    def forward(self, theta: Any, x: Any, v: Any = None, r_in: Any = None) -> ChainTrace:
        a, b = self._parts()
        t1 = self.first.forward(theta[:, a], x, _cols(v, a), r_in)
        t2 = self.second.forward(theta[:, b], t1.out, _cols(v, b), t1.r_out)
        return ChainTrace(t1, t2, t2.out, t2.r_out)

    def backward(self, theta: Any, tr: ChainTrace, d_out: Any, out: Any,
                 need_input: bool = False) -> Any:
        a, b = self._parts()
        d = self.second.backward(theta[:, b], tr.second, d_out, out[:, b], need_input=True)
        return self.first.backward(theta[:, a], tr.first, d, out[:, a], need_input)

    def r_backward(self, theta: Any, v: Any, tr: ChainTrace, d_out: Any, rd_out: Any, out: Any,
                   need_input: bool = False) -> Any:
        a, b = self._parts()
        d, rd = self.second.r_backward(theta[:, b], _cols(v, b), tr.second, d_out, rd_out,
                                       out[:, b], need_input=True)
        return self.first.r_backward(theta[:, a], _cols(v, a), tr.first, d, rd, out[:, a],
                                     need_input)


# ------------------------------------------------------------------ the oracles
@dataclass(frozen=True)
class NetworkOracles:
    """The oracles of a batched meta-learning problem over a network of stacks.

    ``head=False``: ``w`` holds all weights and ``g = L̂(w) + (ρ/2)‖w − λ‖²`` (MAML,
    A-MAML; iMAML with ``rho``; λ enters only through the proximal term).
    ``head=True``: ``w`` holds the head and ``g = L̂(head(w, features(λ_bb, x)))`` (ANIL),
    with ``backbone`` the slice of λ holding ``λ_bb``.
    ``f`` is the same loss on the query set, plus ``(ρ_f/2)‖w − λ‖²`` (A-MAML).

    Subclasses give the stacks (:meth:`stacks`). Cost per oracle: one forward and one
    backward pass (gradient), or one forward with R-forward and one R-backward pass (HVP,
    mixed products), about two and four times the cost of evaluating ``g``. Memory: the
    saved quantities of one forward pass (and its R-forward).
    """

    model: Any
    head: bool = False
    backbone: slice | None = None
    rho: float = 0.0
    rho_outer: float = 0.0

    def stacks(self) -> tuple[Any, Any]:
        """``(stack of w, stack of the backbone λ_bb or None)`` for the model."""
        raise NotImplementedError

    @cached_property
    def _nets(self) -> tuple[Any, Any]:
        return self.stacks()

    # -------------------------------------------------------------- pieces
    def _setup(self, w: Any, lam: Any, x: Any, e: Any = None) -> tuple[Any, Any, Any]:
        """(stack of ``w``, its input, ``(λ_bb, backbone trace)`` or None); ``e``: a
        direction of λ for the backbone's R-forward pass."""
        net, bb = self._nets
        if not self.head or bb is None or not bb.size:
            return net, x, None
        part = slice(None) if self.backbone is None else self.backbone
        tr = bb.forward(lam[:, part], x, None if e is None else e[:, part])
        return net, tr.out, (lam[:, part], tr)

    def _grads(self, w: Any, lam: Any, x: Any, y: Any, need_input: bool):
        net, h, bb = self._setup(w, lam, x)
        tr = net.forward(w, h)
        out = namespace(w).empty_like(w)
        d_in = net.backward(w, tr, loss_grad(self.model.loss_name, tr.out, y), out,
                            need_input and bb is not None)
        return out, d_in, bb, tr.out

    def _lam_grad(self, lam: Any, bb: Any, d_feat: Any) -> Any:
        """``∂/∂λ`` of a cotangent ``d_feat`` on the backbone features (zero elsewhere)."""
        out = namespace(lam).zeros_like(lam)
        if bb is not None:
            part = slice(None) if self.backbone is None else self.backbone
            self._nets[1].backward(bb[0], bb[1], d_feat, out[:, part])
        return out

    # -------------------------------------------------------------- oracles
    def grad(self, w: Any, lam: Any, x: Any, y: Any) -> Any:
        """``∇_w g``."""
        g = self._grads(w, lam, x, y, need_input=False)[0]
        return g + self.rho * (w - lam) if self.rho else g

    def hvp_and_mixed(self, w: Any, lam: Any, v: Any, x: Any, y: Any,
                      mixed: bool = True) -> tuple[Any, Any]:
        """``(H v, Mᵀv)``: one R-forward and R-backward (the mixed part through the backbone)."""
        net, h, bb = self._setup(w, lam, x)
        loss = self.model.loss_name
        tr = net.forward(w, h, v=v)
        need = bool(mixed and self.head and bb is not None)
        hv = namespace(w).empty_like(w)
        res = net.r_backward(w, v, tr, loss_grad(loss, tr.out, y),
                             loss_hvp(loss, tr.out, tr.r_out), hv, need_input=need)
        if self.rho:
            hv = hv + self.rho * v
        if not mixed:
            return hv, None
        if need:
            return hv, self._lam_grad(lam, bb, res[1])
        if self.head:
            return hv, namespace(lam).zeros_like(lam)
        return hv, (-self.rho * v if self.rho else namespace(lam).zeros_like(lam))

    def hvp(self, w: Any, lam: Any, v: Any, x: Any, y: Any) -> Any:
        """``H v = ∇²_ww g · v``."""
        return self.hvp_and_mixed(w, lam, v, x, y, mixed=False)[0]

    def mixed_vjp(self, w: Any, lam: Any, u: Any, x: Any, y: Any) -> Any:
        """``Mᵀu = ∂_λ⟨∇_w g, u⟩``."""
        if not self.head:
            return -self.rho * u if self.rho else namespace(lam).zeros_like(lam)
        return self.hvp_and_mixed(w, lam, u, x, y)[1]

    def mixed_jvp(self, w: Any, lam: Any, e: Any, x: Any, y: Any) -> Any:
        """``M e = ∂_ε ∇_w g(w, λ + εe)``: the backbone tangent through the head's R-operator."""
        if not self.head:
            return -self.rho * e if self.rho else namespace(w).zeros_like(w)
        net, h, bb = self._setup(w, lam, x, e)
        if bb is None:
            return namespace(w).zeros_like(w)
        loss = self.model.loss_name
        tr = net.forward(w, h, r_in=bb[1].r_out)
        out = namespace(w).empty_like(w)
        net.r_backward(w, None, tr, loss_grad(loss, tr.out, y), loss_hvp(loss, tr.out, tr.r_out),
                       out)
        return out

    def outer_grads(self, w: Any, lam: Any, x: Any, y: Any) -> tuple[Any, Any]:
        """``(∇_w f, ∇_λ f)`` of the query loss."""
        return self.outer_value_and_grads(w, lam, x, y)[1:]

    def outer_value_and_grads(self, w: Any, lam: Any, x: Any, y: Any
                              ) -> tuple[Any, Any, Any]:
        """``(f, ∇_w f, ∇_λ f)``: the value ``(T,)`` from the predictions of the same
        forward pass (no second forward pass for the value)."""
        gw, d_feat, bb, pred = self._grads(w, lam, x, y, need_input=self.head)
        value = self.model.loss(pred, y)
        if self.head:
            return value, gw, self._lam_grad(lam, bb, d_feat)
        if not self.rho_outer:
            return value, gw, namespace(lam).zeros_like(lam)
        r = w - lam
        value = value + (0.5 * self.rho_outer) * _sum(r * r, -1)
        r = self.rho_outer * r
        return value, gw + r, -r

    # -------------------------------------------------------------- the table
    def table(self) -> dict[str, Any]:
        """The ``oracles=`` dictionary of :class:`bilevel.BilevelProblem` (data: an Episode)."""
        return {
            "inner_grad": _OnSet(self.grad, "support"),
            "inner_hvp": _OnSet(self.hvp, "support"),
            "inner_mixed_vjp": _OnSet(self.mixed_vjp, "support"),
            "inner_mixed_jvp": _OnSet(self.mixed_jvp, "support"),
            "outer_value_and_grads": _OnSet(self.outer_value_and_grads, "query"),
        }


@dataclass(frozen=True)
class _OnSet:
    """``fn(w, λ, *args, x, y)`` with ``(x, y)`` the ``which`` set of the episode ``data``."""

    fn: Any
    which: str

    def __call__(self, w: Any, lam: Any, *rest: Any) -> Any:
        *args, data = rest
        x, y = getattr(data, f"x_{self.which}"), getattr(data, f"y_{self.which}")
        return self.fn(w, lam, *args, x, y)
