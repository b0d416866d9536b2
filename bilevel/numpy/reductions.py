"""Reductions: sum, mean, max, min, logsumexp, var.

``sum``, ``max`` and ``logsumexp`` are primitives; ``mean``, ``min`` and ``var`` are
compositions of them, so their derivatives of every order come for free.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from autograd.extend import defjvp, defvjp, primitive

from bilevel.numpy._core import getval, namespace, normalize_axes, shape_of
from bilevel.numpy.elementwise import divide, exp, multiply, subtract
from bilevel.numpy.shape import broadcast_to, reshape

__all__ = ["logsumexp", "max", "mean", "min", "sum", "var"]


def _kept_shape(shape: tuple[int, ...], axis: Any) -> tuple[int, ...]:
    axes = normalize_axes(axis, len(shape))
    return tuple(1 if i in axes else s for i, s in enumerate(shape))


def _expand(g: Any, x: Any, axis: Any, keepdims: bool) -> Any:
    """Reduced ``g`` reshaped so that it broadcasts against ``x`` (reduced axes kept as 1)."""
    kept = _kept_shape(shape_of(x), axis)
    return g if shape_of(g) == kept else reshape(g, kept)


@primitive
def sum(x: Any, axis: Any = None, keepdims: bool = False) -> Any:  # noqa: A001
    """``y = Σ_axis x``. VJP: ``g`` broadcast back to ``x.shape``; JVP: ``sum(t)``. O(x.size)."""
    if type(x) is np.ndarray:
        return x.sum(axis=axis, keepdims=keepdims)
    return namespace(x).sum(x, axis=axis, keepdims=keepdims)


defvjp(
    sum,
    lambda ans, x, axis=None, keepdims=False: (
        lambda g: broadcast_to(_expand(g, x, axis, keepdims), shape_of(x))
    ),
)
defjvp(sum, "same")


def mean(x: Any, axis: Any = None, keepdims: bool = False) -> Any:
    """``y = (1/n) Σ_axis x`` with ``n`` the number of reduced entries."""
    shape = shape_of(x)
    n = math.prod(shape[a] for a in normalize_axes(axis, len(shape)))
    return divide(sum(x, axis=axis, keepdims=keepdims), n)


def _chooser_mask(x: Any, ans: Any, axis: Any) -> Any:
    """Constant weights ``1[x = max] / #ties`` along ``axis`` (ties share the gradient)."""
    x, ans = getval(x), getval(ans)
    xp = namespace(x)
    hit = x == (
        ans
        if shape_of(ans) == _kept_shape(shape_of(x), axis)
        else xp.reshape(ans, _kept_shape(shape_of(x), axis))
    )
    hit = hit.astype(x.dtype) if xp is np else xp.astype(hit, x.dtype)
    return hit / xp.sum(hit, axis=axis, keepdims=True)


@primitive
def max(x: Any, axis: Any = None, keepdims: bool = False) -> Any:  # noqa: A001
    """``y = max_axis x``. The gradient goes to the maximizers, split evenly among ties.

    VJP: ``g · 1[x = y] / #ties``; JVP: ``Σ_axis t · 1[x = y] / #ties``. Cost O(x.size).
    """
    if type(x) is np.ndarray:
        return x.max(axis=axis, keepdims=keepdims)
    return namespace(x).max(x, axis=axis, keepdims=keepdims)


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


def min(x: Any, axis: Any = None, keepdims: bool = False) -> Any:  # noqa: A001
    """``y = min_axis x = -max_axis(-x)``."""
    from bilevel.numpy.elementwise import negative

    return negative(max(negative(x), axis=axis, keepdims=keepdims))


@primitive
def logsumexp(x: Any, axis: Any = None, keepdims: bool = False) -> Any:
    """``y = log Σ_axis exp(x)``, computed as ``m + log Σ exp(x - m)`` with ``m = max x``.

    VJP: ``g · exp(x - y)`` (the softmax); JVP: ``Σ_axis t · exp(x - y)``. Cost O(x.size).
    """
    xp = namespace(x)
    m = xp.max(x, axis=axis, keepdims=True)
    m = xp.where(xp.isfinite(m), m, xp.zeros_like(m))
    out = xp.log(xp.sum(xp.exp(x - m), axis=axis, keepdims=True)) + m
    if not keepdims:
        out = xp.reshape(
            out,
            tuple(
                s
                for i, s in enumerate(shape_of(x))
                if i not in normalize_axes(axis, len(shape_of(x)))
            ),
        )
    return out


def _softmax_weights(ans: Any, x: Any, axis: Any, keepdims: bool) -> Any:
    return exp(subtract(x, _expand(ans, x, axis, keepdims)))


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


def var(x: Any, axis: Any = None, ddof: int = 0, keepdims: bool = False) -> Any:
    """``y = Σ_axis (x - mean x)² / (n - ddof)``."""
    shape = shape_of(x)
    n = math.prod(shape[a] for a in normalize_axes(axis, len(shape)))
    if n - ddof <= 0:
        raise ValueError(f"var: ddof={ddof} leaves no degrees of freedom for {n} entries")
    d = subtract(x, mean(x, axis=axis, keepdims=True))
    return divide(sum(multiply(d, d), axis=axis, keepdims=keepdims), n - ddof)
