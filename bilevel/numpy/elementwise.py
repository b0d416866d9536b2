"""Elementwise primitives: arithmetic, power, transcendental functions, where, clip.

Each unary ``y = f(x)`` has a diagonal Jacobian, so its VJP and JVP are the same product
``g · f'(x)``, written with these primitives (derivatives of any order). Binary
operations broadcast; their VJPs sum the cotangent back to each operand's shape.
Cost O(size) time and memory per call.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import numpy as np
from autograd.extend import defjvp, defvjp, primitive

from bilevel.numpy._core import dtype_of, getval, namespace, operand, shape_of
from bilevel.numpy.shape import broadcast_like, unbroadcast

__all__ = [
    "abs",
    "add",
    "clip",
    "cos",
    "divide",
    "exp",
    "expm1",
    "log",
    "log1p",
    "maximum",
    "minimum",
    "multiply",
    "negative",
    "power",
    "sigmoid",
    "sign",
    "sin",
    "softplus",
    "sqrt",
    "square",
    "subtract",
    "tanh",
    "true_divide",
    "where",
]

_nd = np.ndarray


# ----------------------------------------------------------------- binary arithmetic


# operand types on which the NumPy operators apply as they are (one set lookup per operand)
_NUMPY_OPERANDS = frozenset({_nd, float, int, np.float64, np.float32})


def _binary(name: str, op: Callable[[Any, Any], Any], doc: str) -> Any:
    def fun(x: Any, y: Any) -> Any:
        if type(x) in _NUMPY_OPERANDS and type(y) in _NUMPY_OPERANDS:
            return op(x, y)
        xp = namespace(x, y)
        if xp is not np:
            x = x.item() if isinstance(x, np.generic) else x
            y = y.item() if isinstance(y, np.generic) else y
        return op(x, y)

    fun.__name__ = fun.__qualname__ = name
    fun.__doc__ = doc
    return primitive(fun)


add = _binary("add", operator.add, "``x + y`` with broadcasting. VJP: unbroadcast ``g``.")
subtract = _binary("subtract", operator.sub, "``x - y`` with broadcasting.")
multiply = _binary("multiply", operator.mul, "``x · y`` with broadcasting.")
divide = _binary("divide", operator.truediv, "``x / y`` with broadcasting.")
true_divide = divide
power = _binary(
    "power", operator.pow, "``x ** y``; ∂/∂x = y x^(y-1), ∂/∂y = x^y log x (0 where x = 0)."
)

defvjp(
    add,
    lambda ans, x, y: lambda g: unbroadcast(g, shape_of(x)),
    lambda ans, x, y: lambda g: unbroadcast(g, shape_of(y)),
)
defjvp(
    add, lambda t, ans, x, y: broadcast_like(t, ans), lambda t, ans, x, y: broadcast_like(t, ans)
)
# Factors constant along the broadcast axes are applied after unbroadcast's sum, on the
# smaller array: -Σg = Σ(-g) and Σ(g·ans)/y = Σ(g·ans/y) when y is broadcast along the sum.
defvjp(
    subtract,
    lambda ans, x, y: lambda g: unbroadcast(g, shape_of(x)),
    lambda ans, x, y: lambda g: negative(unbroadcast(g, shape_of(y))),
)
defjvp(
    subtract,
    lambda t, ans, x, y: broadcast_like(t, ans),
    lambda t, ans, x, y: broadcast_like(negative(t), ans),
)
defvjp(
    multiply,
    lambda ans, x, y: lambda g: unbroadcast(multiply(g, y), shape_of(x)),
    lambda ans, x, y: lambda g: unbroadcast(multiply(x, g), shape_of(y)),
)
defjvp(multiply, lambda t, ans, x, y: multiply(t, y), lambda t, ans, x, y: multiply(x, t))
defvjp(
    divide,
    lambda ans, x, y: lambda g: unbroadcast(divide(g, y), shape_of(x)),
    lambda ans, x, y: lambda g: negative(divide(unbroadcast(multiply(g, ans), shape_of(y)), y)),
)
defjvp(
    divide,
    lambda t, ans, x, y: divide(t, y),
    lambda t, ans, x, y: negative(divide(multiply(t, ans), y)),
)


def _dpower_dx(x: Any, y: Any) -> Any:
    return multiply(y, power(x, subtract(y, 1)))


def _log_or_zero(x: Any) -> Any:
    """``log x`` where ``x ≠ 0`` and 0 where ``x = 0`` (the limit of ``x^y log x``)."""
    xv = getval(x)
    return log(where(xv == 0, 1.0, x))


defvjp(
    power,
    lambda ans, x, y: lambda g: unbroadcast(multiply(g, _dpower_dx(x, y)), shape_of(x)),
    lambda ans, x, y: (
        lambda g: unbroadcast(multiply(multiply(g, ans), _log_or_zero(x)), shape_of(y))
    ),
)
defjvp(
    power,
    lambda t, ans, x, y: multiply(t, _dpower_dx(x, y)),
    lambda t, ans, x, y: multiply(multiply(t, ans), _log_or_zero(x)),
)


# ----------------------------------------------------------------- maximum, minimum, where


def _as_float_mask(mask: Any, like: Any) -> Any:
    xp = namespace(mask)
    dt = dtype_of(like) if dtype_of(like) is not None else np.float64
    return mask.astype(dt) if xp is np else xp.astype(mask, dt)


def _share(x: Any, ans: Any, other: Any) -> Any:
    """Constant weight of ``x`` in ``max/min(x, other)``: ``1[x = ans] / (1 + 1[x = other])``."""
    x, ans, other = getval(x), getval(ans), getval(other)
    if type(x) is _nd and type(ans) is _nd and ans.ndim:
        # the same numbers in fewer passes: halve the ties in place (exact in binary)
        share = _as_float_mask(x == ans, ans)  # ans has the broadcast shape
        tie = x == other
        if tie.any():
            np.multiply(share, 0.5, out=share, where=tie)
        return share
    return _as_float_mask(x == ans, ans) / (1 + _as_float_mask(x == other, ans))


def _extremum(name: str, attr: str, doc: str) -> Any:
    def fun(x: Any, y: Any) -> Any:
        xp = namespace(x, y)
        if xp is np:
            return getattr(np, attr)(x, y)
        like = x if hasattr(x, "shape") and not isinstance(x, np.generic) else y
        return getattr(xp, attr)(operand(xp, x, like), operand(xp, y, like))

    fun.__name__ = fun.__qualname__ = name
    fun.__doc__ = doc
    prim = primitive(fun)
    defvjp(
        prim,
        lambda ans, x, y: lambda g: unbroadcast(multiply(g, _share(x, ans, y)), shape_of(x)),
        lambda ans, x, y: lambda g: unbroadcast(multiply(g, _share(y, ans, x)), shape_of(y)),
    )
    defjvp(
        prim,
        lambda t, ans, x, y: multiply(t, _share(x, ans, y)),
        lambda t, ans, x, y: multiply(t, _share(y, ans, x)),
    )
    return prim


maximum = _extremum(
    "maximum", "maximum", "``max(x, y)`` elementwise; at ties each side gets half the gradient."
)
minimum = _extremum(
    "minimum", "minimum", "``min(x, y)`` elementwise; at ties each side gets half the gradient."
)


@primitive
def where(condition: Any, x: Any, y: Any) -> Any:
    """``x`` where ``condition`` holds, else ``y`` (broadcast). ``condition`` is not differentiated.

    VJP: ``where(c, g, 0)`` and ``where(c, 0, g)`` summed to each operand's shape.
    """
    xp = namespace(condition, x, y)
    if xp is np:
        return np.where(condition, x, y)
    like = x if hasattr(x, "shape") and not isinstance(x, np.generic) else y
    return xp.where(condition, operand(xp, x, like), operand(xp, y, like))


def _zeros_of(g: Any) -> Any:
    gv = getval(g)
    xp = namespace(gv)
    return np.zeros_like(gv) if xp is np else xp.zeros_like(gv)


defvjp(
    where,
    None,
    lambda ans, c, x, y: lambda g: unbroadcast(where(c, g, _zeros_of(g)), shape_of(x)),
    lambda ans, c, x, y: lambda g: unbroadcast(where(c, _zeros_of(g), g), shape_of(y)),
)
defjvp(
    where,
    None,
    lambda t, ans, c, x, y: where(c, t, _zeros_of(ans)),
    lambda t, ans, c, x, y: where(c, _zeros_of(ans), t),
)


@primitive
def clip(x: Any, lower: Any = None, upper: Any = None) -> Any:
    """``min(max(x, lower), upper)``; bounds are constants (``None`` for no bound).

    The derivative is 1 strictly inside the bounds and 0 where ``x`` is clipped.
    """
    xp = namespace(x)
    if xp is np:
        return np.clip(x, lower, upper)
    return xp.clip(x, operand(xp, lower, x), operand(xp, upper, x))


def _inside(ans: Any, lower: Any, upper: Any) -> Any:
    ans = getval(ans)
    xp = namespace(ans)
    keep = ans == ans
    if lower is not None:
        keep = keep & (ans != operand(xp, getval(lower), ans))
    if upper is not None:
        keep = keep & (ans != operand(xp, getval(upper), ans))
    return _as_float_mask(keep, ans)


defvjp(
    clip, lambda ans, x, lower=None, upper=None: lambda g: multiply(g, _inside(ans, lower, upper))
)
defjvp(clip, lambda t, ans, x, lower=None, upper=None: multiply(t, _inside(ans, lower, upper)))


# ----------------------------------------------------------------- unary functions


def _unary(name: str, attr: str, doc: str, rule: Callable[[Any, Any, Any], Any] | None) -> Any:
    np_fun = getattr(np, attr)

    def fun(x: Any) -> Any:
        if type(x) is _nd:
            return np_fun(x)
        return getattr(namespace(x), attr)(x)

    fun.__name__ = fun.__qualname__ = name
    fun.__doc__ = doc
    prim = primitive(fun)
    if rule is None:
        defvjp(prim, lambda ans, x: lambda g: _zeros_of(x if hasattr(x, "shape") else g))
        defjvp(prim, lambda t, ans, x: _zeros_of(ans))
    else:
        defvjp(prim, lambda ans, x: lambda g: rule(g, ans, x))
        defjvp(prim, lambda t, ans, x: rule(t, ans, x))
    return prim


negative = _unary("negative", "negative", "``-x``.", lambda g, ans, x: negative(g))
exp = _unary("exp", "exp", "``e^x``; derivative ``e^x``.", lambda g, ans, x: multiply(g, ans))
log = _unary("log", "log", "Natural ``log x``; derivative ``1/x``.", lambda g, ans, x: divide(g, x))
log1p = _unary(
    "log1p",
    "log1p",
    "``log(1 + x)``; derivative ``1/(1 + x)``.",
    lambda g, ans, x: divide(g, add(x, 1.0)),
)
expm1 = _unary(
    "expm1",
    "expm1",
    "``e^x - 1``; derivative ``e^x``.",
    lambda g, ans, x: multiply(g, add(ans, 1.0)),
)
sqrt = _unary(
    "sqrt",
    "sqrt",
    "``√x``; derivative ``1/(2√x)``.",
    lambda g, ans, x: divide(g, multiply(ans, 2.0)),
)
tanh = _unary(
    "tanh",
    "tanh",
    "``tanh x``; derivative ``1 - tanh² x``.",
    lambda g, ans, x: multiply(g, subtract(1.0, multiply(ans, ans))),
)
sin = _unary(
    "sin", "sin", "``sin x``; derivative ``cos x``.", lambda g, ans, x: multiply(g, cos(x))
)
cos = _unary(
    "cos",
    "cos",
    "``cos x``; derivative ``-sin x``.",
    lambda g, ans, x: negative(multiply(g, sin(x))),
)
sign = _unary("sign", "sign", "``sign x`` (-1, 0 or 1); derivative 0.", None)
abs = _unary(  # noqa: A001
    "abs",
    "abs",
    "``|x|``; derivative ``sign x`` (0 at 0).",
    lambda g, ans, x: multiply(g, sign(x)),
)
square = _unary(
    "square",
    "square",
    "``x²``; derivative ``2x``.",
    lambda g, ans, x: multiply(g, multiply(x, 2.0)),
)


@primitive
def sigmoid(x: Any) -> Any:
    """Logistic ``σ(x) = 1 / (1 + e^{-x})``, computed as ``(1 + tanh(x/2)) / 2`` (no overflow).

    Derivative ``σ(x)(1 - σ(x))``.
    """
    xp = np if type(x) is _nd else namespace(x)
    return xp.tanh(x * 0.5) * 0.5 + 0.5


def _sigmoid_rule(g: Any, ans: Any, x: Any) -> Any:
    return multiply(g, multiply(ans, subtract(1.0, ans)))


defvjp(sigmoid, lambda ans, x: lambda g: _sigmoid_rule(g, ans, x))
defjvp(sigmoid, lambda t, ans, x: _sigmoid_rule(t, ans, x))


@primitive
def softplus(x: Any) -> Any:
    """``log(1 + e^x)``, computed as ``logaddexp(0, x)``. Derivative ``σ(x)``."""
    xp = np if type(x) is _nd else namespace(x)
    if xp is np:
        return np.logaddexp(0.0, x)
    return xp.logaddexp(xp.zeros_like(x), x)


defvjp(softplus, lambda ans, x: lambda g: multiply(g, sigmoid(x)))
defjvp(softplus, lambda t, ans, x: multiply(t, sigmoid(x)))
