"""Hypergradient accuracy against cost: relative error versus HVP count on ridge regression.

The problem (ridge with per-feature penalties) has a closed-form hypergradient::

    g(w, λ) = ½‖Xw − y‖² + ½ Σ_j e^{λ_j} w_j²,    f(w) = ½‖X_v w − y_v‖²
    A = XᵀX + diag(e^λ),  w* = A⁻¹Xᵀy,   ∇F(λ) = −e^λ ⊙ w* ⊙ A⁻¹X_vᵀ(X_v w* − y_v)

with ``X`` of prescribed singular values, so the inner Hessian ``A`` has condition number
about ``kappa``. Each method runs with a growing budget ``B`` and the row records
``‖∇F̂ − ∇F‖ / ‖∇F‖`` together with the work spent (HVPs, which include mixed VJPs, and
gradients):

=====================  ===============================================================
label                  budget ``B``
=====================  ===============================================================
``Implicit(CG)``       ``B`` CG iterations at a converged inner iterate
``Implicit(Neumann)``  ``B`` Neumann terms (step ``1/L``) at a converged inner iterate
``Historyless``        ``B`` inner GD steps from ``w_0 = 0``, ``v`` updated alongside
``Reverse``            ``B`` inner GD steps from ``w_0 = 0``, full reverse mode
``Reverse(truncate)``  ``B`` reverse steps after a converged inner run (K-RMD)
``Adjoint(rk4)``       ``B`` RK4 steps of gradient flow over horizon ``B/L``, discrete adjoint
=====================  ===============================================================

The implicit rows start from a converged inner solve (``inner_steps`` GD steps, gradients
only), so their error is that of the linear solve; the unrolled rows pay for the inner
solve and the hypergradient together. Derivatives are hand-written oracles (no autodiff),
so the rows run on NumPy and CuPy alike.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..api import hypergrad
from ..backend import module as backend_module
from ..backend import to_numpy
from ..dynamics import GradientDescent, GradientFlow
from ..linalg import CG, Neumann
from ..methods import Adjoint, Historyless, Implicit, Reverse
from ..testing import ridge_hypergrads, ridge_oracles, ridge_problem
from .report import figure, format_number, markdown_table, save_figure

__all__ = ["METHODS", "default_methods", "plot", "ridge", "run", "to_markdown"]

METHODS = (
    "Implicit(CG)",
    "Implicit(Neumann)",
    "Historyless",
    "Reverse",
    "Reverse(truncate)",
    "Adjoint(rk4)",
)
BUDGETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
BUDGETS_QUICK = (1, 3, 10, 30, 100, 300)


def default_methods() -> list[str]:
    """The method labels this benchmark runs by default."""
    return list(METHODS)


def ridge(
    n: int = 40, kappa: float = 30.0, backend: str = "numpy", seed: int = 0
) -> dict[str, Any]:
    """The V7 ridge problem with hand-written oracles and its closed-form hypergradient.

    Returns a dict with ``problem``, ``lam``, ``w0`` (zeros), ``exact`` (NumPy),
    ``L`` and ``mu`` (extreme eigenvalues of ``A``) and ``inner_steps`` (GD steps with
    ``lr = 1/L`` that bring ``‖w_K − w*‖`` below ``1e-13·‖w*‖``).
    """
    if n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if not kappa > 1:
        raise ValueError(f"kappa must exceed 1, got {kappa!r}")
    xp = backend_module(backend)
    rng = np.random.default_rng(seed)
    rows = 2 * n
    U = np.linalg.qr(rng.standard_normal((rows, n)))[0]
    V = np.linalg.qr(rng.standard_normal((n, n)))[0]
    lam = rng.uniform(-1.0, 1.0, n)
    # A's eigenvalues lie within [s_min² + e^-1, s_max² + e]: choose s so that cond ≈ kappa
    s = np.sqrt(np.geomspace(1.0, kappa * (1 + math.exp(-1)) - math.e, n))
    X = (U * s) @ V
    w_true = rng.standard_normal(n)
    y = X @ w_true + 0.3 * rng.standard_normal(rows)
    Xv = rng.standard_normal((rows, n)) / math.sqrt(rows) * s.mean()
    yv = Xv @ w_true + 0.3 * rng.standard_normal(rows)
    A = X.T @ X + np.diag(np.exp(lam))
    exact = ridge_hypergrads(X, y, Xv, yv, lam)["exact"]
    eig = np.linalg.eigvalsh(A)

    Xb, yb, Xvb, yvb = (xp.asarray(a) for a in (X, y, Xv, yv))
    problem = ridge_problem(Xb, yb, Xvb, yvb, oracles=ridge_oracles(Xb, yb, Xvb, yvb),
                            name="ridge")
    L, mu = float(eig[-1]), float(eig[0])
    inner_steps = int(math.ceil(math.log(1e-13) / math.log(1 - mu / L)))
    return dict(problem=problem, lam=xp.asarray(lam), w0=xp.zeros(n, dtype=xp.float64),
                exact=exact, L=L, mu=mu, inner_steps=inner_steps, n=n)


def _configure(label: str, B: int, L: float, inner_steps: int) -> tuple[Any, Any, bool]:
    """``(inner, method, start_converged)`` for one row."""
    lr = 1.0 / L
    converged = GradientDescent(lr, inner_steps)
    if label == "Implicit(CG)":
        return converged, Implicit(CG(tol=1e-14, maxiter=B), inner_tol=None), True
    if label == "Implicit(Neumann)":
        return converged, Implicit(Neumann(alpha=lr, maxiter=B), inner_tol=None), True
    if label == "Historyless":
        return GradientDescent(lr, B), Historyless(), False
    if label == "Reverse":
        return GradientDescent(lr, B), Reverse(), False
    if label == "Reverse(truncate)":
        return GradientDescent(lr, inner_steps + B), Reverse(truncate=B), False
    if label == "Adjoint(rk4)":
        return GradientFlow(B * lr, B, "rk4"), Adjoint("store"), False
    raise ValueError(f"unknown method label {label!r}; choose from {list(METHODS)}")


def run(
    quick: bool = False,
    backend: str = "numpy",
    methods: Sequence[str] | None = None,
    *,
    n: int | None = None,
    kappa: float | None = None,
    budgets: Sequence[int] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Error of each method against its HVP count on the ridge problem.

    Parameters
    ----------
    quick
        Small problem (``n = 10``, ``kappa = 10``) and budgets ``1 … 300`` (about a
        second).
    backend
        ``"numpy"`` or ``"cupy"``.
    methods
        Labels from :data:`METHODS` (default: all).
    n, kappa
        Features (= hyperparameters) and the condition number of the inner Hessian
        (default ``n = 40``, ``kappa = 30``; ``10`` and ``10`` when ``quick``).
    budgets
        Budgets ``B`` (see the module docstring).
    seed
        Random seed of the problem.

    Returns
    -------
    dict
        ``rows`` (``method``, ``budget``, ``n_hvp``, ``n_grad``, ``rel_error``,
        ``success``, ``seconds``), ``problem`` (``n``, ``kappa``, ``L``, ``mu``,
        ``inner_steps``), ``backend``, ``seconds``.
    """
    labels = list(METHODS if methods is None else methods)
    for label in labels:
        if label not in METHODS:
            raise ValueError(f"unknown method label {label!r}; choose from {list(METHODS)}")
    n = (10 if quick else 40) if n is None else int(n)
    kappa = (10.0 if quick else 30.0) if kappa is None else float(kappa)
    budgets = list((BUDGETS_QUICK if quick else BUDGETS) if budgets is None else budgets)
    setup = ridge(n=n, kappa=kappa, backend=backend, seed=seed)
    exact = setup["exact"]
    scale = float(np.linalg.norm(exact))
    t_all = time.perf_counter()
    rows = []
    for label in labels:
        for B in budgets:
            inner, method, _ = _configure(label, int(B), setup["L"], setup["inner_steps"])
            t0 = time.perf_counter()
            res = hypergrad(setup["problem"], setup["lam"], setup["w0"], dynamics=inner,
                            method=method, on_failure="ignore")
            seconds = time.perf_counter() - t0
            grad = to_numpy(res.grad)
            err = float(np.linalg.norm(grad - exact) / scale)
            rows.append(dict(method=label, budget=int(B), n_hvp=int(res.n_hvp),
                             n_grad=int(res.n_grad), rel_error=err,
                             success=bool(res.success), seconds=seconds))
    problem = {k: setup[k] for k in ("n", "L", "mu", "inner_steps")}
    problem["kappa"] = setup["L"] / setup["mu"]
    return dict(rows=rows, problem=problem, backend=backend,
                seconds=time.perf_counter() - t_all)


def to_markdown(result: dict) -> str:
    """Markdown: the problem, then one row per (method, budget)."""
    p = result["problem"]
    head = (
        f"Relative hypergradient error against work on ridge regression with per-feature "
        f"penalties (n = m = {p['n']}, condition number {format_number(p['kappa'])}, "
        f"{result['backend']}). Implicit rows start from a converged inner solve "
        f"({p['inner_steps']} GD steps).\n\n"
    )
    return head + markdown_table(result["rows"], [
        ("method", "method", None), ("budget", "budget", str), ("HVPs", "n_hvp", str),
        ("gradients", "n_grad", str), ("relative error", "rel_error", lambda v: f"{v:.2e}"),
        ("ok", "success", lambda v: "yes" if v else "no"),
    ])


def plot(result: dict, path: str) -> str:
    """PNG: relative error against HVP count, one line per method (log–log)."""
    fig, axes = figure(1, 1, size=(6.5, 4.5))
    ax = axes[0, 0]
    for name in dict.fromkeys(r["method"] for r in result["rows"]):
        sel = sorted((r for r in result["rows"] if r["method"] == name),
                     key=lambda r: r["n_hvp"])
        ax.loglog([max(r["n_hvp"], 1) for r in sel],
                  [max(r["rel_error"], 1e-17) for r in sel], "o-", label=name)
    ax.set_xlabel("Hessian-vector products (incl. mixed VJPs)")
    ax.set_ylabel("‖∇F̂ − ∇F‖ / ‖∇F‖")
    ax.set_title(f"accuracy vs cost, ridge n={result['problem']['n']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path)
