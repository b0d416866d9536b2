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

:class:`MLPOracles` turns them into the oracle table of :class:`bilevel.BilevelProblem`
for the two inner problems of the meta-learning algorithms: all weights (MAML, A-MAML,
iMAML with its proximal term) and the head on backbone features (ANIL). The autograd path
stays the reference they are tested against (``tests/test_fast_oracles.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backend import device
from ..backend import namespace_of as namespace
from .models import MLP

__all__ = ["MLPOracles", "supports"]

Layers = list[tuple[Any, Any]]


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
    """One forward pass: inputs ``h_l``, pre-activations ``z_l``, output, ``σ'(z_l)``."""

    hs: list[Any]
    zs: list[Any]
    out: Any
    d1s: list[Any]


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
    """``R{∂/∂x}`` from ``d_out = ∂L/∂out`` and ``R{d_out}``; ``R{∇θ}`` per layer is written
    into the views ``out`` (:func:`flat_output`).

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
    return rd if need_input else None


def _through_act(activation: str, tr: Trace, li: int, h: Any, d: Any, rd: Any, rz: Any
                 ) -> tuple[Any, Any]:
    """``(d ⊙ σ'(z_l), R{d} ⊙ σ'(z_l) + d ⊙ σ''(z_l) ⊙ R{z_l})``."""
    d1, d2 = tr.d1s[li], act_d2(activation, tr.zs[li], h)
    rd = rd * d1 if d2 is None else rd * d1 + d * d2 * rz
    return d * d1, rd


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


@dataclass(frozen=True)
class MLPOracles:
    """The oracles of a batched meta-learning problem over an :class:`MLP`.

    ``head=False``: ``w`` holds all weights and ``g = L̂(w) + (ρ/2)‖w − λ‖²`` (MAML,
    A-MAML; iMAML with ``rho``; λ enters only through the proximal term).
    ``head=True``: ``w`` holds the head and ``g = L̂(head(w, features(λ_bb, x)))`` (ANIL),
    with ``backbone`` the slice of λ holding ``λ_bb``.
    ``f`` is the same loss on the query set, plus ``(ρ_f/2)‖w − λ‖²`` (A-MAML).

    Cost per oracle: one forward and one backward (gradient), plus one R-forward and
    R-backward (HVP, mixed VJP), each a few batched matrix products per layer.
    """

    model: Any
    head: bool = False
    backbone: slice | None = None
    rho: float = 0.0
    rho_outer: float = 0.0

    # -------------------------------------------------------------- pieces
    def _shapes(self, group: str) -> list[tuple[int, ...]]:
        return [s for _, s in self.model._layout[group]]

    def _stacks(self, w: Any, lam: Any, x: Any) -> tuple[Layers, Any, Any]:
        """(layers of ``w``, input of the ``w``-stack, backbone trace or None)."""
        if not self.head:
            return unpack(w, self._shapes("backbone") + self._shapes("head")), x, None
        lam_bb = lam if self.backbone is None else lam[:, self.backbone]
        bb = unpack(lam_bb, self._shapes("backbone"))
        tr = forward(bb, x, self.model.activation, last=True) if bb else Trace([], [], x, [])
        return unpack(w, self._shapes("head")), tr.out, (bb, tr)

    def _grads(self, w: Any, lam: Any, x: Any, y: Any, need_input: bool):
        layers, h, bb = self._stacks(w, lam, x)
        tr = forward(layers, h, self.model.activation, last=False)
        d_out = loss_grad(self.model.loss_name, tr.out, y)
        out, views = flat_output(w, layers)
        d_in = backward(layers, tr, self.model.activation, False, d_out, views, need_input)
        return out, d_in, bb, tr.out

    def _lam_grad(self, lam: Any, bb: Any, d_feat: Any) -> Any:
        """``∂/∂λ`` of a cotangent ``d_feat`` on the backbone features (zero elsewhere)."""
        xp = namespace(lam)
        out = xp.zeros_like(lam)
        layers, tr = bb
        if layers:
            part = self.backbone if self.backbone is not None else slice(None)
            views = unpack(out[:, part], [s for W, b in layers
                                           for s in (W.shape[1:], b.shape[1:])])
            backward(layers, tr, self.model.activation, True, d_feat, views)
        return out

    # -------------------------------------------------------------- oracles
    def grad(self, w: Any, lam: Any, x: Any, y: Any) -> Any:
        """``∇_w g``."""
        g = self._grads(w, lam, x, y, need_input=False)[0]
        return g + self.rho * (w - lam) if self.rho else g

    def hvp_and_mixed(self, w: Any, lam: Any, v: Any, x: Any, y: Any,
                      mixed: bool = True) -> tuple[Any, Any]:
        """``(H v, Mᵀv)``: one R-forward and R-backward (the mixed part through the backbone)."""
        xp = namespace(w)
        layers, h, bb = self._stacks(w, lam, x)
        dirs = unpack(v, [s for pair in layers for s in (pair[0].shape[1:], pair[1].shape[1:])])
        name, loss = self.model.activation, self.model.loss_name
        tr = forward(layers, h, name, last=False)
        rzs = r_forward(layers, dirs, tr, name, last=False)
        d_out = loss_grad(loss, tr.out, y)
        need = bool(mixed and self.head)
        hv, views = flat_output(w, layers)
        rd_in = r_backward(layers, dirs, tr, rzs, name, False, d_out,
                           loss_hvp(loss, tr.out, rzs[-1]), views, need_input=need)
        if self.rho:
            hv = hv + self.rho * v
        if not mixed:
            return hv, None
        if need:
            return hv, self._lam_grad(lam, bb, rd_in)
        return hv, (-self.rho * v if self.rho else xp.zeros_like(lam))

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
        layers, h, (bb, btr) = self._stacks(w, lam, x)
        if not bb:
            return namespace(w).zeros_like(w)
        e_bb = e if self.backbone is None else e[:, self.backbone]
        name, loss = self.model.activation, self.model.loss_name
        brz = r_forward(bb, unpack(e_bb, self._shapes("backbone")), btr, name, last=True)
        r_h = btr.d1s[-1] * brz[-1]
        tr = forward(layers, h, name, last=False)
        rzs = r_forward(layers, None, tr, name, last=False, r_in=r_h)
        d_out = loss_grad(loss, tr.out, y)
        out, views = flat_output(w, layers)
        r_backward(layers, None, tr, rzs, name, False, d_out, loss_hvp(loss, tr.out, rzs[-1]),
                   views, r_in=r_h)
        return out

    def outer_grads(self, w: Any, lam: Any, x: Any, y: Any) -> tuple[Any, Any]:
        """``(∇_w f, ∇_λ f)`` of the query loss."""
        return self.outer_value_and_grads(w, lam, x, y)[1:]

    def outer_value_and_grads(self, w: Any, lam: Any, x: Any, y: Any) -> tuple[Any, Any, Any]:
        """``(f, ∇_w f, ∇_λ f)``: the query loss per task (the model's own :meth:`loss` on
        the predictions of the gradient's forward pass) and its gradients."""
        gw, d_feat, bb, pred = self._grads(w, lam, x, y, need_input=self.head)
        value = self.model.loss(pred, y)
        if self.head:
            return value, gw, self._lam_grad(lam, bb, d_feat)
        if not self.rho_outer:
            return value, gw, namespace(lam).zeros_like(lam)
        d = w - lam
        r = self.rho_outer * d
        return value + (0.5 * self.rho_outer) * _sum(d * d, -1), gw + r, -r

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
