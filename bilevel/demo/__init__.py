"""``bilevel demo``: every hypergradient method on one problem, and a short meta-training run.

Part 1 — per-feature ridge on the diabetes data (442 patients, 10 standardized features,
300 for training and 142 for validation)::

    g(w, λ) = (1/2N) ‖X w − y‖² + ½ Σ_j e^{λ_j} w_j²,      f(w) = (1/2N_v) ‖X_v w − y_v‖²

has the exact hypergradient (``A = XᵀX/N + diag e^λ``, ``w* = A⁻¹Xᵀy/N``)::

    ∇F(λ) = −e^λ ⊙ w* ⊙ A⁻¹ ∇_w f(w*)

Every method of :func:`bilevel.bench.method_suite` is run from ``w₀ = 0``; the table gives
its relative error ``‖∇̂F − ∇F‖ / ‖∇F‖``, wall-clock time, Hessian-vector products, gradient
count and peak memory (tracemalloc on NumPy, the memory pool on CuPy; measured in a second,
untimed run).

Part 2 — memory against the number of inner steps K on a larger ridge problem (``n = 300``
weights, 4 penalty groups, :func:`bilevel.bench.problems.ridge_problem`): the unrolled
reverse mode stores its K iterates (``O(K·n)``), the flat methods do not (``O(n)``).

Part 3 — sinusoid regression (Finn et al. 2017) with a 1-40-40-1 tanh MLP: MAML (one
inner step) and iMAML (proximal inner problem, implicit gradient by CG) meta-trained with
Adam for the same number of meta-iterations; the learning curve plots the held-out
post-adaptation query loss with 95% intervals.

Output in ``out`` (default ``./bilevel-demo``): ``ridge.json``, ``ridge.md``, ``ridge.png``,
``memory.json``, ``memory.png``, ``meta.json``, ``meta.md``, ``meta.png``, ``report.md``
(legend, takeaways, commands to go further), and the meta-training checkpoints
``meta-<algorithm>.npz``. With ``resume=True`` finished ridge rows and meta-training
progress are kept, so an interrupted demo continues where it stopped.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from typing import Any

from .. import backend as _backend
from ..bench.report import RowLog, format_number, read_rows, write_json, write_text
from ..outer import CheckpointError, CheckpointWarning
from ..outer.usage import output_folder
from .memory import MEMORY_METHODS, memory_markdown, memory_plot, memory_rows
from .meta import checkpoint_path, meta_curves, meta_markdown, meta_plot
from .report import report
from .ridge import diabetes_split, ridge_exact_hypergrad, ridge_markdown, ridge_plot, ridge_rows

__all__ = ["CONFIGS", "MEMORY_METHODS", "diabetes_split", "ridge_exact_hypergrad", "run"]

#: Sizes of the full demo (about two minutes on two cores) and of ``--quick`` (seconds).
CONFIGS: dict[str, dict[str, Any]] = {
    "full": dict(steps=400, lr=0.4, horizon=160.0, flow_steps=400, meta_iterations=300,
                 meta_batch=10, eval_every=50, eval_tasks=100,
                 memory_n=300, memory_K=(25, 100, 200, 400)),
    "quick": dict(steps=20, lr=0.4, horizon=8.0, flow_steps=20, meta_iterations=3,
                  meta_batch=4, eval_every=3, eval_tasks=8,
                  memory_n=100, memory_K=(5, 10, 20)),
}


# ------------------------------------------------------------------ driver
def _saved_curves(path: str, config: dict) -> dict | None:
    """The meta-learning curves saved in ``path`` under ``config``, or None (missing file,
    other settings, or an unreadable file that is then recomputed)."""
    if not os.path.exists(path):
        return None
    try:
        doc = read_rows(path)
    except CheckpointError as err:
        warnings.warn(f"{err}; recomputing it", CheckpointWarning, stacklevel=3)
        return None
    return doc.get("curves") if doc.get("config") == config else None


def run(
    out: str = "bilevel-demo",
    *,
    quick: bool = False,
    backend: str = "numpy",
    seed: int = 0,
    resume: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> dict[str, str]:
    """Run the demo and write its files into ``out``; returns ``{name: path}``.

    Parameters
    ----------
    out
        Output folder (created).
    quick
        Tiny sizes (a few seconds; used by the tests) instead of the two-minute default.
    backend
        ``"numpy"`` or ``"cupy"`` (raises :class:`bilevel.backend.BackendError` where CuPy
        cannot run).
    seed
        Seeds the data split, λ, the task streams and the initializations.
    resume
        Keep the ridge rows and meta-training checkpoints of an earlier run with the same
        settings.
    progress
        progress bars (only on a terminal).
    echo
        Where the summary lines go.
    """
    _backend.module(backend)  # clear BackendError before any work
    cfg = CONFIGS["quick" if quick else "full"]
    output_folder(out, "out")
    os.makedirs(out, exist_ok=True)
    t0 = time.perf_counter()
    config = dict(quick=quick, backend=backend, seed=seed)
    log = RowLog(os.path.join(out, "ridge.json"), "demo-ridge", config, resume=resume)
    rows = ridge_rows(cfg, backend, seed, log, progress)
    paths = {"ridge.json": log.path}
    ridge_md = ridge_markdown(rows, cfg)
    paths["ridge.md"] = write_text(os.path.join(out, "ridge.md"), ridge_md)
    paths["ridge.png"] = ridge_plot(rows, os.path.join(out, "ridge.png"))
    echo(ridge_md)

    mem_log = RowLog(os.path.join(out, "memory.json"), "demo-memory", config, resume=resume)
    mem_rows = memory_rows(cfg, backend, mem_log, progress)
    paths["memory.json"] = mem_log.path
    memory_md = memory_markdown(mem_rows, cfg)
    paths["memory.png"] = memory_plot(mem_rows, cfg["memory_n"],
                                       os.path.join(out, "memory.png"))
    echo(memory_md)

    meta_json = os.path.join(out, "meta.json")
    saved = _saved_curves(meta_json, config) if resume else None
    if saved is not None:
        curves = saved
    else:
        curves = meta_curves(cfg, backend, seed, out, resume, progress)
        write_json(meta_json, {"config": config, "curves": curves})
    paths["meta.json"] = meta_json
    meta_md = meta_markdown(curves, cfg)
    paths["meta.md"] = write_text(os.path.join(out, "meta.md"), meta_md)
    paths["meta.png"] = meta_plot(curves, os.path.join(out, "meta.png"))
    for name in curves:
        if os.path.exists(checkpoint_path(out, name)):
            paths[os.path.basename(checkpoint_path(out, name))] = checkpoint_path(out, name)
    echo(meta_md)

    elapsed = time.perf_counter() - t0
    text = report(ridge_md, memory_md, meta_md, rows, mem_rows, curves,
                   f"backend {backend}, seed {seed}, {'quick' if quick else 'full'} size, "
                   f"{format_number(elapsed)} s")
    paths["report.md"] = write_text(os.path.join(out, "report.md"), text)
    for path in list(paths.values()):  # the row logs' previous versions (see RowLog)
        if os.path.exists(path + ".prev"):
            paths[os.path.basename(path) + ".prev"] = path + ".prev"
    echo(f"wrote {', '.join(sorted(paths))} to {os.path.abspath(out)} ({elapsed:.1f} s)")
    return paths
