"""Rules of the elementwise primitives: diagonal Jacobians and broadcasting binary maps.

A unary ``y = f(x)`` has a diagonal Jacobian, so its VJP and JVP are the same product
``g · f'(x)``. Binary operations broadcast: each VJP sums the cotangent back to its
operand's shape (:func:`~bilevel.numpy.reductions.unbroadcast`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from autograd.extend import defjvp, defvjp

from bilevel.numpy._core import dtype_of, getval, namespace, operand, shape_of
from bilevel.numpy.creation import astype
from bilevel.numpy.elementwise import (
    abs,
    add,
    clip,
    cos,
    divide,
    exp,
    expm1,
    log,
    log1p,
    maximum,
    minimum,
    multiply,
    negative,
    power,
    sigmoid,
    sign,
    sin,
    softplus,
    sqrt,
    square,
    subtract,
    tanh,
    where,
)
from bilevel.numpy.reductions import unbroadcast
from bilevel.numpy.shape import broadcast_like

__all__: list[str] = []

_nd = np.ndarray


def _zeros_of(g: Any) -> Any:
    gv = getval(g)
    xp = namespace(gv)
    return np.zeros_like(gv) if xp is np else xp.zeros_like(gv)


def _as_float_mask(mask: Any, like: Any) -> Any:
    xp = namespace(mask)
    dt = dtype_of(like) if dtype_of(like) is not None else np.float64
    return mask.astype(dt) if xp is np else xp.astype(mask, dt)


# ----------------------------------------------------------------- binary arithmetic

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


# ----------------------------------------------------------------- maximum, minimum, where, clip


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


def _extremum_rules(prim: Any) -> None:
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


_extremum_rules(maximum)
_extremum_rules(minimum)

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


def _inside(ans: Any, lower: Any, upper: Any) -> Any:
    """``1`` where ``clip`` passed ``x`` through, ``0`` where it clipped (dtype of ``ans``)."""
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

# f'(x) times g (a VJP) or t (a JVP): the Jacobian is diagonal, so both rules are one product
_UNARY = {
    negative: lambda g, ans, x: negative(g),
    exp: lambda g, ans, x: multiply(g, ans),
    log: lambda g, ans, x: divide(g, x),
    log1p: lambda g, ans, x: divide(g, add(x, 1.0)),
    expm1: lambda g, ans, x: multiply(g, add(ans, 1.0)),
    sqrt: lambda g, ans, x: divide(g, multiply(ans, 2.0)),
    tanh: lambda g, ans, x: multiply(g, subtract(1.0, multiply(ans, ans))),
    sin: lambda g, ans, x: multiply(g, cos(x)),
    cos: lambda g, ans, x: negative(multiply(g, sin(x))),
    abs: lambda g, ans, x: multiply(g, sign(x)),
    square: lambda g, ans, x: multiply(g, multiply(x, 2.0)),
    sigmoid: lambda g, ans, x: multiply(g, multiply(ans, subtract(1.0, ans))),
    softplus: lambda g, ans, x: multiply(g, sigmoid(x)),
}


def _diagonal(prim: Any, rule: Any) -> None:
    defvjp(prim, lambda ans, x: lambda g: rule(g, ans, x))
    defjvp(prim, lambda t, ans, x: rule(t, ans, x))


for _prim, _rule in _UNARY.items():
    _diagonal(_prim, _rule)
defvjp(sign, lambda ans, x: lambda g: _zeros_of(x if hasattr(x, "shape") else g))
defjvp(sign, lambda t, ans, x: _zeros_of(ans))
defvjp(astype, lambda ans, x, dtype: lambda g: astype(g, dtype_of(x) or np.float64))
defjvp(astype, "same")
