"""Array backends: NumPy on the CPU, CuPy on an NVIDIA GPU.

The backend of a computation is decided by the arrays passed in (no global switch):
:func:`namespace` returns the array namespace of its arguments. Code that *creates*
arrays out of nothing (task samplers, initializers) takes an explicit ``backend=`` or
reads the one set by the :func:`using` context manager.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Iterator
from typing import Any

import array_api_compat
import numpy as np

__all__ = [
    "BackendError",
    "available",
    "asarray",
    "current",
    "device",
    "is_array",
    "module",
    "name_of",
    "namespace",
    "namespace_of",
    "to_backend",
    "to_numpy",
    "unbox",
    "using",
]

_BACKENDS = ("numpy", "cupy")
_current: contextvars.ContextVar[str] = contextvars.ContextVar("bilevel_backend", default="numpy")
_cupy_status: dict[str, Any] = {}


class BackendError(RuntimeError):
    """A requested backend cannot be used on this machine."""


def unbox(x: Any) -> Any:
    """Strip autograd boxes (tracing wrappers) to reach the underlying array."""
    while hasattr(x, "_value") and hasattr(x, "_trace"):
        x = x._value
    return x


def device(x: Any) -> Any:
    """The device of the array ``x`` (boxes unwrapped), for ``device=`` when creating arrays
    beside it; ``None`` (the default device) for scalars and objects without one."""
    return getattr(unbox(x), "device", None)


def is_array(x: Any) -> bool:
    """True for a NumPy/CuPy/Array-API array or an autograd box around one."""
    x = unbox(x)
    return array_api_compat.is_array_api_obj(x) and not isinstance(x, (int, float, complex, bool))


def _describe(x: Any) -> str:
    """``"a numpy array on the CPU"``, ``"a cupy array on GPU 1"``, ... for error messages."""
    name = type(x).__module__.split(".")[0]
    dev = getattr(x, "device", None)
    if name == "cupy":
        return f"a cupy array on GPU {getattr(dev, 'id', dev)}"
    if name == "numpy":
        return "a numpy array on the CPU"
    if dev is not None:
        return f"an {name} array on device {dev}"
    return f"an {name} array"


def namespace(*arrays: Any, names: tuple[str, ...] | None = None) -> Any:
    """Array namespace shared by ``arrays`` (through ``array_api_compat``).

    Python scalars, ``None`` and autograd boxes are accepted (boxes are unwrapped).

    Parameters
    ----------
    *arrays
        Arrays (or scalars) whose namespace is wanted.
    names
        Optional argument names used in the error message.

    Returns
    -------
    module
        ``array_api_compat.numpy`` for NumPy arrays (and when no array is given),
        ``array_api_compat.cupy`` for CuPy arrays, or the Array-API namespace of other
        compliant arrays (e.g. ``array_api_strict``).

    Raises
    ------
    TypeError
        When arrays of different libraries (or different GPUs) are mixed; the message
        names each argument and where it lives.
    """
    if arrays and all(type(a) is np.ndarray for a in arrays):  # the common case, no lookup
        return _numpy_namespace()
    vals = [unbox(a) for a in arrays]
    found = [(i, v) for i, v in enumerate(vals) if is_array(v) and not isinstance(v, np.generic)]
    if not found:
        return array_api_compat.array_namespace(np.empty(0))
    kinds = {}
    for i, v in found:
        key = (type(v).__module__.split(".")[0], _device_key(v))
        kinds.setdefault(key, []).append(i)
    if len(kinds) > 1:
        label = names or tuple(f"argument {i}" for i in range(len(vals)))
        parts = [f"{label[i]} is {_describe(vals[i])}" for i, _ in found]
        raise TypeError(
            "arrays from different backends or devices were mixed: "
            + "; ".join(parts)
            + ". Move them to one backend and device first, e.g. "
            "bilevel.backend.to_backend(x, 'cupy') or bilevel.backend.to_numpy(x)."
        )
    try:
        return array_api_compat.array_namespace(*[v for _, v in found])
    except TypeError as err:  # e.g. two array_api_strict devices
        raise TypeError(f"cannot combine these arrays: {err}") from err


@functools.cache
def _numpy_namespace() -> Any:
    """``array_api_compat``'s namespace of NumPy arrays (looked up once)."""
    return array_api_compat.array_namespace(np.empty(0))


def namespace_of(x: Any) -> Any:
    """The namespace of the one array ``x``: NumPy itself for a NumPy ``ndarray`` (no
    lookup: analytic oracles ask for it several times per product), else
    :func:`namespace`. Only for code that calls functions NumPy and the Array API share."""
    return np if type(x) is np.ndarray else namespace(x)


def _device_key(x: Any) -> Any:
    if type(x).__module__.split(".")[0] == "cupy":
        return getattr(x.device, "id", None)
    if type(x).__module__.split(".")[0] == "array_api_strict":
        return str(x.device)
    return None


def name_of(*arrays: Any) -> str:
    """``"numpy"`` or ``"cupy"``: the backend name of ``arrays`` (default ``"numpy"``)."""
    xp = namespace(*arrays)
    if array_api_compat.is_cupy_namespace(xp):
        return "cupy"
    if array_api_compat.is_numpy_namespace(xp):
        return "numpy"
    return getattr(xp, "__name__", "unknown")


def available(name: str = "cupy") -> bool:
    """True when backend ``name`` can be used here.

    For ``"cupy"`` this means CuPy imports *and* a GPU answers (a device count above zero
    and a small allocation succeeds). The probe runs once and is cached.
    """
    _check_name(name)
    if name == "numpy":
        return True
    if "ok" not in _cupy_status:
        try:
            import cupy

            ok = cupy.cuda.runtime.getDeviceCount() > 0
            if ok:
                cupy.zeros(1).sum().item()
            _cupy_status["ok"] = bool(ok)
            _cupy_status["why"] = None if ok else "CuPy imports but no GPU was found"
        except Exception as err:  # ImportError, CUDARuntimeError, driver errors
            _cupy_status["ok"] = False
            _cupy_status["why"] = f"{type(err).__name__}: {err}"
    return _cupy_status["ok"]


def _check_name(name: str) -> None:
    if name not in _BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {_BACKENDS}")


def module(name: str | None = None) -> Any:
    """The raw array module (``numpy`` or ``cupy``) of backend ``name``.

    ``None`` means the current backend (see :func:`using`). Asking for CuPy where it
    cannot run raises :class:`BackendError` that says how to get it.
    """
    name = current() if name is None else name
    _check_name(name)
    if name == "numpy":
        return np
    if not available("cupy"):
        raise BackendError(
            "the 'cupy' backend is not available here "
            f"({_cupy_status.get('why')}). It needs an NVIDIA GPU with its driver and CuPy: "
            'pip install "bilevel[gpu]" (installs cupy-cuda12x). Use backend="numpy" on the CPU.'
        )
    import cupy

    return cupy


def current() -> str:
    """Name of the backend used for creating arrays (set by :func:`using`)."""
    return _current.get()


@contextlib.contextmanager
def using(name: str) -> Iterator[Any]:
    """Context manager selecting the backend for array *creation*.

    Examples
    --------
    >>> from bilevel import backend
    >>> with backend.using("numpy") as xp:
    ...     x = backend.asarray([1.0, 2.0])
    """
    mod = module(name)
    token = _current.set(name)
    try:
        yield mod
    finally:
        _current.reset(token)


def asarray(x: Any, backend: str | None = None, dtype: Any = None) -> Any:
    """``x`` as an array of ``backend`` (default: the current one), copying across devices."""
    mod = module(backend)
    x = unbox(x)
    if mod is np:
        library = type(x).__module__.split(".")[0]
        if library == "cupy":
            x = x.get()
        elif library == "array_api_strict":  # the stand-in device: through its CPU device
            x = x.to_device(_strict_cpu(x))
        return np.asarray(x, dtype=dtype)
    return mod.asarray(x, dtype=dtype)


def _strict_cpu(x: Any) -> Any:
    """The CPU device of ``array_api_strict`` (the library of ``x``)."""
    return type(x.device)("CPU_DEVICE")


def _map(tree: Any, fn: Any) -> Any:
    if isinstance(tree, dict):
        return type(tree)((k, _map(v, fn)) for k, v in tree.items())
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*[_map(v, fn) for v in tree])
    if isinstance(tree, (list, tuple)):
        return type(tree)(_map(v, fn) for v in tree)
    if is_array(tree):
        return fn(tree)
    return tree


def to_backend(tree: Any, name: str) -> Any:
    """Copy every array in a nested dict/list/tuple to backend ``name``; other leaves are kept."""
    module(name)
    return _map(tree, lambda a: asarray(a, backend=name))


def to_numpy(tree: Any) -> Any:
    """Copy every array in a nested dict/list/tuple to NumPy."""
    return to_backend(tree, "numpy")
