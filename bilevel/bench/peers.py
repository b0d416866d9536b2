"""bilevel against PyTorch eager and JAX jit on the same hypergradients, in one process.

Rows (float64, CPU, the same inputs for every framework):

``MAML K=k``
    Sinusoid regression, 25 tasks × 10 support and 10 query points, ReLU MLP 1-40-40-1,
    inner step 0.003, full second order (reverse mode through ``k`` inner steps), the
    meta-gradient of the mean query loss. bilevel runs its analytic MLP oracles
    (:mod:`bilevel.meta.model_oracles`, ``fast_oracles=True``) and, as the reference and
    the "before" of the speed-up, autograd's (``bilevel (autograd)``).
``MAML K=800, checkpointed``
    The same meta-gradient at ``K = 800`` by ``Reverse(checkpoints=c)`` with ``c`` from a
    15 MiB budget for the held states (:func:`bilevel.recompute.checkpoints_for_memory`:
    binomial checkpointing, each step advanced at most twice), against the full ``Reverse()``
    that stores every iterate (``bilevel (stored)``), interleaved. The peers store their
    whole graph (they appear in the ``MAML K=800`` row).
``hyper-cleaning``
    Data hyper-cleaning (:func:`bilevel.hpo.problems.hyper_cleaning`, 1000 examples of 30
    features, 5 classes, 30 % of the labels flipped): ``Reverse()`` through 500 gradient
    steps, the gradient in the 1000 example weights.
``Conv4 MAML K=k``
    Conv4 (64 channels), 28×28 Omniglot-sized images, 8 random 5-way 1-shot tasks with 15
    queries per class, inner step 0.4, full second order, float32 (the model's dtype; the
    agreement is then ~1e-4): :func:`bilevel.bench.conv_peers.conv4_case`. PyTorch loops
    over the tasks (:func:`bilevel.bench.peer_torch.conv4`), JAX unrolls them in ``jit``
    (:func:`bilevel.bench.peer_jax.conv4`). Peak memory against PyTorch, measured alike
    for both, is in ``bilevel bench meta --methods Conv4``.
``ridge CG100``
    Ridge with one log-penalty per feature (:func:`bilevel.hpo.problems.ridge`, 2000 × 1000):
    the implicit hypergradient with 100 conjugate-gradient steps at the exact solution
    (BLAS-bound: two matrix-vector products per step).

The peers (:mod:`bilevel.bench.peer_torch`, :mod:`bilevel.bench.peer_jax`) run when
installed (``pip install bilevel[peers]``) and when they have the row's builder, and are
skipped otherwise. Every framework runs on one core (:func:`one_core`). Times are the best of
at least ``repeats`` calls after one warm-up call (JAX compiles there), and of more calls
until each variant has run for a second in all (a millisecond row gets hundreds of
chances to run undisturbed, as with ``timeit``), the variants interleaved within each
round so that the machine's load hits them alike; ``agree`` is the largest
relative difference of a peer's hypergradient from bilevel's (checksums). Peak memory is
tracemalloc's, for bilevel only (the peers allocate outside Python's allocator).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from ..dynamics import GradientDescent
from ..hpo.problems import hyper_cleaning, ridge
from ..linalg import CG
from ..meta import MAML, MLP, Sinusoid
from ..methods import Reverse
from ..methods.implicit import implicit_vjp
from ..outer.driver import progress_bar
from ..recompute import checkpoints_for_memory
from . import quiet_hypergrad
from .conv_peers import conv4_case, meta_gradient_fn, peer_inputs
from .interleaved import best_times, relative_difference
from .report import RowLog, figure, format_bytes, markdown_table, peak_memory, save_figure

__all__ = ["PEERS", "available_peers", "measure", "plot", "run", "to_markdown", "workloads"]

PEERS = ("torch", "jax")
"""Peer frameworks, each measured when its package is importable."""

_SIZES = {
    "quick": dict(K=(1, 2), tasks=4, checkpointed=(12, 4 * 4 * 1761 * 8),
                  cleaning=(60, 8, 3, 10), ridge=(80, 40, 10), conv4=((1,), 8, 12, 2),
                  repeats=1, min_seconds=0.0),
    "full": dict(K=(1, 5, 25, 800), tasks=25, checkpointed=(800, 15 * 2**20),
                 cleaning=(1000, 30, 5, 500), ridge=(2000, 1000, 100),
                 conv4=((1, 5), 64, 28, 8), repeats=3, min_seconds=1.0),
}
_AUTOGRAD_MAX_K = 25  # the autograd reference is skipped above this (minutes at K = 800)


def available_peers() -> list[str]:
    """The peers of :data:`PEERS` whose package is installed."""
    return [p for p in PEERS if importlib.util.find_spec(p) is not None]


def _peer(name: str) -> Any:
    """The module of peer ``name`` (imports the framework)."""
    return importlib.import_module(f".peer_{name}", __package__)


# ------------------------------------------------------------------ workloads
def _maml(K: int, tasks: int, seed: int) -> tuple[dict, dict[str, Callable[[], Any]]]:
    """Inputs of the peers and bilevel's variants for MAML with ``K`` inner steps."""
    model = MLP((1, 40, 40, 1), activation="relu")
    ep = Sinusoid(n_shot=10, n_query=10).sample(tasks, np.random.default_rng([seed, 0]))
    alg = MAML(model, inner_lr=0.003, steps=K)
    theta = alg.init(np.random.default_rng([seed, 1]))
    spec = alg.specification()
    variants = {"bilevel": replace(spec, fast_oracles=True)}
    if K <= _AUTOGRAD_MAX_K:
        variants["bilevel (autograd)"] = replace(spec, fast_oracles=False)

    def meta_gradient(s: Any) -> Callable[[], Any]:
        return lambda: alg._hypergradient(s, theta, ep).grad.mean(axis=0)

    shapes = [s for g in ("backbone", "head") for _, s in model._layout[g]]
    parts, start = [], 0
    for s in shapes:
        parts.append(theta[start:start + math.prod(s)].reshape(s))
        start += math.prod(s)
    data = dict(x_support=ep.x_support, y_support=ep.y_support, x_query=ep.x_query,
                y_query=ep.y_query, layers=list(zip(parts[::2], parts[1::2], strict=True)),
                lr=0.003, steps=K)
    return data, {k: meta_gradient(s) for k, s in variants.items()}


def _maml_checkpointed(K: int, tasks: int, budget: int, seed: int
                       ) -> tuple[dict, dict[str, Callable[[], Any]]]:
    """MAML with ``K`` inner steps by binomial checkpointing within ``budget`` bytes of
    held states, and by the full :class:`Reverse` (``bilevel (stored)``)."""
    model = MLP((1, 40, 40, 1), activation="relu")
    ep = Sinusoid(n_shot=10, n_query=10).sample(tasks, np.random.default_rng([seed, 0]))
    alg = MAML(model, inner_lr=0.003, steps=K)
    theta = alg.init(np.random.default_rng([seed, 1]))
    spec = replace(alg.specification(), fast_oracles=True)
    c = checkpoints_for_memory(K, tasks * theta.nbytes, budget)
    variants = {"bilevel": replace(spec, method=Reverse(checkpoints=c)), "bilevel (stored)": spec}
    return {}, {k: (lambda s=s: alg._hypergradient(s, theta, ep).grad.mean(axis=0))
                for k, s in variants.items()}


def _cleaning(N: int, d: int, C: int, K: int, seed: int
              ) -> tuple[dict, dict[str, Callable[[], Any]]]:
    """Hyper-cleaning with ``N`` examples of ``d`` features, ``C`` classes, ``K`` steps."""
    rng = np.random.default_rng([seed, 2])
    W = rng.standard_normal((d, C))
    X = rng.standard_normal((N, d)) / math.sqrt(d)
    Xv = rng.standard_normal((N // 2, d)) / math.sqrt(d)
    y, yv = np.argmax(X @ W, axis=1), np.argmax(Xv @ W, axis=1)
    flip = rng.random(N) < 0.3
    y = np.where(flip, rng.integers(0, C, N), y)
    l2, lr = 1e-3, 0.5
    lam, w0 = np.zeros(N), np.zeros((d + 1) * C)
    dyn, method = GradientDescent(lr, K), Reverse()
    ones = np.ones((N, 1))
    data = dict(X=np.concatenate([X, ones], axis=1), y=y,
                X_val=np.concatenate([Xv, ones[: N // 2]], axis=1), y_val=yv,
                w0=w0, lam=lam, lr=lr, steps=K, l2=l2, classes=C)

    def variant(fast: bool) -> Callable[[], Any]:
        problem = hyper_cleaning(X, y, Xv, yv, n_classes=C, l2=l2, fast_oracles=fast)
        return lambda: quiet_hypergrad(problem, lam, w0, dyn, method).grad

    return data, {"bilevel": variant(True), "bilevel (autograd)": variant(False)}


def _ridge(N: int, d: int, iters: int, seed: int) -> tuple[dict, dict[str, Callable[[], Any]]]:
    """Per-feature ridge ``N × d``: the implicit hypergradient with ``iters`` CG steps."""
    rng = np.random.default_rng([seed, 3])
    X, Xv = rng.standard_normal((N, d)), rng.standard_normal((N, d))
    wt = rng.standard_normal(d)
    y, yv = X @ wt + rng.standard_normal(N), Xv @ wt + rng.standard_normal(N)
    lam = np.full(d, -1.0)
    w = np.linalg.solve(X.T @ X / N + np.diag(np.exp(lam)), X.T @ y / N)
    problem = ridge(X, y, Xv, yv)
    solver = CG(tol=0.0, maxiter=iters)
    data = dict(X=X, y=y, X_val=Xv, y_val=yv, w=w, lam=lam, iters=iters)
    return data, {"bilevel": lambda: implicit_vjp(problem, w, lam, solver).grad}


def _conv4(K: int, hidden: int, side: int, T: int, seed: int
           ) -> tuple[dict, dict[str, Callable[[], Any]]]:
    """Conv4 MAML with ``K`` inner steps on ``T`` tasks of ``side × side`` images."""
    alg, theta, episode = conv4_case(hidden, side, T, K, seed)
    return (peer_inputs(alg, theta, episode),
            {"bilevel": meta_gradient_fn("bilevel", alg, theta, episode)})


def workloads(quick: bool = False, seed: int = 0) -> list[tuple[str, str, tuple]]:
    """``(row label, peer builder name, arguments of the bilevel builder)`` per row."""
    size = _SIZES["quick" if quick else "full"]
    rows = [(f"MAML K={K}", "maml", (K, size["tasks"], seed)) for K in size["K"]]
    K, budget = size["checkpointed"]
    rows.append((f"MAML K={K}, checkpointed",
                 "maml_checkpointed", (K, size["tasks"], budget, seed)))
    N, d, C, K = size["cleaning"]
    rows.append((f"hyper-cleaning, {K} GD steps", "cleaning", (N, d, C, K, seed)))
    N, d, iters = size["ridge"]
    rows.append((f"ridge CG{iters}", "ridge", (N, d, iters, seed)))
    Ks, hidden, side, T = size["conv4"]
    rows += [(f"Conv4 MAML K={K}", "conv4", (K, hidden, side, T, seed)) for K in Ks]
    return rows


_BUILDERS = {"maml": _maml, "maml_checkpointed": _maml_checkpointed, "cleaning": _cleaning,
             "ridge": _ridge, "conv4": _conv4}


# ------------------------------------------------------------------ measurement
@contextlib.contextmanager
def one_core() -> Iterator[None]:
    """Run the calling thread, and the threads it starts, on one CPU (Linux; elsewhere a
    no-op). bilevel's BLAS (``OPENBLAS_NUM_THREADS=1``) and PyTorch (one intra-op thread)
    run on one core already; JAX's XLA starts its own thread pool on every core whatever
    its flags, which halved its time on the BLAS-bound ridge row of a two-core machine and
    measured cores rather than code."""
    if not hasattr(os, "sched_getaffinity"):
        yield
        return
    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cores)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, cores)



def measure(label: str, kind: str, args: tuple, peers: Sequence[str], repeats: int,
            min_seconds: float = 0.0) -> dict:
    """One row: seconds of every variant (best of at least ``repeats`` interleaved rounds,
    more until each variant ran ``min_seconds``), bilevel's peak memory, agreement of the
    peers."""
    data, fns = _BUILDERS[kind](*args)
    for p in peers if data else ():  # a row without peer inputs is bilevel's alone
        builder = getattr(_peer(p), kind, None)  # a peer may lack a row
        if builder is not None:
            fns[p] = builder(data)
    grads = {name: np.asarray(fn()) for name, fn in fns.items()}  # warm-up (JAX compiles)
    seconds = best_times(fns, repeats, min_seconds)
    peaks = {name: int(peak_memory(fns[name])[1]) for name in fns if name.startswith("bilevel")}
    ref = grads["bilevel"]
    return dict(row=label, seconds=seconds, peak_bytes=peaks,
                agree={k: relative_difference(g, ref) for k, g in grads.items() if k != "bilevel"},
                checksum={k: float(np.sum(g)) for k, g in grads.items()})


def run(quick: bool = False, backend: str = "numpy", methods: Sequence[str] | None = None, *,
        seed: int = 0, log: RowLog | None = None, progress: bool = False,
        rows: Sequence[str] | None = None) -> dict:
    """Every row of :func:`workloads` with bilevel and the installed peers.

    Parameters
    ----------
    quick
        Small sizes (seconds in all), one repeat.
    backend
        ``"numpy"`` only (the peers run on the CPU).
    methods
        Frameworks to compare with among :data:`PEERS` (default: every installed one;
        one that is not installed is skipped and listed under ``skipped``).
    seed
        Seeds the data and the parameters.
    log
        Row log for interrupt/resume (default in memory).
    progress
        progress bar over the rows (only on a terminal).
    rows
        Run only the rows whose label starts with one of these (default: all).

    Returns
    -------
    dict
        ``rows``: ``{row, seconds: {variant: s}, peak_bytes: {variant: bytes}, agree:
        {variant: max rel. difference from bilevel}, checksum: {variant: Σ grad}}``;
        ``peers``, ``skipped``, ``quick``, ``backend``.
    """
    if backend != "numpy":
        raise ValueError(f"bench peers runs on the CPU (backend 'numpy'), got {backend!r}")
    wanted = list(PEERS) if methods is None else [m.lower() for m in methods]
    unknown = sorted(set(wanted) - set(PEERS))
    if unknown:
        raise ValueError(f"unknown peer(s) {unknown}; choose from {list(PEERS)}")
    installed = available_peers()
    peers = [p for p in wanted if p in installed]
    log = RowLog(None, "peers", {}) if log is None else log
    size = _SIZES["quick" if quick else "full"]
    repeats, min_seconds = size["repeats"], size["min_seconds"]
    selected = [w for w in workloads(quick, seed)
                if rows is None or any(w[0].startswith(r) for r in rows)]
    out = []
    with one_core():
        for label, kind, args in progress_bar(selected, desc="bench peers", progress=progress):
            row = log.compute([label], lambda la=label, k=kind, a=args:
                              measure(la, k, a, peers, repeats, min_seconds))
            out.append({k: v for k, v in row.items() if k != "key"})
    return dict(rows=out, peers=peers, skipped=[p for p in wanted if p not in installed],
                quick=quick, backend=backend)


# ------------------------------------------------------------------ report
def _ratio(row: dict, peer: str) -> str:
    s = row["seconds"]
    return f"{s['bilevel'] / s[peer]:.2f}×" if peer in s else "—"


def _secs(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v * 1e3:.1f} ms" if v < 1 else f"{v:.2f} s"


def to_markdown(result: dict) -> str:
    """Markdown table: seconds per framework, ratios, bilevel's peak memory, agreement."""
    peers = result["peers"]
    cols = [("row", "row", None), ("bilevel", "bilevel", _secs),
            ("bilevel (autograd)", "bilevel (autograd)", _secs),
            ("bilevel (stored)", "bilevel (stored)", _secs)]
    flat = []
    for r in result["rows"]:
        s = r["seconds"]
        item = {"row": r["row"], "bilevel": s["bilevel"], "bilevel (autograd)":
                s.get("bilevel (autograd)"), "bilevel (stored)": s.get("bilevel (stored)"),
                "bilevel / stored": _ratio(r, "bilevel (stored)"),
                "peak": r["peak_bytes"]["bilevel"],
                "agree": max(r["agree"].values(), default=0.0)}
        for p in peers:
            item[p], item[f"bilevel / {p}"] = s.get(p), _ratio(r, p)
        flat.append(item)
    cols += [(p, p, _secs) for p in peers] + [(f"bilevel / {p}", f"bilevel / {p}", None)
                                              for p in peers]
    cols += [("bilevel / stored", "bilevel / stored", None),
             ("bilevel peak", "peak", format_bytes),
             ("agree (max rel. diff.)", "agree", lambda v: f"{v:.1e}")]
    skipped = result.get("skipped") or []
    note = (f" Not installed, skipped: {', '.join(skipped)} (``pip install bilevel[peers]``)."
            if skipped else "")
    return ("bilevel (analytic oracles where the problem has them), bilevel through "
            "autograd, bilevel's full Reverse storing every iterate (beside the checkpointed "
            "row), PyTorch eager and JAX jit on the same float64 hypergradients (Conv4 rows: "
            "float32), one process, variants interleaved; best of at least three calls, "
            f"and of as many as fit in a second of each variant.{note}\n\n"
            + markdown_table(flat, cols))


def plot(result: dict, path: str) -> str:
    """PNG: seconds per row and framework (log scale)."""
    fig, axes = figure(1, 1, size=(8.0, 4.5))
    ax = axes[0, 0]
    rows = result["rows"]
    variants = ["bilevel", "bilevel (autograd)", "bilevel (stored)"] + list(result["peers"])
    width = 0.8 / len(variants)
    for i, v in enumerate(variants):
        xs = [j + i * width for j, r in enumerate(rows) if v in r["seconds"]]
        ys = [r["seconds"][v] for r in rows if v in r["seconds"]]
        ax.bar(xs, ys, width, label=v)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(rows))])
    ax.set_xticklabels([r["row"] for r in rows], rotation=20, fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("seconds")
    ax.legend(fontsize=7)
    ax.set_title("bilevel and its peers (float64, CPU)")
    return save_figure(fig, path)

