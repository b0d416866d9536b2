"""What the stochastic bilevel methods share: step sizes, batch draws, the state they carry.

A method is a frozen option object (:mod:`bilevel.validation`) with two pure-ish functions:

* ``init(problem, w0, lam) -> state``: the arrays it carries (``w``, ``v`` and, for SABA,
  its memory tables), a dict that the outer-loop checkpoint stores exactly;
* ``direction(problem, lam, state, t, rng) -> (D_λ, state)``: one outer step's estimate of
  the hypergradient at ``λ_t`` from mini-batches drawn with ``rng`` (the run's only
  generator), updating ``w`` and ``v`` on the way.

The outer update ``λ_{t+1} = λ_t − β_t D_λ`` is the driver's (:class:`ScheduledSGD` with
``β_t = lr_outer / (t+1)^exponent``). The sign convention for the linear-system variable is
``v ≈ −H⁻¹ ∇_w f`` throughout, so that ``D_λ = ∇_λ f + Mᵀ v`` (Dagréou et al., 2022).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..validation import integer, number, option, positive
from .problem import StochasticProblem
from .schedule import Schedule, ScheduledSGD

__all__ = ["StochasticMethod"]


@dataclass(frozen=True)
class StochasticMethod(abc.ABC):
    """Base of the stochastic methods (options shared by all of them).

    Parameters
    ----------
    lr_inner : float
        Step size α of the inner variable ``w`` (and of ``v`` unless the method has its own).
    lr_outer : float
        Step size β of the hyperparameters λ.
    exponent : float
        Decay of both: ``α_t = α/(t+1)^e``, ``β_t = β/(t+1)^e`` (0: constant).
    batch_size : int
        Samples per mini-batch (inner and outer data alike; ``≥ n`` means full batch).
    """

    name: ClassVar[str] = "stochastic"
    lr_inner: float = option(0.1, check=positive)
    lr_outer: float = option(0.1, check=positive)
    exponent: float = option(0.0, check=number(0.0, maximum=1.0))
    batch_size: int = option(64, check=integer(1))

    def inner_lr(self, t: int) -> float:
        """α_t."""
        return Schedule(self.lr_inner, self.exponent)(t)

    def optimizer(self) -> ScheduledSGD:
        """The outer update ``λ ← λ − β_t D_λ``."""
        return ScheduledSGD(Schedule(self.lr_outer, self.exponent))

    def draw(self, problem: StochasticProblem, which: str,
             rng: np.random.Generator) -> tuple[Any, int]:
        """A uniformly drawn batch of the fixed partition of the ``which`` data."""
        k = int(rng.integers(problem.n_batches(which, self.batch_size)))
        return problem.batch(which, k, self.batch_size)

    def init(self, problem: StochasticProblem, w0: Any, lam: Any) -> dict[str, Any]:
        """The carried state: ``w = w0`` and ``v = 0``. Memory: two vectors of size n."""
        return {"w": w0, "v": 0 * w0}

    @abc.abstractmethod
    def direction(self, problem: StochasticProblem, lam: Any, state: dict[str, Any], t: int,
                  rng: np.random.Generator) -> tuple[Any, dict[str, Any]]:
        """(D_λ, new state) at outer step ``t`` (see the module docstring)."""
