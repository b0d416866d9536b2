"""im2col/col2im: the windows of convolutions and overlapping pools, as adjoint primitive pairs.

:func:`columns` (the ``kh·kw`` windows with the images behind the kernel axis,
``(..., C, kh·kw, N, Ho, Wo)``, the operand of one GEMM per task in
:func:`bilevel.numpy.nn.conv2d`) with its adjoint :func:`uncolumns`, and :func:`patches`
(windows of each image, ``(..., C, kh·kw, Ho, Wo)``, for overlapping pools) with its
adjoint :func:`unpatches`. Each gathers the windows with one strided slice per kernel
offset (never a loop over pixels; the zero padding is never materialized) and its adjoint
adds them back. Each VJP is the partner and each JVP the primitive itself (rules in
:mod:`bilevel.numpy.rules`).
"""

from __future__ import annotations

import builtins
from typing import Any

import numpy as np
from autograd.extend import primitive

from bilevel.numpy._core import namespace, shape_of, zeros
from bilevel.numpy.shape import reshape, swapaxes

__all__ = ["columns", "flat_columns", "output_rows", "patches", "uncolumns", "unpatches"]


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
    if xp is np:  # one transposing copy, then each slice copies contiguous image planes
        xt = np.ascontiguousarray(xt)
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


def _check_int(name: str, v: Any, low: int) -> int:
    if not isinstance(v, (int, np.integer)) or v < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")
    return int(v)
