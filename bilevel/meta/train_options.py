"""The options and the result of :func:`bilevel.meta.train`: held-out evaluation, the policy
on failed meta-gradients, the errors and warnings it raises, and what it returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..outer import ResumeError
from ..validation import Validated, integer, number, one_of, option

__all__ = ["Evaluation", "FailurePolicy", "MetaTrainingError", "MetaTrainingWarning",
           "TrainResult"]


class MetaTrainingError(RuntimeError):
    """Meta-training cannot continue (non-finite meta-gradient, mismatched checkpoint)."""


class _ResumeMismatch(MetaTrainingError, ResumeError):
    """A checkpoint of another run: a :class:`MetaTrainingError` and a
    :class:`bilevel.outer.ResumeError` (a ``ValueError``) at once."""

    def __init__(self, message: str, cli: str | None = None, fields: tuple[str, ...] = ()):
        ResumeError.__init__(self, message, cli, fields)


class MetaTrainingWarning(RuntimeWarning):
    """Many meta-gradients fail their diagnostics (issued once per :func:`train` call)."""


@dataclass
class TrainResult:
    """Outcome of :func:`train`.

    Attributes
    ----------
    theta : array
        Final meta-parameters.
    history : dict
        Per iteration (lists of equal length): ``iteration``, ``loss`` (mean meta-objective
        after adaptation), ``time`` (seconds of the iteration), ``peak_memory`` (bytes of
        host memory allocated during the meta-gradient, measured every ``memory_every``
        iterations, NaN otherwise), ``success`` (every task of the meta-batch passed its
        diagnostics), ``success_fraction`` (fraction of tasks that passed), ``applied``
        (the update was made), ``n_grad``, ``n_hvp``.
    evaluations : dict
        Per evaluation: ``iteration``, ``loss``, ``loss_ci``, ``accuracy``,
        ``accuracy_ci`` (95% normal confidence half-widths over the held-out tasks).
    start_iteration : int
        Iteration this call started from (non-zero after a resume).
    """

    theta: Any
    history: dict[str, list] = field(default_factory=dict)
    evaluations: dict[str, list] = field(default_factory=dict)
    start_iteration: int = 0


# ------------------------------------------------------------------ options
@dataclass(frozen=True)
class Evaluation(Validated):
    """Held-out evaluation during :func:`train`.

    Parameters
    ----------
    every : int
        Evaluate every ``every`` iterations and at the end (0: never).
    tasks : int
        Number of held-out tasks, drawn once from ``default_rng([seed, 2])``.
    sampler : optional
        Task sampler of the held-out tasks (default: the training sampler).
    """

    every: int = option(0, check=integer(0))
    tasks: int = option(100, check=integer(1))
    sampler: Any = None


@dataclass(frozen=True)
class FailurePolicy(Validated):
    """What :func:`train` does when meta-gradient diagnostics fail.

    Parameters
    ----------
    on_failure : {"drop", "skip", "apply", "raise"}
        ``"drop"`` (default): drop the failing tasks. Algorithms whose method reports
        per-task diagnostics (``info["task_success"]``: iMAML, MemoryReduced and CML on
        them, through :class:`bilevel.Implicit`'s ``problem_success``) average the
        meta-gradient over the tasks that passed; the update is skipped only when none
        passed. Algorithms with whole-batch diagnostics skip the update on failure.
        ``"skip"``: skip the update whenever any task failed. ``"apply"``: apply the mean
        over all tasks anyway. ``"raise"``: raise :class:`MetaTrainingError`.
    window, warn
        Warn (:class:`MetaTrainingWarning`, once per call) when the mean fraction of
        failing tasks over the last ``window`` iterations exceeds ``warn`` (a sign of a bad
        configuration: inner step size, damping, ...).
    """

    on_failure: str = option("drop", check=one_of(("drop", "skip", "apply", "raise")))
    window: int = option(20, check=integer(1))
    warn: float = option(0.5, check=number(0, maximum=1))
