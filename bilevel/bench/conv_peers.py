"""Conv4 MAML: bilevel against PyTorch eager on the same weights and the same episode.

The workload is one meta-iteration of ``MAML(Conv4(hidden), inner_lr=0.4, steps=K)``:
the meta-gradient of the mean query loss of ``T`` random 5-way 1-shot tasks (15 queries
per class) of ``side × side`` single-channel images, float32. bilevel calls the public
``meta_gradient(θ, episode)``; PyTorch (:func:`bilevel.bench.peer_torch.conv4`) loops over
the tasks with ``create_graph=True`` inner steps, as learn2learn and higher users do.

Time
    The best of ``repeats`` calls after one warm-up call, the frameworks interleaved in
    this process, with one BLAS thread (:mod:`threadpoolctl`, when installed) and one
    PyTorch intra-op thread (:data:`bilevel.bench.peer_torch.THREADS`).
Peak memory (``peak_rss``)
    Measured the same way for every framework, since :mod:`tracemalloc` does not see
    PyTorch's allocator: a fresh Python process per (framework, K), started with
    ``OPENBLAS_NUM_THREADS=OMP_NUM_THREADS=MKL_NUM_THREADS=1``, imports its framework,
    builds the inputs and computes the meta-gradient once (which pages in the
    framework's code and does its one-time set-up: both count in the resident set);
    then it frees what the C heap holds unused (glibc's ``malloc_trim``), resets the
    peak of its resident set to the present size (Linux's ``/proc/self/clear_refs``),
    computes the meta-gradient again and reports the peak resident set (``VmHWM``)
    minus the size before that call. Where those Linux interfaces are missing, the
    peak is ``getrusage``'s ``ru_maxrss`` and the baseline includes earlier peaks.
    bilevel's :mod:`tracemalloc` peak of one call (``peak_bytes``, NumPy's buffers as
    Python sees them) is kept beside it.
"""

from __future__ import annotations

import ctypes
import gc
import importlib
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..backend import to_numpy
from ..meta import MAML, Conv4
from ..outer.memory import measure
from .interleaved import best_times, one_blas_thread, relative_difference
from .report import format_bytes, markdown_table, peak_memory

__all__ = ["FRAMEWORKS", "INNER_LR", "compare", "conv4_case", "conv4_episode",
           "installed_peers", "meta_gradient_fn", "peak_rss", "peer_inputs", "to_markdown"]

FRAMEWORKS = ("bilevel", "torch", "jax")
"""Frameworks :func:`peak_rss` can run; the peers among them need their package."""

INNER_LR = 0.4
"""MAML's inner step on Omniglot."""

PEERS = ("torch",)
"""The peers :func:`installed_peers` looks for (those of ``bilevel bench meta``; JAX, in
``bilevel bench peers`` and accepted by :func:`compare`, is left out for its compile time)."""


def installed_peers() -> list[str]:
    """The peers of :data:`PEERS` whose package is installed."""
    return [p for p in PEERS if importlib.util.find_spec(p) is not None]


_ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def conv4_episode(T: int, rng: np.random.Generator, side: int = 28, ways: int = 5,
                  shots: int = 1, queries: int = 15, backend: str = "numpy",
                  dtype: str = "float32") -> Any:
    """A meta-batch of ``T`` random ``ways``-way ``shots``-shot image tasks."""
    from .. import backend as _backend
    from ..meta import Episode

    def images(n: int) -> np.ndarray:
        return rng.standard_normal((T, n, 1, side, side)).astype(dtype)

    labels = np.tile(np.arange(ways), (T, 1))
    return Episode(*_backend.to_backend(
        [images(ways * shots), np.repeat(labels, shots, axis=1), images(ways * queries),
         np.repeat(labels, queries, axis=1)], backend))


def conv4_case(hidden: int, side: int, T: int, K: int, seed: int = 0,
               dtype: str = "float32", backend: str = "numpy") -> tuple[MAML, Any, Any]:
    """``(MAML(Conv4(hidden), inner_lr=0.4, steps=K), θ, episode)`` of ``T`` tasks."""
    alg = MAML(Conv4(hidden=hidden, image_size=side, dtype=dtype), inner_lr=INNER_LR, steps=K)
    theta = alg.init(np.random.default_rng([seed, 1]), backend)
    episode = conv4_episode(T, np.random.default_rng([seed, 0]), side, backend=backend,
                            dtype=dtype)
    return alg, theta, episode


def peer_inputs(alg: MAML, theta: Any, episode: Any) -> dict:
    """The inputs of a peer's ``conv4`` builder: ``params`` (``(name, array)`` in the
    order of ``θ``), the episode's arrays, ``lr``, ``steps``, ``eps`` and ``pools``."""
    model, theta = alg.model, to_numpy(theta)
    params = [(name, np.asarray(part)) for group in ("backbone", "head")
              for name, part in model._unpack(theta[model.split[group]], group).items()]
    return dict(params=params, **{k: to_numpy(getattr(episode, k)) for k in
                                  ("x_support", "y_support", "x_query", "y_query")},
                lr=alg.inner_lr, steps=alg.steps, eps=model.eps, pools=list(model.pools))


def meta_gradient_fn(framework: str, alg: MAML, theta: Any, episode: Any
                     ) -> Callable[[], np.ndarray]:
    """The meta-gradient of ``framework`` as a function of no arguments (a NumPy array)."""
    if framework == "bilevel":
        return lambda: to_numpy(alg.meta_gradient(theta, episode)[0])
    peer = importlib.import_module(f".peer_{framework}", __package__)
    return peer.conv4(peer_inputs(alg, theta, episode))


def _child(config: str) -> None:
    """In a fresh process: print the peak resident-set growth of the second of two
    meta-gradients (see the module docstring)."""
    cfg = json.loads(config)
    case = conv4_case(cfg["hidden"], cfg["side"], cfg["T"], cfg["K"], cfg["seed"],
                      cfg["dtype"])
    fn = meta_gradient_fn(cfg["framework"], *case)
    fn()  # pages in the framework's code and does its one-time set-up
    _release_free_memory()
    _reset_peak_rss()
    base = _peak_rss_now()
    fn()
    print(json.dumps({"peak_rss": _peak_rss_now() - base}))


def _release_free_memory() -> None:
    """Collect garbage and hand the C heap's free pages back to the system (glibc's
    ``malloc_trim``; a no-op where it is missing)."""
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak_rss() -> None:
    """Lower the process's resident-set peak to its present size (Linux ``clear_refs``),
    so that the peaks of the imports are not taken for the call's; elsewhere a no-op."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def _peak_rss_now() -> int:
    """The process's resident-set peak in bytes: ``VmHWM`` of ``/proc/self/status`` (reset
    by :func:`_reset_peak_rss`) on Linux, else ``getrusage``'s ``ru_maxrss`` (which on Linux
    also holds the peak of the parent process before ``exec``)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(measure(lambda: None, "rss")[1])


def peak_rss(framework: str, hidden: int, side: int, T: int, K: int, seed: int = 0,
             dtype: str = "float32", timeout: float = 600.0) -> int:
    """Peak resident-set growth (bytes) of the ``framework``'s meta-gradient, measured in a
    fresh Python process with one BLAS/OpenMP thread (see the module docstring).

    Cost: one interpreter start, the imports, and two meta-gradients.
    """
    if framework not in FRAMEWORKS:
        raise ValueError(f"unknown framework {framework!r}; choose from {FRAMEWORKS}")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, **_ONE_THREAD)
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    config = json.dumps(dict(framework=framework, hidden=hidden, side=side, T=T, K=K,
                             seed=seed, dtype=dtype))
    code = "import sys; from bilevel.bench.conv_peers import _child; _child(sys.argv[1])"
    done = subprocess.run([sys.executable, "-c", code, config], env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the {framework} memory process failed:\n{done.stderr[-2000:]}")
    return int(json.loads(done.stdout.strip().splitlines()[-1])["peak_rss"])


def compare(hidden: int, side: int, T: int, K: int, *, repeats: int = 3, seed: int = 0,
            peers: Sequence[str] = ("torch",), backend: str = "numpy") -> dict:
    """One Conv4 row: seconds, peak memory and ratios of bilevel and each peer.

    Parameters
    ----------
    hidden, side, T, K
        Channels, image side, tasks per meta-batch, inner steps.
    repeats
        Timed calls per framework (after one warm-up), interleaved; best kept.
    seed
        Seeds θ and the episode.
    peers
        Peer frameworks to run (installed ones only; empty for bilevel alone).
    backend
        bilevel's array backend; on ``"cupy"`` the peers and the resident-set figures are
        skipped (``peak_bytes`` is then the CuPy pool's peak).

    Returns
    -------
    dict
        ``{model, hidden, side, meta_batch, K, seconds: {framework: s}, peak_rss:
        {framework: bytes}, peak_bytes (bilevel's tracemalloc or pool peak), time_ratio:
        {peer: bilevel / peer}, memory_ratio: {peer: bilevel / peer}, agree: {peer: max
        relative difference of the meta-gradient from bilevel's}}``.
    """
    peers = list(peers) if backend == "numpy" else []
    alg, theta, episode = conv4_case(hidden, side, T, K, seed, backend=backend)
    fns = {name: meta_gradient_fn(name, alg, theta, episode) for name in ["bilevel", *peers]}
    with one_blas_thread():
        grads = {name: fn() for name, fn in fns.items()}  # warm-up
        seconds = best_times(fns, repeats)
        peak = peak_memory(fns["bilevel"], backend)[1]
    rss = ({name: peak_rss(name, hidden, side, T, K, seed) for name in fns}
           if backend == "numpy" else {})
    return dict(model="Conv4", hidden=hidden, side=side, meta_batch=T, K=K, seconds=seconds,
                peak_rss=rss, peak_bytes=int(peak),
                time_ratio={p: seconds["bilevel"] / seconds[p] for p in peers},
                memory_ratio={p: rss["bilevel"] / max(rss[p], 1) for p in peers},
                agree={p: relative_difference(grads[p], grads["bilevel"]) for p in peers})


def _seconds(v: float) -> str:
    return f"{v * 1e3:.1f} ms" if v < 1 else f"{v:.2f} s"


def _ratio(v: float) -> str:
    return f"{v:.2f}×"


def to_markdown(rows: Sequence[dict], repeats: int | None = None) -> str:
    """Markdown table of :func:`compare` rows: per K, seconds and peak resident-set growth
    of each framework, the ratios bilevel / peer, bilevel's tracemalloc peak, agreement."""
    if not rows:
        return ""
    r0 = rows[0]
    peers = list(dict.fromkeys(p for r in rows for p in r["time_ratio"]))
    flat = []
    for r in rows:
        item = {"K": r["K"], "bilevel": r["seconds"]["bilevel"],
                "bilevel peak": r["peak_rss"].get("bilevel"), "traced": r["peak_bytes"]}
        for p in peers:
            item.update({p: r["seconds"].get(p), f"{p} peak": r["peak_rss"].get(p),
                         f"time {p}": r["time_ratio"].get(p),
                         f"memory {p}": r["memory_ratio"].get(p), f"agree {p}": r["agree"].get(p)})
        flat.append(item)
    cols = [("K", "K", str), ("bilevel", "bilevel", _seconds)]
    cols += [(p, p, _seconds) for p in peers]
    cols += [(f"time bilevel / {p}", f"time {p}", _ratio) for p in peers]
    cols += [("bilevel peak RSS", "bilevel peak", format_bytes)]
    cols += [(f"{p} peak RSS", f"{p} peak", format_bytes) for p in peers]
    cols += [(f"memory bilevel / {p}", f"memory {p}", _ratio) for p in peers]
    cols += [("bilevel tracemalloc", "traced", format_bytes)]
    cols += [(f"agree {p} (max rel. diff.)", f"agree {p}", lambda v: f"{v:.1e}") for p in peers]
    best = f"best of {repeats} calls" if repeats else "best of the calls"
    missing = "" if peers else " PyTorch not installed: bilevel alone (``pip install torch``)."
    return (
        f"Conv4 MAML against PyTorch eager: one meta-iteration (second order, inner step "
        f"{INNER_LR}), Conv4 with {r0['hidden']} channels, {r0['side']}×{r0['side']} images, "
        f"5-way 1-shot with 15 queries per class, meta-batch {r0['meta_batch']}, float32, "
        f"the same weights and episode; PyTorch loops over the tasks. Seconds: {best} "
        "after a warm-up, the frameworks interleaved, one BLAS and one PyTorch thread. Peak "
        "RSS: growth of the resident set during one call in a fresh process per framework "
        "(after a warm-up call and ``malloc_trim``, the peak reset by ``clear_refs``); "
        "tracemalloc: bilevel's traced peak of one call. Run with ``OPENBLAS_NUM_THREADS=1`` "
        f"for a fair comparison.{missing}\n\n" + markdown_table(flat, cols))
