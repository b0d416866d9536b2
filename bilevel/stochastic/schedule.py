"""Step-size schedules ``α_t = α / (t + 1)^e`` and the outer SGD step that follows one.

SOBA's analysis (Dagréou et al., 2022) uses ``e = 1/2`` for the inner, linear-system and
outer steps alike; SABA, AmIGO and StocBiO use constant steps (``e = 0``). The outer
update is an optimizer of the ``(init, update)`` shape (:mod:`bilevel.optim`), so the
outer-loop driver (:func:`bilevel.outer.drive`) applies and checkpoints it like any other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..optim import Optimizer
from ..validation import Validated, number, option, positive

__all__ = ["Schedule", "ScheduledSGD"]


@dataclass(frozen=True)
class Schedule(Validated):
    """``α_t = lr / (t + 1)^exponent`` for step ``t = 0, 1, ...``.

    Parameters
    ----------
    lr : float
        Initial step size ``α_0 > 0``.
    exponent : float
        Decay exponent ``e`` in [0, 1] (0: constant step).
    """

    lr: float = option(0.1, check=positive)
    exponent: float = option(0.0, check=number(0.0, maximum=1.0))

    def __call__(self, t: int) -> float:
        return self.lr / (t + 1) ** self.exponent if self.exponent else self.lr


@dataclass(frozen=True)
class ScheduledSGD(Validated, Optimizer):
    """Plain SGD with a step-size schedule: ``Δλ_t = −β_t D_t`` with ``β_t = schedule(t)``.

    The state holds the step count only (no memory beyond it).
    """

    schedule: Schedule = option(Schedule())

    def init(self, params: Any) -> dict[str, Any]:
        return {"count": 0}

    def update(self, grads: Any, state: dict[str, Any], params: Any) -> tuple[Any, dict]:
        t = int(state["count"])
        return -self.schedule(t) * grads, {"count": t + 1}
