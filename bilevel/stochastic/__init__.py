"""Stochastic bilevel optimization at data-set scale (issue: single-loop mini-batch methods).

Objectives are means over samples (:class:`StochasticProblem`); the methods estimate the
hypergradient from mini-batches and update the inner variable ``w``, the linear-system
variable ``v`` and the hyperparameters λ together: :class:`SOBA` and :class:`SABA`
(Dagréou et al., 2022), :class:`AmIGO` (Arbel & Mairal, 2022), :class:`StocBiO` (Ji et
al., 2021). :func:`solve` runs one on the shared outer-loop driver (checkpoint, resume,
fingerprint refusal). :mod:`~bilevel.stochastic.families` builds the three problem families
of Benchopt's ``benchmark_bilevel`` from generated or bundled data. See :doc:`/stochastic`.
"""

from . import families
from .base import StochasticMethod
from .family import Family
from .problem import StochasticProblem
from .schedule import Schedule, ScheduledSGD
from .single_loop import SABA, SOBA
from .solve import StochasticResult, solve
from .two_loop import AmIGO, StocBiO

__all__ = [
    "SABA",
    "SOBA",
    "AmIGO",
    "Family",
    "Schedule",
    "ScheduledSGD",
    "StocBiO",
    "StochasticMethod",
    "StochasticProblem",
    "StochasticResult",
    "families",
    "solve",
]
