"""Picklable per-step inputs of the dynamics: step-size schedules and minibatch indices."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from numbers import Real
from typing import Any

import numpy as np

from ..validation import Validated, integer, option

__all__ = ["MinibatchIndices", "PerStep", "StepSize", "minibatch_indices", "step_size"]


@dataclass(frozen=True)
class MinibatchIndices(Validated):
    """Seeded per-step minibatch indices: ``idx(k)`` draws ``batch_size`` of ``range(n)``.

    The draw for step ``k`` depends only on ``(seed, k)``, so replaying step ``k`` in a
    backward pass (or after a checkpoint restart) gives the same batch.
    """

    n: int = option(check=integer(1))
    batch_size: int = option(check=integer(1))
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_size > self.n:
            raise ValueError(f"batch_size must be in [1, n={self.n}], got {self.batch_size}")

    def __call__(self, k: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, k])
        return rng.choice(self.n, size=self.batch_size, replace=False)


def minibatch_indices(n: int, batch_size: int, seed: int) -> MinibatchIndices:
    """Seeded per-step minibatch indices ``k -> indices`` (see :class:`MinibatchIndices`)."""
    return MinibatchIndices(n, batch_size, seed)


@dataclass(frozen=True)
class PerStep:
    """A per-step schedule ``k -> values[k]`` (picklable, unlike a closure)."""

    values: tuple[float, ...]

    def __call__(self, k: int) -> float:
        return self.values[k]

    def __repr__(self) -> str:
        return f"PerStep({len(self.values)} steps)"


def step_size(name: str, value: Any) -> float | Callable[[int], float]:
    """Check: a positive number, a sequence (one entry per step, made a :class:`PerStep`)
    or a callable ``k -> α_k`` (kept as given)."""
    if callable(value):
        return value
    if isinstance(value, Real) and not isinstance(value, bool):
        if not (value > 0 and np.isfinite(value)):
            raise ValueError(f"the step size {name} must be positive, got {value!r}")
        return float(value)
    try:
        values = np.asarray(value, dtype=float).ravel()
    except (TypeError, ValueError):
        raise ValueError(
            f"the step size {name} must be a positive number, a sequence of them (one per "
            f"step) or a function k -> step size, got {value!r}"
        ) from None
    bad = np.flatnonzero(~(np.isfinite(values) & (values > 0)))
    if bad.size:
        raise ValueError(
            f"every per-step step size in {name} must be positive and finite; entry "
            f"{int(bad[0])} is {values[bad[0]]!r}"
        )
    return PerStep(tuple(float(x) for x in values))


class StepSize(Validated):
    """Mixin for dynamics with a step-size field ``lr`` (checked by :func:`step_size`)."""

    lr: Any
    steps: int

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.lr, PerStep) and len(self.lr.values) != self.steps:
            raise ValueError(
                f"a per-step lr schedule needs {self.steps} entries, got {len(self.lr.values)}"
            )

    def lr_at(self, k: int) -> float:
        """The step size α_k of step ``k``."""
        return self.lr if isinstance(self.lr, float) else self.lr(k)
