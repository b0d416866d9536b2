"""The outer loop shared by :func:`bilevel.hpo.minimize` and :func:`bilevel.meta.train`.

:func:`drive` runs the optimizer steps, records the history, shows a progress bar, meters
memory (:mod:`~bilevel.outer.memory`) and writes one checkpoint format
(:mod:`~bilevel.outer.checkpoint`, through :mod:`~bilevel.outer.atomic`);
:class:`Checkpointing` and :class:`Monitoring` are its options. Errors a user can fix derive
from :class:`UsageError` (:mod:`~bilevel.outer.errors`); :func:`describe`
(:mod:`~bilevel.outer.fingerprint`) fingerprints what determines a run.
"""

from .atomic import atomic_write
from .checkpoint import load_checkpoint, read_run, save_checkpoint
from .driver import LoopState, Step, drive, restore, resumable
from .errors import (
    CheckpointError,
    CheckpointWarning,
    MissingFileError,
    ResumeError,
    UsageError,
)
from .fingerprint import describe
from .memory import measure, peak_memory
from .options import Checkpointing, Monitoring, legacy_keywords

__all__ = [
    "CheckpointError",
    "CheckpointWarning",
    "Checkpointing",
    "LoopState",
    "MissingFileError",
    "Monitoring",
    "ResumeError",
    "Step",
    "UsageError",
    "atomic_write",
    "describe",
    "drive",
    "legacy_keywords",
    "load_checkpoint",
    "measure",
    "peak_memory",
    "read_run",
    "restore",
    "resumable",
    "save_checkpoint",
]
