"""Interleaved best-of timing and the relative agreement of two results.

Shared by the comparisons with other frameworks (:mod:`bilevel.bench.peers`,
:mod:`bilevel.bench.conv_peers`): on a machine shared with other jobs, calling the
variants in turn within each repeat lets the load hit them alike, and the best of the
repeats is the least disturbed figure.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["best_times", "one_blas_thread", "relative_difference"]


def best_times(fns: dict[str, Callable[[], Any]], repeats: int, min_seconds: float = 0.0,
               max_rounds: int = 500) -> dict[str, float]:
    """Best wall time of each function over at least ``repeats`` rounds, the functions
    interleaved within each round; rounds go on (up to ``max_rounds``) until every
    function has run for ``min_seconds`` in all, so that a call of a millisecond gets as
    many chances to run undisturbed as ``timeit`` gives it (cost: about
    ``max(repeats · t, min_seconds)`` per function of time ``t``)."""
    best = dict.fromkeys(fns, math.inf)
    spent = dict.fromkeys(fns, 0.0)
    rounds = 0
    while rounds < repeats or (rounds < max_rounds and min(spent.values()) < min_seconds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            best[name], spent[name] = min(best[name], dt), spent[name] + dt
        rounds += 1
    return best


def relative_difference(a: Any, b: Any) -> float:
    """``max|a − b| / max|b|``: the largest difference relative to the reference ``b``."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-300))


def one_blas_thread() -> Any:
    """BLAS limited to one thread in this process while the context is open, as on Dask's
    workers (whose nanny sets ``OMP_NUM_THREADS=1`` and friends), when
    :mod:`threadpoolctl` is installed (a no-op otherwise)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - installed with scikit-learn
        return contextlib.nullcontext()
    return threadpool_limits(1)
