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
NumPy over slices of channels, :data:`bilevel.meta.conv_maps.CHUNK`). Memory: per block
the input ``h`` (and ``R{h}``), ``x̂`` (and ``R{x̂}``), the ReLU mask and one byte of
maximizer bits per pooled output, and the im2col columns (``9·C`` times the input) from
the forward pass to the filter derivative (``keep_columns=False`` rebuilds them there
instead); the backward pass frees each block's columns once used. Measured on Conv4 (64
channels, 28×28, 5-way 1-shot, 15 queries), a MAML meta-iteration peaks lower than on the
autograd path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from bilevel.numpy.nn import block_max, maximizers, pool_max

from ..backend import namespace_of as namespace
from . import conv_maps as maps
from .conv_models import Conv4
from .model_oracles import DenseStack
from .network_oracles import Chain, NetworkOracles, _mT, _reshape

__all__ = ["Conv4Oracles", "ConvStack", "supports"]

def supports(model: Any) -> bool:
    """Whether :class:`Conv4Oracles` covers ``model`` (a :class:`Conv4`)."""
    return type(model) is Conv4


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
        blocks, h, rh = [], maps.swapped(x), None if r_in is None else maps.swapped(r_in)
        for b, (p, dp) in enumerate(zip(self.params(theta), dirs, strict=True)):
            blk, h, rh = self._block(p, dp, h, rh, self.pools[b])
            blocks.append(blk)
        T, N = x.shape[:2]
        flat = (T, N, h.shape[1] * h.shape[3] * h.shape[4])
        return ConvTrace(blocks, _reshape(maps.swap(h), flat),
                         None if rh is None else _reshape(maps.swap(rh), flat), tuple(h.shape))

    def _block(self, p: Any, dp: Any, h: Any, rh: Any, pool: bool) -> tuple[Block, Any, Any]:
        K, a, b = p
        shape = (h.shape[0], K.shape[1], h.shape[2], h.shape[3], h.shape[4])
        cols, rcols = maps.cols(h), None if rh is None else maps.cols(rh)
        z = maps.conv(K, cols, shape)
        rz = None if dp is None else maps.conv(dp[0], cols, shape)
        if rh is not None:
            t = maps.conv(K, rcols, shape)
            rz = t if rz is None else rz + t
        if not self.keep_columns:
            cols = rcols = None
        parts = [self._tail(z[:, c, ...], maps.part(rz, c), a[:, c, ...], maps.part(b, c),
                            None if dp is None else (dp[1][:, c, ...], maps.part(dp[2], c)), pool)
                 for c in maps.chunks(z)]
        xhat, r, rs, rxhat, code, mask, y, ry = maps.joined(parts, {0: z, 3: rz})
        return Block(h, rh, cols, rcols, xhat if self.norm else None, r, rs,
                     rxhat if self.norm else None, code, shape, mask), y, ry

    def _tail(self, z: Any, rz: Any, a: Any, b: Any, dirs: Any, pool: bool) -> tuple:
        """Normalization, pool and ReLU on channels of the conv output ``z`` (and ``R{z}``),
        in place on ``z`` and ``R{z}`` (which become ``x̂`` and ``R{x̂}``); scratch reused.

        Returns ``(x̂, 1/s, R{s}, R{x̂}, maximizers, mask, a, R{a})``.
        """
        r = rs = ry = None
        if self.norm:
            xhat = maps.sub_mean(z)
            y = xhat * xhat  # scratch for the variance, then y
            r = 1.0 / namespace(y).sqrt(maps.mean(y) + self.eps)
            xhat *= r
            y = maps.product(xhat, maps.channel(a), y)
            y += maps.channel(b)
            if rz is not None:
                tmp = xhat * rz
                rs = maps.total(tmp) / (z.shape[2] * z.shape[3] * z.shape[4])
                rz = maps.sub_mean(rz)  # R{x̂} = (center(R{z}) − x̂ R{s}) / s
                rz -= maps.product(xhat, rs, tmp)
                rz *= r
                ry = maps.product(rz, maps.channel(a), tmp)
                if dirs is not None:
                    ry += xhat * maps.channel(dirs[0])
                    ry += maps.channel(dirs[1])
        else:
            y = z
            y += maps.channel(a)
            ry = rz
            if rz is not None and dirs is not None:
                ry += maps.channel(dirs[0])
        code = None
        if pool:
            yc = maps.crop(y)
            y = block_max(yc, 2)
            code = maximizers(yc, y, 2)
            ry = None if ry is None else pool_max(maps.crop(ry), code, 2)
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
        d = maps.swapped(_reshape(d, (T, N, O, H, W)))
        rd = None if rd is None else maps.swapped(_reshape(rd, (T, N, O, H, W)))
        for b in range(len(params) - 1, -1, -1):
            d, rd = self._block_backward(tr.blocks[b], params[b], dirs[b], d, rd, views[b],
                                         need_input or b > 0)
        if not need_input:
            return None, None
        return maps.swapped(d), None if rd is None else maps.swapped(rd)

    def _block_backward(self, blk: Block, p: Any, dp: Any, d: Any, rd: Any, views: Any,
                        need_input: bool) -> tuple[Any, Any]:
        """``(∂h, R{∂h})`` of one block; ``∇`` (``rd is None``) or ``R{∇}`` into ``views``."""
        K, a, _ = p
        parts = [self._tail_backward(blk, c, maps.part(dp, c), a[:, c, ...], d[:, c, ...],
                                     maps.part(rd, c))
                 for c in maps.chunks(blk.mask, blk.shape)]
        dz, rdz, s1, s2 = maps.joined(parts)
        if self.norm:
            maps.put(views[1], s2)
        maps.put(views[-1 if self.norm else 1], s1)
        cols = maps.cols(blk.h) if blk.cols is None else blk.cols
        if rd is None:
            maps.put(views[0], maps.filter_grad(cols, dz))
        else:
            g = maps.filter_grad(cols, rdz)
            if blk.rh is not None:
                g += maps.filter_grad(maps.cols(blk.rh) if blk.rcols is None else blk.rcols, dz)
            maps.put(views[0], g)
        del cols
        blk.cols = blk.rcols = None  # the trace is read once: free the columns now
        if not need_input:
            return None, None
        rows = maps.rows(dz)
        dh = maps.input_grad(_mT(K) @ rows, blk.h.shape)
        if rd is None:
            return dh, None
        q = _mT(K) @ maps.rows(rdz)
        if dp is not None:
            q = q + _mT(dp[0]) @ rows
        return dh, maps.input_grad(q, blk.h.shape)

    def _tail_backward(self, blk: Block, c: slice, dp: Any, gamma: Any, d: Any, rd: Any
                       ) -> tuple:
        """ReLU, pool and normalization backward on the channels ``c``: ``(∂z, R{∂z}, Σ
        terms)`` with the sums ``(∇β, ∇γ)`` (or their R; ``(∇b, None)`` without norm)."""
        mask = blk.mask[:, c, ...]
        d = d * mask
        rd = None if rd is None else rd * mask
        if blk.code is not None:
            shape = blk.shape[:1] + (mask.shape[1],) + blk.shape[2:]
            d = maps.unpool(d, blk.code[:, c, ...], shape)
            rd = None if rd is None else maps.unpool(rd, blk.code[:, c, ...], shape)
        if not self.norm:
            return d, rd, maps.total(d if rd is None else rd), None
        xhat, g, r = blk.xhat[:, c, ...], maps.channel(gamma), blk.r[:, c, ...]
        n = d.shape[2] * d.shape[3] * d.shape[4]
        u = d * xhat  # scratch for ∇γ, then u = ∂y − ∇β/n − x̂ ∇γ/n in place
        s1, s2 = maps.total(d), maps.total(u)
        u = maps.product(xhat, -s2 / n, u)
        u += d
        u -= s1 / n
        if rd is None:
            u *= r * g
            return u, None, s1, s2
        rxhat = blk.rxhat[:, c, ...]
        ru = rd * xhat  # scratch for R{∇γ}, then R{u}
        rs1, rs2 = maps.total(rd), maps.total(ru)
        rs2 += maps.total(maps.product(d, rxhat, ru))
        ru = maps.product(rxhat, -s2 / n, ru)  # R{∂z} = r (Γ − r R{s} γ) u + r γ R{u}
        ru += rd
        ru -= rs1 / n
        ru -= xhat * (rs2 / n)
        ru *= r * g
        coef = -r * blk.rs[:, c, ...] * g
        coef = r * (coef if dp is None else coef + maps.channel(dp[1]))
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
