"""Autograd boxes and vector spaces for non-NumPy arrays (CuPy, other Array-API libraries).

NumPy arrays keep autograd.numpy's ``ArrayBox``, so autograd.numpy and :mod:`bilevel.numpy`
mix freely on the CPU. Other array types get :class:`BackendBox`, whose operators call
:mod:`bilevel.numpy`, and :class:`BackendVSpace`, whose zeros, ones, random vectors and
inner products stay on the array's own backend and device. :func:`register` adds a type;
CuPy and ``array_api_strict`` are registered at import when they import.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
from autograd.extend import Box, VSpace

from bilevel.numpy import creation, elementwise, indexing, linalg, reductions
from bilevel.numpy._core import getval, namespace

# The package exports a function named ``shape``, so the module is fetched by its full name.
_shape = importlib.import_module("bilevel.numpy.shape")

__all__ = ["BackendBox", "BackendVSpace", "register"]


def _cmp(op: str) -> Any:
    def compare(self: Any, other: Any) -> Any:
        return getattr(self._value, op)(getval(other))

    compare.__name__ = op
    return compare


class BackendBox(Box):
    """Box of a traced non-NumPy array; arithmetic, ``@``, ``[...]`` and ``.T`` call bnp.

    ``__array_priority__`` above CuPy's makes ``cupy_array + box`` defer to the box.
    """

    __slots__ = []
    __array_priority__ = 200.0
    __array_ufunc__ = None

    shape = property(lambda self: tuple(self._value.shape))
    ndim = property(lambda self: len(self._value.shape))
    size = property(lambda self: int(np.prod(self._value.shape, dtype=np.int64)))
    dtype = property(lambda self: self._value.dtype)
    device = property(lambda self: self._value.device)
    T = property(lambda self: _shape.transpose(self))
    mT = property(lambda self: _shape.swapaxes(self, -1, -2))

    def __len__(self) -> int:
        return len(self._value)

    def __getitem__(self, idx: Any) -> Any:
        return indexing.index(self, idx)

    def __neg__(self) -> Any:
        return elementwise.negative(self)

    def __pos__(self) -> Any:
        return self

    def __abs__(self) -> Any:
        return elementwise.abs(self)

    def __add__(self, other: Any) -> Any:
        return elementwise.add(self, other)

    def __radd__(self, other: Any) -> Any:
        return elementwise.add(other, self)

    def __sub__(self, other: Any) -> Any:
        return elementwise.subtract(self, other)

    def __rsub__(self, other: Any) -> Any:
        return elementwise.subtract(other, self)

    def __mul__(self, other: Any) -> Any:
        return elementwise.multiply(self, other)

    def __rmul__(self, other: Any) -> Any:
        return elementwise.multiply(other, self)

    def __truediv__(self, other: Any) -> Any:
        return elementwise.divide(self, other)

    def __rtruediv__(self, other: Any) -> Any:
        return elementwise.divide(other, self)

    def __pow__(self, other: Any) -> Any:
        return elementwise.power(self, other)

    def __rpow__(self, other: Any) -> Any:
        return elementwise.power(other, self)

    def __matmul__(self, other: Any) -> Any:
        return linalg.matmul(self, other)

    def __rmatmul__(self, other: Any) -> Any:
        return linalg.matmul(other, self)

    __eq__ = _cmp("__eq__")
    __ne__ = _cmp("__ne__")
    __lt__ = _cmp("__lt__")
    __le__ = _cmp("__le__")
    __gt__ = _cmp("__gt__")
    __ge__ = _cmp("__ge__")

    def __hash__(self) -> int:
        return id(self)

    def sum(self, axis: Any = None, keepdims: bool = False) -> Any:
        return reductions.sum(self, axis=axis, keepdims=keepdims)

    def mean(self, axis: Any = None, keepdims: bool = False) -> Any:
        return reductions.mean(self, axis=axis, keepdims=keepdims)

    def max(self, axis: Any = None, keepdims: bool = False) -> Any:
        return reductions.max(self, axis=axis, keepdims=keepdims)

    def reshape(self, *newshape: Any) -> Any:
        if len(newshape) == 1 and not isinstance(newshape[0], (int, np.integer)):
            newshape = tuple(newshape[0])
        return _shape.reshape(self, newshape)

    def ravel(self) -> Any:
        return _shape.ravel(self)

    def transpose(self, *axes: Any) -> Any:
        if len(axes) == 1 and not isinstance(axes[0], (int, np.integer)):
            axes = axes[0]
        return _shape.transpose(self, tuple(axes) if axes else None)

    def astype(self, dtype: Any) -> Any:
        return creation.astype(self, dtype)


class BackendVSpace(VSpace):
    """Vector space of arrays of one shape, dtype, namespace and device (real entries)."""

    def __init__(self, value: Any) -> None:
        self.shape = tuple(value.shape)
        self.dtype = value.dtype
        self.device = value.device
        self.xp = namespace(value)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def zeros(self) -> Any:
        return self.xp.zeros(self.shape, dtype=self.dtype, device=self.device)

    def ones(self) -> Any:
        return self.xp.ones(self.shape, dtype=self.dtype, device=self.device)

    def standard_basis(self) -> Any:
        for k in range(self.size):
            v = np.zeros(self.size)
            v[k] = 1.0
            yield self.xp.asarray(v.reshape(self.shape), dtype=self.dtype, device=self.device)

    def randn(self) -> Any:
        # the global NumPy RNG, as autograd's own vector spaces use (np.random.seed applies)
        draw = np.random.randn(*self.shape)  # noqa: NPY002
        return self.xp.asarray(draw, dtype=self.dtype, device=self.device)

    def _inner_prod(self, x: Any, y: Any) -> Any:
        return self.xp.sum(self.xp.reshape(x, (-1,)) * self.xp.reshape(y, (-1,)))


def register(array_type: type) -> None:
    """Let autograd trace ``array_type`` with :class:`BackendBox` and :class:`BackendVSpace`."""
    BackendBox.register(array_type)
    BackendVSpace.register(array_type)


try:
    import cupy
except ImportError:
    cupy = None
if cupy is not None:
    register(cupy.ndarray)

_BINARY = ("add", "sub", "mul", "truediv", "pow", "matmul")


def _defer_to_boxes(array_type: type) -> None:
    """Make ``array <op> box`` return ``NotImplemented`` so Python calls the box's reflected
    operator, as CuPy does for objects of higher ``__array_priority__``. ``array_api_strict``
    raises a ``TypeError`` instead; patched here so the stand-in device behaves like a GPU
    array (``X @ w`` with data ``X`` and traced ``w``)."""

    def deferring(original: Any) -> Any:
        def op(self: Any, other: Any) -> Any:
            if isinstance(other, Box):
                return NotImplemented
            return original(self, other)

        op.__name__ = original.__name__
        op.__doc__ = original.__doc__
        op.__wrapped__ = original
        return op

    for name in _BINARY:
        for dunder in (f"__{name}__", f"__r{name}__"):
            original = getattr(array_type, dunder, None)
            if original is not None and not hasattr(original, "__wrapped__"):
                setattr(array_type, dunder, deferring(original))


try:
    from array_api_strict._array_object import Array as _StrictArray
except ImportError:
    _StrictArray = None
if _StrictArray is not None:
    register(_StrictArray)
    _defer_to_boxes(_StrictArray)
