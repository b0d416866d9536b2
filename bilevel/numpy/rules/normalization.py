"""Rules of the normalization primitives :func:`~bilevel.numpy.nn.center` and
:func:`~bilevel.numpy.nn.inv_rms`.

``center`` is an orthogonal projection (its own VJP and JVP). For ``r = inv_rms(c)`` with
``n`` entries per mean, ``∂r/∂c = -r³ c / n``: the VJP spreads ``-r³ g / n`` (reduced
shape) over ``c``, the JVP reduces ``c · t``. Both are written in the primitives, with the
primal output ``r`` and input ``c``, so they differentiate again.
"""

from __future__ import annotations

import math
from typing import Any

from autograd.extend import defjvp, defvjp

from bilevel.numpy._core import shape_of
from bilevel.numpy.elementwise import multiply
from bilevel.numpy.nn import center, inv_rms
from bilevel.numpy.reductions import sum

__all__: list[str] = []


def _slope(r: Any, c: Any, axis: tuple[int, ...]) -> Any:
    """``-r³ / n`` on the reduced shape."""
    n = math.prod(shape_of(c)[a] for a in axis)
    return multiply(multiply(r, multiply(r, r)), -1.0 / n)


defvjp(center, lambda ans, x, axis: lambda g: center(g, axis))
defjvp(center, lambda t, ans, x, axis: center(t, axis))
defvjp(inv_rms, lambda ans, c, axis, eps: lambda g: multiply(c, multiply(g, _slope(ans, c, axis))))
defjvp(inv_rms, lambda t, ans, c, axis, eps: multiply(sum(multiply(c, t), axis=axis, keepdims=True),
                                                      _slope(ans, c, axis)))
