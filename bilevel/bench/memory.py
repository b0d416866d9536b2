"""Peak memory and time of each hypergradient method against the number of inner steps K.

The claim this benchmark measures (DESIGN principle 7): full reverse mode stores every
iterate, so its peak memory grows like ``O(K·n)``; checkpointed reverse holds
``O(log K)`` states, truncated reverse ``O(T)``, forward mode ``O(n·m)``, and the
implicit, historyless and reconstructing-adjoint methods ``O(n)`` — independent of K.

Two problems:

``ridge``
    Ridge regression with ``m = 4`` group log-penalties,
    ``g(w, λ) = ½‖Xw − y‖² + ½ Σ_j e^{λ_{G(j)}} w_j²`` and ``f = ½‖X_v w − y_v‖²``, with
    hand-written oracles (no autodiff tape): the stored iterates are the only memory that
    can grow with K, so the slopes are clean. Forward mode runs here (few hyperparameters).
``mlp``
    A tanh MLP regression (8 → 128 → 1, ``n = 1281``) with per-layer log-L2 penalties
    (``m = 2``), differentiated by autograd through :mod:`bilevel.numpy`; each oracle
    call holds an autodiff trace while it runs (``Act``), so the constant part is larger.

Measurement: each (problem, method, K) cell runs twice, first untraced for the wall-clock
``seconds``, then under the memory tracer for ``peak_bytes`` (the tracer slows NumPy
code several-fold, so its run is not timed). On NumPy the tracer is :mod:`tracemalloc`
(``peak − current`` at the start of the call; NumPy reports its data buffers to it). On
CuPy it is a :class:`cupy.cuda.MemoryHook` on the default memory pool that adds the bytes of
each pool ``malloc`` and subtracts each ``free``: the peak of pool memory in use during the
call above what was in use before (``cupy.get_default_memory_pool().used_bytes()`` moves
the same way, but exposes no peak); host memory is not counted there.

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
import gc
import math
import time
import tracemalloc
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .. import methods as _methods
from ..api import HypergradWarning, hypergrad
from ..backend import module as backend_module
from ..checkpoint import default_checkpoints
from ..dynamics import GradientDescent, GradientFlow
from ..problem import BilevelProblem, NonFiniteError

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


# --------------------------------------------------------------------------- problems


def _data(xp: Any, rng: np.random.Generator, shape: tuple[int, ...], scale: float = 1.0) -> Any:
    return xp.asarray(scale * rng.standard_normal(shape), dtype=xp.float64)


def ridge_problem(
    backend: str = "numpy", n: int = 100, m: int = 4, seed: int = 0
) -> tuple[BilevelProblem, Any, Any, float]:
    """Group-penalized ridge regression with closed-form oracles.

    ``g(w, λ) = ½‖Xw − y‖² + ½ Σ_j e^{λ_{G(j)}} w_j²``, ``f(w) = ½‖X_v w − y_v‖²`` with
    ``X`` of shape ``(2n, n)`` scaled to ``‖X‖₂ ≈ 1`` and ``G`` assigning feature ``j`` to
    group ``j mod m``. Oracles: ``∇_w g = Xᵀ(Xw − y) + d ⊙ w`` with ``d = e^{λ_G}``,
    ``H v = Xᵀ X v + d ⊙ v``, ``Mᵀu = Gᵀ(d ⊙ w ⊙ u)``, ``M e = (G (e^λ ⊙ e)) ⊙ w``.
    Cost per oracle: two matrix–vector products with ``X`` (``O(n²)``).

    Returns
    -------
    problem, lam, w0, lr
        The problem, λ = 0, w₀ = 0 and a stable step ``1 / L`` with ``L`` the largest
        Hessian eigenvalue bound.
    """
    xp = backend_module(backend)
    rng = np.random.default_rng(seed)
    N = 2 * n
    Xn = rng.standard_normal((N, n)) / math.sqrt(N) / 3.0
    X, Xv = xp.asarray(Xn), _data(xp, rng, (N, n), 1.0 / math.sqrt(N) / 3.0)
    y, yv = _data(xp, rng, (N,)), _data(xp, rng, (N,))
    G = xp.asarray(np.eye(m)[np.arange(n) % m])  # (n, m) one-hot group membership

    def penalty(lam: Any) -> Any:
        return xp.exp(lam) @ G.T

    def g(w, lam):
        r = X @ w - y
        return 0.5 * xp.sum(r * r) + 0.5 * xp.sum(penalty(lam) * w * w)

    def f(w, lam):
        r = Xv @ w - yv
        return 0.5 * xp.sum(r * r)

    oracles = {
        "inner_grad": lambda w, lam, data: X.T @ (X @ w - y) + penalty(lam) * w,
        "inner_hvp": lambda w, lam, v, data: X.T @ (X @ v) + penalty(lam) * v,
        "inner_mixed_vjp": lambda w, lam, u, data: (penalty(lam) * w * u) @ G,
        "inner_mixed_jvp": lambda w, lam, e, data: ((xp.exp(lam) * e) @ G.T) * w,
        "outer_grads": lambda w, lam, data: (Xv.T @ (Xv @ w - yv), xp.zeros_like(lam)),
    }
    problem = BilevelProblem(g, f, oracles=oracles, name="ridge")
    L = float(np.linalg.norm(Xn, 2) ** 2) + 1.0
    return problem, xp.zeros(m, dtype=xp.float64), xp.zeros(n, dtype=xp.float64), 1.0 / L


def mlp_problem(
    backend: str = "numpy", n_in: int = 8, width: int = 128, n_data: int = 32, seed: int = 0
) -> tuple[BilevelProblem, Any, Any, float]:
    """Tanh MLP regression with per-layer log-L2 penalties λ ∈ R², autograd oracles.

    ``g(w, λ) = mean((net(w; X) − y)²) + ½ (e^{λ₀}‖(W₁, b₁)‖² + e^{λ₁}‖(W₂, b₂)‖²)``,
    ``f(w) = mean((net(w; X_v) − y_v)²)``, ``net(w; x) = W₂ tanh(W₁x + b₁) + b₂``.
    ``n = n_in·width + 2·width + 1`` (1281 with the defaults). Built on
    :mod:`bilevel.numpy`, so it runs on NumPy and CuPy.

    Returns
    -------
    problem, lam, w0, lr
        The problem, λ = (0, 0), a seeded w₀ and the step 0.05.
    """
    import bilevel.numpy as bnp

    xp = backend_module(backend)
    rng = np.random.default_rng(seed)
    X, Xv = _data(xp, rng, (n_data, n_in)), _data(xp, rng, (n_data, n_in))
    y, yv = _data(xp, rng, (n_data,)), _data(xp, rng, (n_data,))
    s1, s2 = n_in * width, n_in * width + width

    def net(w, x):
        W1 = bnp.reshape(w[:s1], (n_in, width))
        hidden = bnp.tanh(bnp.matmul(x, W1) + w[s1:s2])
        return bnp.matmul(hidden, w[s2 : s2 + width]) + w[s2 + width]

    def g(w, lam):
        r = net(w, X) - y
        reg = bnp.exp(lam[0]) * bnp.sum(w[:s2] ** 2) + bnp.exp(lam[1]) * bnp.sum(w[s2:] ** 2)
        return bnp.mean(r * r) + 0.5 * reg

    def f(w, lam):
        r = net(w, Xv) - yv
        return bnp.mean(r * r)

    n = s2 + width + 1
    w0 = _data(xp, rng, (n,), 1.0 / math.sqrt(n_in))
    lam = xp.asarray([0.0, 0.0], dtype=xp.float64)
    return BilevelProblem(g, f, name="mlp"), lam, w0, 0.05


PROBLEMS: dict[str, Callable[..., tuple[BilevelProblem, Any, Any, float]]] = {
    "ridge": ridge_problem,
    "mlp": mlp_problem,
}

# --------------------------------------------------------------------------- methods

def _gd(method: Any, K: int, lr: float) -> tuple[Any, Any]:
    return method, GradientDescent(lr, K)


HORIZON = 1.0


def _flow(method: Any, K: int, lr: float) -> tuple[Any, Any]:
    return method, GradientFlow(HORIZON, K, scheme="rk4")


METHODS: dict[str, tuple[str, Callable[[Any, int, float], tuple[Any, Any]], bool]] = {
    "Reverse": ("Reverse", lambda cls, K, lr: _gd(cls(), K, lr), False),
    "Reverse(checkpoints)": (
        "Reverse",
        lambda cls, K, lr: _gd(cls(checkpoints=default_checkpoints(K)), K, lr),
        False,
    ),
    f"Reverse(truncate={TRUNCATE})": (
        "Reverse",
        lambda cls, K, lr: _gd(cls(truncate=TRUNCATE), K, lr),
        False,
    ),
    "Forward": ("Forward", lambda cls, K, lr: _gd(cls(), K, lr), True),
    "Implicit": ("Implicit", lambda cls, K, lr: _gd(cls(inner_tol=None), K, lr), False),
    "Historyless": ("Historyless", lambda cls, K, lr: _gd(cls(), K, lr), False),
    "Adjoint(checkpoint)": (
        "Adjoint",
        lambda cls, K, lr: _flow(cls(trajectory="checkpoint"), K, lr),
        False,
    ),
    "Adjoint(reconstruct)": (
        "Adjoint",
        lambda cls, K, lr: _flow(cls(trajectory="reconstruct"), K, lr),
        False,
    ),
}
"""Benchmarked methods: label → (class in :mod:`bilevel.methods`, factory, forward-mode?).

Checkpointed reverse uses ``c = ⌈log₂K⌉ + 1`` snapshots. The adjoint rows integrate the
gradient flow with RK4 over a fixed horizon ``T = HORIZON`` (``h = T/K``): the
backward reconstruction amplifies errors like ``e^{λ_max(H)·T}``, so a horizon growing
with K would only measure its failure. Forward mode runs
only on problems with few hyperparameters (the ridge problem)."""


def default_methods() -> list[str]:
    """Labels of :data:`METHODS` whose class :mod:`bilevel.methods` provides."""
    return [label for label, (cls, _, _) in METHODS.items() if hasattr(_methods, cls)]


# --------------------------------------------------------------------------- measuring


class _CupyPeakHook:
    """Track the peak of CuPy memory-pool bytes in use (pool malloc minus pool free)."""

    def __init__(self) -> None:
        import cupy

        class Hook(cupy.cuda.MemoryHook):
            name = "bilevel_peak"

            def __init__(hook) -> None:
                hook.current = 0
                hook.peak = 0

            def malloc_postprocess(hook, device_id, size, mem_size, mem_ptr, pmem_id):
                hook.current += mem_size
                hook.peak = max(hook.peak, hook.current)

            def free_postprocess(hook, device_id, mem_size, mem_ptr, pmem_id):
                hook.current -= mem_size

        self.hook = Hook()


def peak_memory(fn: Callable[[], Any], backend: str = "numpy") -> tuple[Any, int]:
    """Call ``fn()`` and return ``(its result, peak bytes allocated above the start)``.

    NumPy: :mod:`tracemalloc` (host allocations, NumPy buffers included). CuPy: the peak of
    the default memory pool's bytes in use, through a :class:`cupy.cuda.MemoryHook`.
    """
    gc.collect()
    if backend == "cupy":
        import cupy

        tracker = _CupyPeakHook().hook
        cupy.cuda.Device().synchronize()
        with tracker:
            out = fn()
            cupy.cuda.Device().synchronize()
        return out, int(tracker.peak)
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    start = tracemalloc.get_traced_memory()[0]
    try:
        out = fn()
        peak = tracemalloc.get_traced_memory()[1] - start
    finally:
        if not was_tracing:
            tracemalloc.stop()
    return out, int(peak)


def _call(problem: BilevelProblem, lam: Any, w0: Any, inner: Any, method: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HypergradWarning)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            try:
                return hypergrad(problem, lam, w0, dynamics=inner, method=method)
            except (NonFiniteError, FloatingPointError) as err:
                return {"success": False, "message": f"non-finite: {err}", "n_hvp": 0}


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
        Labels of :data:`METHODS`; default: every one whose class exists
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
    if backend not in ("numpy", "cupy"):
        raise ValueError(f"backend must be 'numpy' or 'cupy', got {backend!r}")
    labels = default_methods() if methods is None else list(methods)
    unknown = [lb for lb in labels if lb not in METHODS]
    if unknown:
        raise ValueError(f"unknown method label(s) {unknown}; choose from {list(METHODS)}")
    missing = [lb for lb in labels if not hasattr(_methods, METHODS[lb][0])]
    if missing:
        raise ValueError(f"method(s) {missing} are not available in bilevel.methods")
    bad = [p for p in problems if p not in PROBLEMS]
    if bad:
        raise ValueError(f"unknown problem(s) {bad}; choose from {list(PROBLEMS)}")
    grid = tuple(K_grid) if K_grid is not None else (K_GRID_QUICK if quick else K_GRID)
    if not grid or any(int(K) != K or K < 1 for K in grid):
        raise ValueError(f"K_grid must hold positive integers, got {grid!r}")
    budget = float(budget_s) if budget_s is not None else (
        BUDGET_QUICK_S if quick else BUDGET_S
    )

    built = {name: PROBLEMS[name](backend) for name in problems}
    pairs = [
        (pname, label)
        for pname in problems
        for label in labels
        if not METHODS[label][2] or pname == "ridge"
    ]
    t_start = time.perf_counter()
    rows: list[dict] = []
    skipped: list[dict] = []
    problem_start: dict[str, float] = {}
    for i, (pname, label) in enumerate(pairs):
        problem, lam, w0, lr = built[pname]
        cls_name, factory, _ = METHODS[label]
        cls = getattr(_methods, cls_name)
        # each problem gets an equal part of what is left; within it, pairs share adaptively
        problems_left = len(dict.fromkeys(p for p, _ in pairs[i:]))
        spent_here = time.perf_counter() - problem_start.setdefault(pname, time.perf_counter())
        total_left = max(budget - (time.perf_counter() - t_start) + spent_here, 0.0)
        remaining = max(total_left / problems_left - spent_here, 0.0)
        left = sum(1 for p, _ in pairs[i:] if p == pname)
        # between one and 2.5 fair shares, keeping MIN_PAIR_S for each later pair when it
        # can (cheap pairs finish early and leave their share to the rest)
        fair = remaining / left
        pair_budget = min(2.5 * fair, max(remaining - MIN_PAIR_S * (left - 1), fair))
        t_pair = time.perf_counter()
        method, inner = factory(cls, 2, lr)
        _call(problem, lam, w0, inner, method)  # warm-up: imports, first traces
        per_step, growth = None, 1.2
        for K in sorted(grid):
            method, inner = factory(cls, K, lr)
            used = time.perf_counter() - t_pair
            if per_step is not None:
                predicted = per_step * K * growth
                if used + predicted > pair_budget:
                    skipped.append(
                        dict(problem=pname, method=label, K=K, predicted_seconds=predicted)
                    )
                    continue
            cell = functools.partial(_call, problem, lam, w0, inner, method)
            res, seconds = _timed(cell, backend)
            t_mem = time.perf_counter()
            _, peak = peak_memory(cell, backend)
            traced = time.perf_counter() - t_mem
            now = (seconds + traced) / K
            # per-step cost may rise with K (checkpoint recomputation): extrapolate its trend
            growth = 1.2 if per_step is None else min(max(now / per_step, 1.0), 2.0)
            per_step = now
            row = dict(
                problem=pname,
                method=label,
                K=int(K),
                peak_bytes=peak,
                seconds=float(seconds),
                n_hvp=int(res.get("n_hvp", 0)),
                n_grad=int(res.get("n_grad", 0)),
                success=bool(res.get("success", False)),
                message=str(res.get("message", "")),
            )
            rows.append(row)
            if progress is not None:
                progress(
                    f"{pname:6s} {label:22s} K={K:6d} peak={peak / 1e6:9.3f} MB "
                    f"time={seconds:8.3f} s"
                )
    slopes: dict[str, dict[str, float]] = {}
    for pname in problems:
        for label in labels:
            sel = [r for r in rows if r["problem"] == pname and r["method"] == label]
            if sel:
                slopes.setdefault(pname, {})[label] = _slope(sel)
    return dict(
        rows=rows,
        slopes=slopes,
        skipped=skipped,
        problems={
            name: {"n": int(b[2].shape[-1]), "m": int(math.prod(b[1].shape))}
            for name, b in built.items()
        },
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


def _fmt_bytes(b: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if b >= scale:
            return f"{b / scale:.2f} {unit}"
    return f"{int(b)} B"


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
                    cells.append(f"{_fmt_bytes(r['peak_bytes'])} / {r['seconds']:.2f} s{flag}")
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
