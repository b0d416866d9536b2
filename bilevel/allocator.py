"""The C allocator's heap padding, for many short-lived arrays of a few hundred kilobytes.

An unrolled meta-gradient allocates and frees the same few arrays of ``T × n`` floats
(parameters, gradients, products) hundreds of times per call. With glibc's defaults the
heap shrinks back to the operating system whenever its free top exceeds 128 KiB and grows
again on the next allocation, so the same pages are unmapped, mapped and zeroed by the
kernel over and over: on the 25-task MAML row of ``bilevel bench peers`` this made one
meta-gradient take 1.8 ms or 2.8 ms depending on where the heap's top happened to fall.
:func:`keep_heap_padding` asks glibc (``mallopt(M_TOP_PAD)``) to keep ``pad`` bytes of
slack at the top of the heap when it grows or trims: the pages stay mapped and the
bimodality goes (measured: 1.75 ms every time). The cost is up to ``pad`` bytes of freed
memory kept by the process (64 MiB by default), not allocated memory.

It changes a process-wide setting, so the library never calls it on import: the
``bilevel`` command line calls it at start, and a Python user opts in by calling it once.
Other C libraries (macOS, musl, Windows) are left alone (the function returns ``False``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["keep_heap_padding"]

_M_TOP_PAD = -2  # glibc's malloc.h


def keep_heap_padding(pad: int = 64 << 20) -> bool:
    """Keep ``pad`` bytes at the top of glibc's heap (``mallopt(M_TOP_PAD, pad)``).

    Returns whether the setting was applied (``False`` off glibc). Process-wide; cost: up to
    ``pad`` bytes of freed memory stay with the process.
    """
    if not isinstance(pad, int) or isinstance(pad, bool) or pad < 0:
        raise ValueError(f"pad must be a number of bytes >= 0, got {pad!r}")
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_TOP_PAD, min(pad, 2**31 - 1)))
