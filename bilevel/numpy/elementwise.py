"""Elementwise primitives: arithmetic, power, transcendental functions, where, clip.

Definitions only; their derivative rules are registered by :mod:`bilevel.numpy.rules`.
Each unary ``y = f(x)`` has a diagonal Jacobian, so its VJP and JVP are the same product
``g · f'(x)``. Binary operations broadcast; their VJPs sum the cotangent back to each
operand's shape. Cost O(size) time and memory per call.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import numpy as np
from autograd.extend import primitive

from bilevel.numpy._core import device_of, namespace, operand

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


# ----------------------------------------------------------------- maximum, minimum, where


def _extremum(name: str, attr: str, doc: str) -> Any:
    def fun(x: Any, y: Any) -> Any:
        xp = namespace(x, y)
        if xp is np:
            return getattr(np, attr)(x, y)
        like = x if hasattr(x, "shape") and not isinstance(x, np.generic) else y
        return getattr(xp, attr)(operand(xp, x, like), operand(xp, y, like))

    fun.__name__ = fun.__qualname__ = name
    fun.__doc__ = doc
    return primitive(fun)


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
    if not hasattr(like, "shape") or isinstance(like, np.generic):  # two scalars
        like = y = xp.asarray(y.item() if isinstance(y, np.generic) else y,
                              device=device_of(condition))
    return xp.where(condition, operand(xp, x, like), operand(xp, y, like))


@primitive
def clip(x: Any, lower: Any = None, upper: Any = None) -> Any:
    """``min(max(x, lower), upper)``; bounds are constants (``None`` for no bound).

    The derivative is 1 strictly inside the bounds and 0 where ``x`` is clipped.
    """
    xp = namespace(x)
    if xp is np:
        return np.clip(x, lower, upper)
    return xp.clip(x, operand(xp, lower, x), operand(xp, upper, x))


# ----------------------------------------------------------------- unary functions


def _unary(name: str, attr: str, doc: str) -> Any:
    np_fun = getattr(np, attr)

    def fun(x: Any) -> Any:
        if type(x) is _nd:
            return np_fun(x)
        return getattr(namespace(x), attr)(x)

    fun.__name__ = fun.__qualname__ = name
    fun.__doc__ = doc
    return primitive(fun)


negative = _unary("negative", "negative", "``-x``.")
exp = _unary("exp", "exp", "``e^x``; derivative ``e^x``.")
log = _unary("log", "log", "Natural ``log x``; derivative ``1/x``.")
log1p = _unary("log1p", "log1p", "``log(1 + x)``; derivative ``1/(1 + x)``.")
expm1 = _unary("expm1", "expm1", "``e^x - 1``; derivative ``e^x``.")
sqrt = _unary("sqrt", "sqrt", "``√x``; derivative ``1/(2√x)``.")
tanh = _unary("tanh", "tanh", "``tanh x``; derivative ``1 - tanh² x``.")
sin = _unary("sin", "sin", "``sin x``; derivative ``cos x``.")
cos = _unary("cos", "cos", "``cos x``; derivative ``-sin x``.")
sign = _unary("sign", "sign", "``sign x`` (-1, 0 or 1); derivative 0.")
abs = _unary("abs", "abs", "``|x|``; derivative ``sign x`` (0 at 0).")  # noqa: A001
square = _unary("square", "square", "``x²``; derivative ``2x``.")


@primitive
def sigmoid(x: Any) -> Any:
    """Logistic ``σ(x) = 1 / (1 + e^{-x})``, computed as ``(1 + tanh(x/2)) / 2`` (no overflow).

    Derivative ``σ(x)(1 - σ(x))``.
    """
    xp = np if type(x) is _nd else namespace(x)
    return xp.tanh(x * 0.5) * 0.5 + 0.5


@primitive
def softplus(x: Any) -> Any:
    """``log(1 + e^x)``, computed as ``logaddexp(0, x)``. Derivative ``σ(x)``."""
    xp = np if type(x) is _nd else namespace(x)
    if xp is np:
        return np.logaddexp(0.0, x)
    return xp.logaddexp(xp.zeros_like(x), x)
