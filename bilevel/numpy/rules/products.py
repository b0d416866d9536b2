"""Rules of the products (``matmul``, ``einsum``) and of the convolution and pooling windows.

The VJP of a product with respect to one factor is a product of the cotangent with the
other factors; each JVP is the product with the tangent in place of the factor. The window
primitives are linear adjoint pairs (im2col/col2im, block sum/upsampling): each VJP is the
partner and each JVP the primitive itself; max pooling weights by the maximizers.
"""

from __future__ import annotations

from typing import Any

from autograd.core import defjvp_argnum, defvjp_argnum
from autograd.extend import defjvp, defvjp
from autograd.util import subval

from bilevel.numpy._core import getval, shape_of
from bilevel.numpy.elementwise import multiply
from bilevel.numpy.linalg import _einsum, _parse, matmul
from bilevel.numpy.nn import correlate
from bilevel.numpy.pooling import (
    block_max,
    block_sum,
    maximizers,
    pool_max,
    unblock,
    unpool_max,
)
from bilevel.numpy.reductions import unbroadcast
from bilevel.numpy.shape import broadcast_to, expand_dims, reshape, swapaxes
from bilevel.numpy.windows import (
    columns,
    flat_columns,
    output_rows,
    patches,
    uncolumns,
    unpatches,
)

__all__: list[str] = []


def _matmul_vjp_a(ans: Any, a: Any, b: Any) -> Any:
    sa, sb = shape_of(a), shape_of(b)

    def vjp(g: Any) -> Any:
        if len(sb) == 1:
            da = multiply(expand_dims(g, -1), b)
        elif len(sa) == 1 and len(sb) == 2:  # B g: one matrix-vector product (BLAS gemv)
            da = matmul(b, g)
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
        elif len(sb) == 1 and len(sa) == 2:  # Aᵀg as g A: gemv on A as stored, no copy
            db = matmul(g, a)
        elif len(sb) == 1:
            at = swapaxes(a, -1, -2)
            db = reshape(matmul(at, expand_dims(g, -1)), shape_of(at)[:-1])
        else:
            db = matmul(swapaxes(a, -1, -2), g)
        return unbroadcast(db, sb)

    return vjp


def _einsum_vjp(argnum: int, ans: Any, args: Any, kwargs: Any) -> Any:
    """Cotangent of operand ``k``: an einsum of ``g`` with the other operands onto ``k``'s
    indices, broadcast over the indices that occur only in ``k``."""
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


defvjp(matmul, _matmul_vjp_a, _matmul_vjp_b)
defjvp(matmul, "same", "same")
defvjp_argnum(_einsum, _einsum_vjp)
defjvp_argnum(_einsum, lambda argnum, g, ans, args, kwargs: _einsum(*subval(args, argnum, g)))


# ----------------------------------------------------------------- windows


def _block_max_vjp(ans: Any, x: Any, s: int) -> Any:
    code = maximizers(getval(x), getval(ans), s)  # held by the graph: one integer per block
    return lambda g: unpool_max(g, code, s)


def _block_max_jvp(t: Any, ans: Any, x: Any, s: int) -> Any:
    return pool_max(t, maximizers(getval(x), getval(ans), s), s)


def _correlate_vjp_x(ans: Any, x: Any, w: Any, stride: int, padding: int) -> Any:
    """``∂x = col2im(Wᵀ g)``: the filters' transpose times the output rows, scattered back."""
    sx, sw = shape_of(x), shape_of(w)
    o, c, kh, kw = sw[-4:]

    def vjp(g: Any) -> Any:
        sg = shape_of(g)
        q = matmul(swapaxes(reshape(w, sw[:-4] + (o, c * kh * kw)), -1, -2), output_rows(g))
        q = reshape(q, shape_of(q)[:-2] + (c, kh * kw, sg[-4], sg[-2], sg[-1]))
        dx = uncolumns(q, kh, kw, stride, padding, shape_of(q)[:-5] + sx[-4:])
        return unbroadcast(dx, sx)

    return vjp


def _correlate_vjp_w(ans: Any, x: Any, w: Any, stride: int, padding: int) -> Any:
    """``∂W = g colsᵀ``, the columns of ``x`` rebuilt here (the graph does not keep them)."""
    sw = shape_of(w)
    kh, kw = sw[-2:]

    def vjp(g: Any) -> Any:
        cols = flat_columns(x, kh, kw, stride, padding)
        # (cols rowsᵀ)ᵀ, not rows colsᵀ: BLAS is ~10x faster with the long N·Ho·Wo axis
        # contiguous in both operands' rows (measured, OpenBLAS sgemm)
        dw = swapaxes(matmul(cols, swapaxes(output_rows(g), -1, -2)), -1, -2)
        return unbroadcast(reshape(dw, shape_of(dw)[:-1] + sw[-3:]), sw)

    return vjp


defvjp(correlate, _correlate_vjp_x, _correlate_vjp_w)
defjvp(
    correlate,
    lambda t, ans, x, w, stride, padding: correlate(t, w, stride, padding),
    lambda t, ans, x, w, stride, padding: correlate(x, t, stride, padding),
)
defvjp(
    patches,
    lambda ans, x, kh, kw, stride=1, padding=0: (
        lambda g: unpatches(g, kh, kw, stride, padding, shape_of(x))
    ),
)
defjvp(patches, "same")
defvjp(
    unpatches,
    lambda ans, p, kh, kw, stride, padding, shape: lambda g: patches(g, kh, kw, stride, padding),
)
defjvp(unpatches, "same")
defvjp(
    columns,
    lambda ans, x, kh, kw, stride=1, padding=0: (
        lambda g: uncolumns(g, kh, kw, stride, padding, shape_of(x))
    ),
)
defjvp(columns, "same")
defvjp(
    uncolumns,
    lambda ans, q, kh, kw, stride, padding, shape: lambda g: columns(g, kh, kw, stride, padding),
)
defjvp(uncolumns, "same")
defvjp(block_sum, lambda ans, x, s: lambda g: unblock(g, s))
defjvp(block_sum, "same")
defvjp(unblock, lambda ans, y, s: lambda g: block_sum(g, s))
defjvp(unblock, "same")
defvjp(block_max, _block_max_vjp)
defjvp(block_max, _block_max_jvp)
defvjp(unpool_max, lambda ans, g, code, s: lambda gg: pool_max(gg, code, s))
defjvp(unpool_max, "same")
defvjp(pool_max, lambda ans, t, code, s: lambda g: unpool_max(g, code, s))
defjvp(pool_max, "same")
