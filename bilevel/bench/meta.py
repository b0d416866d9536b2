"""Seconds and peak memory per meta-iteration of each meta-learning algorithm.

One meta-iteration is ``algorithm.meta_gradient(θ, episode)`` on a meta-batch of sinusoid
regression tasks (1-40-40-1 tanh MLP, 10 support and 10 query points per task), for inner
step counts K in the grid. Expected memory per task (see :doc:`/meta`): O(K·n) for MAML and
A-MAML (stored trajectories), O(n) for first-order MAML, Reptile and iMAML, O(p + q) plus
one backbone graph for the memory-reduced method; ANIL stores head iterates only; CML adds
a co-learner. Time is the best of ``repeats`` untraced calls; peak memory comes from one
more call under the tracer (tracemalloc on NumPy, the CuPy pool hook on CuPy).

The ``Conv4`` rows compare one MAML meta-iteration on Conv4 (64 channels, 28×28 images,
5-way 1-shot, meta-batch 8, K = 1 and 5; ``--quick``: 8 channels, 12×12, 2 tasks, K = 1)
with PyTorch eager on the same weights and episode when PyTorch is installed, time and
peak resident-set growth measured alike for both (:mod:`bilevel.bench.conv_peers`);
``bilevel bench meta --methods Conv4`` runs them alone. For a fair comparison run it with
``OPENBLAS_NUM_THREADS=1`` (PyTorch runs on one thread; the timed calls also limit BLAS to
one thread through :mod:`threadpoolctl` when it is installed).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..outer.driver import progress_bar
from ..registry import spelling
from . import conv_peers
from .conv_peers import conv4_episode
from .report import RowLog, figure, format_bytes, markdown_table, peak_memory, save_figure

__all__ = ["ALGORITHMS", "CONV4", "algorithm", "conv4_episode", "meta_batch_scaling", "plot",
           "run", "to_markdown"]

CONV4 = "Conv4"
"""The label of the Conv4 MAML rows against PyTorch (:func:`bilevel.bench.conv_peers.compare`)."""

ALGORITHMS = ("MAML", "FOMAML", "ANIL", "Reptile", "iMAML", "A-MAML", "MemoryReduced", "CML",
              CONV4)
"""Row labels, one per algorithm registered under ``"algorithm"`` by :mod:`bilevel.meta`
(on the sinusoid MLP), and :data:`CONV4`; ``--methods`` accepts any spelling of them
(``amaml``, ``memory-reduced``, ``conv4``)."""


def _label(name: str) -> str:
    """The label of :data:`ALGORITHMS` that ``name`` spells (:func:`bilevel.registry.spelling`)."""
    for label in ALGORITHMS:
        if spelling(label) == spelling(name):
            return label
    raise ValueError(f"unknown meta-learning algorithm {name!r}; choose from {ALGORITHMS}")


_SIZES = {"quick": dict(K=(2, 8), meta_batch=4, repeats=1,
                        conv4=dict(hidden=8, side=12, T=2, K=(1,))),
          "full": dict(K=(5, 20, 80), meta_batch=25, repeats=3,
                       conv4=dict(hidden=64, side=28, T=8, K=(1, 5)))}


def algorithm(name: str, K: int) -> Any:
    """The meta-learning algorithm ``name`` with ``K`` inner steps on the sinusoid MLP."""
    from ..meta import AMAML, ANIL, CML, IMAML, MAML, MLP, MemoryReduced, Reptile

    if _label(name) == CONV4:
        raise ValueError(f"{CONV4} is a comparison (bilevel.bench.conv_peers), not an algorithm")

    model = MLP((1, 40, 40, 1), activation="tanh")
    makers: dict[str, Callable[[], Any]] = {
        "MAML": lambda: MAML(model, inner_lr=0.01, steps=K),
        "FOMAML": lambda: MAML(model, inner_lr=0.01, steps=K, first_order=True),
        "ANIL": lambda: ANIL(model, inner_lr=0.05, steps=K),
        "Reptile": lambda: Reptile(model, inner_lr=0.01, steps=K),
        "iMAML": lambda: IMAML(model, reg=10.0, inner_lr=0.02, steps=K),
        "A-MAML": lambda: AMAML(model, horizon=0.01 * K, steps=K, scheme="rk4"),
        "MemoryReduced": lambda: MemoryReduced(model, inner_lr=0.05, steps=K, head_reg=1.0),
        "CML": lambda: CML(MAML(model, inner_lr=0.01, steps=K),
                           MLP((40, 40, 1), activation="tanh"), weight=1.0),
    }
    return makers[_label(name)]()


def run(
    quick: bool = False,
    backend: str = "numpy",
    methods: Sequence[str] | None = None,
    *,
    seed: int = 0,
    log: RowLog | None = None,
    progress: bool = False,
) -> dict:
    """Time and peak memory of one meta-iteration per (algorithm, K), and the Conv4 rows.

    Parameters
    ----------
    quick
        K in (2, 8), 4 tasks, one repeat; otherwise K in (5, 20, 80), 25 tasks, 3 repeats.
        Conv4: 8 channels, 12×12, 2 tasks, K = 1; otherwise 64 channels, 28×28, 8 tasks,
        K in (1, 5).
    backend
        ``"numpy"`` or ``"cupy"`` (on CuPy the Conv4 rows are bilevel's alone).
    methods
        Labels among :data:`ALGORITHMS` (default all).
    seed
        Seeds θ and the episodes.
    log
        Row log for interrupt/resume (default in memory).
    progress
        progress bar over the rows (only on a terminal).

    Returns
    -------
    dict
        ``rows``: ``{algorithm, K, meta_batch, seconds, peak_bytes, loss, success, message,
        n_grad, n_hvp}``; ``conv4``: the rows of :func:`bilevel.bench.conv_peers.compare`;
        ``backend``, ``quick``, ``meta_batch``, ``K_grid``, ``repeats``, ``peers``.
    """
    size = _SIZES["quick" if quick else "full"]
    names = list(ALGORITHMS) if methods is None else [_label(n) for n in methods]
    log = RowLog(None, "meta", {}) if log is None else log
    conv = size["conv4"]
    peers = conv_peers.installed_peers() if backend == "numpy" else []
    jobs = [(name, K) for name in names if name != CONV4 for K in size["K"]]
    jobs += [(CONV4, K) for K in conv["K"]] if CONV4 in names else []
    episode = None
    rows, conv_rows = [], []
    bar = progress_bar(jobs, desc="bench meta", progress=progress)
    for name, K in bar:
        bar.set_postfix_str(f"{name} K={K}")
        if name == CONV4:
            row = log.compute([name, K], lambda K=K: conv_peers.compare(
                conv["hidden"], conv["side"], conv["T"], K, repeats=size["repeats"],
                seed=seed, peers=peers, backend=backend))
            conv_rows.append({k: v for k, v in row.items() if k != "key"})
            continue
        if episode is None:
            episode = _sinusoid_episode(size["meta_batch"], seed, backend)
        row = log.compute([name, K], lambda name=name, K=K, ep=episode: _measure(
            name, K, ep, size["repeats"], seed, backend))
        rows.append({k: v for k, v in row.items() if k != "key"})
    return dict(rows=rows, conv4=conv_rows, backend=backend, quick=quick,
                meta_batch=size["meta_batch"], K_grid=list(size["K"]),
                repeats=size["repeats"], peers=peers)


def _sinusoid_episode(meta_batch: int, seed: int, backend: str) -> Any:
    """The meta-batch of sinusoid tasks every algorithm row uses."""
    from ..meta import Sinusoid

    return Sinusoid(backend=backend).sample(meta_batch, np.random.default_rng([seed, 0]))


def _measure(name: str, K: int, episode: Any, repeats: int, seed: int, backend: str) -> dict:
    """One algorithm row: best of ``repeats`` timed calls after a warm-up, traced peak."""
    from .. import backend as _backend

    xp = _backend.module(backend)
    sync = (lambda: xp.cuda.Device().synchronize()) if backend == "cupy" else (lambda: None)
    alg = algorithm(name, K)
    theta = alg.init(np.random.default_rng([seed, 1]), backend)
    _, info = alg.meta_gradient(theta, episode)  # warm-up; failures stay in info
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        alg.meta_gradient(theta, episode)
        sync()
        best = min(best, time.perf_counter() - t0)
    _, peak = peak_memory(lambda: alg.meta_gradient(theta, episode), backend)
    return dict(algorithm=name, K=K, meta_batch=episode.n_tasks, seconds=best,
                peak_bytes=int(peak), loss=float(info.get("loss", np.nan)),
                success=bool(info.get("success", True)),
                message=str(info.get("message", "ok")),
                n_grad=int(info.get("n_grad", 0)), n_hvp=int(info.get("n_hvp", 0)))


def to_markdown(result: dict) -> str:
    """Markdown tables: one row per (algorithm, K), then the Conv4 rows."""
    conv = result.get("conv4") or []
    tail = "\n\n" + conv_peers.to_markdown(conv, result.get("repeats")) if conv else ""
    if not result["rows"]:
        return tail.lstrip("\n")
    return (
        f"One meta-iteration (meta-gradient of {result['meta_batch']} sinusoid tasks, "
        f"1-40-40-1 tanh MLP) on {result['backend']}; peak memory above the start of the call."
        "\n\n"
        + markdown_table(result["rows"], [
            ("algorithm", "algorithm", None), ("K", "K", str),
            ("seconds", "seconds", lambda v: f"{v:.4f}"),
            ("peak memory", "peak_bytes", format_bytes),
            ("gradients", "n_grad", str), ("HVPs", "n_hvp", str),
            ("ok", "success", lambda v: "yes" if v else "**no**"),
        ])
        + tail
    )


def plot(result: dict, path: str) -> str:
    """PNG: seconds (left) and peak memory (right) per meta-iteration against K."""
    fig, axes = figure(1, 2, size=(5.5, 4.5))
    for name in dict.fromkeys(r["algorithm"] for r in result["rows"]):
        sel = sorted((r for r in result["rows"] if r["algorithm"] == name), key=lambda r: r["K"])
        Ks = [r["K"] for r in sel]
        axes[0, 0].loglog(Ks, [r["seconds"] for r in sel], "o-", label=name)
        axes[0, 1].loglog(Ks, [max(r["peak_bytes"], 1) for r in sel], "o-", label=name)
    for ax, title in ((axes[0, 0], "seconds per meta-iteration"),
                      (axes[0, 1], "peak memory per meta-iteration (bytes)")):
        ax.set_xlabel("inner steps K")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        if result["rows"]:
            ax.legend(fontsize=7)
    fig.suptitle(f"meta-learning algorithms ({result['backend']}, "
                 f"{result['meta_batch']} tasks per meta-batch)")
    return save_figure(fig, path)


def meta_batch_scaling(meta_batches: Sequence[int] = (4, 16, 64), hidden: int = 32,
                       K: int = 5, chunks: Any = "auto", backend: str = "numpy",
                       side: int = 28, seed: int = 0) -> list[dict]:
    """Peak memory and seconds of one Conv4 MAML meta-iteration against the meta-batch size.

    5-way 1-shot tasks with 15 queries per class of ``side × side`` images; ``chunks`` as
    in :meth:`bilevel.meta.algorithms.Specified.meta_gradient` (the default ``"auto"``
    keeps the peak flat in ``T``; ``None`` runs one batch). One timed call and one call
    under the memory tracer per size. Rows: ``{T, chunks, seconds, peak_bytes}``.
    """
    from ..meta import MAML, Conv4

    alg = MAML(Conv4(hidden=hidden, image_size=side), inner_lr=0.4, steps=K)
    theta = alg.init(np.random.default_rng([seed, 1]), backend)
    rows = []
    for T in meta_batches:
        episode = conv4_episode(T, np.random.default_rng([seed, T]), side, backend=backend)
        t0 = time.perf_counter()
        _sync(alg.meta_gradient(theta, episode, chunks=chunks)[0])
        seconds = time.perf_counter() - t0
        _, peak = peak_memory(lambda ep=episode: alg.meta_gradient(theta, ep, chunks=chunks),
                              backend)
        rows.append(dict(T=T, chunks=str(chunks), seconds=seconds, peak_bytes=int(peak)))
    return rows


def _sync(x: Any) -> Any:
    """Wait for the device (a no-op on NumPy)."""
    from ..backend import to_numpy

    return to_numpy(x[:1])
