"""Seconds per meta-iteration against the number of Dask workers, and the fixed overhead.

For each worker count ``W`` a Dask ``LocalCluster`` of ``W`` processes (one thread each)
is started and every problem's meta-batch is split in ``W`` parts
(:mod:`bilevel.meta.distributed`). One timed meta-iteration is the meta-gradient of one
seeded meta-batch; the same split is timed in this process, interleaved with the cluster
calls (so both see the same load), and so is an empty round trip (``θ`` sent to the
workers, ``W`` tasks that return nothing): the fixed overhead of an iteration. Medians over
``repeats`` calls after one warm-up call. BLAS runs on one thread in this process while
timing (:mod:`threadpoolctl`), as it does on the workers.

Problems: MAML on sinusoid regression (1-40-40-1 tanh MLP, 5 inner steps) and MAML on
5-way 1-shot Omniglot with a Conv4 (from ``$BILEVEL_OMNIGLOT`` or
``../shared/data/omniglot`` when present, else random images of the same shapes).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..outer import UsageError
from ..outer.executor import InProcess, Local, Runner, open_executor
from .interleaved import one_blas_thread
from .report import figure, markdown_table, save_figure

__all__ = ["PROBLEMS", "omniglot_folder", "problem", "run", "to_markdown", "plot"]

PROBLEMS = ("sinusoid MLP", "Conv4 Omniglot")
_SIZES = {
    "quick": dict(workers=(1, 2), repeats=2, sinusoid=dict(meta_batch=8, K=5),
                  conv=dict(meta_batch=2, hidden=4, K=1)),
    "full": dict(workers=(1, 2), repeats=3, sinusoid=dict(meta_batch=32, K=5),
                 conv=dict(meta_batch=4, hidden=16, K=1)),
}


def omniglot_folder() -> Path | None:
    """``$BILEVEL_OMNIGLOT``, else ``../shared/data/omniglot`` when it holds archives."""
    env = os.environ.get("BILEVEL_OMNIGLOT")
    for folder in ([Path(env)] if env else []) + [Path.cwd().parent / "shared/data/omniglot"]:
        if folder.exists() and (folder.is_file() or any(folder.glob("*.zip"))):
            return folder
    return None


def _omniglot_sampler(seed: int) -> tuple[Any, str]:
    from ..meta import FewShotDataset, Omniglot

    folder = omniglot_folder()
    if folder is not None:
        return Omniglot(folder, ways=5, n_shot=1, n_query=15, split="all"), "Omniglot"
    rng = np.random.default_rng([seed, 7])
    images = (rng.random((100 * 20, 1, 28, 28)) < 0.15).astype(np.float32)
    return FewShotDataset(images, np.repeat(np.arange(100), 20), ways=5, n_shot=1,
                          n_query=15, split="all"), "random images"


def problem(name: str, quick: bool = False, seed: int = 0) -> tuple[Any, Any, int, str]:
    """``(algorithm, sampler, meta_batch, data)`` of problem ``name`` of :data:`PROBLEMS`."""
    from ..meta import MAML, MLP, Conv4, Sinusoid

    size = _SIZES["quick" if quick else "full"]
    if name == PROBLEMS[0]:
        s = size["sinusoid"]
        alg = MAML(MLP((1, 40, 40, 1), activation="tanh"), inner_lr=0.01, steps=s["K"])
        return alg, Sinusoid(), s["meta_batch"], "sinusoids"
    s = size["conv"]
    sampler, data = _omniglot_sampler(seed)
    alg = MAML(Conv4(hidden=s["hidden"], ways=5), inner_lr=0.4, steps=s["K"])
    return alg, sampler, s["meta_batch"], data


def _nothing(part: int, *, params: Any) -> None:
    """An empty task: what an iteration costs besides the work."""


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _measure(name: str, runner: Runner, workers: int, quick: bool, seed: int,
             repeats: int) -> dict:
    """One row: seconds per iteration on the cluster and here, and the empty round trip."""
    from ..meta.distributed import STREAM, PartedMetaGradient

    alg, sampler, T, data = problem(name, quick, seed)
    theta = alg.init(np.random.default_rng([seed, 1]))
    there = PartedMetaGradient(alg, sampler, T, workers, runner)
    here = PartedMetaGradient(alg, sampler, T, workers, InProcess())
    calls = {
        "seconds": lambda t: there(theta, (seed, STREAM, t)),
        "in_process_seconds": lambda t: here(theta, (seed, STREAM, t)),
        "overhead_seconds": lambda t: runner.map(_nothing, range(workers),
                                                 params=runner.put(theta)),
    }
    times: dict[str, list[float]] = {k: [] for k in calls}
    with one_blas_thread():
        for t in range(repeats + 1):  # the first round warms up
            for key, call in calls.items():
                spent = _timed(lambda call=call, t=t: call(t))
                if t:
                    times[key].append(spent)
    row = {k: statistics.median(v) for k, v in times.items()}
    row["speedup"] = row["in_process_seconds"] / row["seconds"]
    return dict(problem=name, data=data, meta_batch=T, workers=workers, parts=workers,
                n_params=int(alg.n_params), **row)


def run(quick: bool = False, backend: str = "numpy", *, seed: int = 0,
        workers: tuple[int, ...] | None = None) -> dict:
    """Time per meta-iteration of each problem against the number of workers.

    Parameters
    ----------
    quick
        Small meta-batches and models, two repeats; otherwise 32 sinusoid tasks and 4
        Omniglot tasks on a 16-channel Conv4 (one inner step), three repeats.
    backend
        ``"numpy"`` only (on GPUs use ``dask-cuda``: see :doc:`/distributed`).
    seed
        Seeds θ and the tasks.
    workers
        Worker counts (default 1 and 2).

    Returns
    -------
    dict
        ``rows``: ``{problem, data, meta_batch, workers, parts, n_params, seconds,
        in_process_seconds, speedup, overhead_seconds}`` (``speedup``: in process over
        cluster); ``quick``, ``backend``, ``cpus``.
    """
    if backend != "numpy":
        raise UsageError("bench distributed runs on NumPy; for GPUs run one worker per GPU "
                         "with dask-cuda (docs/distributed.rst)",
                         cli="bench distributed supports --backend numpy only")
    size = _SIZES["quick" if quick else "full"]
    rows = []
    for n in workers or size["workers"]:
        with open_executor(Local(n)) as runner:
            rows += [_measure(name, runner, n, quick, seed, size["repeats"])
                     for name in PROBLEMS]
    return dict(rows=rows, quick=quick, backend=backend, cpus=os.cpu_count())


def to_markdown(result: dict) -> str:
    """Markdown table: one row per (problem, workers)."""
    def ms(v: float) -> str:
        return f"{1000 * v:.1f}"

    return (
        "Seconds per meta-iteration (MAML meta-gradient of one meta-batch split in one part "
        f"per worker) on a Dask LocalCluster, {result['cpus']} CPU cores; medians, the "
        "in-process time interleaved with the cluster's.\n\n"
        + markdown_table(result["rows"], [
            ("problem", "problem", None), ("data", "data", None), ("tasks", "meta_batch", str),
            ("workers", "workers", str), ("ms / iteration", "seconds", ms),
            ("in process (ms)", "in_process_seconds", ms),
            ("speed-up", "speedup", lambda v: f"{v:.2f}"),
            ("overhead (ms)", "overhead_seconds", ms),
        ])
    )


def plot(result: dict, path: str) -> str:
    """PNG: seconds per meta-iteration against workers, one line per problem."""
    fig, axes = figure(1, 1, size=(5.5, 4.0))
    ax = axes[0, 0]
    for name in PROBLEMS:
        sel = sorted((r for r in result["rows"] if r["problem"] == name),
                     key=lambda r: r["workers"])
        if sel:
            ax.plot([r["workers"] for r in sel], [r["seconds"] for r in sel], "o-", label=name)
            ax.plot([r["workers"] for r in sel], [r["in_process_seconds"] for r in sel], "x--",
                    label=f"{name}, in process")
    ax.set_yscale("log")
    ax.set_xlabel("Dask workers (= parts per meta-batch)")
    ax.set_ylabel("seconds per meta-iteration")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path)
