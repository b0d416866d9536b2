"""One memory meter: the peak bytes a call allocates, on NumPy or CuPy.

``measure(fn, mode, backend)`` calls ``fn()`` and returns its result with a peak in bytes:

``"peak"`` (default)
    The peak of memory in use during the call above what was in use at its start:
    :mod:`tracemalloc` on NumPy (host allocations, NumPy's data buffers included; slows
    small-array Python code several-fold while it runs), a :class:`cupy.cuda.MemoryHook`
    on CuPy's default memory pool (each pool ``malloc`` adds its bytes, each ``free``
    subtracts them; device memory only, the device is synchronized before and after).
``"tracemalloc"`` / ``"pool"``
    One of the two above, whatever the backend.
``"rss"``
    The process's peak resident set so far (free to read, but a high-water mark of the
    whole process, not of the call).
``"auto"``
    ``"pool"`` on CuPy, ``"rss"`` on NumPy (cheap enough for every outer step).
``None``
    Not measured: NaN.
"""

from __future__ import annotations

import gc
import sys
import tracemalloc
from collections.abc import Callable
from typing import Any

__all__ = ["MODES", "measure", "peak_memory", "resolve"]

MODES = (None, "auto", "peak", "tracemalloc", "pool", "rss")


def resolve(mode: str | None, backend: str = "numpy") -> str | None:
    """The concrete meter (``"tracemalloc"``, ``"pool"``, ``"rss"`` or None) for ``mode``."""
    if mode not in MODES:
        raise ValueError(
            f"memory must be one of {', '.join(repr(m) for m in MODES)}; got {mode!r}"
        )
    cupy = backend == "cupy"
    if mode == "peak":
        return "pool" if cupy else "tracemalloc"
    if mode == "auto":
        return "pool" if cupy else "rss"
    return mode


def _traced(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    try:
        out = fn()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        if started:
            tracemalloc.stop()
    return out, float(peak)


def _pool(fn: Callable[[], Any]) -> tuple[Any, float]:
    import cupy

    class PeakHook(cupy.cuda.MemoryHook):
        name = "bilevel_peak"

        def __init__(self) -> None:
            self.current = 0
            self.peak = 0

        def malloc_postprocess(self, device_id, size, mem_size, mem_ptr, pmem_id):
            self.current += mem_size
            self.peak = max(self.peak, self.current)

        def free_postprocess(self, device_id, mem_size, mem_ptr, pmem_id):
            self.current -= mem_size

    hook = PeakHook()
    cupy.cuda.Device().synchronize()
    with hook:
        out = fn()
        cupy.cuda.Device().synchronize()
    return out, float(hook.peak)


def _rss(fn: Callable[[], Any]) -> tuple[Any, float]:
    import resource

    out = fn()
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return out, float(kib * (1 if sys.platform == "darwin" else 1024))


_METERS = {"tracemalloc": _traced, "pool": _pool, "rss": _rss}


def measure(fn: Callable[[], Any], mode: str | None = "peak",
            backend: str = "numpy") -> tuple[Any, float]:
    """``(fn(), peak bytes)`` under the meter ``mode`` (see the module docstring); NaN for
    ``mode=None``. Cost: that of ``fn`` (several-fold under tracemalloc)."""
    kind = resolve(mode, backend)
    if kind is None:
        return fn(), float("nan")
    return _METERS[kind](fn)


def peak_memory(fn: Callable[[], Any], backend: str = "numpy") -> tuple[Any, int]:
    """Call ``fn()`` after a garbage collection; return ``(its result, peak bytes)``.

    The ``"peak"`` meter: :mod:`tracemalloc` on NumPy, the CuPy memory pool's bytes in use
    on CuPy, above what was in use at the start of the call.
    """
    gc.collect()
    out, peak = measure(fn, "peak", backend)
    return out, int(peak)
