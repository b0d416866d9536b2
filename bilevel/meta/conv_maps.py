"""Channel-major feature maps: the array operations of the analytic Conv4 oracles.

Inside :class:`~bilevel.meta.conv_oracles.ConvStack` a map of ``T`` tasks, ``C``
channels and ``N`` images is held as ``(T, C, N, H, W)``: the product ``K cols(h)`` of
the filters ``(T, O, 9C)`` and the im2col columns ``(T, 9C, N·H·W)`` is then the next map
itself, the derivative ``∂z`` is its own GEMM operand, and every elementwise pass runs over
contiguous memory. Here: the GEMM operands of a 3×3 convolution with padding 1
(:func:`cols`, :func:`conv`, :func:`filter_grad`, :func:`input_grad`, built on
:func:`~bilevel.numpy.nn.flat_columns` and :func:`~bilevel.numpy.nn.uncolumns`), the
statistics over images and pixels of each task and channel, the max-pool's adjoint with
the cropped odd row and column, and the slices of channels over which NumPy runs the
elementwise passes (:data:`CHUNK`). Everything runs on the arrays' own namespace; the
NumPy fast path uses methods and ``out=`` arguments.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from bilevel.numpy.nn import flat_columns, uncolumns, unpool_max

from ..backend import device
from ..backend import namespace_of as namespace
from .network_oracles import _mT, _reshape

__all__ = ["AXES", "CHUNK", "channel", "chunks", "cols", "conv", "crop", "filter_grad",
           "input_grad", "joined", "mean", "part", "product", "put", "rows", "sub_mean", "swap",
           "swapped", "total", "unpool"]

AXES = (2, 3, 4)


def swap(a: Any) -> Any:
    """``(T, A, B, H, W)`` → ``(T, B, A, H, W)`` (a view)."""
    if type(a) is np.ndarray:
        return a.swapaxes(1, 2)
    return namespace(a).permute_dims(a, (0, 2, 1, 3, 4))


def swapped(a: Any) -> Any:
    """:func:`swap` as a contiguous array (one copy on NumPy)."""
    return np.ascontiguousarray(a.swapaxes(1, 2)) if type(a) is np.ndarray else swap(a)


def channel(a: Any) -> Any:
    """``(T, O)`` → ``(T, O, 1, 1, 1)`` (broadcast over images and pixels)."""
    return _reshape(a, (a.shape[0], a.shape[1], 1, 1, 1))


def total(a: Any) -> Any:
    """``Σ`` over images and pixels, keeping dims: ``(T, O, 1, 1, 1)``."""
    if type(a) is np.ndarray:
        return a.sum(axis=AXES, keepdims=True)
    return namespace(a).sum(a, axis=AXES, keepdims=True)


def put(dest: Any, value: Any) -> None:
    """Write ``value`` into the view ``dest`` of a flat output (reshaped to its shape)."""
    dest[...] = _reshape(value, dest.shape)


def rows(a: Any) -> Any:
    """A channel-major map ``(T, O, N, H, W)`` as GEMM rows ``(T, O, N·H·W)`` (a view)."""
    return _reshape(a, (a.shape[0], a.shape[1], a.shape[2] * a.shape[3] * a.shape[4]))


def cols(h: Any) -> Any:
    """im2col of a channel-major map: ``(T, 9C, N·H·W)`` (no transposing copy)."""
    return flat_columns(swap(h), 3, 3, 1, 1)


def conv(K: Any, cols: Any, shape: tuple[int, ...]) -> Any:
    """``K cols`` (``(T, O, 9C) @ (T, 9C, N·H·W)``) as the map ``shape = (T, O, N, H, W)``."""
    return _reshape(K @ cols, shape)


def filter_grad(cols: Any, dz: Any) -> Any:
    """``∂z colsᵀ`` as ``(cols ∂zᵀ)ᵀ`` (BLAS is faster with the long axis inner)."""
    return _mT(cols @ _mT(rows(dz)))


def input_grad(q: Any, shape: tuple[int, ...]) -> Any:
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


def crop(y: Any) -> Any:
    """``y`` without the odd last row/column no 2×2 block covers (as the pool does)."""
    h, w = y.shape[-2:]
    return y[..., :h - h % 2, :w - w % 2] if h % 2 or w % 2 else y


def unpool(d: Any, code: Any, shape: tuple[int, ...]) -> Any:
    """The pool's adjoint, zero on the cropped row/column: ``(.., h, w)`` → ``shape``."""
    g = unpool_max(d, code, 2)
    if tuple(g.shape) == tuple(shape):
        return g
    out = namespace(g).zeros(shape, dtype=g.dtype, device=device(g))
    out[..., :g.shape[-2], :g.shape[-1]] = g
    return out


def mean(a: Any) -> Any:
    """The mean over images and pixels, keeping dims: ``(T, O, 1, 1, 1)``."""
    if type(a) is np.ndarray:
        return a.mean(axis=AXES, keepdims=True)
    return namespace(a).mean(a, axis=AXES, keepdims=True)


def product(a: Any, b: Any, out: Any) -> Any:
    """``a ⊙ b``, written into the scratch array ``out`` on NumPy (no fresh allocation)."""
    return np.multiply(a, b, out=out) if type(out) is np.ndarray else a * b


# Below this many entries per slice, the elementwise passes of a block run on all channels
# at once; above, NumPy runs them on slices of channels, so that every temporary stays in
# the cache and is small enough for the allocator to reuse (a fresh large array costs its
# page faults: about half the time of those passes on a 28×28 map, measured).
CHUNK = 1 << 19


def chunks(x: Any, shape: tuple[int, ...] | None = None) -> list[slice]:
    """Channel slices of about :data:`CHUNK` entries of the map ``shape`` (default
    ``x.shape``) on NumPy; all channels at once elsewhere (one kernel per pass on a GPU)."""
    shape = tuple(x.shape) if shape is None else shape
    O = shape[1]
    per = max(1, CHUNK * O // max(1, math.prod(shape)))
    if type(x) is not np.ndarray or per >= O:
        return [slice(0, O)]
    return [slice(i, min(i + per, O)) for i in range(0, O, per)]


def part(a: Any, c: slice) -> Any:
    """``a[:, c, ...]`` (``None`` stays ``None``); a pair of direction parts sliced each."""
    if a is None:
        return None
    if isinstance(a, tuple):
        return tuple(part(x, c) for x in a)
    return a[:, c, ...]


def joined(parts: list[tuple], inplace: dict[int, Any] | None = None) -> tuple:
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


def sub_mean(z: Any) -> Any:
    """``z − mean(z)`` in place (``z`` is fresh)."""
    z -= mean(z)
    return z
