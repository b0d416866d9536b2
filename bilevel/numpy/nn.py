"""Network functions: log-softmax, softmax, cross-entropy, normalization and 2-D convolution.

:func:`conv2d` is the primitive :func:`correlate`: im2col (:mod:`bilevel.numpy.windows`)
and one GEMM per task, with derivatives that rebuild the columns instead of keeping them
in the graph, so it differentiates to any order on any backend that has slicing and
``matmul``. Inputs may carry a leading task axis ``T``: ``(T, N, C, H, W)``. The pools
(:mod:`bilevel.numpy.pooling`) and the window primitives are re-exported here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from autograd.extend import primitive

from bilevel.numpy._core import getval, namespace, normalize_axes, shape_of
from bilevel.numpy.elementwise import add, exp, multiply, negative, subtract
from bilevel.numpy.indexing import take_along_axis
from bilevel.numpy.linalg import matmul
from bilevel.numpy.pooling import (
    avg_pool2d,
    block_max,
    block_sum,
    max_pool2d,
    maximizers,
    pool_max,
    unblock,
    unpool_max,
)
from bilevel.numpy.reductions import logsumexp, mean, sum
from bilevel.numpy.shape import reshape, squeeze, swapaxes
from bilevel.numpy.windows import (
    _check_int,
    _out_size,
    columns,
    flat_columns,
    output_rows,
    patches,
    uncolumns,
    unpatches,
)

__all__ = [
    "avg_pool2d",
    "block_max",
    "block_sum",
    "center",
    "columns",
    "conv2d",
    "correlate",
    "flat_columns",
    "inv_rms",
    "log_softmax",
    "max_pool2d",
    "maximizers",
    "output_rows",
    "patches",
    "pool_max",
    "softmax",
    "softmax_cross_entropy",
    "standardize",
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


# ----------------------------------------------------------------- normalization


@primitive
def center(x: Any, axis: Any) -> Any:
    """``x - mean(x, axis)`` (keeping dims): the orthogonal projection that removes the mean.

    Linear and self-adjoint: VJP ``center(g)``, JVP ``center(t)``. Two passes over ``x``.
    """
    if type(x) is np.ndarray:
        return x - x.mean(axis=axis, keepdims=True)
    xp = namespace(x)
    return x - xp.mean(x, axis=axis, keepdims=True)


@primitive
def inv_rms(c: Any, axis: Any, eps: float) -> Any:
    """``r = 1 / sqrt(mean(c², axis) + eps)`` (keeping dims), for a centered ``c``.

    ``∂r/∂c = -r³ c / n`` (``n`` entries per mean): VJP ``g ↦ -c · r³ g / n``, JVP
    ``t ↦ -r³ Σ(c·t) / n`` (rules in :mod:`bilevel.numpy.rules.normalization`). Two
    passes over ``c``; the result has the reduced shape.
    """
    xp = np if type(c) is np.ndarray else namespace(c)
    return 1.0 / xp.sqrt(xp.mean(c * c, axis=axis, keepdims=True) + eps)


def standardize(x: Any, axis: Any, eps: float = 1e-5, scale: Any = None) -> Any:
    """``(x - μ) · r · scale`` with ``μ`` the mean and ``r = 1 / sqrt(σ² + eps)`` the inverse
    standard deviation over ``axis`` (the normalization of batch norm before its shift).

    Two primitives, :func:`center` and :func:`inv_rms`, and one full-size product
    (``r · scale`` is formed on the reduced shape first): six passes over ``x`` forward
    and about as many backward, instead of the dozen of the composition of ``mean``,
    ``var``, ``subtract`` and ``divide``. ``scale`` broadcasts against the reduced shape.
    Differentiable to any order.
    """
    axes = normalize_axes(axis, len(shape_of(x)))
    c = center(x, axes)
    r = inv_rms(c, axes, float(eps))
    return multiply(c, r if scale is None else multiply(r, scale))


# ----------------------------------------------------------------- convolution


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


