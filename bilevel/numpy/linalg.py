"""Products: ``matmul`` (with batch axes), ``dot``, ``einsum``.

The VJP of a product with respect to one factor is a product of the cotangent with the
other factors, so the rules (in :mod:`bilevel.numpy.rules`) reuse these primitives
(derivatives of any order). Both products are bilinear: each JVP is the product with the
tangent in place of the factor.
"""

from __future__ import annotations

import string
from typing import Any

import numpy as np
from autograd.extend import primitive

from bilevel.numpy._core import namespace, shape_of
from bilevel.numpy.elementwise import multiply

__all__ = ["dot", "einsum", "matmul"]


@primitive
def matmul(a: Any, b: Any) -> Any:
    """Matrix product ``c[..., i, k] = Σ_j a[..., i, j] b[..., j, k]`` with broadcast batch axes.

    1-D operands act as a row (``a``) or column (``b``) vector, as in NumPy.
    VJP: ``g b^T`` and ``a^T g`` summed over broadcast batch axes. Cost O(batch·i·j·k).
    """
    if type(a) is np.ndarray and type(b) is np.ndarray:
        return a @ b
    namespace(a, b)
    return a @ b


def dot(a: Any, b: Any) -> Any:
    """``a · b`` for operands of at most two dimensions (:func:`matmul`; a scalar multiplies).

    Raises
    ------
    ValueError
        For operands of more than two dimensions (use :func:`matmul` or :func:`einsum`).
    """
    na, nb = len(shape_of(a)), len(shape_of(b))
    if na == 0 or nb == 0:
        return multiply(a, b)
    if na > 2 or nb > 2:
        raise ValueError(
            f"dot: a and b must have at most 2 dimensions (got {na} and {nb}); "
            "use matmul for batched products or einsum"
        )
    return matmul(a, b)


# ----------------------------------------------------------------- einsum


def _parse(subscripts: str, shapes: list[tuple[int, ...]]) -> tuple[list[str], str]:
    """Explicit input/output index strings with each ``...`` replaced by letters.

    Ellipsis axes are right-aligned across operands (NumPy broadcasting); every label
    must have one size in all operands.
    """
    subscripts = subscripts.replace(" ", "")
    if "->" in subscripts:
        lhs, out = subscripts.split("->")
    else:
        lhs, out = subscripts, None
    ins = lhs.split(",")
    if len(ins) != len(shapes):
        raise ValueError(
            f"einsum: subscripts {subscripts!r} name {len(ins)} operands, got {len(shapes)}"
        )
    used = set(subscripts)
    spare = [c for c in string.ascii_uppercase + string.ascii_lowercase if c not in used]
    pairs = list(zip(ins, shapes, strict=True))
    n_ell = max((len(s) - (len(t) - 3) for t, s in pairs if "..." in t), default=0)
    ell = "".join(spare[:n_ell])
    expanded = []
    for t, s in zip(ins, shapes, strict=True):
        if "..." in t:
            k = len(s) - (len(t) - 3)
            t = t.replace("...", ell[n_ell - k :])
        if len(t) != len(s):
            raise ValueError(f"einsum: operand subscripts {t!r} do not match its shape {s}")
        if len(set(t)) != len(t):
            raise ValueError(f"einsum: repeated index in one operand ({t!r}) is not supported")
        expanded.append(t)
    if out is None:
        counts: dict[str, int] = {}
        for t in expanded:
            for c in t:
                counts[c] = counts.get(c, 0) + 1
        out = ell + "".join(sorted(c for c, n in counts.items() if n == 1 and c not in ell))
    else:
        out = out.replace("...", ell)
    return expanded, out


@primitive
def _einsum(subscripts: str, *operands: Any) -> Any:
    if all(type(o) is np.ndarray for o in operands):
        return np.einsum(subscripts, *operands, optimize=len(operands) > 2)
    xp = namespace(*operands)
    return xp.einsum(subscripts, *operands)


def einsum(subscripts: str, *operands: Any) -> Any:
    """Einstein summation over ``operands`` as named by ``subscripts`` (e.g. ``"bij,bjk->bik"``).

    Supports explicit (``->``) and implicit outputs and ``...`` for broadcast leading axes;
    each index appears at most once per operand and has one size everywhere.
    VJP for operand ``k``: an einsum of the cotangent with the other operands onto ``k``'s
    indices (broadcast over indices that occur only in ``k``). Cost: as the forward einsum.
    """
    if not isinstance(subscripts, str):
        raise TypeError(f"einsum: subscripts must be a string, got {type(subscripts).__name__}")
    _parse(subscripts, [shape_of(o) for o in operands])
    return _einsum(subscripts, *operands)
