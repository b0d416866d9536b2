"""Shape primitives: reshape, broadcast_to, transpose, concatenate and their compositions.

Definitions only; their derivative rules are registered by :mod:`bilevel.numpy.rules`.
All are linear maps, so each JVP applies the primitive to the tangent and each VJP is the
adjoint map (reshape back, sum over broadcast axes, inverse permutation, slicing).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from autograd.extend import primitive

from bilevel.numpy._core import namespace, normalize_axes, shape_of

__all__ = [
    "broadcast_like",
    "broadcast_to",
    "concatenate",
    "expand_dims",
    "moveaxis",
    "ravel",
    "reshape",
    "squeeze",
    "stack",
    "swapaxes",
    "transpose",
]


@primitive
def reshape(x: Any, shape: Any) -> Any:
    """``x`` with a new ``shape`` (one entry may be -1); same data, no copy where possible.

    VJP: ``reshape(g, x.shape)``; JVP: ``reshape(t, shape)``. Cost O(1) or a copy.
    """
    if type(x) is np.ndarray:
        return x.reshape(shape)
    if isinstance(shape, (int, np.integer)):
        shape = (int(shape),)
    return namespace(x).reshape(x, tuple(shape))


def ravel(x: Any) -> Any:
    """``x`` flattened to one dimension: ``reshape(x, (-1,))``."""
    return reshape(x, (-1,))


@primitive
def broadcast_to(x: Any, shape: tuple[int, ...]) -> Any:
    """``x`` broadcast to ``shape`` (NumPy broadcasting rules; a read-only view).

    VJP: ``unbroadcast(g, x.shape)`` (a sum over the broadcast axes);
    JVP: ``broadcast_to(t, shape)``.
    """
    shape = tuple(shape)
    if type(x) is np.ndarray:
        return np.broadcast_to(x, shape)
    xp = namespace(x)
    if not hasattr(x, "shape"):
        return xp.full(shape, x)
    return xp.broadcast_to(x, shape)


@primitive
def transpose(x: Any, axes: Any = None) -> Any:
    """Axes of ``x`` permuted by ``axes`` (reversed when ``None``): ``y[i_p] = x[i]``.

    VJP: ``transpose(g, argsort(axes))``; JVP: ``transpose(t, axes)``. A view.
    """
    if type(x) is np.ndarray:
        return x.transpose(axes)  # NumPy reverses for None and takes negative axes
    nd = len(shape_of(x))
    axes = tuple(range(nd))[::-1] if axes is None else tuple(a % nd for a in axes)
    return namespace(x).permute_dims(x, axes)


def swapaxes(x: Any, axis1: int, axis2: int) -> Any:
    """``x`` with ``axis1`` and ``axis2`` exchanged (a :func:`transpose`)."""
    nd = len(shape_of(x))
    axes = list(range(nd))
    a, b = axis1 % nd, axis2 % nd
    axes[a], axes[b] = axes[b], axes[a]
    return transpose(x, tuple(axes))


def moveaxis(x: Any, source: int, destination: int) -> Any:
    """``x`` with axis ``source`` moved to position ``destination`` (a :func:`transpose`)."""
    nd = len(shape_of(x))
    order = [i for i in range(nd) if i != source % nd]
    order.insert(destination % nd, source % nd)
    return transpose(x, tuple(order))


def expand_dims(x: Any, axis: int | tuple[int, ...]) -> Any:
    """``x`` with length-1 axes inserted at ``axis`` (positions in the result); a reshape."""
    shape = list(shape_of(x))
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    nd = len(shape) + len(axes)
    for a in sorted(int(a) % nd for a in axes):
        shape.insert(a, 1)
    return reshape(x, tuple(shape))


def squeeze(x: Any, axis: int | tuple[int, ...] | None = None) -> Any:
    """``x`` without its length-1 axes (only those in ``axis`` when given); a reshape."""
    shape = shape_of(x)
    if axis is None:
        axes = tuple(i for i, s in enumerate(shape) if s == 1)
    else:
        axes = normalize_axes(axis, len(shape))
        bad = [a for a in axes if shape[a] != 1]
        if bad:
            raise ValueError(f"squeeze: axis {bad} of x (shape {shape}) does not have length 1")
    return reshape(x, tuple(s for i, s in enumerate(shape) if i not in axes))


@primitive
def _concatenate(axis: int, *arrays: Any) -> Any:
    if all(type(a) is np.ndarray for a in arrays):
        return np.concatenate(arrays, axis=axis)
    return namespace(*arrays).concat(arrays, axis=axis)


def concatenate(arrays: Any, axis: int = 0) -> Any:
    """Join ``arrays`` along an existing ``axis``. VJP: slices of ``g``; JVP: joined tangents."""
    arrays = tuple(arrays)
    if not arrays:
        raise ValueError("concatenate: arrays must be a non-empty sequence of arrays")
    return _concatenate(int(axis), *arrays)


def stack(arrays: Any, axis: int = 0) -> Any:
    """Join ``arrays`` (all of one shape) along a new ``axis``: expand_dims then concatenate."""
    arrays = tuple(arrays)
    if not arrays:
        raise ValueError("stack: arrays must be a non-empty sequence of arrays")
    shapes = {shape_of(a) for a in arrays}
    if len(shapes) > 1:
        raise ValueError(f"stack: all arrays must have one shape, got {sorted(shapes)}")
    nd = len(shape_of(arrays[0])) + 1
    return concatenate([expand_dims(a, axis % nd) for a in arrays], axis=axis % nd)


def broadcast_like(t: Any, ans: Any) -> Any:
    """``t`` broadcast to the shape of ``ans`` (no-op when equal): a tangent to the output's."""
    shape = shape_of(ans)
    return t if shape_of(t) == shape else broadcast_to(t, shape)
