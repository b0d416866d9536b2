"""Arguments and random draws shared by the strategies of :mod:`bilevel.testing.strategies`.

Sizes are given as an ``int`` or an inclusive range ``(low, high)``; every draw goes
through hypothesis (so failing examples shrink), the matrices through one NumPy generator
seeded by a drawn integer. :func:`finish` assembles the drawn arrays into a
:class:`~bilevel.testing.generated.GeneratedProblem` on the requested backend and dtype.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from hypothesis import strategies as st

from .. import backend as _backend
from ..problem import BilevelProblem
from .generated import GeneratedProblem, check_dtype, to_target

__all__ = [
    "common_arguments",
    "draw_float",
    "draw_int",
    "draw_kappa",
    "draw_rng",
    "finish",
    "float_range",
    "identity_init",
    "int_range",
]

Size = int | tuple[int, int]
Range = float | tuple[float, float]


def int_range(value: Size, name: str, low: int = 1) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        lo = hi = int(value)
    elif isinstance(value, tuple) and len(value) == 2 and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value
    ):
        lo, hi = (int(v) for v in value)
    else:
        raise TypeError(f"{name} must be an int or a (low, high) pair of ints, got {value!r}")
    if not low <= lo <= hi:
        raise ValueError(f"{name} must satisfy {low} <= low <= high, got {value!r}")
    return lo, hi


def float_range(value: Range, name: str, low: float, high: float = math.inf) -> tuple:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        lo = hi = float(value)
    elif isinstance(value, tuple) and len(value) == 2:
        lo, hi = (float(v) for v in value)
    else:
        raise TypeError(f"{name} must be a number or a (low, high) pair, got {value!r}")
    if not low <= lo <= hi <= high:
        raise ValueError(f"{name} must lie in [{low}, {high}] with low <= high, got {value!r}")
    return lo, hi


def common_arguments(batch: int | None, dtype: Any, backend: str, condition_number: float,
            least: float = 1.0) -> np.dtype:
    if batch is not None and (
        not isinstance(batch, (int, np.integer)) or isinstance(batch, bool) or batch < 1
    ):
        raise ValueError(f"batch must be None or a positive int, got {batch!r}")
    if not (isinstance(condition_number, (int, float)) and condition_number >= least):
        raise ValueError(f"condition_number must be a number >= {least}, got {condition_number!r}")
    dt = check_dtype(dtype)
    _backend.module(backend)  # raises BackendError naming what is missing
    return dt


def draw_int(draw: Any, bounds: tuple[int, int]) -> int:
    return draw(st.integers(*bounds))


def draw_float(draw: Any, bounds: tuple[float, float]) -> float:
    lo, hi = bounds
    return lo if lo == hi else draw(st.floats(lo, hi, allow_nan=False, allow_infinity=False))


def draw_kappa(draw: Any, n: int, condition_number: float, least: float = 1.0) -> float:
    """A condition number in ``[least, condition_number]`` (1 for a 1 × 1 matrix)."""
    kappa = draw_float(draw, (least, float(condition_number)))
    return 1.0 if n == 1 else kappa


def draw_rng(draw: Any) -> np.random.Generator:
    return np.random.default_rng(draw(st.integers(0, 2**32 - 1)))


def finish(
    kind: str,
    g: Any,
    f: Any,
    data: dict,
    lam: np.ndarray,
    w0: np.ndarray | None,
    dynamics: Any,
    refs: dict,
    info: dict,
    backend: str,
    dtype: np.dtype,
    init: Any = None,
) -> GeneratedProblem:
    problem = BilevelProblem(
        g, f, data=to_target(data, backend, dtype), init=init, name=f"generated {kind}"
    )
    info = {**info, "kind": kind, "dtype": str(dtype), "backend": backend}
    return GeneratedProblem(
        problem=problem,
        lam=to_target(lam, backend, dtype),
        w0=None if w0 is None else to_target(w0, backend, dtype),
        dynamics=dynamics,
        references=to_target(refs, backend, dtype),
        info=info,
    )


def identity_init(lam: Any) -> Any:
    """``w0 = init(θ) = θ`` (MAML-style initialization)."""
    return lam
