"""Seconds and peak memory per meta-iteration of each meta-learning algorithm.

One meta-iteration is ``algorithm.meta_gradient(θ, episode)`` on a meta-batch of sinusoid
regression tasks (1-40-40-1 tanh MLP, 10 support and 10 query points per task), for inner
step counts K in the grid. Expected memory per task (see :doc:`/meta`): O(K·n) for MAML and
A-MAML (stored trajectories), O(n) for first-order MAML, Reptile and iMAML, O(p + q) plus
one backbone graph for the memory-reduced method; ANIL stores head iterates only; CML adds
a co-learner. Time is the best of ``repeats`` untraced calls; peak memory comes from one
more call under the tracer (tracemalloc on NumPy, the CuPy pool hook on CuPy).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..outer.driver import progress_bar
from ..registry import spelling
from .report import RowLog, figure, format_bytes, markdown_table, peak_memory, save_figure

__all__ = ["ALGORITHMS", "algorithm", "conv4_episode", "meta_batch_scaling", "plot", "run",
           "to_markdown"]

ALGORITHMS = ("MAML", "FOMAML", "ANIL", "Reptile", "iMAML", "A-MAML", "MemoryReduced", "CML")
"""Row labels, one per algorithm registered under ``"algorithm"`` by :mod:`bilevel.meta`;
``--methods`` accepts any spelling of them (``amaml``, ``memory-reduced``)."""


def _label(name: str) -> str:
    """The label of :data:`ALGORITHMS` that ``name`` spells (:func:`bilevel.registry.spelling`)."""
    for label in ALGORITHMS:
        if spelling(label) == spelling(name):
            return label
    raise ValueError(f"unknown meta-learning algorithm {name!r}; choose from {ALGORITHMS}")
_SIZES = {"quick": dict(K=(2, 8), meta_batch=4, repeats=1),
          "full": dict(K=(5, 20, 80), meta_batch=25, repeats=3)}


def algorithm(name: str, K: int) -> Any:
    """The meta-learning algorithm ``name`` with ``K`` inner steps on the sinusoid MLP."""
    from ..meta import AMAML, ANIL, CML, IMAML, MAML, MLP, MemoryReduced, Reptile

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
    """Time and peak memory of one meta-iteration per (algorithm, K).

    Parameters
    ----------
    quick
        K in (2, 8), 4 tasks, one repeat; otherwise K in (5, 20, 80), 25 tasks, 3 repeats.
    backend
        ``"numpy"`` or ``"cupy"``.
    methods
        Algorithm names among :data:`ALGORITHMS` (default all).
    seed
        Seeds θ and the episode.
    log
        Row log for interrupt/resume (default in memory).
    progress
        progress bar over the rows (only on a terminal).

    Returns
    -------
    dict
        ``rows``: ``{algorithm, K, meta_batch, seconds, peak_bytes, loss, success, message,
        n_grad, n_hvp}``; ``backend``, ``quick``, ``meta_batch``, ``K_grid``.
    """
    from .. import backend as _backend
    from ..meta import Sinusoid

    xp = _backend.module(backend)
    sync = (lambda: xp.cuda.Device().synchronize()) if backend == "cupy" else (lambda: None)
    size = _SIZES["quick" if quick else "full"]
    names = list(ALGORITHMS) if methods is None else [_label(n) for n in methods]
    log = RowLog(None, "meta", {}) if log is None else log
    episode = Sinusoid(backend=backend).sample(size["meta_batch"],
                                               np.random.default_rng([seed, 0]))
    rows = []
    jobs = [(name, K) for name in names for K in size["K"]]
    bar = progress_bar(jobs, desc="bench meta", progress=progress)
    for name, K in bar:
        bar.set_postfix_str(f"{name} K={K}")

        def measure(name: str = name, K: int = K) -> dict:
            alg = algorithm(name, K)
            theta = alg.init(np.random.default_rng([seed, 1]), backend)
            _, info = alg.meta_gradient(theta, episode)  # warm-up; failures stay in info
            sync()
            best = float("inf")
            for _ in range(size["repeats"]):
                t0 = time.perf_counter()
                alg.meta_gradient(theta, episode)
                sync()
                best = min(best, time.perf_counter() - t0)
            _, peak = peak_memory(lambda: alg.meta_gradient(theta, episode), backend)
            return dict(algorithm=name, K=K, meta_batch=size["meta_batch"], seconds=best,
                        peak_bytes=int(peak), loss=float(info.get("loss", np.nan)),
                        success=bool(info.get("success", True)),
                        message=str(info.get("message", "ok")),
                        n_grad=int(info.get("n_grad", 0)), n_hvp=int(info.get("n_hvp", 0)))

        row = log.compute([name, K], measure)
        rows.append({k: v for k, v in row.items() if k != "key"})
    return dict(rows=rows, backend=backend, quick=quick, meta_batch=size["meta_batch"],
                K_grid=list(size["K"]))


def to_markdown(result: dict) -> str:
    """Markdown table: one row per (algorithm, K)."""
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
        ax.legend(fontsize=7)
    fig.suptitle(f"meta-learning algorithms ({result['backend']}, "
                 f"{result['meta_batch']} tasks per meta-batch)")
    return save_figure(fig, path)


def conv4_episode(T: int, rng: np.random.Generator, side: int = 28, ways: int = 5,
                  shots: int = 1, queries: int = 15, backend: str = "numpy") -> Any:
    """A meta-batch of ``T`` random ``ways``-way ``shots``-shot image tasks (float32)."""
    from .. import backend as _backend
    from ..meta import Episode

    def images(n: int) -> np.ndarray:
        return rng.standard_normal((T, n, 1, side, side)).astype(np.float32)

    labels = np.tile(np.arange(ways), (T, 1))
    return Episode(*_backend.to_backend(
        [images(ways * shots), np.repeat(labels, shots, axis=1), images(ways * queries),
         np.repeat(labels, queries, axis=1)], backend))


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
