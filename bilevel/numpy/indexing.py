"""Indexing primitives: ``getitem`` (slices, ints, ``None``, integer arrays), ``take``,
``take_along_axis``, and the scatter-add that is their adjoint.

``getitem`` and ``_scatter`` form an adjoint pair: the VJP of one is the other, and each is
linear, so its JVP is itself applied to the tangent (rules in :mod:`bilevel.numpy.rules`).
Repeated integer indices accumulate (``numpy.add.at`` / ``cupyx.scatter_add``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from autograd.extend import primitive

from bilevel.numpy._core import getval, namespace, scatter_add, shape_of
from bilevel.numpy.shape import reshape

__all__ = ["getitem", "take", "take_along_axis"]


def _clean(idx: Any) -> Any:
    """Index with any autograd boxes (e.g. traced integer arrays) replaced by their values."""
    if isinstance(idx, tuple):
        return tuple(getval(i) for i in idx)
    return getval(idx)


@primitive
def _getitem(x: Any, idx: Any) -> Any:
    return x[idx]


def getitem(x: Any, idx: Any) -> Any:
    """``x[idx]`` for slices, integers, ``None``, ``...`` and integer arrays.

    VJP: ``zeros(x.shape)`` with ``g`` scatter-added at ``idx``; JVP: ``t[idx]``.
    A plain NumPy array (nothing traced) is indexed directly, without the tracer's
    per-call overhead.
    """
    if type(x) is np.ndarray:
        return x[idx]
    return _getitem(x, idx)


@primitive
def _scatter(g: Any, idx: Any, shape: tuple[int, ...]) -> Any:
    """``out = zeros(shape); out[idx] += g`` (repeated indices accumulate)."""
    return scatter_add(g, idx, shape)


def index(x: Any, idx: Any) -> Any:
    """``x[idx]`` with boxes inside ``idx`` unwrapped (the function behind box ``[...]``)."""
    return getitem(x, _clean(idx))


def _arange_like(xp: Any, n: int, like: Any) -> Any:
    if xp is np:
        return np.arange(n)
    return xp.arange(n, device=getattr(like, "device", None))


def take(x: Any, indices: Any, axis: int | None = None) -> Any:
    """``x`` gathered at integer ``indices`` along ``axis`` (flattened ``x`` when ``None``).

    Result shape ``x.shape[:axis] + indices.shape + x.shape[axis+1:]``; a :func:`getitem`
    with integer arrays only, so its adjoint is a scatter-add.
    """
    indices = getval(indices)
    if axis is None:
        x = reshape(x, (-1,))
        axis = 0
    shape = shape_of(x)
    nd = len(shape)
    axis = axis % nd
    xp = namespace(getval(x), indices)
    ind_nd = len(shape_of(indices))
    idx = []
    for d in range(nd):
        if d == axis:
            idx.append(xp.reshape(indices, shape_of(indices) + (1,) * (nd - axis - 1)))
        else:
            trailing = nd - d - 1 + (ind_nd - 1 if d < axis else 0)
            idx.append(
                xp.reshape(_arange_like(xp, shape[d], indices), (shape[d],) + (1,) * trailing)
            )
    return getitem(x, tuple(idx))


def take_along_axis(x: Any, indices: Any, axis: int) -> Any:
    """``y[..., i, ...] = x[..., indices[..., i, ...], ...]`` along ``axis``.

    ``indices`` has the dimensions of ``x`` (other axes broadcast). A :func:`getitem` with
    integer arrays, so its adjoint is a scatter-add.
    """
    indices = getval(indices)
    shape = shape_of(x)
    nd = len(shape)
    if len(shape_of(indices)) != nd:
        raise ValueError(
            f"take_along_axis: indices must have x's {nd} dimensions, got shape {shape_of(indices)}"
        )
    axis = axis % nd
    xp = namespace(getval(x), indices)
    idx = []
    for d in range(nd):
        if d == axis:
            idx.append(indices)
        else:
            view = [1] * nd
            view[d] = shape[d]
            idx.append(xp.reshape(_arange_like(xp, shape[d], indices), tuple(view)))
    return getitem(x, tuple(idx))
