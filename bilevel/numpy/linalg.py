"""Products: ``matmul`` (with batch axes), ``dot``, ``einsum``.

The VJP of a product with respect to one factor is a product of the cotangent with the
other factors, so the rules reuse these primitives (derivatives of any order). Both
products are bilinear: each JVP is the product with the tangent in place of the factor.
"""

from __future__ import annotations

import string
from typing import Any

import numpy as np
from autograd.core import defjvp_argnum, defvjp_argnum
from autograd.extend import defjvp, defvjp, primitive
from autograd.util import subval

from bilevel.numpy._core import namespace, shape_of
from bilevel.numpy.elementwise import multiply
from bilevel.numpy.shape import broadcast_to, expand_dims, reshape, swapaxes, unbroadcast

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


def _matmul_vjp_a(ans: Any, a: Any, b: Any) -> Any:
    sa, sb = shape_of(a), shape_of(b)

    def vjp(g: Any) -> Any:
        if len(sb) == 1:
            da = multiply(expand_dims(g, -1), b)
        elif len(sa) == 1:
            da = reshape(matmul(b, expand_dims(g, -1)), shape_of(g)[:-1] + (sb[-2],))
        else:
            da = matmul(g, swapaxes(b, -1, -2))
        return unbroadcast(da, sa)

    return vjp


def _matmul_vjp_b(ans: Any, a: Any, b: Any) -> Any:
    sa, sb = shape_of(a), shape_of(b)

    def vjp(g: Any) -> Any:
        if len(sa) == 1 and len(sb) == 1:
            db = multiply(g, a)
        elif len(sa) == 1:
            db = multiply(expand_dims(a, -1), expand_dims(g, -2))
        elif len(sb) == 1:
            at = swapaxes(a, -1, -2)
            db = reshape(matmul(at, expand_dims(g, -1)), shape_of(at)[:-1])
        else:
            db = matmul(swapaxes(a, -1, -2), g)
        return unbroadcast(db, sb)

    return vjp


defvjp(matmul, _matmul_vjp_a, _matmul_vjp_b)
defjvp(matmul, "same", "same")


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


def _einsum_vjp(argnum: int, ans: Any, args: Any, kwargs: Any) -> Any:
    subscripts, operands = args[0], args[1:]
    k = argnum - 1
    ins, out = _parse(subscripts, [shape_of(o) for o in operands])
    target = ins[k]
    others = [o for i, o in enumerate(operands) if i != k]
    other_subs = [t for i, t in enumerate(ins) if i != k]
    present = set(out).union(*other_subs) if other_subs else set(out)
    reduced = "".join(c for c in target if c in present)
    spec = ",".join([out, *other_subs]) + "->" + reduced
    shape = shape_of(operands[k])

    def vjp(g: Any) -> Any:
        r = _einsum(spec, g, *others)
        if reduced != target:
            kept = tuple(s if c in present else 1 for c, s in zip(target, shape, strict=True))
            r = broadcast_to(reshape(r, kept), shape)
        return r

    return vjp


defvjp_argnum(_einsum, _einsum_vjp)
defjvp_argnum(_einsum, lambda argnum, g, ans, args, kwargs: _einsum(*subval(args, argnum, g)))


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
