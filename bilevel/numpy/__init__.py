"""Differentiable, backend-generic array functions: ``import bilevel.numpy as bnp``.

Every function here runs on the array namespace of its arguments (NumPy, CuPy, or another
Array-API library) and is an autograd primitive with VJP and JVP rules written in these
same primitives, so derivatives of any order and forward-over-reverse work on every
backend. On NumPy, autograd.numpy functions may be mixed in freely.

Layout, as in ``autograd.numpy``: the definitions modules (:mod:`~bilevel.numpy.elementwise`,
:mod:`~bilevel.numpy.shape`, :mod:`~bilevel.numpy.reductions`,
:mod:`~bilevel.numpy.indexing`, :mod:`~bilevel.numpy.linalg`, :mod:`~bilevel.numpy.nn`,
:mod:`~bilevel.numpy.creation`) define the primitives and import no derivative rule;
:mod:`bilevel.numpy.rules`, imported last, registers the rules.
"""

import numpy as _np

import bilevel.numpy.threads  # noqa: F401  (autograd's trace counter per thread)
from bilevel.numpy.boxes import BackendBox, BackendVSpace, register
from bilevel.numpy.creation import (
    all,
    any,
    arange,
    argmax,
    asarray,
    astype,
    eye,
    full,
    full_like,
    isfinite,
    linspace,
    ndim,
    ones,
    ones_like,
    size,
    zeros,
    zeros_like,
)
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
    true_divide,
    where,
)
from bilevel.numpy.indexing import getitem, take, take_along_axis
from bilevel.numpy.linalg import dot, einsum, matmul
from bilevel.numpy.nn import (
    avg_pool2d,
    center,
    conv2d,
    inv_rms,
    log_softmax,
    max_pool2d,
    softmax,
    softmax_cross_entropy,
    standardize,
)
from bilevel.numpy.reductions import logsumexp, max, mean, min, sum, var
from bilevel.numpy.shape import (
    broadcast_to,
    concatenate,
    expand_dims,
    moveaxis,
    ravel,
    reshape,
    squeeze,
    stack,
    swapaxes,
    transpose,
)

# isort: split
# The derivative rules last: they import the definitions above, which import no rule.
from bilevel.numpy import rules  # noqa: F401

# ``shape`` is the function of creation, not the submodule of that name
from bilevel.numpy.creation import shape

float32 = _np.float32
float64 = _np.float64
int32 = _np.int32
int64 = _np.int64
newaxis = None
del _np

__all__ = [
    "BackendBox",
    "BackendVSpace",
    "abs",
    "add",
    "all",
    "any",
    "arange",
    "argmax",
    "asarray",
    "astype",
    "avg_pool2d",
    "broadcast_to",
    "center",
    "clip",
    "concatenate",
    "conv2d",
    "cos",
    "divide",
    "dot",
    "einsum",
    "exp",
    "expand_dims",
    "expm1",
    "eye",
    "float32",
    "float64",
    "full",
    "full_like",
    "getitem",
    "int32",
    "int64",
    "inv_rms",
    "isfinite",
    "linspace",
    "log",
    "log1p",
    "log_softmax",
    "logsumexp",
    "matmul",
    "max",
    "max_pool2d",
    "maximum",
    "mean",
    "min",
    "minimum",
    "moveaxis",
    "multiply",
    "ndim",
    "negative",
    "newaxis",
    "ones",
    "ones_like",
    "power",
    "ravel",
    "register",
    "reshape",
    "shape",
    "sigmoid",
    "sign",
    "sin",
    "size",
    "softmax",
    "softmax_cross_entropy",
    "softplus",
    "sqrt",
    "square",
    "squeeze",
    "standardize",
    "stack",
    "subtract",
    "sum",
    "swapaxes",
    "take",
    "take_along_axis",
    "tanh",
    "transpose",
    "true_divide",
    "var",
    "where",
    "zeros",
    "zeros_like",
]
