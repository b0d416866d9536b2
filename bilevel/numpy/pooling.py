"""Pooling: max and mean over ``size × size`` windows, NCHW (with an optional task axis).

Non-overlapping windows use strided slices of the image, no window copies: :func:`block_max`
(its derivatives, the adjoint pair :func:`unpool_max` / :func:`pool_max`, keep one integer
of maximizer bits per block instead of full-size masks) and the adjoint pair
:func:`block_sum` / :func:`unblock`. Overlapping windows use
:func:`bilevel.numpy.windows.patches`. Rules in :mod:`bilevel.numpy.rules`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from autograd.extend import primitive

from bilevel.numpy._core import namespace, shape_of, zeros
from bilevel.numpy.elementwise import divide
from bilevel.numpy.indexing import getitem
from bilevel.numpy.reductions import max, mean
from bilevel.numpy.windows import _check_int, patches

__all__ = [
    "avg_pool2d",
    "block_max",
    "block_sum",
    "max_pool2d",
    "maximizers",
    "pool_max",
    "unblock",
    "unpool_max",
]


def _block_slices(s: int) -> list[tuple[Any, slice, slice]]:
    return [(Ellipsis, slice(i, None, s), slice(j, None, s)) for i in range(s) for j in range(s)]


@primitive
def block_sum(x: Any, s: int) -> Any:
    """Sums over non-overlapping ``s × s`` blocks: ``y[.., p, q] = Σ_{i,j<s} x[.., p·s+i, q·s+j]``.

    ``x`` is ``(..., s·Ho, s·Wo)``; ``s²`` strided slice additions (no window copies).
    VJP: :func:`unblock`; JVP: ``block_sum(t)``. Time O(x.size).
    """
    xp = namespace(x)
    parts = _block_slices(s)
    if xp is np:  # one copy, then in-place additions
        y = x[parts[0]].copy()
        for idx in parts[1:]:
            np.add(y, x[idx], out=y)
        return y
    y = x[parts[0]]
    for idx in parts[1:]:
        y = y + x[idx]
    return y


@primitive
def unblock(y: Any, s: int) -> Any:
    """Nearest upsampling, adjoint of :func:`block_sum`: ``x[.., p·s+i, q·s+j] = y[.., p, q]``.

    ``(..., Ho, Wo)`` to ``(..., s·Ho, s·Wo)``. VJP: :func:`block_sum`; JVP: ``unblock(t)``.
    """
    xp = namespace(y)
    shape = shape_of(y)
    ho, wo = shape[-2:]
    blocks = shape[:-2] + (ho, s, wo, s)
    if xp is np:  # repeat: twice as fast as copying a broadcast view with 0-strides
        return np.repeat(np.repeat(y, s, axis=-1), s, axis=-2)
    up = xp.broadcast_to(xp.reshape(y, shape[:-2] + (ho, 1, wo, 1)), blocks)
    return xp.reshape(up, shape[:-2] + (ho * s, wo * s))


@primitive
def block_max(x: Any, s: int) -> Any:
    """Max over non-overlapping ``s × s`` blocks: ``y[.., p, q] = max_{i,j<s} x[.., p·s+i, q·s+j]``.

    ``s² - 1`` elementwise maxima of strided slices. The gradient goes to the maximizers
    of each block, split evenly among ties. The derivatives keep one small integer per
    block (:func:`maximizers`, the bits of the offsets that attain the maximum) instead
    of full-size masks: VJP :func:`unpool_max`, JVP :func:`pool_max` (``s ≤ 8``).
    Time O(x.size).
    """
    xp = namespace(x)
    parts = _block_slices(s)
    y = x[parts[0]]
    for idx in parts[1:]:
        y = np.maximum(y, x[idx]) if xp is np else xp.maximum(y, x[idx])
    return y


def maximizers(x: Any, y: Any, s: int) -> Any:
    """Per block, the bits ``Σ_k 2^k · 1[x_k = y]`` of the offsets ``k = i·s + j`` that
    attain the block maximum ``y`` (unsigned integers of ``s²`` bits, one per block: 1/16
    of the bytes of a float32 mask of ``x`` for ``s = 2``)."""
    xp = namespace(x)
    dtype = xp.uint8 if s * s <= 8 else xp.uint16 if s * s <= 16 else (
        xp.uint32 if s * s <= 32 else xp.uint64)
    code = zeros(xp, shape_of(y), dtype, like=y)
    for k, idx in enumerate(_block_slices(s)):
        code = code + xp.astype(x[idx] == y, dtype) * (1 << k)
    return code


def _shares(code: Any, s: int, dtype: Any) -> tuple[list[Any], Any]:
    """The per-offset maximizer flags of ``code`` and their count per block (float)."""
    xp = namespace(code)
    hits = [xp.bitwise_and(code, 1 << k) != 0 for k in range(s * s)]
    count = xp.astype(hits[0], dtype)
    for hit in hits[1:]:
        count = count + xp.astype(hit, dtype)
    return hits, count


@primitive
def unpool_max(g: Any, code: Any, s: int) -> Any:
    """The VJP of :func:`block_max`: ``x̄[.., p·s+i, q·s+j] = ḡ[.., p, q] · 1[k ∈ code] / #code``
    (``k = i·s + j``), each block's cotangent shared among its maximizers.

    Linear in ``g``; its adjoint is :func:`pool_max`. Time O(x.size), no full-size
    temporary besides the result.
    """
    xp = namespace(g)
    hits, count = _shares(code, s, g.dtype)
    share = g / count
    sg = shape_of(g)
    out = zeros(xp, sg[:-2] + (sg[-2] * s, sg[-1] * s), g.dtype, like=g)
    for hit, idx in zip(hits, _block_slices(s), strict=True):
        if xp is np:
            np.multiply(share, hit, out=out[idx])
        else:
            out[idx] = xp.where(hit, share, xp.zeros_like(share))
    return out


@primitive
def pool_max(t: Any, code: Any, s: int) -> Any:
    """The JVP of :func:`block_max`: ``Σ_{k ∈ code} t[.., p·s+i, q·s+j] / #code`` per block.

    Linear in ``t``; its adjoint is :func:`unpool_max`. Time O(t.size).
    """
    xp = namespace(t)
    hits, count = _shares(code, s, t.dtype)
    total = None
    for hit, idx in zip(hits, _block_slices(s), strict=True):
        part = xp.where(hit, t[idx], xp.zeros_like(t[idx]))
        total = part if total is None else total + part
    return total / count


def _pool_args(x: Any, size: int, stride: int | None, name: str) -> tuple[int, int]:
    sx = shape_of(x)
    if len(sx) not in (4, 5):
        raise ValueError(f"{name}: x must be (N, C, H, W) or (T, N, C, H, W), got shape {sx}")
    size = _check_int(f"{name}: size", size, 1)
    stride = size if stride is None else _check_int(f"{name}: stride", stride, 1)
    if size > sx[-1] or size > sx[-2]:
        raise ValueError(f"{name}: window {size} exceeds the image {sx[-2]}x{sx[-1]}")
    return size, stride


def _cropped(x: Any, s: int) -> Any:
    """``x`` without the last rows/columns that no ``s × s`` block covers."""
    h, w = shape_of(x)[-2:]
    if h % s or w % s:
        return getitem(x, (Ellipsis, slice(0, h - h % s), slice(0, w - w % s)))
    return x


def max_pool2d(x: Any, size: int = 2, stride: int | None = None) -> Any:
    """Max over ``size × size`` windows (step ``stride``, default ``size``), NCHW.

    ``y[..., c, p, q] = max_{i,j} x[..., c, p·s + i, q·s + j]``; ties share the gradient.
    Non-overlapping windows (``stride == size ≤ 8``) use :func:`block_max` (strided
    slices, no window copies); others the ``size²``-fold :func:`patches`.
    """
    size, stride = _pool_args(x, size, stride, "max_pool2d")
    if stride == size and size <= 8:
        return block_max(_cropped(x, size), size)
    return max(patches(x, size, size, stride, 0), axis=-3)


def avg_pool2d(x: Any, size: int = 2, stride: int | None = None) -> Any:
    """Mean over ``size × size`` windows (step ``stride``, default ``size``), NCHW.

    Non-overlapping windows use :func:`block_sum`; overlapping ones :func:`patches`.
    """
    size, stride = _pool_args(x, size, stride, "avg_pool2d")
    if stride == size:
        return divide(block_sum(_cropped(x, size), size), size * size)
    return mean(patches(x, size, size, stride, 0), axis=-3)
