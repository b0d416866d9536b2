"""Analytic derivative oracles of Conv4: backpropagation and the R-operator through its blocks.

Each block of :class:`~bilevel.meta.conv_models.Conv4` maps ``h (T, N, C, H, W)`` to

    z = K ⋆ h                         (3×3, padding 1; per-task filters K; + bias without norm)
    x̂ = (z − μ) / s,  s = sqrt(σ² + ε) (μ, σ² over the images and pixels of each task/channel)
    y = γ ⊙ x̂ + β                     (per-task normalization: Ioffe & Szegedy, 2015)
    p = maxpool₂(y),  a = max(p, 0)    (2×2 max-pool while the map is ≥ 2×2, ReLU)

and the flattened last ``a`` feeds the linear head (Finn, Abbeel & Levine, 2017). With
``cols(h)`` the im2col columns (so ``z = K cols(h)`` is one GEMM per task), ``n = N·H·W``
and sums ``Σ`` over the images and pixels, the backward pass of a block, for the
cotangent ``d = ∂L/∂a``::

    ∂y = unpool(d ⊙ 1[p > 0])          (to the block maximizers, shared among ties)
    ∇β = Σ ∂y,   ∇γ = Σ ∂y ⊙ x̂,   u = ∂y − ∇β/n − x̂ ⊙ ∇γ/n,   ∂z = (γ/s) ⊙ u
    ∇K = ∂z cols(h)ᵀ,   ∂h = col2im(Kᵀ ∂z)

and Pearlmutter's R-operator (*Fast exact multiplication by the Hessian*, Neural
Computation 1994) along the direction ``(V, Γ, B)`` of ``(K, γ, β)`` and ``R{h}`` of the
input, the maximizers and ReLU pattern held fixed::

    R{z} = K ⋆ R{h} + V ⋆ h,   R{s} = mean(x̂ ⊙ R{z}),   R{x̂} = (center(R{z}) − x̂ R{s}) / s
    R{y} = Γ x̂ + γ R{x̂} + B,   R{a} = 1[p > 0] ⊙ pool(R{y})
    R{∂y} = unpool(R{d} ⊙ 1[p > 0]),   R{∇β} = Σ R{∂y},   R{∇γ} = Σ (R{∂y} x̂ + ∂y R{x̂})
    R{u} = R{∂y} − R{∇β}/n − R{x̂} ∇γ/n − x̂ R{∇γ}/n
    R{∂z} = ((Γ − γ R{s}/s) ⊙ u + γ ⊙ R{u}) / s
    R{∇K} = R{∂z} cols(h)ᵀ + ∂z cols(R{h})ᵀ,   R{∂h} = col2im(Kᵀ R{∂z} + Vᵀ ∂z)

(without normalization ``y = z + b``, ``∇b = Σ ∂z``). The raw kernels of
:mod:`bilevel.numpy` do the convolution and pooling work
(:func:`~bilevel.numpy.nn.flat_columns`, :func:`~bilevel.numpy.nn.uncolumns`,
:func:`~bilevel.numpy.nn.block_max`, :func:`~bilevel.numpy.nn.maximizers`,
:func:`~bilevel.numpy.nn.unpool_max`, :func:`~bilevel.numpy.nn.pool_max`): called on
plain arrays they just compute, on any array namespace. Ties of the max-pool share the
cotangent as in the autograd path, so both agree to rounding.

Cost: a gradient is three GEMMs per block (forward, filter and input derivative), an HVP
eight, plus a few elementwise passes over each map (in place where the map is fresh; on
NumPy over slices of channels, :data:`CHUNK`). Memory: per block the input ``h`` (and
``R{h}``), ``x̂`` (and ``R{x̂}``), the ReLU mask and one byte of maximizer bits per pooled
output, and the im2col columns (``9·C`` times the input) from the forward pass to the
filter derivative (``keep_columns=False`` rebuilds them there instead); the backward pass
frees each block's columns once used. Measured on Conv4 (64 channels, 28×28, 5-way
1-shot, 15 queries), a MAML meta-iteration peaks lower than on the autograd path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from bilevel.numpy.nn import (
    block_max,
    flat_columns,
    maximizers,
    pool_max,
    uncolumns,
    unpool_max,
)

from ..backend import device
from ..backend import namespace_of as namespace
from .conv_models import Conv4
from .model_oracles import DenseStack
from .network_oracles import Chain, NetworkOracles, _mT, _reshape

__all__ = ["Conv4Oracles", "ConvStack", "supports"]

# Inside the stack the maps are held channel-major, (T, C, N, H, W): the GEMM output
# K cols(h) is then the map itself and ∂z its GEMM operand, with no transposing copies,
# and every elementwise pass runs over contiguous memory. The statistics of each task and
# channel are over the images and pixels, the last three axes.
AXES = (2, 3, 4)


def supports(model: Any) -> bool:
    """Whether :class:`Conv4Oracles` covers ``model`` (a :class:`Conv4`)."""
    return type(model) is Conv4


# ------------------------------------------------------------------ array helpers
def _swap(a: Any) -> Any:
    """``(T, A, B, H, W)`` → ``(T, B, A, H, W)`` (a view)."""
    if type(a) is np.ndarray:
        return a.swapaxes(1, 2)
    return namespace(a).permute_dims(a, (0, 2, 1, 3, 4))


def _swapped(a: Any) -> Any:
    """:func:`_swap` as a contiguous array (one copy on NumPy)."""
    return np.ascontiguousarray(a.swapaxes(1, 2)) if type(a) is np.ndarray else _swap(a)


def _channel(a: Any) -> Any:
    """``(T, O)`` → ``(T, O, 1, 1, 1)`` (broadcast over images and pixels)."""
    return _reshape(a, (a.shape[0], a.shape[1], 1, 1, 1))


def _total(a: Any) -> Any:
    """``Σ`` over images and pixels, keeping dims: ``(T, O, 1, 1, 1)``."""
    if type(a) is np.ndarray:
        return a.sum(axis=AXES, keepdims=True)
    return namespace(a).sum(a, axis=AXES, keepdims=True)


def _put(dest: Any, value: Any) -> None:
    """Write ``value`` into the view ``dest`` of a flat output (reshaped to its shape)."""
    dest[...] = _reshape(value, dest.shape)


def _rows(a: Any) -> Any:
    """A channel-major map ``(T, O, N, H, W)`` as GEMM rows ``(T, O, N·H·W)`` (a view)."""
    return _reshape(a, (a.shape[0], a.shape[1], a.shape[2] * a.shape[3] * a.shape[4]))


def _cols(h: Any) -> Any:
    """im2col of a channel-major map: ``(T, 9C, N·H·W)`` (no transposing copy)."""
    return flat_columns(_swap(h), 3, 3, 1, 1)


def _conv(K: Any, cols: Any, shape: tuple[int, ...]) -> Any:
    """``K cols`` (``(T, O, 9C) @ (T, 9C, N·H·W)``) as the map ``shape = (T, O, N, H, W)``."""
    return _reshape(K @ cols, shape)


def _filter_grad(cols: Any, dz: Any) -> Any:
    """``∂z colsᵀ`` as ``(cols ∂zᵀ)ᵀ`` (BLAS is faster with the long axis inner)."""
    return _mT(cols @ _mT(_rows(dz)))


def _input_grad(q: Any, shape: tuple[int, ...]) -> Any:
    """``col2im(q)`` for the rows ``q (T, 9C, N·H·W)``, as the map ``shape (T, C, N, H, W)``.

    :func:`~bilevel.numpy.nn.uncolumns` with the roles of the image and channel axes
    exchanged on both sides (``q`` viewed as ``(T, N, 9, C, H, W)``, the image shape given
    as ``(T, C, N, H, W)``): it then accumulates straight into a channel-major result, in
    memory order, instead of through a transposed view followed by a copy.
    """
    T, C, N, H, W = shape
    q6 = _reshape(q, (T, C, 9, N, H, W))
    q6 = q6.transpose(0, 3, 2, 1, 4, 5) if type(q6) is np.ndarray else namespace(
        q6).permute_dims(q6, (0, 3, 2, 1, 4, 5))
    return uncolumns(q6, 3, 3, 1, 1, shape)


def _crop(y: Any) -> Any:
    """``y`` without the odd last row/column no 2×2 block covers (as the pool does)."""
    h, w = y.shape[-2:]
    return y[..., :h - h % 2, :w - w % 2] if h % 2 or w % 2 else y


def _unpool(d: Any, code: Any, shape: tuple[int, ...]) -> Any:
    """The pool's adjoint, zero on the cropped row/column: ``(.., h, w)`` → ``shape``."""
    g = unpool_max(d, code, 2)
    if tuple(g.shape) == tuple(shape):
        return g
    out = namespace(g).zeros(shape, dtype=g.dtype, device=device(g))
    out[..., :g.shape[-2], :g.shape[-1]] = g
    return out


def _mean(a: Any) -> Any:
    """The mean over images and pixels, keeping dims: ``(T, O, 1, 1, 1)``."""
    if type(a) is np.ndarray:
        return a.mean(axis=AXES, keepdims=True)
    return namespace(a).mean(a, axis=AXES, keepdims=True)


def _product(a: Any, b: Any, out: Any) -> Any:
    """``a ⊙ b``, written into the scratch array ``out`` on NumPy (no fresh allocation)."""
    return np.multiply(a, b, out=out) if type(out) is np.ndarray else a * b


# Below this many entries per slice, the elementwise passes of a block run on all channels
# at once; above, NumPy runs them on slices of channels, so that every temporary stays in
# the cache and is small enough for the allocator to reuse (a fresh large array costs its
# page faults: about half the time of those passes on a 28×28 map, measured).
CHUNK = 1 << 19


def _chunks(x: Any, shape: tuple[int, ...] | None = None) -> list[slice]:
    """Channel slices of about :data:`CHUNK` entries of the map ``shape`` (default
    ``x.shape``) on NumPy; all channels at once elsewhere (one kernel per pass on a GPU)."""
    shape = tuple(x.shape) if shape is None else shape
    O = shape[1]
    per = max(1, CHUNK * O // max(1, math.prod(shape)))
    if type(x) is not np.ndarray or per >= O:
        return [slice(0, O)]
    return [slice(i, min(i + per, O)) for i in range(0, O, per)]


def _part(a: Any, c: slice) -> Any:
    """``a[:, c, ...]`` (``None`` stays ``None``); a pair of direction parts sliced each."""
    if a is None:
        return None
    if isinstance(a, tuple):
        return tuple(_part(x, c) for x in a)
    return a[:, c, ...]


def _joined(parts: list[tuple], inplace: dict[int, Any] | None = None) -> tuple:
    """The per-chunk results joined along the channel axis; the fields ``i`` computed in
    place in full arrays, ``inplace[i]``, are those arrays (no copy)."""
    if len(parts) == 1:
        return parts[0]
    out, inplace = [], inplace or {}
    for i, field in enumerate(zip(*parts, strict=True)):
        if inplace.get(i) is not None and field[0] is not None:
            out.append(inplace[i])
        elif field[0] is None:
            out.append(None)
        else:
            out.append(namespace(field[0]).concat(field, axis=1) if type(field[0]) is not
                       np.ndarray else np.concatenate(field, axis=1))
    return tuple(out)


def _sub_mean(z: Any) -> Any:
    """``z − mean(z)`` in place (``z`` is fresh)."""
    z -= _mean(z)
    return z


# ------------------------------------------------------------------ one block
@dataclass
class Block:
    """The saved quantities of one block: input ``h`` and ``R{h}``, ``x̂``, ``1/s``,
    ``R{s}``, ``R{x̂}``, the maximizer bits, the map shape before pooling, the ReLU mask."""

    h: Any
    rh: Any
    cols: Any
    rcols: Any
    xhat: Any
    r: Any
    rs: Any
    rxhat: Any
    code: Any
    shape: tuple[int, ...]
    mask: Any


@dataclass
class ConvTrace:
    """The blocks of one forward pass, the features ``out`` and ``R{out}``."""

    blocks: list[Block]
    out: Any
    r_out: Any
    map_shape: tuple[int, ...]


@dataclass(frozen=True)
class ConvStack:
    """The four conv blocks of :class:`Conv4` and the flattening, as a stack of
    :mod:`bilevel.meta.network_oracles` (parameters in the model's backbone layout).

    Parameters
    ----------
    in_channels, hidden, norm, eps, pools
        As in the model (:meth:`of` reads them).
    keep_columns
        Keep each block's im2col columns from the forward pass to the filter derivative
        (default), or rebuild them there (less memory between the passes, one more
        im2col per block).
    """

    in_channels: int
    hidden: int
    norm: bool
    eps: float
    pools: tuple[bool, ...]
    keep_columns: bool = True

    @classmethod
    def of(cls, model: Conv4) -> ConvStack:
        return cls(model.in_channels, model.hidden, model.norm, model.eps, tuple(model.pools))

    def _sizes(self) -> list[tuple[int, int]]:
        """Per block ``(9·C·O filter entries, O)``."""
        return [(9 * (self.in_channels if b == 0 else self.hidden) * self.hidden, self.hidden)
                for b in range(len(self.pools))]

    @property
    def size(self) -> int:
        return sum(k + o * (2 if self.norm else 1) for k, o in self._sizes())

    def params(self, theta: Any) -> list[tuple[Any, Any, Any]]:
        """Per block ``(K (T, O, 9C), γ or bias (T, O), β (T, O) or None)``, views of
        ``theta (T, size)``."""
        out, start, T = [], 0, theta.shape[0]
        for k, o in self._sizes():
            K = _reshape(theta[:, start:start + k], (T, o, k // o))
            a = theta[:, start + k:start + k + o]
            start += k + o
            b = None
            if self.norm:
                b, start = theta[:, start:start + o], start + o
            out.append((K, a, b))
        return out

    # -------------------------------------------------------------- forward
    def forward(self, theta: Any, x: Any, v: Any = None, r_in: Any = None) -> ConvTrace:
        """The forward pass, with the R-forward pass along ``(v, r_in)`` when either is given."""
        dirs = [None] * len(self.pools) if v is None else self.params(v)
        blocks, h, rh = [], _swapped(x), None if r_in is None else _swapped(r_in)
        for b, (p, dp) in enumerate(zip(self.params(theta), dirs, strict=True)):
            blk, h, rh = self._block(p, dp, h, rh, self.pools[b])
            blocks.append(blk)
        T, N = x.shape[:2]
        flat = (T, N, h.shape[1] * h.shape[3] * h.shape[4])
        return ConvTrace(blocks, _reshape(_swap(h), flat),
                         None if rh is None else _reshape(_swap(rh), flat), tuple(h.shape))

    def _block(self, p: Any, dp: Any, h: Any, rh: Any, pool: bool) -> tuple[Block, Any, Any]:
        K, a, b = p
        shape = (h.shape[0], K.shape[1], h.shape[2], h.shape[3], h.shape[4])
        cols, rcols = _cols(h), None if rh is None else _cols(rh)
        z = _conv(K, cols, shape)
        rz = None if dp is None else _conv(dp[0], cols, shape)
        if rh is not None:
            t = _conv(K, rcols, shape)
            rz = t if rz is None else rz + t
        if not self.keep_columns:
            cols = rcols = None
        parts = [self._tail(z[:, c, ...], _part(rz, c), a[:, c, ...], _part(b, c),
                            None if dp is None else (dp[1][:, c, ...], _part(dp[2], c)), pool)
                 for c in _chunks(z)]
        xhat, r, rs, rxhat, code, mask, y, ry = _joined(parts, {0: z, 3: rz})
        return Block(h, rh, cols, rcols, xhat if self.norm else None, r, rs,
                     rxhat if self.norm else None, code, shape, mask), y, ry

    def _tail(self, z: Any, rz: Any, a: Any, b: Any, dirs: Any, pool: bool) -> tuple:
        """Normalization, pool and ReLU on channels of the conv output ``z`` (and ``R{z}``),
        in place on ``z`` and ``R{z}`` (which become ``x̂`` and ``R{x̂}``); scratch reused.

        Returns ``(x̂, 1/s, R{s}, R{x̂}, maximizers, mask, a, R{a})``.
        """
        r = rs = ry = None
        if self.norm:
            xhat = _sub_mean(z)
            y = xhat * xhat  # scratch for the variance, then y
            r = 1.0 / namespace(y).sqrt(_mean(y) + self.eps)
            xhat *= r
            y = _product(xhat, _channel(a), y)
            y += _channel(b)
            if rz is not None:
                tmp = xhat * rz
                rs = _total(tmp) / (z.shape[2] * z.shape[3] * z.shape[4])
                rz = _sub_mean(rz)  # R{x̂} = (center(R{z}) − x̂ R{s}) / s
                rz -= _product(xhat, rs, tmp)
                rz *= r
                ry = _product(rz, _channel(a), tmp)
                if dirs is not None:
                    ry += xhat * _channel(dirs[0])
                    ry += _channel(dirs[1])
        else:
            y = z
            y += _channel(a)
            ry = rz
            if rz is not None and dirs is not None:
                ry += _channel(dirs[0])
        code = None
        if pool:
            yc = _crop(y)
            y = block_max(yc, 2)
            code = maximizers(yc, y, 2)
            ry = None if ry is None else pool_max(_crop(ry), code, 2)
        mask = y > 0 if type(y) is np.ndarray else namespace(y).astype(y > 0, y.dtype)
        y *= mask  # the ReLU, in place on the fresh map
        if ry is not None:
            ry *= mask
        return z, r, rs, rz, code, mask, y, ry

    # -------------------------------------------------------------- backward
    def backward(self, theta: Any, tr: ConvTrace, d_out: Any, out: Any,
                 need_input: bool = False) -> Any:
        """Backpropagation of ``d_out (T, N, F)``; ``∇θ`` written into ``out (T, size)``."""
        return self._backward(theta, None, tr, d_out, None, out, need_input)[0]

    def r_backward(self, theta: Any, v: Any, tr: ConvTrace, d_out: Any, rd_out: Any, out: Any,
                   need_input: bool = False) -> Any:
        """The R-backward pass; ``R{∇θ}`` written into ``out``, ``(∂x, R{∂x})`` returned when
        ``need_input``."""
        return self._backward(theta, v, tr, d_out, rd_out, out, need_input)

    def _backward(self, theta: Any, v: Any, tr: ConvTrace, d: Any, rd: Any, out: Any,
                  need_input: bool) -> Any:
        params, views = self.params(theta), self.params(out)
        dirs = [None] * len(params) if v is None else self.params(v)
        T, O, N, H, W = tr.map_shape
        d = _swapped(_reshape(d, (T, N, O, H, W)))
        rd = None if rd is None else _swapped(_reshape(rd, (T, N, O, H, W)))
        for b in range(len(params) - 1, -1, -1):
            d, rd = self._block_backward(tr.blocks[b], params[b], dirs[b], d, rd, views[b],
                                         need_input or b > 0)
        if not need_input:
            return None, None
        return _swapped(d), None if rd is None else _swapped(rd)

    def _block_backward(self, blk: Block, p: Any, dp: Any, d: Any, rd: Any, views: Any,
                        need_input: bool) -> tuple[Any, Any]:
        """``(∂h, R{∂h})`` of one block; ``∇`` (``rd is None``) or ``R{∇}`` into ``views``."""
        K, a, _ = p
        parts = [self._tail_backward(blk, c, _part(dp, c), a[:, c, ...], d[:, c, ...], _part(rd, c))
                 for c in _chunks(blk.mask, blk.shape)]
        dz, rdz, s1, s2 = _joined(parts)
        if self.norm:
            _put(views[1], s2)
        _put(views[-1 if self.norm else 1], s1)
        cols = _cols(blk.h) if blk.cols is None else blk.cols
        if rd is None:
            _put(views[0], _filter_grad(cols, dz))
        else:
            g = _filter_grad(cols, rdz)
            if blk.rh is not None:
                g += _filter_grad(_cols(blk.rh) if blk.rcols is None else blk.rcols, dz)
            _put(views[0], g)
        del cols
        blk.cols = blk.rcols = None  # the trace is read once: free the columns now
        if not need_input:
            return None, None
        rows = _rows(dz)
        dh = _input_grad(_mT(K) @ rows, blk.h.shape)
        if rd is None:
            return dh, None
        q = _mT(K) @ _rows(rdz)
        if dp is not None:
            q = q + _mT(dp[0]) @ rows
        return dh, _input_grad(q, blk.h.shape)

    def _tail_backward(self, blk: Block, c: slice, dp: Any, gamma: Any, d: Any, rd: Any
                       ) -> tuple:
        """ReLU, pool and normalization backward on the channels ``c``: ``(∂z, R{∂z}, Σ
        terms)`` with the sums ``(∇β, ∇γ)`` (or their R; ``(∇b, None)`` without norm)."""
        mask = blk.mask[:, c, ...]
        d = d * mask
        rd = None if rd is None else rd * mask
        if blk.code is not None:
            shape = blk.shape[:1] + (mask.shape[1],) + blk.shape[2:]
            d = _unpool(d, blk.code[:, c, ...], shape)
            rd = None if rd is None else _unpool(rd, blk.code[:, c, ...], shape)
        if not self.norm:
            return d, rd, _total(d if rd is None else rd), None
        xhat, g, r = blk.xhat[:, c, ...], _channel(gamma), blk.r[:, c, ...]
        n = d.shape[2] * d.shape[3] * d.shape[4]
        u = d * xhat  # scratch for ∇γ, then u = ∂y − ∇β/n − x̂ ∇γ/n in place
        s1, s2 = _total(d), _total(u)
        u = _product(xhat, -s2 / n, u)
        u += d
        u -= s1 / n
        if rd is None:
            u *= r * g
            return u, None, s1, s2
        rxhat = blk.rxhat[:, c, ...]
        ru = rd * xhat  # scratch for R{∇γ}, then R{u}
        rs1, rs2 = _total(rd), _total(ru)
        rs2 += _total(_product(d, rxhat, ru))
        ru = _product(rxhat, -s2 / n, ru)  # R{∂z} = r (Γ − r R{s} γ) u + r γ R{u}
        ru += rd
        ru -= rs1 / n
        ru -= xhat * (rs2 / n)
        ru *= r * g
        coef = -r * blk.rs[:, c, ...] * g
        coef = r * (coef if dp is None else coef + _channel(dp[1]))
        ru += u * coef
        u *= r * g
        return u, ru, rs1, rs2


@dataclass(frozen=True)
class Conv4Oracles(NetworkOracles):
    """The oracles of :class:`~bilevel.meta.network_oracles.NetworkOracles` for a
    :class:`Conv4`: the conv blocks then the linear head as one stack (``head=False``:
    MAML, A-MAML, iMAML), or the head on the conv features (``head=True``, ANIL).

    Cost per oracle: about 3 GEMMs per block (gradient) or 8 (HVP) plus elementwise
    passes, with no tracing (formulas in :mod:`bilevel.meta.conv_oracles`).
    """

    def stacks(self) -> tuple[Any, Any]:
        convs = ConvStack.of(self.model)
        head = DenseStack(tuple(s for _, s in self.model._layout["head"]), "relu")
        if not self.head:
            return Chain(convs, head), None
        return head, convs
