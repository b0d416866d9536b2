"""Part 2 of the demo: peak memory and time against the inner steps K, unrolled vs flat."""

from __future__ import annotations

import functools
import time
from typing import Any

from ..bench import method_class, quiet_hypergrad
from ..bench.memory import METHODS as MEMORY_FACTORIES
from ..bench.problems import ridge_problem
from ..bench.report import (
    RowLog,
    figure,
    format_bytes,
    markdown_table,
    peak_memory,
    save_figure,
)
from ..outer.driver import progress_bar
from .ridge import sync

#: The methods of the memory-versus-K figure: unrolled (memory grows with K) and flat.
MEMORY_METHODS = {
    "Reverse": "unrolled: stores all K iterates, O(K·n)",
    "Reverse(checkpoints)": "unrolled: ⌈log₂K⌉+1 snapshots, O(n log K), recomputes",
    "Forward": "flat: carries dw/dλ, O(n·m) (m hyperparameters)",
    "Implicit": "flat: one linear solve at w_K, O(n)",
    "Historyless": "flat: reverses the steps without storing them, O(n)",
}



# ------------------------------------------------------------------ part 2: memory vs K
def memory_rows(cfg: dict[str, Any], backend: str, log: RowLog,
                progress: bool = True) -> list[dict]:
    """Peak memory and time of :data:`MEMORY_METHODS` for each K of ``cfg["memory_K"]``.

    The problem is :func:`bilevel.bench.problems.ridge_problem` with ``n =
    cfg["memory_n"]`` (hand-written oracles, so the stored iterates are the only memory
    that can grow with K). Time: one untraced run; memory: a second, traced run.
    """
    problem, lam, w0, lr = ridge_problem(backend, n=cfg["memory_n"])
    jobs = [(label, K) for label in MEMORY_METHODS for K in cfg["memory_K"]]
    rows = []
    for label, K in progress_bar(jobs, desc="memory vs K", progress=progress):

        def measure(label: str = label, K: int = K) -> dict:
            name, factory, _ = MEMORY_FACTORIES[label]
            method, dynamics = factory(method_class(name), K, lr)
            cell = functools.partial(quiet_hypergrad, problem, lam, w0, dynamics, method)
            sync(backend)
            t0 = time.perf_counter()
            res = cell()
            sync(backend)
            seconds = time.perf_counter() - t0
            _, peak = peak_memory(cell, backend)
            return dict(method=label, K=int(K), peak_bytes=int(peak), seconds=seconds,
                        n_hvp=int(res.n_hvp), success=bool(res.success))

        rows.append(log.compute([label, int(K)], measure))
    return rows


def memory_plot(rows: list[dict], n: int, path: str) -> str:
    fig, axes = figure(1, 2, size=(6.0, 4.5))
    for label, what in MEMORY_METHODS.items():
        sel = sorted((r for r in rows if r["method"] == label), key=lambda r: r["K"])
        K = [r["K"] for r in sel]
        unrolled = what.startswith("unrolled")
        style = dict(marker="o", linestyle="-" if unrolled else "--", label=label)
        axes[0, 0].plot(K, [r["peak_bytes"] / 1e6 for r in sel], **style)
        axes[0, 1].plot(K, [r["seconds"] for r in sel], **style)
    for ax, ylabel in ((axes[0, 0], "peak memory (MB, linear axis)"),
                       (axes[0, 1], "time per hypergradient (s, linear axis)")):
        ax.set_xlabel("inner steps K")
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    axes[0, 0].legend(fontsize=8, title="solid: unrolled, dashed: flat", title_fontsize=8)
    fig.suptitle(f"ridge, n = {n} weights: memory grows with K only for unrolled methods")
    return save_figure(fig, path)


def memory_markdown(rows: list[dict], cfg: dict[str, Any]) -> str:
    Ks = list(cfg["memory_K"])
    table = [dict(method=label, what=what,
                  **{f"K{K}": next((r["peak_bytes"] for r in rows
                                    if r["method"] == label and r["K"] == K), None) for K in Ks})
             for label, what in MEMORY_METHODS.items()]
    head = (f"Peak memory of one hypergradient against the inner steps K, ridge with "
            f"n = {cfg['memory_n']} weights and 4 penalty groups (memory above the "
            "problem's data).\n\n")
    return head + markdown_table(table, [("method", "method", None), ("memory", "what", None)]
                                 + [(f"K = {K}", f"K{K}", format_bytes) for K in Ks])
