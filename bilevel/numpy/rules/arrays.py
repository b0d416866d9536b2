"""Rules of the shape, reduction and indexing primitives.

Reshape, broadcast, transpose, concatenate, sum and indexing are linear: each JVP is the
primitive applied to the tangent and each VJP its adjoint (reshape back, sum over broadcast
axes, inverse permutation, slices, scatter-add). ``max`` and ``logsumexp`` weight the
cotangent by the maximizers (ties share) and by the softmax.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from autograd.core import defjvp_argnums, defvjp_argnums
from autograd.extend import defjvp, defvjp

from bilevel.numpy._core import getval, namespace, normalize_axes, shape_of, zeros
from bilevel.numpy.elementwise import exp, multiply, subtract
from bilevel.numpy.indexing import _getitem, _scatter, getitem
from bilevel.numpy.reductions import logsumexp, max, sum, unbroadcast
from bilevel.numpy.shape import _concatenate, broadcast_to, reshape, transpose

__all__: list[str] = []


def _transpose_vjp(ans: Any, x: Any, axes: Any = None) -> Any:
    nd = len(shape_of(x))
    axes = tuple(range(nd))[::-1] if axes is None else tuple(a % nd for a in axes)
    inverse = tuple(int(i) for i in np.argsort(axes))
    return lambda g: transpose(g, inverse)


def _concatenate_vjp(argnums: Any, ans: Any, args: Any, kwargs: Any) -> Any:
    axis, arrays = args[0], args[1:]
    ax = axis % len(shape_of(ans))
    ends = np.cumsum([shape_of(a)[ax] for a in arrays])
    starts = ends - np.array([shape_of(a)[ax] for a in arrays])

    def piece(g: Any, k: int) -> Any:
        idx = (slice(None),) * ax + (slice(int(starts[k]), int(ends[k])), Ellipsis)
        return getitem(g, idx)

    return lambda g: tuple(piece(g, argnum - 1) for argnum in argnums)


def _concatenate_jvp(argnums: Any, gs: Any, ans: Any, args: Any, kwargs: Any) -> Any:
    tangents = list(args[1:])
    for k, arr in enumerate(tangents):
        v = getval(arr)
        tangents[k] = zeros(namespace(v), shape_of(v), v.dtype, like=v)
    for argnum, g in zip(argnums, gs, strict=True):
        tangents[argnum - 1] = g
    return _concatenate(args[0], *tangents)


defvjp(reshape, lambda ans, x, shape: lambda g: reshape(g, shape_of(x)))
defjvp(reshape, "same")
defvjp(broadcast_to, lambda ans, x, shape: lambda g: unbroadcast(g, shape_of(x)))
defjvp(broadcast_to, "same")
defvjp(transpose, _transpose_vjp)
defjvp(transpose, "same")
defvjp_argnums(_concatenate, _concatenate_vjp)
defjvp_argnums(_concatenate, _concatenate_jvp)


# ----------------------------------------------------------------- reductions


def _kept_shape(shape: tuple[int, ...], axis: Any) -> tuple[int, ...]:
    axes = normalize_axes(axis, len(shape))
    return tuple(1 if i in axes else s for i, s in enumerate(shape))


def _expand(g: Any, x: Any, axis: Any, keepdims: bool) -> Any:
    """Reduced ``g`` reshaped so that it broadcasts against ``x`` (reduced axes kept as 1)."""
    kept = _kept_shape(shape_of(x), axis)
    return g if shape_of(g) == kept else reshape(g, kept)


def _chooser_mask(x: Any, ans: Any, axis: Any) -> Any:
    """Constant weights ``1[x = max] / #ties`` along ``axis`` (ties share the gradient)."""
    x, ans = getval(x), getval(ans)
    xp = namespace(x)
    kept = _kept_shape(shape_of(x), axis)
    hit = x == (ans if shape_of(ans) == kept else xp.reshape(ans, kept))
    hit = hit.astype(x.dtype) if xp is np else xp.astype(hit, x.dtype)
    return hit / xp.sum(hit, axis=axis, keepdims=True)


def _softmax_weights(ans: Any, x: Any, axis: Any, keepdims: bool) -> Any:
    return exp(subtract(x, _expand(ans, x, axis, keepdims)))


defvjp(
    sum,
    lambda ans, x, axis=None, keepdims=False: (
        lambda g: broadcast_to(_expand(g, x, axis, keepdims), shape_of(x))
    ),
)
defjvp(sum, "same")
defvjp(
    max,
    lambda ans, x, axis=None, keepdims=False: (
        lambda g: multiply(_expand(g, x, axis, keepdims), _chooser_mask(x, ans, axis))
    ),
)
defjvp(
    max,
    lambda t, ans, x, axis=None, keepdims=False: sum(
        multiply(t, _chooser_mask(x, ans, axis)), axis=axis, keepdims=keepdims
    ),
)
defvjp(
    logsumexp,
    lambda ans, x, axis=None, keepdims=False: (
        lambda g: multiply(_expand(g, x, axis, keepdims), _softmax_weights(ans, x, axis, keepdims))
    ),
)
defjvp(
    logsumexp,
    lambda t, ans, x, axis=None, keepdims=False: sum(
        multiply(t, _softmax_weights(ans, x, axis, keepdims)), axis=axis, keepdims=keepdims
    ),
)


# ----------------------------------------------------------------- indexing

defvjp(_getitem, lambda ans, x, idx: lambda g: _scatter(g, idx, shape_of(x)))
defjvp(_getitem, "same")
defvjp(_scatter, lambda ans, g, idx, shape: lambda gg: getitem(gg, idx))
defjvp(_scatter, "same")
