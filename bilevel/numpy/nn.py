"""Network functions: log-softmax, softmax, cross-entropy, 2-D convolution and pooling.

Convolution and pooling rest on im2col/col2im primitive pairs: :func:`columns` (the
``kh·kw`` windows with the images behind the kernel axis, ``(..., C, kh·kw, N, Ho, Wo)``,
the operand of one GEMM per task in :func:`conv2d`) with its adjoint :func:`uncolumns`,
and :func:`patches` (windows of each image, ``(..., C, kh·kw, Ho, Wo)``, for overlapping
pools) with its adjoint :func:`unpatches`. Each gathers the windows with one strided slice
per kernel offset (never a loop over pixels; the zero padding is never materialized) and
its adjoint adds them back. :func:`conv2d` is the primitive :func:`correlate` (columns
and one GEMM per task; the graph keeps the image, not its columns). Non-overlapping pools
use :func:`block_max` (its derivatives, the adjoint pair :func:`unpool_max` /
:func:`pool_max`, keep one integer of maximizer bits per block) and the adjoint pair
:func:`block_sum` / :func:`unblock` (strided slices of the image, no window copies).
Each linear primitive's VJP is its adjoint and its JVP is itself (rules in
:mod:`bilevel.numpy.rules`), so convolutions and pools differentiate to any order on any
backend that has slicing and ``matmul``. Inputs
may carry a leading task axis ``T``: ``(T, N, C, H, W)``.
"""

from __future__ import annotations

import builtins
from typing import Any

import numpy as np
from autograd.extend import primitive

from bilevel.numpy._core import getval, namespace, shape_of, zeros
from bilevel.numpy.elementwise import add, divide, exp, negative, subtract
from bilevel.numpy.indexing import getitem, take_along_axis
from bilevel.numpy.linalg import matmul
from bilevel.numpy.reductions import logsumexp, max, mean, sum
from bilevel.numpy.shape import reshape, squeeze, swapaxes

__all__ = [
    "avg_pool2d",
    "block_max",
    "block_sum",
    "columns",
    "conv2d",
    "correlate",
    "log_softmax",
    "max_pool2d",
    "maximizers",
    "pool_max",
    "patches",
    "softmax",
    "softmax_cross_entropy",
    "unblock",
    "uncolumns",
    "unpatches",
    "unpool_max",
]


def log_softmax(x: Any, axis: int = -1) -> Any:
    """``log softmax(x) = x - logsumexp(x)`` along ``axis`` (stable for large ``|x|``)."""
    return subtract(x, logsumexp(x, axis=axis, keepdims=True))


def softmax(x: Any, axis: int = -1) -> Any:
    """``softmax(x)_i = exp(x_i) / Σ_j exp(x_j)`` along ``axis``."""
    return exp(log_softmax(x, axis=axis))


def softmax_cross_entropy(logits: Any, labels: Any, axis: int = -1, reduction: str = "mean") -> Any:
    """Cross-entropy ``ℓ = -log softmax(logits)[label]`` for integer ``labels``.

    Parameters
    ----------
    logits
        Scores, class axis ``axis`` (any leading axes, e.g. ``(T, N, K)``).
    labels
        Integer class indices with the shape of ``logits`` without ``axis``.
    reduction
        ``"mean"`` (over all examples), ``"sum"`` or ``"none"`` (per example).
    """
    lab = getval(labels)
    xp = namespace(getval(logits), lab)
    if not hasattr(lab, "dtype") or not xp.isdtype(lab.dtype, "integral"):
        got = getattr(lab, "dtype", type(lab))
        raise TypeError(f"softmax_cross_entropy: labels must be an integer array, got {got}")
    shape = shape_of(logits)
    nd = len(shape)
    ax = axis % nd
    expected = shape[:ax] + shape[ax + 1 :]
    if shape_of(lab) != expected:
        raise ValueError(
            f"softmax_cross_entropy: labels must have shape {expected} (logits {shape} "
            f"without axis {axis}), got {shape_of(lab)}"
        )
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    logp = log_softmax(logits, axis=ax)
    picked = take_along_axis(logp, xp.reshape(lab, expected[:ax] + (1,) + expected[ax:]), ax)
    losses = negative(squeeze(picked, ax))
    if reduction == "mean":
        return mean(losses)
    if reduction == "sum":
        return sum(losses)
    return losses


# ----------------------------------------------------------------- im2col / col2im


def _out_size(n: int, k: int, stride: int, padding: int) -> int:
    return (n + 2 * padding - k) // stride + 1


def _valid(i: int, padding: int, stride: int, n: int, n_out: int) -> tuple[slice, slice] | None:
    """Output positions ``p`` whose input ``p·stride + i - padding`` lies in ``[0, n)``.

    Returns ``(output slice, input slice)`` of one kernel offset ``i`` along one axis, or
    ``None`` when the offset reads only padding.
    """
    first = builtins.max(0, -(-(padding - i) // stride))
    last = builtins.min(n_out, (n - 1 - i + padding) // stride + 1)
    if last <= first:
        return None
    start = first * stride + i - padding
    return slice(first, last), slice(start, start + (last - first - 1) * stride + 1, stride)


def _windows(
    kh: int, kw: int, stride: int, padding: int, h: int, w: int
) -> list[tuple[int, tuple[slice, slice], tuple[slice, slice]]]:
    """For each kernel offset ``k = i·kw + j`` that reads image pixels: ``(k, (rows, cols) of
    the output window, (rows, cols) of the image)`` (the padding is never materialized)."""
    ho, wo = _out_size(h, kh, stride, padding), _out_size(w, kw, stride, padding)
    out = []
    for i in range(kh):
        vi = _valid(i, padding, stride, h, ho)
        for j in range(kw):
            vj = _valid(j, padding, stride, w, wo)
            if vi is not None and vj is not None:
                out.append((i * kw + j, (vi[0], vj[0]), (vi[1], vj[1])))
    return out


@primitive
def patches(x: Any, kh: int, kw: int, stride: int = 1, padding: int = 0) -> Any:
    """im2col: ``P[..., c, i·kw + j, p, q] = x_pad[..., c, p·s + i, q·s + j]``.

    ``x`` is ``(..., C, H, W)``; the result is ``(..., C, kh·kw, Ho, Wo)`` with
    ``Ho = (H + 2·padding - kh) // stride + 1``. Memory ``kh·kw`` times the output image;
    ``kh·kw`` strided slice copies into a zero buffer (the padded border stays zero, no
    padded copy of ``x``). VJP: :func:`unpatches`; JVP: ``patches(t)``.
    """
    xp = namespace(x)
    shape = shape_of(x)
    h, w = shape[-2:]
    ho, wo = _out_size(h, kh, stride, padding), _out_size(w, kw, stride, padding)
    out = zeros(xp, shape[:-2] + (kh * kw, ho, wo), x.dtype, like=x)
    for k, (po, qo), (pi, qi) in _windows(kh, kw, stride, padding, h, w):
        out[..., k, po, qo] = x[..., pi, qi]
    return out


@primitive
def unpatches(p: Any, kh: int, kw: int, stride: int, padding: int, shape: tuple[int, ...]) -> Any:
    """col2im, the adjoint of :func:`patches`: ``x[..., c, y, z] = Σ P[..., c, k, p, q]`` over
    the windows ``(k, p, q)`` that read pixel ``(y, z)``; ``shape`` is the image shape.

    ``kh·kw`` strided slice additions (in place on NumPy) into a zero image; the entries
    that fell on the padding are dropped. VJP: :func:`patches`.
    """
    xp = namespace(p)
    h, w = shape[-2:]
    out = zeros(xp, tuple(shape), p.dtype, like=p)
    for k, (po, qo), (pi, qi) in _windows(kh, kw, stride, padding, h, w):
        if xp is np:  # no temporary of the window's size
            view = out[..., pi, qi]
            np.add(view, p[..., k, po, qo], out=view)
        else:
            out[..., pi, qi] = out[..., pi, qi] + p[..., k, po, qo]
    return out


def _images_behind_channels(xp: Any, x: Any) -> Any:
    """View of ``x (..., N, C, H, W)`` as ``(..., C, N, H, W)`` (axes -4 and -3 swapped)."""
    nd = len(shape_of(x))
    axes = tuple(range(nd - 4)) + (nd - 3, nd - 4, nd - 2, nd - 1)
    return x.transpose(axes) if xp is np else xp.permute_dims(x, axes)


@primitive
def columns(x: Any, kh: int, kw: int, stride: int = 1, padding: int = 0) -> Any:
    """im2col with the images behind the kernel axis, the operand of one GEMM per task:
    ``Q[..., c, i·kw + j, n, p, q] = x_pad[..., n, c, p·s + i, q·s + j]``.

    ``x`` is ``(..., N, C, H, W)``; the result ``(..., C, kh·kw, N, Ho, Wo)`` reshapes (a
    view) to ``(..., C·kh·kw, N·Ho·Wo)``. Same memory and slices as :func:`patches`.
    VJP: :func:`uncolumns`; JVP: ``columns(t)``.
    """
    xp = namespace(x)
    shape = shape_of(x)
    h, w = shape[-2:]
    ho, wo = _out_size(h, kh, stride, padding), _out_size(w, kw, stride, padding)
    lead, n, c = shape[:-4], shape[-4], shape[-3]
    out = zeros(xp, lead + (c, kh * kw, n, ho, wo), x.dtype, like=x)
    xt = _images_behind_channels(xp, x)
    for k, (po, qo), (pi, qi) in _windows(kh, kw, stride, padding, h, w):
        out[..., k, :, po, qo] = xt[..., pi, qi]
    return out


@primitive
def uncolumns(q: Any, kh: int, kw: int, stride: int, padding: int, shape: tuple[int, ...]) -> Any:
    """col2im of :func:`columns` (its adjoint): ``x[..., n, c, y, z] = Σ Q[..., c, k, n, p, q]``
    over the windows that read pixel ``(y, z)``; ``shape`` is the image shape ``(..., N, C, H, W)``.

    ``kh·kw`` strided slice additions (in place on NumPy). VJP: :func:`columns`.
    """
    xp = namespace(q)
    h, w = shape[-2:]
    windows = _windows(kh, kw, stride, padding, h, w)
    if xp is np:  # accumulate through a transposed view: the result is C-contiguous
        out = np.zeros(tuple(shape), dtype=q.dtype)
        ot = _images_behind_channels(np, out)
        for k, (po, qo), (pi, qi) in windows:
            view = ot[..., pi, qi]
            np.add(view, q[..., k, :, po, qo], out=view)
        return out
    s = tuple(shape)
    ot = zeros(xp, s[:-4] + (s[-3], s[-4]) + s[-2:], q.dtype, like=q)
    for k, (po, qo), (pi, qi) in windows:
        ot[..., pi, qi] = ot[..., pi, qi] + q[..., k, :, po, qo]
    return _images_behind_channels(xp, ot)


def _check_int(name: str, v: Any, low: int) -> int:
    if not isinstance(v, (int, np.integer)) or v < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")
    return int(v)


def conv2d(x: Any, w: Any, bias: Any = None, stride: int = 1, padding: int = 0) -> Any:
    """2-D cross-correlation (the deep-learning "convolution"), NCHW layout.

    ``y[n, o, p, q] = Σ_{c,i,j} w[o, c, i, j] · x_pad[n, c, p·s + i, q·s + j] (+ bias[o])``

    Parameters
    ----------
    x
        Images ``(N, C, H, W)`` or, for a meta-batch, ``(T, N, C, H, W)``.
    w
        Filters ``(O, C, kh, kw)`` or per-task ``(T, O, C, kh, kw)``.
    bias
        Optional ``(O,)`` or ``(T, O)``.
    stride, padding
        Window step and zero padding on each side.

    Returns
    -------
    array
        ``(N, O, Ho, Wo)`` or ``(T, N, O, Ho, Wo)``, ``Ho = (H + 2·padding - kh) // stride + 1``.

    Notes
    -----
    im2col (:func:`columns`, ``(..., C·kh·kw, N·Ho·Wo)``) then one GEMM per task,
    ``(O, C·kh·kw) @ (C·kh·kw, N·Ho·Wo)``: few large BLAS calls (multi-threaded BLAS
    pays a synchronization per call), and every image plane ``(Ho, Wo)`` of the output
    is contiguous (the result is a view with the image and channel axes swapped).
    Time ``O(N·O·C·kh·kw·Ho·Wo)``; extra memory ``N·C·kh·kw·Ho·Wo`` for the columns.
    """
    sx, sw = shape_of(x), shape_of(w)
    if len(sx) not in (4, 5):
        raise ValueError(f"conv2d: x must be (N, C, H, W) or (T, N, C, H, W), got shape {sx}")
    if len(sw) not in (4, 5):
        raise ValueError(f"conv2d: w must be (O, C, kh, kw) or (T, O, C, kh, kw), got shape {sw}")
    stride = _check_int("conv2d: stride", stride, 1)
    padding = _check_int("conv2d: padding", padding, 0)
    o, c, kh, kw = sw[-4:]
    if sx[-3] != c:
        raise ValueError(f"conv2d: x has {sx[-3]} channels but w expects {c} (w shape {sw})")
    if len(sx) == 5 and len(sw) == 5 and sx[0] != sw[0]:
        raise ValueError(f"conv2d: x has {sx[0]} tasks but w has {sw[0]}")
    h, wd = sx[-2:]
    if kh > h + 2 * padding or kw > wd + 2 * padding:
        raise ValueError(f"conv2d: kernel {kh}x{kw} exceeds the padded image {h}x{wd}+{padding}")
    y = correlate(x, w, stride, padding)
    if bias is not None:
        sb = shape_of(bias)
        y = add(y, reshape(bias, sb[:-1] + ((1,) if len(sb) == 2 else ()) + (sb[-1], 1, 1)))
    return y


def flat_columns(x: Any, kh: int, kw: int, stride: int, padding: int) -> Any:
    """:func:`columns` of ``x (..., N, C, H, W)`` as the GEMM operand
    ``(..., C·kh·kw, N·Ho·Wo)`` (a view)."""
    sx = shape_of(x)
    ho, wo = _out_size(sx[-2], kh, stride, padding), _out_size(sx[-1], kw, stride, padding)
    return reshape(columns(x, kh, kw, stride, padding),
                   sx[:-4] + (sx[-3] * kh * kw, sx[-4] * ho * wo))


def output_rows(g: Any) -> Any:
    """``g (..., N, O, Ho, Wo)`` as the GEMM rows ``(..., O, N·Ho·Wo)`` (one copy)."""
    sg = shape_of(g)
    return reshape(swapaxes(g, -4, -3), sg[:-4] + (sg[-3], sg[-4] * sg[-2] * sg[-1]))


@primitive
def correlate(x: Any, w: Any, stride: int, padding: int) -> Any:
    """The cross-correlation of :func:`conv2d` without bias, arguments checked.

    ``x (..., N, C, H, W)``, ``w (..., O, C, kh, kw)`` → ``(..., N, O, Ho, Wo)``: im2col
    (:func:`flat_columns`) and one GEMM per task. A primitive, so the columns (``kh·kw``
    times the input) are freed after the call and rebuilt for the filter derivative
    instead of being held by the graph: the graph keeps ``x`` and ``w`` only. Its
    derivatives are compositions of the differentiable primitives (``matmul``,
    :func:`columns`, :func:`uncolumns`), so it differentiates to any order; rules in
    :mod:`bilevel.numpy.rules`.
    """
    sw = shape_of(w)
    o, c, kh, kw = sw[-4:]
    sx = shape_of(x)
    ho, wo = _out_size(sx[-2], kh, stride, padding), _out_size(sx[-1], kw, stride, padding)
    # (O, CKK) or per task (T, O, CKK) filters @ (CKK, N·P) or (T, CKK, N·P) columns
    y = matmul(reshape(w, sw[:-4] + (o, c * kh * kw)), flat_columns(x, kh, kw, stride, padding))
    y = reshape(y, shape_of(y)[:-1] + (sx[-4], ho, wo))
    return swapaxes(y, -4, -3)  # (..., N, O, Ho, Wo), each image plane contiguous


# ----------------------------------------------------------------- pooling


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
