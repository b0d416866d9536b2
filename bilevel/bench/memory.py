"""Peak memory and time of each hypergradient method against the number of inner steps K.

The claim this benchmark measures: full reverse mode stores every iterate, so its peak
memory grows like ``O(K·n)``; checkpointed reverse holds
``O(log K)`` states, truncated reverse ``O(T)``, forward mode ``O(n·m)``, and the
implicit, historyless and reconstructing-adjoint methods ``O(n)`` — independent of K.

Two problems (:mod:`bilevel.bench.problems`): ``ridge`` with hand-written oracles, where
the stored iterates are the only memory that can grow with K, so the slopes are clean
(forward mode runs here: few hyperparameters), and ``mlp`` (8 → 128 → 1, ``n = 1281``),
differentiated by autograd, whose constant part is larger.

Measurement: each (problem, method, K) cell runs twice, first untraced for the wall-clock
``seconds``, then under the memory tracer for ``peak_bytes`` (the tracer slows NumPy
code several-fold, so its run is not timed). The tracer is the library's one memory
meter, :func:`bilevel.outer.memory.peak_memory`: :mod:`tracemalloc` on NumPy, the CuPy
memory pool's bytes in use on CuPy (host memory is not counted there).

Time budget: the autograd MLP costs milliseconds per inner step, so the full grid up to
K = 10,000 does not fit every method in a few minutes. The run gives each problem an equal part of
``budget_s`` (default :data:`BUDGET_S` seconds for the whole call) and shares it among that
problem's methods (at least its fair share and at most 2.5 fair shares each, keeping
``MIN_PAIR_S`` seconds for every later method when it can), predicts each next cell's cost
from the previous one, and skips cells that would not fit; skipped cells are listed with
their predicted time in ``result["skipped"]``, never silently dropped. The ridge grid for
all eight methods costs about 85 s on two cores (the traced run is most of it), so the
default leaves the MLP the rest. ``bilevel bench memory`` calls :func:`run` once per
(problem, method) with its share of a total ``--budget`` (see :mod:`bilevel.cli`).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..dynamics import GradientDescent, GradientFlow
from ..outer.memory import peak_memory
from ..recompute import default_checkpoints
from . import method_class, method_names, quiet_hypergrad
from .problems import PROBLEMS, mlp_problem, ridge_problem
from .report import format_bytes

__all__ = [
    "K_GRID",
    "K_GRID_QUICK",
    "METHODS",
    "default_methods",
    "mlp_problem",
    "peak_memory",
    "plot",
    "ridge_problem",
    "run",
    "to_markdown",
]

K_GRID = (10, 30, 100, 300, 1000, 3000, 10000)
K_GRID_QUICK = (10, 30, 100)
TRUNCATE = 10
MIN_PAIR_S = 4.0
BUDGET_S = 240.0
BUDGET_QUICK_S = 60.0
HORIZON = 1.0


def _gd(method: Any, K: int, lr: float) -> tuple[Any, Any]:
    return method, GradientDescent(lr, K)


def _flow(method: Any, K: int, lr: float) -> tuple[Any, Any]:
    return method, GradientFlow(HORIZON, K, scheme="rk4")


METHODS: dict[str, tuple[str, Callable[[Any, int, float], tuple[Any, Any]], bool]] = {
    "Reverse": ("reverse", lambda cls, K, lr: _gd(cls(), K, lr), False),
    "Reverse(checkpoints)": (
        "reverse",
        lambda cls, K, lr: _gd(cls(checkpoints=default_checkpoints(K)), K, lr),
        False,
    ),
    f"Reverse(truncate={TRUNCATE})": (
        "reverse",
        lambda cls, K, lr: _gd(cls(truncate=TRUNCATE), K, lr),
        False,
    ),
    "Forward": ("forward", lambda cls, K, lr: _gd(cls(), K, lr), True),
    "Implicit": ("implicit", lambda cls, K, lr: _gd(cls(inner_tol=None), K, lr), False),
    "Historyless": ("historyless", lambda cls, K, lr: _gd(cls(), K, lr), False),
    "Adjoint(checkpoint)": (
        "adjoint",
        lambda cls, K, lr: _flow(cls(trajectory="checkpoint"), K, lr),
        False,
    ),
    "Adjoint(reconstruct)": (
        "adjoint",
        lambda cls, K, lr: _flow(cls(trajectory="reconstruct"), K, lr),
        False,
    ),
}
"""Benchmarked methods: label → (registered method name, factory, forward-mode?).

Checkpointed reverse uses ``c = ⌈log₂K⌉ + 1`` snapshots. The adjoint rows integrate the
gradient flow with RK4 over a fixed horizon ``T = HORIZON`` (``h = T/K``): the
backward reconstruction amplifies errors like ``e^{λ_max(H)·T}``, so a horizon growing
with K would only measure its failure. Forward mode runs
only on problems with few hyperparameters (the ridge problem)."""


def default_methods() -> list[str]:
    """Labels of :data:`METHODS` whose method is available (:func:`bilevel.bench.method_names`)."""
    available = set(method_names())
    return [label for label, (name, _, _) in METHODS.items() if name in available]


# --------------------------------------------------------------------------- measuring


def _timed(fn: Callable[[], Any], backend: str) -> tuple[Any, float]:
    sync = None
    if backend == "cupy":
        import cupy

        sync = cupy.cuda.Device().synchronize
        sync()
    t0 = time.perf_counter()
    out = fn()
    if sync is not None:
        sync()
    return out, time.perf_counter() - t0


def _slope(rows: list[dict]) -> float:
    """Least-squares slope of log peak vs log K over the upper half of the K values (≥ 2)."""
    pts = sorted((r["K"], r["peak_bytes"]) for r in rows if r["peak_bytes"] > 0)
    if len(pts) < 2:
        return float("nan")
    pts = pts[-max(2, (len(pts) + 1) // 2):]
    x = np.log([p[0] for p in pts])
    y = np.log([p[1] for p in pts])
    return float(np.polyfit(x, y, 1)[0])


def _checked(quick: bool, backend: str, methods: Sequence[str] | None,
             problems: Sequence[str], K_grid: Sequence[int] | None,
             budget_s: float | None) -> tuple[list[str], tuple[int, ...], float]:
    """Validated ``(labels, grid, budget)`` of :func:`run`."""
    if backend not in ("numpy", "cupy"):
        raise ValueError(f"backend must be 'numpy' or 'cupy', got {backend!r}")
    labels = default_methods() if methods is None else list(methods)
    unknown = [lb for lb in labels if lb not in METHODS]
    if unknown:
        raise ValueError(f"unknown method label(s) {unknown}; choose from {list(METHODS)}")
    missing = [lb for lb in labels if METHODS[lb][0] not in method_names()]
    if missing:
        raise ValueError(f"method(s) {missing} are not available in bilevel.methods")
    bad = [p for p in problems if p not in PROBLEMS]
    if bad:
        raise ValueError(f"unknown problem(s) {bad}; choose from {list(PROBLEMS)}")
    grid = tuple(K_grid) if K_grid is not None else (K_GRID_QUICK if quick else K_GRID)
    if not grid or any(int(K) != K or K < 1 for K in grid):
        raise ValueError(f"K_grid must hold positive integers, got {grid!r}")
    default = BUDGET_QUICK_S if quick else BUDGET_S
    return labels, grid, float(budget_s) if budget_s is not None else default


def _pair_budget(total_left: float, spent_here: float, problems_left: int, left: int) -> float:
    """Seconds for the next (problem, method) pair.

    Each problem gets an equal part of what is left (``total_left``, counting what this
    problem has spent); within it, a pair gets between one and 2.5 fair shares, keeping
    :data:`MIN_PAIR_S` for each later pair when it can (cheap pairs finish early and leave
    their share to the rest).
    """
    remaining = max(total_left / problems_left - spent_here, 0.0)
    fair = remaining / left
    return min(2.5 * fair, max(remaining - MIN_PAIR_S * (left - 1), fair))


def _cell(built: tuple, pname: str, label: str, K: int, backend: str) -> tuple[dict, float]:
    """One measured cell (timed run, then traced run) and its wall-clock seconds."""
    problem, lam, w0, lr = built
    name, factory, _ = METHODS[label]
    method, dynamics = factory(method_class(name), K, lr)
    cell = functools.partial(quiet_hypergrad, problem, lam, w0, dynamics, method)
    t0 = time.perf_counter()
    res, seconds = _timed(cell, backend)
    _, peak = peak_memory(cell, backend)
    row = dict(problem=pname, method=label, K=int(K), peak_bytes=peak, seconds=float(seconds),
               n_hvp=int(res.get("n_hvp", 0)), n_grad=int(res.get("n_grad", 0)),
               success=bool(res.get("success", False)), message=str(res.get("message", "")))
    return row, time.perf_counter() - t0


def _measure_pair(built: tuple, pname: str, label: str, grid: Sequence[int], budget: float,
                  backend: str, progress: Callable[[str], None] | None) -> tuple[list, list]:
    """Rows of one (problem, method) pair over the K grid within ``budget`` seconds, and
    the cells skipped because their predicted time (from the previous cell's cost per step,
    extrapolating its growth with K) would not fit."""
    problem, lam, w0, lr = built
    name, factory, _ = METHODS[label]
    t_pair, per_step, growth = time.perf_counter(), None, 1.2
    method, dynamics = factory(method_class(name), 2, lr)
    quiet_hypergrad(problem, lam, w0, dynamics, method)  # warm-up: imports, first traces
    rows, skipped = [], []
    for K in sorted(grid):
        predicted = None if per_step is None else per_step * K * growth
        if predicted is not None and time.perf_counter() - t_pair + predicted > budget:
            skipped.append(dict(problem=pname, method=label, K=K, predicted_seconds=predicted))
            continue
        row, spent = _cell(built, pname, label, K, backend)
        now = spent / K
        growth = 1.2 if per_step is None else min(max(now / per_step, 1.0), 2.0)
        per_step = now
        rows.append(row)
        if progress is not None:
            progress(f"{pname:6s} {label:22s} K={K:6d} peak={row['peak_bytes'] / 1e6:9.3f} MB "
                     f"time={row['seconds']:8.3f} s")
    return rows, skipped


def run(
    quick: bool = False,
    backend: str = "numpy",
    methods: Sequence[str] | None = None,
    *,
    problems: Sequence[str] = ("ridge", "mlp"),
    K_grid: Sequence[int] | None = None,
    budget_s: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Measure peak memory and time of each method against K on each problem.

    Parameters
    ----------
    quick : bool
        K in (10, 30, 100) instead of (10, 30, 100, 300, 1000, 3000, 10000).
    backend : {"numpy", "cupy"}
        Array backend of the problems (memory via tracemalloc or the CuPy pool).
    methods : sequence of str, optional
        Labels of :data:`METHODS`; default: every one whose method exists
        (:func:`default_methods`).
    problems : sequence of str
        Among ``"ridge"`` and ``"mlp"``.
    K_grid : sequence of int, optional
        Overrides the grid chosen by ``quick``.
    budget_s : float, optional
        Wall-clock budget for this call (default :data:`BUDGET_S` = 240 s, quick
        :data:`BUDGET_QUICK_S` = 60 s); cells predicted not to fit are skipped and listed.
        The first cell of each (problem, method) always runs.
    progress : callable, optional
        Called with a line of text after each cell.

    Returns
    -------
    dict
        ``rows``: one dict per measured cell with ``problem, method, K, peak_bytes,
        seconds, n_hvp, n_grad, success, message``; ``slopes``: ``{problem: {method:
        log-log slope of peak memory vs K}}`` (≈ 1 for O(K), ≈ 0 for K-independent);
        ``skipped``: cells left out for time, with ``predicted_seconds``; ``problems``:
        ``{name: {"n": ..., "m": ...}}``; ``K_grid``, ``backend``, ``memory_measure``,
        ``total_seconds``.
    """
    labels, grid, budget = _checked(quick, backend, methods, problems, K_grid, budget_s)
    built = {name: PROBLEMS[name](backend) for name in problems}
    pairs = [(p, lb) for p in problems for lb in labels if not METHODS[lb][2] or p == "ridge"]
    t_start = time.perf_counter()
    rows: list[dict] = []
    skipped: list[dict] = []
    problem_start: dict[str, float] = {}
    for i, (pname, label) in enumerate(pairs):
        spent_here = time.perf_counter() - problem_start.setdefault(pname, time.perf_counter())
        total_left = max(budget - (time.perf_counter() - t_start) + spent_here, 0.0)
        share = _pair_budget(total_left, spent_here,
                             problems_left=len(dict.fromkeys(p for p, _ in pairs[i:])),
                             left=sum(1 for p, _ in pairs[i:] if p == pname))
        got, left_out = _measure_pair(built[pname], pname, label, grid, share, backend,
                                      progress)
        rows += got
        skipped += left_out
    slopes: dict[str, dict[str, float]] = {}
    for pname, label in pairs:
        sel = [r for r in rows if r["problem"] == pname and r["method"] == label]
        if sel:
            slopes.setdefault(pname, {})[label] = _slope(sel)
    return dict(
        rows=rows,
        slopes=slopes,
        skipped=skipped,
        problems={name: {"n": int(b[2].shape[-1]), "m": int(math.prod(b[1].shape))}
                  for name, b in built.items()},
        K_grid=list(grid),
        backend=backend,
        memory_measure=(
            "tracemalloc peak above the start of the call"
            if backend == "numpy"
            else "CuPy default memory pool: peak bytes in use above the start (MemoryHook)"
        ),
        total_seconds=time.perf_counter() - t_start,
    )


# --------------------------------------------------------------------------- reporting


def to_markdown(result: dict) -> str:
    """Markdown tables: peak memory and time per (problem, method) against K, then slopes."""
    lines = [
        f"Peak memory ({result['memory_measure']}, backend {result['backend']}) and wall-clock "
        "time of one hypergradient against the number of inner steps K.",
        "",
    ]
    grid = result["K_grid"]
    for pname, info in result["problems"].items():
        lines.append(f"### {pname} (n = {info['n']}, m = {info['m']})")
        lines.append("")
        lines.append("| method | " + " | ".join(f"K={K}" for K in grid) + " | slope |")
        lines.append("|---" * (len(grid) + 2) + "|")
        labels = list(dict.fromkeys(r["method"] for r in result["rows"] if r["problem"] == pname))
        for label in labels:
            cells = []
            for K in grid:
                hit = [r for r in result["rows"]
                       if r["problem"] == pname and r["method"] == label and r["K"] == K]
                if hit:
                    r = hit[0]
                    flag = "" if r["success"] else " (failed)"
                    cells.append(f"{format_bytes(r['peak_bytes'])} / {r['seconds']:.2f} s{flag}")
                else:
                    cells.append("skipped")
            slope = result["slopes"].get(pname, {}).get(label, float("nan"))
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {slope:.2f} |")
        lines.append("")
    lines.append(
        "Cells: peak memory / seconds. Slope: least-squares slope of log(peak) against log(K) "
        "over the larger half of the measured K (1 = linear growth, 0 = independent of K)."
    )
    if result["skipped"]:
        lines.append("")
        lines.append(
            "Skipped for the time budget: "
            + ", ".join(
                f"{s['problem']}/{s['method']} K={s['K']} (~{s['predicted_seconds']:.0f} s)"
                for s in result["skipped"]
            )
        )
    return "\n".join(lines) + "\n"


def plot(result: dict, path: str) -> str:
    """Write a PNG: log-log peak memory (top) and time (bottom) against K, one column per
    problem. Returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["problems"])
    fig, axes = plt.subplots(2, len(names), figsize=(6 * len(names), 8), squeeze=False)
    for j, pname in enumerate(names):
        labels = list(dict.fromkeys(r["method"] for r in result["rows"] if r["problem"] == pname))
        for label in labels:
            sel = sorted(
                (r for r in result["rows"] if r["problem"] == pname and r["method"] == label),
                key=lambda r: r["K"],
            )
            Ks = [r["K"] for r in sel]
            slope = result["slopes"].get(pname, {}).get(label, float("nan"))
            axes[0, j].loglog(Ks, [max(r["peak_bytes"], 1) for r in sel], "o-",
                              label=f"{label} (slope {slope:.2f})")
            axes[1, j].loglog(Ks, [max(r["seconds"], 1e-6) for r in sel], "o-", label=label)
        info = result["problems"][pname]
        axes[0, j].set_title(f"{pname} (n={info['n']}, m={info['m']}): peak memory")
        axes[0, j].set_ylabel("peak bytes")
        axes[1, j].set_title(f"{pname}: time per hypergradient")
        axes[1, j].set_ylabel("seconds")
        for ax in axes[:, j]:
            ax.set_xlabel("inner steps K")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle(f"bilevel memory benchmark ({result['backend']})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


if __name__ == "__main__":  # pragma: no cover
    import sys

    out = run(quick="--quick" in sys.argv, progress=print)
    print(to_markdown(out))
    print(f"total {out['total_seconds']:.1f} s")
    plot(out, "memory.png")
