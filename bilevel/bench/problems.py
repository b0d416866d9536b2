"""The two problems the memory and speed benchmarks measure methods on.

``ridge``
    Ridge regression with ``m = 4`` group log-penalties and hand-written oracles (no
    autodiff tape): the stored iterates are the only memory that can grow with K.
``mlp``
    A tanh MLP regression with per-layer log-L2 penalties (``m = 2``), differentiated by
    autograd through :mod:`bilevel.numpy`; each oracle call holds an autodiff trace.

Each factory returns ``(problem, lam, w0, lr)``: the problem, λ, w₀ and a stable inner
step size.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import numpy as bnp
from .. import testing
from ..backend import module as backend_module
from ..problem import BilevelProblem

__all__ = ["PROBLEMS", "mlp_problem", "ridge_problem"]


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

    problem = testing.ridge_problem(X, y, Xv, yv, penalty=lambda lam: xp.exp(lam) @ G.T,
                                    oracles=testing.ridge_oracles(X, y, Xv, yv, groups=G),
                                    name="ridge")
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
