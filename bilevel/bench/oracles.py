"""Oracle micro-benchmarks: what :meth:`BilevelProblem.linearize` saves over fresh HVPs.

``linearize(w, λ)`` traces the inner gradient map ``w ↦ ∇_w g(w, λ)`` once; every Hessian-
vector product afterwards is one reverse pass over that trace. ``inner_hvp`` re-runs ``g``
(forward and backward) for every product. Linear solvers take many products at one point
(CG, Neumann), so the ratio below is the speed-up they get per product.
"""

from __future__ import annotations

from typing import Any

import autograd.numpy as anp
import numpy as np

from ..problem import BilevelProblem
from ..tree import ravel
from .interleaved import best_times

__all__ = ["linearize_speedup", "tanh_mlp_problem"]


def tanh_mlp_problem(
    n_in: int = 20, width: int = 64, n_data: int = 256, seed: int = 0
) -> tuple[BilevelProblem, Any, Any]:
    """A two-hidden-layer tanh regression MLP with per-layer log-L2 penalties ``λ ∈ R³``.

    ``g(w, λ) = mean((net(w; X) − y)²) + ½ Σ_l e^{λ_l} ‖W_l‖²`` and ``f`` the validation
    mean squared error. With the defaults the network has
    ``n = 20·64 + 64 + 64·64 + 64 + 64 + 1 = 5569`` parameters.

    Returns
    -------
    problem, w, lam
        The problem and a random float64 point ``(w, λ)``.
    """
    rng = np.random.default_rng(seed)
    X, Xv = rng.standard_normal((n_data, n_in)), rng.standard_normal((n_data, n_in))
    y, yv = np.sin(X[:, 0]) + X[:, 1], np.sin(Xv[:, 0]) + Xv[:, 1]
    params = {
        "W1": rng.standard_normal((n_in, width)) / np.sqrt(n_in),
        "b1": np.zeros(width),
        "W2": rng.standard_normal((width, width)) / np.sqrt(width),
        "b2": np.zeros(width),
        "W3": rng.standard_normal(width) / np.sqrt(width),
        "b3": np.zeros(()),
    }
    w, unravel = ravel(params)

    def net(w: Any, A: Any) -> Any:
        p = unravel(w)
        h = anp.tanh(anp.matmul(A, p["W1"]) + p["b1"])
        h = anp.tanh(anp.matmul(h, p["W2"]) + p["b2"])
        return anp.matmul(h, p["W3"]) + p["b3"]

    def g(w: Any, lam: Any) -> Any:
        p = unravel(w)
        penalty = sum(
            0.5 * anp.exp(lam[i]) * anp.sum(p[k] ** 2) for i, k in enumerate(("W1", "W2", "W3"))
        )
        return anp.mean((net(w, X) - y) ** 2) + penalty

    def f(w: Any, lam: Any) -> Any:
        return anp.mean((net(w, Xv) - yv) ** 2)

    return BilevelProblem(g, f, name="tanh-mlp"), w, np.full(3, -3.0)


def linearize_speedup(quick: bool = False, products: int = 20, repeats: int | None = None) -> float:
    """Ratio ``t(products × inner_hvp) / t(linearize + products × Linearization.hvp)``.

    Both sides compute the same ``products`` Hessian-vector products ``H v_i`` at one point
    of :func:`tanh_mlp_problem` (n = 5569 parameters; 64 data points when ``quick``, else
    256) and are checked to agree. Time is the best of ``repeats`` interleaved runs
    (default 2 when ``quick``, else 7). A ratio above 1 means linearizing is faster.

    Returns
    -------
    float
        The speed-up factor.
    """
    problem, w, lam = tanh_mlp_problem(n_data=64 if quick else 256)
    repeats = (2 if quick else 7) if repeats is None else repeats
    rng = np.random.default_rng(1)
    vs = [rng.standard_normal(w.size) for _ in range(products)]

    def fresh() -> list[Any]:
        return [problem.inner_hvp(w, lam, v) for v in vs]

    def traced() -> list[Any]:
        lin = problem.linearize(w, lam)
        return [lin.hvp(v) for v in vs]

    a, b = fresh(), traced()
    for x, y in zip(a, b, strict=True):
        if not np.allclose(x, y, rtol=1e-10, atol=1e-12):
            raise AssertionError("linearize and inner_hvp disagree; the benchmark is void")
    times = best_times({"fresh": fresh, "traced": traced}, repeats)
    t_fresh, t_traced = times["fresh"], times["traced"]
    return t_fresh / t_traced


if __name__ == "__main__":  # pragma: no cover - manual run
    print(f"linearize speed-up over fresh inner_hvp: {linearize_speedup():.2f}x")
