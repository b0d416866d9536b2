"""Simulated quadratics with controlled conditioning and a closed-form optimum.

Per-sample inner and outer objectives (the family of Dagréou et al., 2022, built with a
shared eigenbasis so that a sample costs O(n + m) numbers instead of an n×n matrix)::

    q_i(w, λ) = ½ Σ_k e_ik (Uᵀw)_k² + λᵀGw + (s_i·λ)(t_i·w) + a_i·w + ½ Σ_j r_ij λ_j² + c_i·λ

with ``e_i = e ⊙ ρ_i`` (``ρ_i`` log-normal, normalised to mean 1 per coordinate, so the
mean Hessian has exactly the eigenvalues ``e``, log-spaced in ``[mu, L]``), ``‖G‖ = L_cross``
and ``t_i = Gᵀ s_i`` (a rank-one perturbation of the cross term per sample, of size
``noise``). The means over samples give ``g(w, λ) = ½ wᵀAw + λᵀCw + a·w`` and
``f(w, λ) = ½ wᵀPw + λᵀQw + ½ λᵀRλ + b·w + c·λ``, so ``w*(λ) = Jλ + w₀`` with
``J = −A⁻¹Cᵀ``, ``w₀ = −A⁻¹a``, and ``F`` is quadratic with Hessian
``JᵀPJ + QJ + JᵀQᵀ + R``: its minimizer and minimum are exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import numpy as bnp
from ..backend import namespace, to_backend, to_numpy
from .family import Family
from .problem import StochasticProblem

__all__ = ["QuadraticLoss", "quadratic"]


@dataclass(frozen=True)
class QuadraticLoss:
    """The mean of ``q_i`` over a batch (see the module docstring). Cost: O(n² + b(n + m))
    for a batch of b samples (one product with the shared basis U)."""

    basis: Any
    cross: Any

    def __call__(self, w: Any, lam: Any, batch: dict) -> Any:
        xp = namespace(batch["e"])
        z = bnp.matmul(w, self.basis)
        quad = 0.5 * bnp.sum(xp.mean(batch["e"], axis=0) * z * z)
        cross = bnp.sum(lam * bnp.matmul(self.cross, w)) \
            + bnp.mean(bnp.matmul(batch["s"], lam) * bnp.matmul(batch["t"], w))
        lin = bnp.sum(xp.mean(batch["a"], axis=0) * w)
        hyper = 0.5 * bnp.sum(xp.mean(batch["r"], axis=0) * lam * lam) \
            + bnp.sum(xp.mean(batch["c"], axis=0) * lam)
        return quad + cross + lin + hyper


def _samples(rng: np.random.Generator, n: int, dim_w: int, dim_lam: int, eig: np.ndarray,
             hyper: np.ndarray, G: np.ndarray, noise: float) -> dict[str, np.ndarray]:
    rho = rng.lognormal(0.0, noise, (n, dim_w))
    s = noise * rng.standard_normal((n, dim_lam))
    return {"e": eig * rho / rho.mean(axis=0), "s": s, "t": s @ G,
            "a": rng.standard_normal(dim_w) + noise * rng.standard_normal((n, dim_w)),
            "r": np.broadcast_to(hyper, (n, dim_lam)).copy(),
            "c": rng.standard_normal(dim_lam) + noise * rng.standard_normal((n, dim_lam))}


def _means(data: dict, basis: np.ndarray, G: np.ndarray) -> dict[str, np.ndarray]:
    m = {k: v.mean(axis=0) for k, v in data.items()}
    n = len(data["s"])
    return {"H": (basis * m["e"]) @ basis.T, "C": G + data["s"].T @ data["t"] / n,
            "a": m["a"], "r": m["r"], "c": m["c"]}


def _optimum(inner: dict, outer: dict) -> tuple[np.ndarray, float, Any]:
    J = -np.linalg.solve(inner["H"], inner["C"].T)
    w0 = -np.linalg.solve(inner["H"], inner["a"])
    P, Q, R = outer["H"], outer["C"], np.diag(outer["r"])
    hess = J.T @ P @ J + Q @ J + J.T @ Q.T + R
    hess = 0.5 * (hess + hess.T)
    mu = float(np.linalg.eigvalsh(hess)[0])
    if mu <= 0:
        raise ValueError(f"the value function is not strongly convex (smallest eigenvalue "
                         f"{mu:.3g}): raise mu_outer or lower L_cross")
    g0 = J.T @ (P @ w0) + Q @ w0 + J.T @ outer["a"] + outer["c"]

    def value(lam: np.ndarray) -> float:
        w = J @ lam + w0
        return float(0.5 * w @ P @ w + lam @ Q @ w + 0.5 * lam @ R @ lam + outer["a"] @ w
                     + outer["c"] @ lam)

    lam_star = -np.linalg.solve(hess, g0)
    return lam_star, value(lam_star), value


class _Value:
    """``F(λ)`` in closed form (picklable); ``w`` is ignored."""

    def __init__(self, fn: Any):
        self.fn = fn

    def __call__(self, lam: Any, w: Any = None) -> float:
        return self.fn(np.asarray(to_numpy(lam), dtype=np.float64))


def quadratic(n_inner: int = 4096, n_outer: int = 1024, dim_inner: int = 100,
              dim_outer: int = 10, *, mu_inner: float = 0.1, L_inner: float = 1.0,
              mu_outer: float = 0.1, L_outer: float = 1.0, L_cross: float = 0.1,
              noise: float = 0.5, seed: int = 0, backend: str = "numpy",
              dtype: Any = np.float64) -> Family:
    """A simulated quadratic bilevel problem with its exact optimum.

    Parameters
    ----------
    n_inner, n_outer : int
        Samples of the inner and outer objectives.
    dim_inner, dim_outer : int
        Sizes of w and λ.
    mu_inner, L_inner : float
        Eigenvalue range of the inner Hessian (log-spaced), so its condition number is
        ``L_inner / mu_inner``.
    mu_outer, L_outer : float
        Eigenvalue range of the outer Hessian in w, and of its λ-part R.
    L_cross : float
        Norm of the mean cross-derivatives (inner and outer).
    noise : float
        Spread of the samples around their mean: log-normal σ of the per-sample Hessian
        eigenvalues and standard deviation of the per-sample linear terms (0: every sample
        is the mean, the problem is deterministic).
    seed, backend, dtype
        Data generation, array backend and floating type.

    Returns
    -------
    Family
        ``value`` is the exact value function, ``lam_star``/``value_star`` the exact optimum.
    """
    rng = np.random.default_rng(seed)
    U = np.linalg.qr(rng.standard_normal((dim_inner, dim_inner)))[0]
    V = np.linalg.qr(rng.standard_normal((dim_inner, dim_inner)))[0]
    eig_in = np.geomspace(mu_inner, L_inner, dim_inner)
    eig_out = np.geomspace(mu_outer, L_outer, dim_inner)
    hyper = rng.uniform(mu_outer, L_outer, dim_outer)
    G_in, G_out = (L_cross * g / np.linalg.norm(g, 2)
                   for g in rng.standard_normal((2, dim_outer, dim_inner)))
    inner = _samples(rng, n_inner, dim_inner, dim_outer, eig_in, 0 * hyper, G_in, noise)
    outer = _samples(rng, n_outer, dim_inner, dim_outer, eig_out, hyper, G_out, noise)
    lam_star, value_star, value = _optimum(_means(inner, U, G_in), _means(outer, V, G_out))
    problem = StochasticProblem(
        QuadraticLoss(*to_backend([U.astype(dtype), G_in.astype(dtype)], backend)),
        QuadraticLoss(*to_backend([V.astype(dtype), G_out.astype(dtype)], backend)),
        to_backend({k: v.astype(dtype) for k, v in inner.items()}, backend),
        to_backend({k: v.astype(dtype) for k, v in outer.items()}, backend), name="quadratic")
    zeros = to_backend(np.zeros(dim_outer, dtype=dtype), backend)
    return Family("quadratic", problem, zeros, to_backend(np.zeros(dim_inner, dtype=dtype),
                                                          backend),
                  _Value(value), value_star, lam_star,
                  info=dict(n_inner=n_inner, n_outer=n_outer, dim_inner=dim_inner,
                            dim_outer=dim_outer, mu_inner=mu_inner, L_inner=L_inner,
                            L_cross=L_cross, noise=noise))
