"""Meta-gradients of a meta-batch split in parts, each part on a worker (Dask or any pool).

A meta-batch of ``T`` tasks is cut into ``P`` consecutive parts of near-equal size
(:class:`SeededTasks`). Part ``j`` of meta-iteration ``t`` is drawn by the sampler from its
own seed, ``numpy.random.default_rng([seed, 3, t, j])``, so a worker builds its tasks
itself: only the seed travels, never task data. The meta-parameters are sent to the
workers once per iteration (:meth:`bilevel.outer.executor.Runner.put`); each worker takes
its part's meta-gradient batched (in micro-batches of ``chunks`` tasks, as
:meth:`~bilevel.meta.algorithms.MetaAlgorithm.meta_gradient` does in one process) and
returns the gradient and the diagnostics, without the per-task results. The parts are
combined in part order (:func:`combine_parts`)::

    ∇ = (Σ_j c_j ∇_j) / Σ_j c_j        c_j = tasks of part j that count (all, or those
                                              that passed their diagnostics)

so the result depends on ``P`` and the seeds only: the same in this process
(``executor=None``), on a thread pool or on any Dask cluster, bit for bit, whatever the
number of workers and whichever worker ran which part (a lost worker's part is rerun).

Cost per iteration: one broadcast of ``θ`` (``O(n)`` bytes per worker), ``P`` task
launches (a few tens of milliseconds in all on a local Dask cluster, see
:doc:`/distributed`) and ``P`` gradients of ``O(n)`` back; memory on a worker: one part's
meta-gradient.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backend import is_array, namespace
from ..outer.executor import Runner, open_executor
from ..validation import Validated, integer, option
from .algorithms import MetaStep
from .tasks import Episode

__all__ = ["STREAM", "PartedMetaGradient", "SeededTasks", "call_meta_gradient",
           "combine_parts", "meta_gradient", "part_sizes", "split_parts"]

#: Third entry of the seed sequence ``[seed, STREAM, t, j]`` of part ``j`` of iteration
#: ``t`` (``[seed, 0]`` is the task stream of an unsplit run, ``[seed, 1]`` the
#: initialization, ``[seed, 2]`` the held-out tasks).
STREAM = 3


def part_sizes(n_tasks: int, parts: int) -> list[int]:
    """``parts`` consecutive sizes summing to ``n_tasks``, the first ``n_tasks % parts``
    one larger than the others."""
    base, extra = divmod(int(n_tasks), int(parts))
    return [base + (j < extra) for j in range(int(parts))]


def split_parts(executor: Any, parts: int | None, workers: int, meta_batch: int) -> int | None:
    """The number of parts of each meta-batch of :func:`bilevel.meta.train`: ``parts``
    (at most ``meta_batch``), else one per worker of an ``executor`` (at most
    ``meta_batch``), else ``None`` (one unsplit meta-batch)."""
    if parts is None:
        return None if executor is None else min(int(workers), meta_batch)
    parts = integer(1)("parts", parts)
    if parts > meta_batch:
        raise ValueError(f"parts must be at most meta_batch={meta_batch}, got {parts}")
    return parts


@dataclass(frozen=True)
class SeededTasks(Validated):
    """The tasks of one meta-batch, drawn part by part from seeds.

    Part ``j`` holds :func:`part_sizes` ``(n_tasks, parts)[j]`` tasks,
    ``sampler.sample(size_j, numpy.random.default_rng([*key, j]))``; any process holding
    the sampler rebuilds it from ``(key, j)``.

    Parameters
    ----------
    sampler
        Task sampler (``sample(n_tasks, rng) -> Episode``).
    n_tasks : int
        Meta-batch size ``T``.
    key : tuple of int
        Seed sequence of the meta-batch (``(seed, STREAM, t)`` in :func:`bilevel.meta.train`).
    parts : int
        Number of parts ``P`` (``1 ≤ P ≤ T``).
    """

    sampler: Any = option(None, repr=False)
    n_tasks: int = option(1, check=integer(1))
    key: tuple[int, ...] = (0,)
    parts: int = option(1, check=integer(1))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.parts > self.n_tasks:
            raise ValueError(f"parts must be at most the meta-batch size {self.n_tasks}, "
                             f"got {self.parts}")
        object.__setattr__(self, "key", tuple(int(k) for k in self.key))

    @property
    def sizes(self) -> list[int]:
        """Tasks per part."""
        return part_sizes(self.n_tasks, self.parts)

    def part(self, j: int) -> Episode:
        """The tasks of part ``j``, drawn from the seed sequence ``[*key, j]``."""
        rng = np.random.default_rng([*self.key, int(j)])
        return self.sampler.sample(self.sizes[j], rng)

    def episode(self) -> Episode:
        """All ``T`` tasks as one episode (the parts concatenated in order)."""
        parts = [self.part(j) for j in range(self.parts)]
        return Episode(*(_concat([getattr(p, a) for p in parts]) for a in
                         ("x_support", "y_support", "x_query", "y_query")),
                       _concat_info([p.info for p in parts], [p.n_tasks for p in parts]))


def _concat(arrays: list[Any]) -> Any:
    if arrays[0] is None:
        return None
    return namespace(arrays[0]).concat(arrays, axis=0)


def _concat_info(infos: list[dict], sizes: list[int]) -> dict:
    out = {}
    for key, first in infos[0].items():
        values = [info.get(key) for info in infos]
        rows = all(is_array(v) and len(v.shape) and int(v.shape[0]) == n
                   for v, n in zip(values, sizes, strict=True))
        out[key] = _concat(values) if rows else first
    return out


def call_meta_gradient(algorithm: Any, params: Any, episode: Any, drop_failed: bool,
                       chunks: int | str | None) -> tuple[Any, Any]:
    """``algorithm.meta_gradient(params, episode, ...)``; ``chunks="auto"`` is not passed,
    so an algorithm of the user's without a ``chunks`` argument runs with its default."""
    if chunks == "auto":
        return algorithm.meta_gradient(params, episode, drop_failed=drop_failed)
    return algorithm.meta_gradient(params, episode, drop_failed=drop_failed, chunks=chunks)


@dataclass(frozen=True)
class _Work:
    """What every part of a run shares (sent to the workers once per run)."""

    algorithm: Any
    sampler: Any
    n_tasks: int
    parts: int
    drop_failed: bool
    chunks: int | str | None

    def tasks(self, key: tuple[int, ...]) -> SeededTasks:
        return SeededTasks(self.sampler, self.n_tasks, key, self.parts)


def _light(step: Any) -> Any:
    """The diagnostics of a part without its per-task results (``O(T·n)``, kept home)."""
    if isinstance(step, MetaStep):
        return step.settled()
    return {k: v for k, v in dict(step).items() if k != "result"}


def _part_gradient(j: int, *, work: _Work, seed: tuple[int, ...], params: Any) -> tuple:
    """On a worker: part ``j``'s tasks from their seed, then its meta-gradient."""
    episode = work.tasks(seed).part(j)
    grad, step = call_meta_gradient(work.algorithm, params, episode, work.drop_failed,
                                    work.chunks)
    return grad, _light(step)


def _masks(steps: list[Mapping], sizes: list[int]) -> list[np.ndarray] | None:
    """Per-task success flags of every part, when any part reports them (a part that
    reports none passed or failed as a whole)."""
    if all(s.get("task_success") is None for s in steps):
        return None
    return [np.asarray(s["task_success"], dtype=bool) if s.get("task_success") is not None
            else np.full(n, bool(s.get("success", True))) for s, n in zip(steps, sizes,
                                                                           strict=True)]


def _weighted_sum(grads: list[Any], weights: list[int]) -> Any:
    """``(Σ_j w_j g_j) / Σ_j w_j`` in part order; parts of weight 0 are left out (their
    gradient may be NaN)."""
    if any(g is None for g in grads):
        return None
    total = None
    for g, w in zip(grads, weights, strict=True):
        if w:
            total = g * w if total is None else total + g * w
    return total / sum(weights)


def _diagnostics(step: Mapping) -> dict:
    """A part's diagnostics: the ``diagnostics`` of a MetaStep, or of a plain mapping."""
    return (step.diagnostics if isinstance(step, MetaStep) else step.get("diagnostics")) or {}


def _worst(steps: list[Mapping]) -> dict[str, float]:
    keys = dict.fromkeys(k for s in steps for k in _diagnostics(s))
    return {k: float(np.max([_diagnostics(s).get(k, np.nan) for s in steps])) for k in keys}


def combine_parts(outs: Sequence[tuple[Any, Any]], sizes: Sequence[int],
                  drop_failed: bool = True) -> tuple[Any, MetaStep]:
    """One meta-gradient and :class:`~bilevel.meta.algorithms.MetaStep` from the parts'.

    The gradient is ``(Σ_j c_j ∇_j) / Σ_j c_j`` in part order, with ``c_j`` the tasks of
    part ``j`` that passed their diagnostics under ``drop_failed`` when per-task flags
    are reported (all its tasks otherwise, and when no task passed); the loss is the
    task-weighted mean; ``success`` holds when every part succeeded; counts are the worst
    part's (one part's batched oracles, as :func:`~bilevel.meta.algorithms.step.join_results`
    reports micro-batches); ``result`` is ``None`` (the per-task results stay on the
    workers). One part is returned as it is.
    """
    if len(outs) == 1:
        return outs[0]
    grads, steps, sizes = [g for g, _ in outs], [s for _, s in outs], list(sizes)
    masks = _masks(steps, sizes)
    weights = [int(m.sum()) for m in masks] if drop_failed and masks else sizes
    if sum(weights) == 0:
        weights = sizes
    grad = _weighted_sum(grads, weights)
    failed = [s for s in steps if not s.get("success", True)]
    loss = sum(n * float(s.get("loss", np.nan))
               for s, n in zip(steps, sizes, strict=True)) / sum(sizes)
    step = MetaStep(
        grad=grad, loss=loss, success=not failed and grad is not None,
        message=str((failed[0] if failed else steps[0]).get("message", "ok")),
        task_success=None if masks is None else np.concatenate(masks),
        n_grad=max(int(s.get("n_grad", 0)) for s in steps),
        n_hvp=max(int(s.get("n_hvp", 0)) for s in steps),
        n_jvp=max(int(s.get("n_jvp", 0)) for s in steps),
        method=str(steps[0].get("method", "")), diagnostics=_worst(steps))
    return grad, step


class PartedMetaGradient:
    """Meta-gradients of seeded meta-batches, ``parts`` parts at a time on a runner.

    Built once per training run: the algorithm and the sampler are sent to the workers
    here; each call sends ``θ`` once and the seed ``key`` of the meta-batch.

    Parameters
    ----------
    algorithm, sampler
        The meta-learning algorithm and the task sampler (both picklable).
    n_tasks, parts : int
        Meta-batch size ``T`` and number of parts ``P ≤ T``.
    runner : bilevel.outer.executor.Runner
        Where the parts run (:func:`bilevel.outer.executor.open_executor`).
    drop_failed : bool
        Average over the tasks that passed their diagnostics (as ``meta_gradient``).
    chunks : int, "auto" or None
        Micro-batch size inside a part (as ``meta_gradient``).
    """

    def __init__(self, algorithm: Any, sampler: Any, n_tasks: int, parts: int, runner: Runner,
                 *, drop_failed: bool = True, chunks: int | str | None = "auto"):
        self.sizes = SeededTasks(sampler, n_tasks, (0,), parts).sizes
        self.runner, self.drop_failed = runner, drop_failed
        self.work = runner.put(_Work(algorithm, sampler, n_tasks, parts, drop_failed, chunks))

    def __call__(self, params: Any, key: Sequence[int]) -> tuple[Any, MetaStep]:
        """The meta-gradient at ``params`` of the meta-batch with seed sequence ``key``."""
        outs = self.runner.map(_part_gradient, range(len(self.sizes)), work=self.work,
                               seed=tuple(int(k) for k in key), params=self.runner.put(params))
        return combine_parts(outs, self.sizes, self.drop_failed)


def meta_gradient(algorithm: Any, params: Any, tasks: SeededTasks, *, executor: Any = None,
                  drop_failed: bool = True,
                  chunks: int | str | None = "auto") -> tuple[Any, MetaStep]:
    """The meta-gradient of the seeded meta-batch ``tasks``, its parts run by ``executor``.

    Equal bit for bit for every ``executor`` (``None``: here; a ``dask.distributed.Client``,
    ``"local"``, a ``concurrent.futures`` executor, ...: see
    :mod:`bilevel.outer.executor`); with one part it is
    ``algorithm.meta_gradient(params, tasks.part(0))``.

    Examples
    --------
    >>> import numpy as np
    >>> from bilevel.meta import MAML, MLP, Sinusoid
    >>> from bilevel.meta.distributed import SeededTasks, meta_gradient
    >>> alg = MAML(MLP((1, 8, 1)), inner_lr=0.05, steps=2)
    >>> theta = alg.init(np.random.default_rng(0))
    >>> tasks = SeededTasks(Sinusoid(), n_tasks=6, key=(0, 3, 0), parts=2)
    >>> grad, step = meta_gradient(alg, theta, tasks)
    >>> grad.shape == theta.shape and step.success
    True
    """
    with open_executor(executor) as runner:
        run = PartedMetaGradient(algorithm, tasks.sampler, tasks.n_tasks, tasks.parts, runner,
                                 drop_failed=drop_failed, chunks=chunks)
        return run(params, tasks.key)
