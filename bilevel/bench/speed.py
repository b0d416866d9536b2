"""Time of a hypergradient relative to the inner solve it differentiates.

Three measurements:

``methods``
    For each problem and method, ``ratio = t(hypergrad) / t(inner solve alone)``: the
    hypergradient includes its own inner solve, so 1 is free differentiation and reverse
    mode is expected near 2–4 (one HVP ≈ 2–3 gradients per step).
``oracles``
    Per problem, the time of one Hessian-vector product over one inner gradient, for a fresh
    ``inner_hvp`` and for a product on a traced ``linearize`` (the trace paid once).
``primitives``
    Per-primitive overhead of :mod:`bilevel.numpy` against autograd.numpy and MLP
    gradient/loss and HVP/gradient ratios, from :func:`bilevel.bench.primitives.run`.

Problems are those of :mod:`bilevel.bench.problems` (ridge with group penalties, n = 100,
m = 4; a tanh MLP, n = 321, m = 2). Times are the best of ``repeats`` runs (synchronized
on CuPy). Each finished row goes to the :class:`~bilevel.bench.report.RowLog` at once.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..backend import namespace
from ..dynamics import run as run_dynamics
from ..outer.driver import progress_bar
from . import method_suite, quiet_hypergrad
from .problems import PROBLEMS
from .report import RowLog, figure, format_number, markdown_table, save_figure

__all__ = ["plot", "run", "to_markdown"]

_SIZES = {"quick": dict(steps=20, repeats=2), "full": dict(steps=200, repeats=3)}


def _best(fn: Callable[[], Any], repeats: int, sync: Callable[[], None]) -> float:
    """Best wall-clock seconds of ``fn()`` over ``repeats`` runs after one warm-up."""
    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def _sync(backend: str) -> Callable[[], None]:
    if backend == "cupy":
        import cupy

        return cupy.cuda.Device().synchronize
    return lambda: None


def _labels(suite: dict, methods: Sequence[str] | None) -> list[str]:
    """Labels of ``suite`` to run; labels that no problem of this run offers are an error
    (``Forward`` and ``Implicit(Direct)`` exist for some problems only)."""
    if methods is None:
        return list(suite)
    optional = ("Forward", "Implicit(Direct)")
    unknown = [lb for lb in methods if lb not in suite and lb not in optional
               and not lb.startswith("Reverse(truncate")]
    if unknown:
        raise ValueError(f"unknown method label(s) {unknown}; choose from {list(suite)}")
    return [lb for lb in methods if lb in suite]


def _method_row(built: tuple, pname: str, label: str, dynamics: Any, method: Any, K: int,
                repeats: int, sync: Callable[[], None]) -> dict:
    """Time of the hypergradient over the time of its inner solve alone."""
    problem, lam, w0, _ = built
    t_inner = _best(lambda: run_dynamics(problem, dynamics, w0, lam), repeats, sync)
    res = quiet_hypergrad(problem, lam, w0, dynamics, method)
    t_hg = _best(lambda: quiet_hypergrad(problem, lam, w0, dynamics, method), repeats, sync)
    return dict(problem=pname, method=label, K=K, seconds=t_hg, inner_seconds=t_inner,
                ratio=t_hg / t_inner, n_hvp=int(res.n_hvp), n_grad=int(res.n_grad),
                success=bool(res.success), message=str(res.message))


def _oracle_row(built: tuple, pname: str, repeats: int, sync: Callable[[], None]) -> dict:
    """Time of one HVP over one inner gradient, fresh and on a traced ``linearize``."""
    problem, lam, w0, _ = built
    xp = namespace(w0)
    rng = np.random.default_rng(0)
    w = w0 + xp.asarray(0.1 * rng.standard_normal(tuple(w0.shape)))
    v = xp.asarray(rng.standard_normal(tuple(w0.shape)))
    reps = 5 * repeats
    t_g = _best(lambda: problem.inner_grad(w, lam), reps, sync)
    t_h = _best(lambda: problem.inner_hvp(w, lam, v), reps, sync)
    lin = problem.linearize(w, lam)
    t_l = _best(lambda: lin.hvp(v), reps, sync)
    return dict(problem=pname, grad_s=t_g, hvp_s=t_h, hvp_over_grad=t_h / t_g,
                linearized_hvp_s=t_l, linearized_hvp_over_grad=t_l / t_g)


def _jobs(problems: Sequence[str], methods: Sequence[str] | None, backend: str, quick: bool,
          primitives: bool) -> list[tuple[tuple, Callable[[], dict]]]:
    """``(row key, row function)`` of every row of the run, in order."""
    bad = [p for p in problems if p not in PROBLEMS]
    if bad:
        raise ValueError(f"problems must be among {list(PROBLEMS)}, got {bad}")
    sync = _sync(backend)
    K, repeats = _SIZES["quick" if quick else "full"].values()
    jobs: list[tuple[tuple, Callable[[], dict]]] = []
    for pname in problems:
        built = PROBLEMS[pname](backend)
        n = int(built[2].shape[-1])
        suite = method_suite(K, built[3], direct=n <= 400, forward=pname == "ridge")
        for label in _labels(suite, methods):
            jobs.append((("methods", pname, label), functools.partial(
                _method_row, built, pname, label, *suite[label], K, repeats, sync)))
        jobs.append((("oracles", pname), functools.partial(_oracle_row, built, pname,
                                                              repeats, sync)))
    if primitives:
        from . import primitives as prim

        jobs.append((("primitives",), lambda: {"result": prim.run(quick, backend)}))
    return jobs


def run(
    quick: bool = False,
    backend: str = "numpy",
    methods: Sequence[str] | None = None,
    *,
    log: RowLog | None = None,
    problems: Sequence[str] = ("ridge", "mlp"),
    primitives: bool = True,
    progress: bool = False,
) -> dict:
    """Measure the three speed tables; rows already in ``log`` are reused, not re-run.

    Parameters
    ----------
    quick
        K = 20 inner steps and 2 repeats (seconds) instead of K = 200 and 3 repeats.
    backend
        ``"numpy"`` or ``"cupy"``.
    methods
        Labels of :func:`bilevel.bench.method_suite` (default: all; ``Forward`` and
        ``Implicit(Direct)`` only where they apply).
    log
        Row log for interrupt/resume (default: an in-memory log that writes nothing).
    problems
        Among ``"ridge"`` and ``"mlp"``.
    primitives
        Include the :mod:`bilevel.bench.primitives` table.
    progress
        progress bar over the rows (only on a terminal).

    Returns
    -------
    dict
        ``methods``: rows ``{problem, method, K, seconds, inner_seconds, ratio, n_hvp,
        n_grad, success}``; ``oracles``: rows ``{problem, grad_s, hvp_s, hvp_over_grad,
        linearized_hvp_s, linearized_hvp_over_grad}``; ``primitives``: the result of
        :func:`bilevel.bench.primitives.run` (or None); ``backend``, ``quick``.
    """
    K = _SIZES["quick" if quick else "full"]["steps"]
    jobs = _jobs(problems, methods, backend, quick, primitives)
    log = RowLog(None, "speed", {}) if log is None else log
    out: dict[str, Any] = {"backend": backend, "quick": quick, "K": K, "methods": [],
                           "oracles": [], "primitives": None}
    bar = progress_bar(jobs, desc="bench speed", progress=progress)
    for key, fn in bar:
        bar.set_postfix_str("/".join(key[1:]))
        row = log.compute(key, fn)
        if key[0] == "primitives":
            out["primitives"] = row["result"]
        else:
            out[key[0]].append({k: v for k, v in row.items() if k != "key"})
    return out


def to_markdown(result: dict) -> str:
    """Markdown tables of the three measurements."""
    parts = [
        f"Backend {result['backend']}, K = {result['K']} inner steps. `ratio` = time of the "
        "hypergradient (inner solve included) / time of the inner solve alone.\n\n",
        markdown_table(result["methods"], [
            ("problem", "problem", None), ("method", "method", None),
            ("hypergradient (s)", "seconds", lambda v: f"{v:.4f}"),
            ("inner solve (s)", "inner_seconds", lambda v: f"{v:.4f}"),
            ("ratio", "ratio", lambda v: f"{v:.2f}"),
            ("HVPs", "n_hvp", str), ("gradients", "n_grad", str),
            ("ok", "success", lambda v: "yes" if v else "**no**"),
        ]),
        "\nOne Hessian-vector product over one inner gradient (fresh, and on a traced "
        "`linearize`):\n\n",
        markdown_table(result["oracles"], [
            ("problem", "problem", None),
            ("gradient (s)", "grad_s", format_number),
            ("HVP (s)", "hvp_s", format_number),
            ("HVP / gradient", "hvp_over_grad", lambda v: f"{v:.2f}"),
            ("linearized HVP / gradient", "linearized_hvp_over_grad", lambda v: f"{v:.2f}"),
        ]),
    ]
    prim = result.get("primitives")
    if prim:
        rows = [dict(name=k, **v) for k, v in prim["primitives"].items()]
        parts += [
            "\n`bilevel.numpy` / autograd.numpy time per primitive on an 8×8 array "
            "(below 1: bnp faster):\n\n",
            markdown_table(rows, [("primitive", "name", None),
                                  ("forward ratio", "forward_ratio", format_number),
                                  ("gradient ratio", "grad_ratio", format_number)]),
            "\ntanh MLP (bnp): gradient / loss and HVP / gradient time, and bnp / "
            "autograd.numpy gradient time:\n\n",
            markdown_table([dict(size=k, **v) for k, v in prim["mlp"].items()], [
                ("MLP", "size", None), ("parameters", "params", str),
                ("grad / loss", "grad_over_loss", format_number),
                ("HVP / grad", "hvp_over_grad", format_number),
                ("bnp / autograd (grad)", "grad_ratio_vs_autograd", format_number),
            ]),
        ]
    return "".join(parts)


def plot(result: dict, path: str) -> str:
    """PNG: hypergradient/inner-solve time ratio per method (one panel per problem) and the
    per-primitive bnp/autograd ratios. Returns ``path``."""
    names = list(dict.fromkeys(r["problem"] for r in result["methods"]))
    prim = result.get("primitives")
    ncols = len(names) + (1 if prim else 0)
    fig, axes = figure(1, max(ncols, 1), size=(5.0, 4.5))
    for j, pname in enumerate(names):
        ax = axes[0, j]
        rows = [r for r in result["methods"] if r["problem"] == pname]
        y = np.arange(len(rows))
        ax.barh(y, [r["ratio"] for r in rows],
                color=["tab:blue" if r["success"] else "tab:red" for r in rows])
        ax.set_yticks(y)
        ax.set_yticklabels([r["method"] for r in rows], fontsize=8)
        ax.invert_yaxis()
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_xscale("log")
        ax.set_title(f"{pname}: t(hypergradient) / t(inner solve)")
        ax.grid(True, axis="x", alpha=0.3)
    if prim:
        ax = axes[0, len(names)]
        names_p = list(prim["primitives"])
        y = np.arange(len(names_p))
        fwd = [prim["primitives"][k].get("forward_ratio") or np.nan for k in names_p]
        grd = [prim["primitives"][k].get("grad_ratio") or np.nan for k in names_p]
        ax.barh(y - 0.2, fwd, height=0.4, label="forward")
        ax.barh(y + 0.2, grd, height=0.4, label="gradient")
        ax.set_yticks(y)
        ax.set_yticklabels(names_p, fontsize=8)
        ax.invert_yaxis()
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_title("bilevel.numpy / autograd.numpy time")
        ax.legend(fontsize=8)
    fig.suptitle(f"bilevel speed benchmark ({result['backend']}, K = {result['K']})")
    return save_figure(fig, path)
