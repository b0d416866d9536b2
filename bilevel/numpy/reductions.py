"""Reductions: sum, mean, max, min, logsumexp, var, and unbroadcast (a sum to a shape).

``sum``, ``max`` and ``logsumexp`` are primitives (their derivative rules are registered by
:mod:`bilevel.numpy.rules`); ``mean``, ``min`` and ``var`` are compositions of them, so
their derivatives of every order come for free.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from autograd.extend import primitive

from bilevel.numpy._core import namespace, normalize_axes, shape_of
from bilevel.numpy.elementwise import divide, multiply, negative, subtract
from bilevel.numpy.shape import reshape

__all__ = ["logsumexp", "max", "mean", "min", "sum", "unbroadcast", "var"]


@primitive
def sum(x: Any, axis: Any = None, keepdims: bool = False) -> Any:  # noqa: A001
    """``y = Σ_axis x``. VJP: ``g`` broadcast back to ``x.shape``; JVP: ``sum(t)``. O(x.size)."""
    if type(x) is np.ndarray:
        return x.sum(axis=axis, keepdims=keepdims)
    return namespace(x).sum(x, axis=axis, keepdims=keepdims)


def mean(x: Any, axis: Any = None, keepdims: bool = False) -> Any:
    """``y = (1/n) Σ_axis x`` with ``n`` the number of reduced entries."""
    shape = shape_of(x)
    n = math.prod(shape[a] for a in normalize_axes(axis, len(shape)))
    return divide(sum(x, axis=axis, keepdims=keepdims), n)


@primitive
def max(x: Any, axis: Any = None, keepdims: bool = False) -> Any:  # noqa: A001
    """``y = max_axis x``. The gradient goes to the maximizers, split evenly among ties.

    VJP: ``g · 1[x = y] / #ties``; JVP: ``Σ_axis t · 1[x = y] / #ties``. Cost O(x.size).
    """
    if type(x) is np.ndarray:
        return x.max(axis=axis, keepdims=keepdims)
    return namespace(x).max(x, axis=axis, keepdims=keepdims)


def min(x: Any, axis: Any = None, keepdims: bool = False) -> Any:  # noqa: A001
    """``y = min_axis x = -max_axis(-x)``."""
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


def var(x: Any, axis: Any = None, ddof: int = 0, keepdims: bool = False) -> Any:
    """``y = Σ_axis (x - mean x)² / (n - ddof)``."""
    shape = shape_of(x)
    n = math.prod(shape[a] for a in normalize_axes(axis, len(shape)))
    if n - ddof <= 0:
        raise ValueError(f"var: ddof={ddof} leaves no degrees of freedom for {n} entries")
    d = subtract(x, mean(x, axis=axis, keepdims=True))
    return divide(sum(multiply(d, d), axis=axis, keepdims=keepdims), n - ddof)


def unbroadcast(g: Any, shape: tuple[int, ...]) -> Any:
    """Sum ``g`` over the axes that broadcasting added to an array of ``shape``.

    The adjoint of ``broadcast_to(·, g.shape)``: leading extra axes are summed away and
    axes where ``shape`` has length 1 are summed with ``keepdims``.
    """
    gshape = shape_of(g)
    if gshape == shape:
        return g
    lead = len(gshape) - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, s in enumerate(shape) if s == 1 and gshape[lead + i] != 1
    )
    out = sum(g, axis=axes) if axes else g
    return out if shape_of(out) == shape else reshape(out, shape)
