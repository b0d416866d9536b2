"""Meta-training: the outer loop, evaluation on held-out tasks, exact checkpoint/resume.

:func:`train` repeats ``episode = sampler.sample(meta_batch, rng)``,
``grad = algorithm.meta_gradient(θ, episode)``, ``θ ← θ + optimizer.update(grad)``, records
a history and writes checkpoints, as a front end of the shared outer-loop driver
(:mod:`bilevel.outer`). Randomness comes from one :class:`numpy.random.Generator` seeded by
``seed`` whose state is checkpointed with the parameters, the optimizer state, the iteration
and the history, so a run killed at any point and resumed gives bit-identical parameters to
an uninterrupted run. Held-out evaluation is :mod:`bilevel.meta.heldout`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from ..backend import name_of, namespace
from ..nonfinite import all_finite
from ..optim import Adam, Optimizer
from ..outer import (
    Checkpointing,
    LoopState,
    Monitoring,
    ResumeError,
    Step,
    drive,
    legacy_keywords,
    restore,
)
from ..outer.executor import open_executor
from ..problem import NonFiniteError
from ..validation import integer
from .algorithms import MetaAlgorithm
from .distributed import STREAM, PartedMetaGradient, call_meta_gradient, split_parts
from .heldout import evaluate, held_out_episodes
from .run_record import (
    EVAL_KEYS,
    HISTORY_KEYS,
    empty,
    fingerprint,
    load_checkpoint,
    save_checkpoint,
)
from .train_options import (
    Evaluation,
    FailurePolicy,
    MetaTrainingError,
    MetaTrainingWarning,
    TrainResult,
    _ResumeMismatch,
)

__all__ = [
    "Evaluation",
    "FailurePolicy",
    "MetaTrainingError",
    "MetaTrainingWarning",
    "TrainResult",
    "evaluate",
    "fingerprint",
    "load_checkpoint",
    "save_checkpoint",
    "train",
]

_LEGACY = {
    "eval_every": ("evaluation", "every"),
    "eval_tasks": ("evaluation", "tasks"),
    "eval_sampler": ("evaluation", "sampler"),
    "checkpoint": ("checkpointing", "path"),
    "checkpoint_every": ("checkpointing", "every"),
    "resume": ("checkpointing", "resume"),
    "progress": ("monitoring", "progress"),
    "memory_every": ("monitoring", "memory_every"),
    "on_failure": ("failures", "on_failure"),
    "failure_window": ("failures", "window"),
    "failure_warn": ("failures", "warn"),
}


# ------------------------------------------------------------------ training loop
class _MetaStep:
    """One meta-iteration: sample a meta-batch, take its meta-gradient, apply the policy."""

    def __init__(self, algorithm: MetaAlgorithm, sampler: Any, meta_batch: int,
                 failures: FailurePolicy, chunks: int | str | None = "auto",
                 parted: tuple[PartedMetaGradient, int] | None = None):
        self.algorithm, self.sampler, self.meta_batch = algorithm, sampler, meta_batch
        self.policy, self.chunks, self.parted = failures.on_failure, chunks, parted

    def _apply(self, ok: bool, fraction: float, masked: bool) -> bool:
        if self.policy == "apply":
            return True
        if self.policy == "drop" and masked:
            return fraction > 0
        return ok

    def _gradient(self, state: LoopState) -> tuple[Any, Any]:
        """The algorithm's meta-gradient of this iteration's meta-batch (drawn from the task
        stream, or part by part from seeds when split); a non-finite value raised inside it
        (a NaN in the data or the parameters) becomes a failed step that the policy handles."""
        episode = None
        if self.parted is None:
            episode = self.sampler.sample(self.meta_batch, state.rng)
        try:
            if episode is None:
                gradient, seed = self.parted
                return gradient(state.params, (seed, STREAM, state.step))
            return call_meta_gradient(self.algorithm, state.params, episode,
                                      self.policy == "drop", self.chunks)
        except NonFiniteError as err:
            message = f"non-finite value in the meta-gradient ({err}); check the tasks' data"
            return None, {"success": False, "success_fraction": 0.0, "message": message,
                          "loss": float("nan")}

    def __call__(self, state: LoopState) -> Step:
        it = state.step
        grad, info = self._gradient(state)
        ok = bool(info.get("success", True))
        fraction = float(info.get("success_fraction", 1.0 if ok else 0.0))
        if not ok and self.policy == "raise":
            raise MetaTrainingError(
                f"meta-gradient diagnostics failed at iteration {it}: {info.get('message')}"
            )
        masked = info.get("task_success") is not None
        apply = self._apply(ok, fraction, masked)
        if grad is None and apply:
            raise MetaTrainingError(f"meta-gradient failed at iteration {it}: "
                                    f"{info['message']}; on_failure='apply' cannot apply it")
        if apply and grad is not None and not _finite(grad):
            raise MetaTrainingError(
                f"non-finite meta-gradient at iteration {it}: {info.get('message')}; lower "
                "the inner or outer step size, or add damping"
            )
        row = {"loss": info["loss"], "success": ok, "success_fraction": fraction,
               "applied": apply, "n_grad": int(info.get("n_grad", 0)),
               "n_hvp": int(info.get("n_hvp", 0))}
        return Step(grad if apply else None, row, info={"message": info.get("message")},
                    postfix={"loss": f"{info['loss']:.4g}"})


def _finite(x: Any) -> bool:
    xp = namespace(x)
    return bool(xp.all(xp.isfinite(x)))


class _Bookkeeping:
    """After each update: the failure-rate warning and the held-out evaluations."""

    def __init__(self, algorithm: MetaAlgorithm, failures: FailurePolicy, evaluation: Evaluation,
                 episodes: list | None, steps: int):
        self.algorithm, self.failures, self.evaluation = algorithm, failures, evaluation
        self.episodes, self.steps, self.warned = episodes, steps, False

    def warn(self, history: dict, message: Any) -> None:
        window = self.failures.window
        recent = history["success_fraction"][-window:]
        failing = 1.0 - float(np.nanmean(recent)) if recent else 0.0
        if self.warned or len(recent) < window or failing <= self.failures.warn:
            return
        self.warned = True
        warnings.warn(
            f"{type(self.algorithm).__name__}: {100 * failing:.0f}% of the tasks failed "
            f"their diagnostics over the last {window} meta-iterations (latest: {message}); "
            "check the inner step size and number of steps, the damping, or the solver",
            MetaTrainingWarning,
            stacklevel=4,
        )

    def __call__(self, state: LoopState, out: Step) -> None:
        self.warn(state.history, out.info["message"])
        every, done = self.evaluation.every, state.step
        if every and (done % every == 0 or done == self.steps):
            ev = evaluate(self.algorithm, state.params, None, episodes=self.episodes)
            evaluations = state.extra["evaluations"]
            for key in EVAL_KEYS:
                evaluations[key].append(done - 1 if key == "iteration" else ev[key])


def train(
    algorithm: MetaAlgorithm,
    sampler: Any,
    theta0: Any = None,
    steps: int = 1000,
    meta_batch: int = 25,
    optimizer: Optimizer | None = None,
    *,
    seed: int = 0,
    callback: Callable[[int, Any, dict], None] | None = None,
    evaluation: Evaluation | None = None,
    failures: FailurePolicy | None = None,
    checkpointing: Checkpointing | None = None,
    monitoring: Monitoring | None = None,
    chunks: int | str | None = "auto",
    executor: Any = None,
    parts: int | None = None,
    **legacy: Any,
) -> TrainResult:
    """Meta-train ``algorithm`` on tasks from ``sampler``.

    Repeats ``episode = sampler.sample(meta_batch, rng)``, ``grad, info =
    algorithm.meta_gradient(θ, episode)``, ``θ ← θ + optimizer.update(grad)`` through the
    shared outer-loop driver (:func:`bilevel.outer.drive`).

    Parameters
    ----------
    algorithm
        A :class:`bilevel.meta.algorithms.MetaAlgorithm`.
    sampler
        Task sampler: ``sample(n_tasks, rng) -> Episode`` and ``backend``.
    theta0
        Initial meta-parameters (default ``algorithm.init(default_rng([seed, 1]), backend)``).
    steps
        Total number of meta-iterations (a resumed run continues up to ``steps``).
    meta_batch
        Tasks per meta-iteration.
    optimizer
        Outer optimizer (default ``Adam(1e-3)``).
    seed
        Seeds the training task stream and the initialization.
    callback
        ``callback(iteration, params, history)`` after each iteration (and after its
        checkpoint); an exception from it stops training (used to test kill-and-resume).
    evaluation : Evaluation, optional
        Held-out evaluation: every ``every`` iterations (0: never), on ``tasks`` tasks of
        ``sampler`` (default the training sampler), drawn once from
        ``default_rng([seed, 2])``.
    failures : FailurePolicy, optional
        What a failed diagnostic (``info["success"]`` False: a CG breakdown, an unconverged
        solve or inner problem, ...) does; every iteration records ``success``,
        ``success_fraction`` and ``applied``.
    checkpointing : Checkpointing, optional
        Checkpoint file, written atomically every ``every`` iterations (default 100) and
        at the end; an existing file is resumed when everything that determines the run
        matches (:func:`fingerprint`: algorithm, model, tasks, optimizer, seed,
        meta-batch, θ0), and refused otherwise, before anything is written, with a message
        naming the fields that differ.
    chunks : int, "auto" or None
        Tasks per micro-batch of each meta-gradient (``"auto"``, the default: sized so that
        peak memory does not grow with ``meta_batch``; ``None``: the whole meta-batch at
        once). Any choice gives the same meta-gradient bit for bit.
    executor : optional
        Where the meta-gradients run (:mod:`bilevel.outer.executor`): ``None`` (here),
        ``"local"`` (a Dask ``LocalCluster`` sized to the machine, closed at the end), a
        Dask scheduler address, a ``dask.distributed.Client``, or any executor with
        ``submit`` (``concurrent.futures``). With an executor, each meta-batch is split in
        ``parts`` (:mod:`bilevel.meta.distributed`): part ``j`` of iteration ``t`` is drawn
        on a worker from the seed ``[seed, 3, t, j]``, θ is sent once per iteration and the
        parts' meta-gradients are summed in part order, so the run is bit-identical to
        ``train(..., parts=P)`` in this process, whatever the executor and its size.
    parts : int, optional
        Parts per meta-batch (at most ``meta_batch``; default: one per worker of
        ``executor``, and no split without one). Part of the run's fingerprint: pass it
        explicitly to resume on a cluster of another size.
    monitoring : Monitoring, optional
        Progress bar (default: only when stderr is a terminal) and memory measurement:
        the ``peak_memory`` of the meta-iteration every ``memory_every`` iterations
        (default 0: never; meter ``"peak"``: tracemalloc on NumPy, which slows Python
        allocation several-fold and is included in that iteration's ``time``).
    **legacy
        The keywords of earlier versions (``eval_every``, ``eval_tasks``, ``eval_sampler``,
        ``checkpoint``, ``checkpoint_every``, ``resume``, ``progress``, ``memory_every``,
        ``on_failure``, ``failure_window``, ``failure_warn``) still work, with a
        ``DeprecationWarning`` showing the new spelling.

    Returns
    -------
    TrainResult

    Raises
    ------
    MetaTrainingError
        On a non-finite meta-gradient (with the algorithm's diagnostic message), a failed
        step under ``on_failure="raise"`` (a non-finite value in the data included: under
        the other policies that step is recorded as failed and not applied), or a
        checkpoint from a different configuration (also a
        :class:`bilevel.outer.ResumeError`).
    """
    if not isinstance(algorithm, MetaAlgorithm):
        raise TypeError(f"algorithm must be a MetaAlgorithm, got {type(algorithm).__name__}")
    if not hasattr(sampler, "sample"):
        raise TypeError(f"sampler must have sample(n_tasks, rng), got {type(sampler).__name__}")
    args = legacy_keywords("train", legacy, _LEGACY, {
        "evaluation": evaluation or Evaluation(), "failures": failures or FailurePolicy(),
        "checkpointing": checkpointing or Checkpointing(every=100),
        "monitoring": monitoring or Monitoring(memory="peak", memory_every=0)})
    steps, meta_batch = integer(1)("steps", steps), integer(1)("meta_batch", meta_batch)
    optimizer = Adam(1e-3) if optimizer is None else optimizer
    backend = getattr(sampler, "backend", None) or "numpy"
    if theta0 is not None and not all_finite(theta0):
        raise ValueError("theta0 contains NaN or inf: pass finite initial meta-parameters "
                         "(or theta0=None for the algorithm's initialisation)")
    split_parts(None, parts, 1, meta_batch)  # an explicit parts, before a cluster starts
    with open_executor(executor) as runner:
        parts = split_parts(executor, parts, runner.workers, meta_batch)
        config = fingerprint(algorithm, sampler, optimizer, seed, meta_batch, theta0, parts)
        params = algorithm.init(np.random.default_rng([int(seed), 1]), backend) \
            if theta0 is None else theta0
        state = LoopState(params=params, optimizer_state=optimizer.init(params),
                          rng=np.random.default_rng([int(seed), 0]), history=empty(HISTORY_KEYS),
                          extra={"evaluations": empty(EVAL_KEYS)})
        try:
            state = restore(state, args["checkpointing"], config, name_of(params))
        except ResumeError as err:
            raise _ResumeMismatch(str(err), err.cli, err.fields) from err
        start = state.step
        ev = args["evaluation"]
        episodes = held_out_episodes(ev.sampler or sampler, ev.tasks, seed=[int(seed), 2],
                                     batch=meta_batch) if ev.every else None

        def user_callback(st: LoopState, out: Step) -> bool:
            callback(st.step - 1, st.params, st.history)
            return False

        parted = None if parts is None else (PartedMetaGradient(
            algorithm, sampler, meta_batch, parts, runner, chunks=chunks,
            drop_failed=args["failures"].on_failure == "drop"), int(seed))
        drive(_MetaStep(algorithm, sampler, meta_batch, args["failures"], chunks, parted), state,
              optimizer, steps=steps, config=config, checkpointing=args["checkpointing"],
              monitoring=args["monitoring"], index="iteration", backend=backend,
              record=_Bookkeeping(algorithm, args["failures"], ev, episodes, steps),
              callback=None if callback is None else user_callback, desc=type(algorithm).__name__)
    return TrainResult(theta=state.params, history=state.history,
                       evaluations=state.extra["evaluations"], start_iteration=start)
