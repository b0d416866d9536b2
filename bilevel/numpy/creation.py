"""Array creation, dtype casts and non-differentiable queries.

Arrays are created on the backend (and device) of a ``like=`` array, or, without one, on
the backend selected by :func:`bilevel.backend.using` (NumPy by default). Created arrays
are constants for autograd. :func:`astype` is a differentiable primitive (its rules are in
:mod:`bilevel.numpy.rules`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from autograd.extend import primitive

from bilevel import backend
from bilevel.numpy._core import box_types, device_of, dtype_of, getval, namespace, shape_of

__all__ = [
    "all",
    "any",
    "arange",
    "argmax",
    "asarray",
    "astype",
    "eye",
    "full",
    "full_like",
    "isfinite",
    "linspace",
    "ndim",
    "ones",
    "ones_like",
    "shape",
    "size",
    "zeros",
    "zeros_like",
]


def _dtype(xp: Any, dtype: Any) -> Any:
    """``dtype`` in ``xp``'s terms (NumPy dtypes mapped by name for other Array-API libraries)."""
    if dtype is None or xp is np or xp.__name__.split(".")[-1] == "cupy":
        return dtype
    if isinstance(dtype, (type, np.dtype)):
        try:
            return getattr(xp, np.dtype(dtype).name)
        except (AttributeError, TypeError) as err:
            raise TypeError(f"dtype {dtype!r} has no counterpart in {xp.__name__}") from err
    return dtype


def _target(like: Any) -> tuple[Any, dict[str, Any]]:
    """Namespace and ``device=`` keyword to create arrays beside ``like`` (or by default)."""
    if like is None:
        return backend.module(), {}
    like = getval(like)
    xp = namespace(like)
    if xp is np:
        return np, {}
    return xp, {"device": device_of(like)}


def _like_args(x: Any, dtype: Any) -> tuple[Any, Any, dict[str, Any]]:
    x = getval(x)
    xp, dev = _target(x)
    return xp, _dtype(xp, dtype if dtype is not None else dtype_of(x)), dev


def zeros_like(x: Any, dtype: Any = None) -> Any:
    """Zeros with the shape, dtype (unless given) and device of ``x``."""
    xp, dt, dev = _like_args(x, dtype)
    return xp.zeros(shape_of(getval(x)), dtype=dt, **dev)


def ones_like(x: Any, dtype: Any = None) -> Any:
    """Ones with the shape, dtype (unless given) and device of ``x``."""
    xp, dt, dev = _like_args(x, dtype)
    return xp.ones(shape_of(getval(x)), dtype=dt, **dev)


def full_like(x: Any, fill_value: float, dtype: Any = None) -> Any:
    """``fill_value`` everywhere, with the shape, dtype and device of ``x``."""
    xp, dt, dev = _like_args(x, dtype)
    return xp.full(shape_of(getval(x)), fill_value, dtype=dt, **dev)


def _shape_arg(shape: Any) -> tuple[int, ...]:
    if isinstance(shape, (int, np.integer)):
        return (int(shape),)
    try:
        return tuple(int(s) for s in shape)
    except TypeError as err:
        raise TypeError(f"shape must be an int or a sequence of ints, got {shape!r}") from err


def zeros(shape: Any, dtype: Any = None, like: Any = None) -> Any:
    """Zeros of ``shape`` on ``like``'s backend/device, else the current backend (float64)."""
    xp, dev = _target(like)
    return xp.zeros(_shape_arg(shape), dtype=_dtype(xp, dtype), **dev)


def ones(shape: Any, dtype: Any = None, like: Any = None) -> Any:
    """Ones of ``shape`` on ``like``'s backend/device, else the current backend."""
    xp, dev = _target(like)
    return xp.ones(_shape_arg(shape), dtype=_dtype(xp, dtype), **dev)


def full(shape: Any, fill_value: float, dtype: Any = None, like: Any = None) -> Any:
    """``fill_value`` everywhere, on ``like``'s backend/device, else the current backend."""
    xp, dev = _target(like)
    return xp.full(_shape_arg(shape), fill_value, dtype=_dtype(xp, dtype), **dev)


def arange(
    start: float, stop: float | None = None, step: float = 1, dtype: Any = None, like: Any = None
) -> Any:
    """``start, start + step, ...`` below ``stop`` (``[0, start)`` when ``stop`` is omitted)."""
    xp, dev = _target(like)
    return xp.arange(start, stop, step, dtype=_dtype(xp, dtype), **dev)


def eye(n: int, m: int | None = None, k: int = 0, dtype: Any = None, like: Any = None) -> Any:
    """``n × m`` matrix with ones on diagonal ``k``."""
    xp, dev = _target(like)
    return xp.eye(n, m, k=k, dtype=_dtype(xp, dtype), **dev)


def linspace(
    start: float, stop: float, num: int, endpoint: bool = True, dtype: Any = None, like: Any = None
) -> Any:
    """``num`` evenly spaced values from ``start`` to ``stop``."""
    xp, dev = _target(like)
    return xp.linspace(start, stop, num, endpoint=endpoint, dtype=_dtype(xp, dtype), **dev)


def asarray(obj: Any, dtype: Any = None, like: Any = None) -> Any:
    """``obj`` as an array of ``like``'s backend/device (else the current backend).

    Differentiable values (autograd boxes) are returned unchanged unless a cast is asked for.
    """
    if type(obj) in box_types:
        return obj if dtype is None else astype(obj, dtype)
    xp, dev = _target(like)
    return xp.asarray(obj, dtype=_dtype(xp, dtype), **dev)


@primitive
def astype(x: Any, dtype: Any) -> Any:
    """``x`` cast to ``dtype``. VJP: ``g`` cast back to ``x.dtype``; JVP: ``t`` cast to ``dtype``.
    """
    if type(x) is np.ndarray:
        return x.astype(dtype)
    xp = namespace(x)
    return xp.astype(xp.asarray(x) if not hasattr(x, "shape") else x, _dtype(xp, dtype))


# ----------------------------------------------------------------- non-differentiable queries


def shape(x: Any) -> tuple[int, ...]:
    """Shape of ``x`` (array, box or scalar)."""
    return shape_of(x)


def ndim(x: Any) -> int:
    """Number of dimensions of ``x``."""
    return len(shape_of(x))


def size(x: Any) -> int:
    """Number of entries of ``x``."""
    return int(np.prod(shape_of(x), dtype=np.int64))


def isfinite(x: Any) -> Any:
    """Boolean array: ``x`` is neither infinite nor NaN (not differentiable)."""
    x = getval(x)
    return namespace(x).isfinite(x)


def all(x: Any, axis: Any = None, keepdims: bool = False) -> Any:  # noqa: A001
    """Logical AND over ``axis`` (not differentiable)."""
    x = getval(x)
    return namespace(x).all(x, axis=axis, keepdims=keepdims)


def any(x: Any, axis: Any = None, keepdims: bool = False) -> Any:  # noqa: A001
    """Logical OR over ``axis`` (not differentiable)."""
    x = getval(x)
    return namespace(x).any(x, axis=axis, keepdims=keepdims)


def argmax(x: Any, axis: int | None = None, keepdims: bool = False) -> Any:
    """Index of the largest entry along ``axis`` (flattened when ``None``; not differentiable)."""
    x = getval(x)
    return namespace(x).argmax(x, axis=axis, keepdims=keepdims)
