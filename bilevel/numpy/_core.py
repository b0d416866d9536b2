"""Shared machinery of :mod:`bilevel.numpy`: namespace lookup, scalars, shapes, scatter-add.

Every primitive resolves the array namespace of its (unboxed) arguments here. NumPy
arrays and Python/NumPy scalars take a fast path (one ``type`` lookup) that returns the
raw :mod:`numpy` module; other arrays go through :func:`bilevel.backend.namespace`,
which also reports mixed backends or devices by argument.
"""

from __future__ import annotations

import math
from typing import Any

import array_api_compat
import numpy as np
from autograd.tracer import box_types, getval

from bilevel import backend

__all__ = [
    "box_types",
    "device_of",
    "dtype_of",
    "getval",
    "is_basic_index",
    "namespace",
    "normalize_axes",
    "operand",
    "scatter_add",
    "shape_of",
    "zeros",
]

_NUMPY_TYPES = frozenset(
    {
        np.ndarray,
        float,
        int,
        bool,
        np.float64,
        np.float32,
        np.float16,
        np.int64,
        np.int32,
        np.int16,
        np.int8,
        np.uint8,
        np.bool_,
    }
)
_BY_TYPE: dict[type, Any] = {}


def namespace(*xs: Any) -> Any:
    """Array namespace of the raw values ``xs``: :mod:`numpy` itself on the fast path.

    Python and NumPy scalars join any backend. Mixing two array libraries (or devices)
    raises the :class:`TypeError` of :func:`bilevel.backend.namespace`.
    """
    for x in xs:
        if type(x) not in _NUMPY_TYPES:
            break
    else:
        return np
    if len(xs) == 1:
        xp = _BY_TYPE.get(type(xs[0]))
        if xp is not None:
            return xp
    arrays = [x for x in xs if not isinstance(x, (bool, int, float, complex, np.generic))]
    xp = backend.namespace(*arrays) if arrays else np
    if array_api_compat.is_numpy_namespace(xp):
        xp = np
    if len(arrays) == 1:
        _BY_TYPE[type(arrays[0])] = xp
    return xp


def shape_of(x: Any) -> tuple[int, ...]:
    """Shape of an array, box or scalar (``()`` for a Python scalar)."""
    return tuple(getattr(x, "shape", ()))


def dtype_of(x: Any) -> Any:
    """dtype of an array or box; ``None`` for a Python scalar."""
    return getattr(x, "dtype", None)


def device_of(x: Any) -> Any:
    """Device of an array (``None`` for NumPy and scalars)."""
    x = getval(x)
    if type(x) in _NUMPY_TYPES or isinstance(x, np.generic):
        return None
    return getattr(x, "device", None)


_SCALARS_ACCEPTED: dict[int, bool] = {}


def accepts_scalars(xp: Any) -> bool:
    """Whether ``xp``'s ``maximum``, ``minimum``, ``where`` and ``clip`` take a Python scalar
    beside an array (Array API 2024.12 and later; CuPy always did)."""
    key = id(xp)
    known = _SCALARS_ACCEPTED.get(key)
    if known is None:
        version = str(getattr(xp, "__array_api_version__", "0"))
        known = array_api_compat.is_cupy_namespace(xp) or version >= "2024.12"
        _SCALARS_ACCEPTED[key] = known
    return known


def operand(xp: Any, s: Any, like: Any) -> Any:
    """``s`` ready to meet arrays of ``xp`` in a function call.

    NumPy passes everything through. For other backends a NumPy scalar becomes a Python
    scalar (so float32 arrays stay float32 and no host/device mix occurs). A Python scalar
    stays a Python scalar where the namespace takes one (:func:`accepts_scalars`: no new
    device array per call, e.g. the 0 of every ReLU); for older Array-API namespaces it
    becomes a 0-d array of ``like``'s dtype and device.
    """
    if xp is np:
        return s
    if isinstance(s, np.generic):
        s = s.item()
    if isinstance(s, (bool, int, float, complex)) and not accepts_scalars(xp):
        return xp.asarray(s, dtype=dtype_of(like), device=device_of(like))
    return s


def zeros(xp: Any, shape: tuple[int, ...], dtype: Any, like: Any = None) -> Any:
    """A zero array of ``xp`` on the device of ``like``."""
    if xp is np:
        return np.zeros(shape, dtype=dtype)
    return xp.zeros(shape, dtype=dtype, device=device_of(like))


def normalize_axes(axis: Any, ndim: int) -> tuple[int, ...]:
    """``axis`` (None, int or tuple) as a sorted tuple of non-negative axes of an ``ndim`` array."""
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, (int, np.integer)):
        axis = (axis,)
    out = []
    for a in axis:
        if not -ndim <= a < max(ndim, 1):
            raise ValueError(f"axis {a} is out of bounds for an array of {ndim} dimensions")
        out.append(int(a) % max(ndim, 1))
    return tuple(sorted(out))


def is_basic_index(idx: Any) -> bool:
    """True when ``idx`` holds only ints, slices, ``None`` and ``Ellipsis`` (no arrays)."""
    items = idx if isinstance(idx, tuple) else (idx,)
    return all(isinstance(i, (int, np.integer, slice)) or i is None or i is Ellipsis for i in items)


def scatter_add(g: Any, idx: Any, shape: tuple[int, ...]) -> Any:
    """``out = zeros(shape); out[idx] += g`` with repeated indices accumulated.

    NumPy uses ``numpy.add.at``, CuPy ``cupyx.scatter_add``. Other Array-API backends
    use assignment for basic indices and, for integer-array indices, a one-hot product
    over the flattened array (memory ``O(g.size * prod(shape))``, meant for tests).
    """
    xp = namespace(g)
    out = zeros(xp, shape, dtype_of(g), like=g)
    if is_basic_index(idx):
        out[idx] = g
        return out
    if xp is np:
        np.add.at(out, idx, g)
        return out
    if array_api_compat.is_cupy_namespace(xp):
        import cupyx

        cupyx.scatter_add(out, idx, g)
        return out
    n = math.prod(shape)
    dev = device_of(g)
    linear = xp.reshape(xp.reshape(xp.arange(n, device=dev), shape)[idx], (-1,))
    onehot = xp.astype(linear[:, None] == xp.arange(n, device=dev)[None, :], g.dtype)
    return xp.reshape(xp.reshape(g, (1, -1)) @ onehot, shape)
