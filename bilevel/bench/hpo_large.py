"""One HPO step on a large per-feature ridge problem: the library against hand-written Cholesky.

Per-feature ridge (``N`` training rows, ``d`` features, one penalty ``e^{λ_i}`` per
feature; full size N = 20,000, d = 2,000)::

    g(w, λ) = ‖Xw − y‖²/(2N) + ½ Σᵢ e^{λᵢ} wᵢ²,     f(w) = ‖X_v w − y_v‖²/(2N_v)

One HPO step is the inner solve plus the hypergradient at a new λ. Two ways:

``library``
    ``hypergrad(problem, λ, w_prev, dynamics=Newton(1, solver=D), method=Implicit(D))``
    with one ``D = Direct(cache=True)``: autograd oracles, no hand-written derivative. The
    Hessian is materialised once (batched products); afterwards a step updates its
    diagonal, refactors (Cholesky), and the hypergradient reuses the factor.
``cholesky``
    Hand-written NumPy: ``G = XᵀX/N`` once, then per step ``L = chol(G + diag(e^λ))``,
    ``w = L⁻ᵀL⁻¹Xᵀy/N``, ``v = L⁻ᵀL⁻¹∇_w f``, ``∇F = −e^λ ⊙ w ⊙ v``.

The two are run alternately (interleaved) at the same sequence of λ, so machine noise
affects both alike; the table gives the median step time of each, their ratio (target
≤ 2), the one-off setup (library: first step, which materialises; hand-written: the Gram
matrix) and the largest relative difference of the hypergradients.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import autograd.numpy as anp
import numpy as np

from ..api import hypergrad
from ..dynamics import Newton
from ..linalg import Direct
from ..methods import Implicit
from ..problem import BilevelProblem
from .report import figure, markdown_table, save_figure

try:
    from scipy.linalg import cho_solve
except ImportError:  # pragma: no cover - SciPy ships with the test and docs extras
    cho_solve = None

__all__ = ["plot", "run", "to_markdown"]

_SIZES = {"quick": dict(N=1000, d=100, n_val=300, steps=3),
          "full": dict(N=20000, d=2000, n_val=5000, steps=5)}


def ridge_data(N: int, d: int, n_val: int, seed: int) -> dict:
    """Correlated features, a sparse-ish truth, noisy targets (training and validation)."""
    rng = np.random.default_rng(seed)
    scale = np.exp(-np.arange(d) / (d / 4))
    truth = rng.standard_normal(d) * scale
    X, Xv = (rng.standard_normal((m, d)) * np.sqrt(scale) for m in (N, n_val))
    return dict(X=X, y=X @ truth + 0.5 * rng.standard_normal(N),
                Xv=Xv, yv=Xv @ truth + 0.5 * rng.standard_normal(n_val))


def ridge_problem(data: dict, form: str = "gram") -> BilevelProblem:
    """The per-feature ridge problem, written for a batch axis (``w @ Xᵀ``).

    ``form="data"`` evaluates ``‖Xw − y‖²`` (every oracle passes over ``X``: ``O(N·d)``);
    ``form="gram"`` the same function through its sufficient statistics ``G = XᵀX/N``,
    ``c = Xᵀy/N`` (``½wᵀGw − cᵀw + ‖y‖²/(2N)``: ``O(d²)`` per oracle), the form that the
    hand-written reference uses too (``data["G"]``, ``data["c"]``: :func:`gram`).
    """
    X, y, Xv, yv = data["X"], data["y"], data["Xv"], data["yv"]
    N, n_val = len(y), len(yv)
    if form == "gram":
        G, c, c0 = data["G"], data["c"], 0.5 * float(y @ y) / N

        def inner(w: Any, lam: Any) -> Any:
            return (0.5 * anp.sum((w @ G) * w, axis=-1) - w @ c + c0
                    + 0.5 * anp.sum(anp.exp(lam) * w**2, axis=-1))
    else:

        def inner(w: Any, lam: Any) -> Any:
            return (0.5 * anp.sum((w @ X.T - y) ** 2, axis=-1) / N
                    + 0.5 * anp.sum(anp.exp(lam) * w**2, axis=-1))

    def outer(w: Any, lam: Any) -> Any:
        return 0.5 * anp.sum((w @ Xv.T - yv) ** 2, axis=-1) / n_val

    return BilevelProblem(inner, outer, name="per-feature ridge")


def gram(data: dict) -> dict:
    """``data`` with the sufficient statistics ``G = XᵀX/N`` and ``c = Xᵀy/N`` added."""
    X, y = data["X"], data["y"]
    return dict(data, G=X.T @ X / len(y), c=X.T @ y / len(y))


class HandWritten:
    """Per-feature ridge HPO by hand: Gram matrix cached (:func:`gram`), Cholesky per step."""

    def __init__(self, data: dict) -> None:
        self.data, self.G, self.b = data, data["G"], data["c"]

    def step(self, lam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(w*, ∇F)`` at ``λ``."""
        Xv, yv = self.data["Xv"], self.data["yv"]
        L = np.linalg.cholesky(self.G + np.diag(np.exp(lam)))
        w = _cholesky_solve(L, self.b)
        v = _cholesky_solve(L, Xv.T @ (Xv @ w - yv) / len(yv))
        return w, -np.exp(lam) * w * v


def _cholesky_solve(L: np.ndarray, b: np.ndarray) -> np.ndarray:
    if cho_solve is not None:
        return cho_solve((L, True), b)
    return np.linalg.solve(L.T, np.linalg.solve(L, b))


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def run(quick: bool = False, backend: str = "numpy", *, seed: int = 0) -> dict:
    """Median seconds per HPO step of the library and of hand-written Cholesky, interleaved.

    Parameters
    ----------
    quick
        N = 1,000, d = 100, 3 steps; otherwise N = 20,000, d = 2,000, 5 steps.
    backend
        ``"numpy"`` only (the hand-written reference is NumPy).
    seed
        Seed of the synthetic data.
    """
    if backend != "numpy":
        raise ValueError("bench hpo_large compares against hand-written NumPy: use "
                         "--backend numpy")
    size = _SIZES["quick" if quick else "full"]
    data = ridge_data(size["N"], size["d"], size["n_val"], seed)
    setup_hand, data = _timed(lambda: gram(data))
    hand = HandWritten(data)
    rows = [_compare(data, form, hand, setup_hand, size["steps"]) for form in ("gram", "data")]
    return {"rows": rows, "backend": backend, "quick": quick}


def _compare(data: dict, form: str, hand: HandWritten, setup_hand: float, steps: int) -> dict:
    """One row: ``steps`` HPO steps of the library and of ``hand``, interleaved."""
    d = data["X"].shape[1]
    problem = ridge_problem(data, form)
    solver = Direct(cache=True)
    method = Implicit(solver, inner_tol=1e-8)
    dynamics = Newton(1, solver=solver)
    lams = [np.full(d, -2.0) + 0.1 * t * np.linspace(-1, 1, d) for t in range(steps + 1)]
    setup_lib, res = _timed(lambda: hypergrad(problem, lams[0], np.zeros(d),
                                              dynamics=dynamics, method=method,
                                              on_failure="raise"))
    lib_times, hand_times, diffs = [], [], []
    for lam in lams[1:]:
        t_lib, res = _timed(lambda lam=lam, w=res.w: hypergrad(
            problem, lam, w, dynamics=dynamics, method=method, on_failure="raise"))
        t_hand, (_, grad) = _timed(lambda lam=lam: hand.step(lam))
        lib_times.append(t_lib)
        hand_times.append(t_hand)
        diffs.append(float(np.max(np.abs(res.grad - grad)) / np.max(np.abs(grad))))
    lib, ref = statistics.median(lib_times), statistics.median(hand_times)
    return dict(form=form, N=len(data["y"]), d=d, library_seconds_step=lib,
                cholesky_seconds_step=ref, ratio=lib / ref, library_first_step=setup_lib,
                cholesky_setup=setup_hand, max_relative_difference=max(diffs), steps=steps,
                library_times=lib_times, cholesky_times=hand_times,
                n_hvp=res.n_hvp, n_grad=res.n_grad, message=res.linear_solve.message)


def to_markdown(result: dict) -> str:
    """The table: sizes, median step times, ratio, setup times, agreement."""
    cols = [("objective", "form", str), ("N", "N", str), ("d", "d", str),
            ("library s/step", "library_seconds_step", None),
            ("Cholesky s/step", "cholesky_seconds_step", None),
            ("ratio", "ratio", None),
            ("library 1st step (s)", "library_first_step", None),
            ("Gram matrix (s)", "cholesky_setup", None),
            ("max rel. diff. ∇F", "max_relative_difference", None)]
    note = ("\nOne HPO step = inner solve + hypergradient at a new λ; medians over the steps, "
            "the two variants interleaved in one process (`bilevel bench hpo_large`). "
            "Library: `Newton(1, solver=Direct(cache=True))` inside "
            "`hypergrad(..., method=Implicit(same Direct))`, autograd oracles; objective "
            "`gram`: written with G = XᵀX/N as the hand-written code is, `data`: with X "
            "(each oracle passes over the N×d data).\n")
    return markdown_table(result["rows"], cols) + note


def plot(result: dict, path: str) -> str:
    """PNG: seconds of each step, library and hand-written Cholesky."""
    fig, axes = figure(1, 1)
    ax = axes[0, 0]
    for row in result["rows"]:
        ax.plot(row["library_times"], "o-", label=f"library, {row['form']} form")
        ax.plot(row["cholesky_times"], "s--", label=f"hand-written Cholesky ({row['form']} row)")
    ax.set_xlabel("HPO step")
    ax.set_ylabel("seconds")
    ax.set_title("per-feature ridge: one HPO step")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path)
