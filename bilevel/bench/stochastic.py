"""Stochastic bilevel methods on the three families of Benchopt's ``benchmark_bilevel``.

For each family (:mod:`bilevel.stochastic.families`: simulated quadratics with an exact
optimum, per-feature L2 regularisation selection of a logistic regression, hyper data
cleaning of digits) and each method (SOBA, SABA, AmIGO, StocBiO, and the deterministic
baseline ``Implicit(CG)``: :func:`bilevel.hpo.minimize` with warm-started full-batch
gradient descent and a warm-started CG solve), the run gets the same budget of step time;
the value function ``F(λ_t)`` is evaluated (untimed) at ``points`` regular instants. Rows
hold the curves of relative suboptimality ``(F − F*)/(F(λ0) − F*)`` against seconds and
against per-sample oracle evaluations, and the time and oracle count to reach
:data:`THRESHOLD`. ``F*`` is exact for the quadratics; for the two other families it is the
lower of the L-BFGS reference and the best value any method reached.

Step sizes are those of :data:`PARAMS`, chosen by a small grid search per family (as
``benchmark_bilevel`` does with its ``*_best_params.yml`` configurations).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..dynamics import GradientDescent
from ..hpo import minimize
from ..hpo.minimize import MinimizeOptions
from ..linalg import CG
from ..methods import Implicit
from ..optim import SGD
from ..outer import Monitoring
from ..registry import lookup, spelling
from ..stochastic import Family, families, solve
from .report import figure, format_number, markdown_table, save_figure

__all__ = ["FAMILIES", "METHODS", "PARAMS", "THRESHOLD", "family", "plot", "relative", "run",
           "time_to", "to_markdown"]

METHODS = ("SOBA", "SABA", "AmIGO", "StocBiO", "Implicit(CG)")
"""Row labels: the stochastic methods (registry kind ``"stochastic"``) and the
deterministic baseline."""
FAMILIES = ("quadratic", "regularization", "cleaning")
THRESHOLD = 1e-3
_SIZES = {
    "quick": dict(budget_s=4.0, points=20, quadratic=dict(n_inner=1024, n_outer=256,
                                                          dim_inner=20, dim_outer=5),
                  regularization=dict(n_train=1024, n_val=256, features=16),
                  cleaning=dict(n_train=500, n_val=200, reference_steps=30)),
    "full": dict(budget_s=30.0, points=40, quadratic=dict(),
                 regularization=dict(), cleaning=dict()),
}
_SINGLE = dict(batch_size=64)
_TWO = dict(batch_size=64, inner_steps=10, v_steps=10)
PARAMS: dict[str, dict[str, dict]] = {
    "quadratic": {"SOBA": dict(lr_inner=1.0, lr_outer=1.0), "SABA": dict(lr_inner=0.3,
                  lr_outer=0.3), "AmIGO": dict(lr_inner=0.3, lr_outer=0.3),
                  "StocBiO": dict(lr_inner=1.0, lr_outer=1.0),
                  "Implicit(CG)": dict(lr_inner=1.0, lr_outer=1.0)},
    "regularization": {"SOBA": dict(lr_inner=0.5, lr_outer=100.0), "SABA": dict(
                       lr_inner=0.5, lr_outer=25.0), "AmIGO": dict(lr_inner=0.5, lr_outer=25.0),
                       "StocBiO": dict(lr_inner=0.5, lr_outer=25.0),
                       "Implicit(CG)": dict(lr_inner=0.5, lr_outer=25.0)},
    "cleaning": {"SOBA": dict(lr_inner=0.3, lr_outer=1000.0), "SABA": dict(lr_inner=0.3,
                 lr_outer=300.0), "AmIGO": dict(lr_inner=0.3, lr_outer=300.0),
                 "StocBiO": dict(lr_inner=0.3, lr_outer=300.0),
                 "Implicit(CG)": dict(lr_inner=0.3, lr_outer=300.0)},
}
"""Step sizes per family and method (``lr_outer`` of the deterministic baseline is its SGD
step; its ``lr_inner`` the step of its 10 warm-started gradient-descent steps)."""
_QUIET = Monitoring(progress=False, memory=None)


def _label(name: str) -> str:
    for label in METHODS:
        if spelling(label) == spelling(name):
            return label
    raise ValueError(f"unknown method {name!r}; choose from {METHODS}")


@functools.cache
def family(name: str, quick: bool, seed: int, backend: str) -> Family:
    """The family ``name`` at the quick or full size (built once per process)."""
    size = _SIZES["quick" if quick else "full"][name]
    return getattr(families, name)(seed=seed, backend=backend, **size)


class _Curve:
    """Evaluations of F at regular instants of step time; stops the run at the budget."""

    def __init__(self, fam: Family, budget: float, points: int):
        self.fam, self.budget, self.every = fam, budget, budget / points
        self.next = self.every
        self.rows = {"seconds": [0.0], "samples": [0], "value": [fam.value0], "steps": [0]}

    def add(self, seconds: float, samples: int, steps: int, lam: Any, w: Any) -> bool:
        """Record F(λ) when an instant is due; True when the budget is spent."""
        if seconds >= self.next or seconds >= self.budget:
            self.next = (math.floor(seconds / self.every) + 1) * self.every
            value = self.fam.value(lam, w)
            for key, x in zip(self.rows, (seconds, samples, value, steps), strict=True):
                self.rows[key].append(x)
        return seconds >= self.budget or not math.isfinite(self.rows["value"][-1])


def _stochastic(fam: Family, label: str, size: dict, seed: int) -> dict:
    method = lookup("stochastic", label)(**(_TWO if label in ("AmIGO", "StocBiO") else _SINGLE),
                                         **PARAMS[fam.name][label])
    curve = _Curve(fam, size["budget_s"], size["points"])

    def callback(state: Any, step: Any) -> bool:
        h = state.history
        return curve.add(float(sum(h["time"])), int(sum(h["n_samples"])), state.step,
                         state.params, state.extra["method"]["w"])

    res = solve(fam.problem, method, fam.lam0, fam.w0, steps=10**8, seed=seed,
                eval_every=50, monitoring=_QUIET, callback=callback)
    return dict(curve.rows, method=repr(method), success=bool(res.success),
                message=str(res.message))


def _deterministic(fam: Family, size: dict, seed: int) -> dict:
    p = PARAMS[fam.name]["Implicit(CG)"]
    curve = _Curve(fam, size["budget_s"], size["points"])
    n = fam.problem.n_inner

    def callback(info: dict) -> bool:
        h = info["history"]
        samples = n * (int(sum(h["n_grad"])) + int(sum(h["n_hvp"])))
        return curve.add(float(sum(h["time"])), samples, len(h["time"]), info["lam"],
                         info["result"].w)

    method = Implicit(CG(tol=1e-8, maxiter=20))
    res = minimize(fam.problem.full, fam.lam0, fam.w0,
                   dynamics=GradientDescent(p["lr_inner"], steps=10), method=method,
                   optimizer=SGD(lr=p["lr_outer"]), steps=10**8, seed=seed, callback=callback,
                   options=MinimizeOptions(on_failure="ignore"), monitoring=_QUIET)
    finite = all(math.isfinite(v) for v in curve.rows["value"])
    return dict(curve.rows, method=f"hpo.minimize(GradientDescent(lr={p['lr_inner']:g}, "
                f"steps=10), {method!r}, SGD(lr={p['lr_outer']:g}))",
                success=finite, message=str(res.message))


def run(quick: bool = False, backend: str = "numpy", methods: Sequence[str] | None = None, *,
        seed: int = 0, families: Sequence[str] = FAMILIES,
        budget_s: float | None = None) -> dict:
    """Curves of every (family, method) under the same budget of step time.

    Parameters
    ----------
    quick
        Small families, 4 s per run; otherwise the default family sizes, 30 s per run.
    backend
        ``"numpy"`` or ``"cupy"``.
    methods
        Labels among :data:`METHODS` (default all).
    seed
        Seeds the data and every run's generator.
    families
        Names among :data:`FAMILIES`.
    budget_s
        Seconds of step time per run (default 4 quick, 30 full).

    Returns
    -------
    dict
        ``rows``: ``{family, label, method, seconds, samples, value, steps, value0,
        value_star, exact, n_inner, success, message}`` (curves as lists); ``backend``,
        ``quick``, ``threshold``.
    """
    size = _SIZES["quick" if quick else "full"]
    if budget_s is not None:
        size = dict(size, budget_s=float(budget_s))
    labels = list(METHODS) if methods is None else [_label(m) for m in methods]
    rows = []
    for name in families:
        fam = family(name, quick, seed, backend)
        for label in labels:
            row = (_deterministic(fam, size, seed) if label == "Implicit(CG)"
                   else _stochastic(fam, label, size, seed))
            rows.append(dict(row, family=name, label=label, value0=float(fam.value0),
                             value_star=float(fam.value_star), exact=name == "quadratic",
                             n_inner=fam.problem.n_inner))
    return dict(rows=rows, backend=backend, quick=quick, threshold=THRESHOLD,
                budget_s=size["budget_s"])


def _optimum(rows: list[dict], name: str) -> float:
    """F* of a family: exact for the quadratics, else the best value seen or the reference."""
    sel = [r for r in rows if r["family"] == name]
    star = sel[0]["value_star"]
    if sel[0]["exact"]:
        return star
    seen = [v for r in sel for v in r["value"] if math.isfinite(v)]
    return min([star, *seen])


def relative(result: dict, row: dict) -> np.ndarray:
    """Relative suboptimality ``(F − F*)/(F(λ0) − F*)`` along a row's curve."""
    star = _optimum(result["rows"], row["family"])
    return (np.asarray(row["value"], dtype=float) - star) / (row["value0"] - star)


def time_to(result: dict, row: dict, threshold: float = THRESHOLD) -> tuple[float, float]:
    """(seconds, per-sample oracle evaluations) of the first evaluation below ``threshold``
    (NaN when never reached)."""
    rel = relative(result, row)
    hit = np.flatnonzero(rel <= threshold)
    if not hit.size:
        return math.nan, math.nan
    return float(row["seconds"][hit[0]]), float(row["samples"][hit[0]])


def _cell(x: float) -> str:
    return "not reached" if not math.isfinite(x) else format_number(x)


def to_markdown(result: dict) -> str:
    """Table of time and oracle evaluations to :data:`THRESHOLD`, one row per (family,
    method), with the final relative suboptimality."""
    rows = []
    for r in result["rows"]:
        secs, samples = time_to(result, r, result["threshold"])
        rel = relative(result, r)
        rows.append(dict(family=r["family"], label=r["label"], seconds=_cell(secs),
                         epochs=_cell(samples / r["n_inner"]),
                         final=format_number(float(rel[-1])), steps=r["steps"][-1],
                         ok="yes" if r["success"] else "**no**"))
    return (
        f"Time to a relative suboptimality (F − F*)/(F(λ0) − F*) ≤ {result['threshold']:g} "
        f"on {result['backend']} ({result['budget_s']:g} s of step time per run, "
        f"{'quick' if result['quick'] else 'full'} sizes); oracle work in epochs (per-sample "
        "gradients, Hessian-vector and cross products over the number of inner samples). "
        "F* is exact for the quadratics, the best value found otherwise.\n\n"
        + markdown_table(rows, [
            ("family", "family", None), ("method", "label", None),
            ("seconds to 1e-3", "seconds", None), ("epochs to 1e-3", "epochs", None),
            ("final suboptimality", "final", None), ("outer steps", "steps", str),
            ("ok", "ok", None)])
    )


def plot(result: dict, path: str) -> str:
    """PNG: relative suboptimality against seconds (left) and epochs (right), one row of
    panels per family."""
    names = list(dict.fromkeys(r["family"] for r in result["rows"]))
    fig, axes = figure(len(names), 2, size=(5.5, 3.8))
    for i, name in enumerate(names):
        for r in (r for r in result["rows"] if r["family"] == name):
            rel = np.maximum(relative(result, r), 1e-12)
            style = "k--" if r["label"] == "Implicit(CG)" else "-"
            axes[i, 0].semilogy(r["seconds"], rel, style, label=r["label"])
            epochs = np.asarray(r["samples"], dtype=float) / r["n_inner"]
            axes[i, 1].loglog(epochs[1:], rel[1:], style, label=r["label"])  # 0 is off-axis
        for ax, xlabel in ((axes[i, 0], "seconds"), (axes[i, 1], "epochs (oracle calls / n)")):
            ax.axhline(result["threshold"], color="grey", lw=0.5)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("(F − F*) / (F(λ0) − F*)")
            ax.set_title(name)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle(f"stochastic bilevel methods ({result['backend']})")
    return save_figure(fig, path)
