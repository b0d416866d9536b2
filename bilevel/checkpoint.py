"""Deprecated alias of :mod:`bilevel.recompute` (the recomputation schedules of reverse mode).

"Checkpoint" also names a training-state file elsewhere in the library; the binomial
(revolve) schedule now lives in :mod:`bilevel.recompute`. Importing this module warns.
"""

import warnings

from .recompute import (
    SweepStats,
    binomial_repetitions,
    default_checkpoints,
    reverse_sweep,
)

__all__ = ["SweepStats", "binomial_repetitions", "default_checkpoints", "reverse_sweep"]

warnings.warn(
    "bilevel.checkpoint is deprecated: import the recomputation schedules from "
    "bilevel.recompute",
    DeprecationWarning,
    stacklevel=2,
)
