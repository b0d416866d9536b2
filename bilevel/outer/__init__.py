"""The outer loop shared by :func:`bilevel.hpo.minimize` and :func:`bilevel.meta.train`.

:func:`drive` runs the optimizer steps, records the history, shows a progress bar, meters
memory (:mod:`~bilevel.outer.memory`) and writes one checkpoint format
(:mod:`~bilevel.outer.checkpoint`, through :mod:`~bilevel.outer.atomic`);
:class:`Checkpointing` and :class:`Monitoring` are its options.
"""

from .atomic import atomic_write
from .checkpoint import load_checkpoint, read_run, save_checkpoint
from .driver import LoopState, ResumeError, Step, drive, restore
from .memory import measure, peak_memory
from .options import Checkpointing, Monitoring, legacy_keywords

__all__ = [
    "Checkpointing",
    "LoopState",
    "Monitoring",
    "ResumeError",
    "Step",
    "atomic_write",
    "drive",
    "legacy_keywords",
    "load_checkpoint",
    "measure",
    "peak_memory",
    "read_run",
    "restore",
    "save_checkpoint",
]
