"""Strategies for problems linear-quadratic in w: quadratic g and f (V2), per-feature ridge (V7).

Both use gradient descent from a random constant ``w0``; their references ``exact`` and
``unrolled`` are closed forms (:mod:`bilevel.testing.closed_forms`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import strategies as st

from ..dynamics import GradientDescent
from . import closed_forms, objectives
from .draws import (
    Size,
    common_arguments,
    draw_int,
    draw_kappa,
    draw_rng,
    finish,
    int_range,
)
from .generated import GeneratedProblem, random_orthogonal, random_spd, spectrum, stack

__all__ = ["quadratic_problems", "ridge_problems"]


def quadratic_problems(
    n: Size = (1, 6),
    m: Size = (1, 3),
    *,
    batch: int | None = None,
    dtype: Any = "float64",
    backend: str = "numpy",
    condition_number: float = 10.0,
    steps: Size = (1, 30),
) -> st.SearchStrategy[GeneratedProblem]:
    """Linear-quadratic bilevel problems (V2).

    ``g(w, λ) = ½wᵀHw − wᵀ(Bλ + c)`` with ``H`` SPD, eigenvalues in ``[μ, κμ]``,
    ``κ ≤ condition_number``; ``f(w, λ) = ½‖Cw − d‖² + ½γ‖λ‖²``. The suggested inner
    solver is ``GradientDescent(lr=1/L, steps=K)`` from a random constant ``w0`` (with a
    batch, ``L`` is the largest eigenvalue over the batch). References: ``exact``
    (``BᵀH⁻¹Cᵀ(Cw* − d) + γλ``), ``unrolled`` (``Bᵀ(I − R^K)H⁻¹Cᵀ(Cw_K − d) + γλ``,
    ``R = I − αH``), ``w_star``, ``w_unrolled``. ``info["contraction"]`` is
    ``q = max_b(1 − αμ_b)``.
    """
    n_r, m_r, k_r = int_range(n, "n"), int_range(m, "m"), int_range(steps, "steps")
    dt = common_arguments(batch, dtype, backend, condition_number)

    @st.composite
    def build(draw: Any) -> GeneratedProblem:
        nn, mm, K = draw_int(draw, n_r), draw_int(draw, m_r), draw_int(draw, k_r)
        kappa = draw_kappa(draw, nn, condition_number)
        gamma = draw(st.sampled_from([0.0, 0.5]))
        rng = draw_rng(draw)
        B = 1 if batch is None else batch
        p = int(rng.integers(1, nn + 2))  # outer rows, shared by the batch
        probs = []
        for _ in range(B):
            mu = float(np.exp(rng.uniform(np.log(0.2), np.log(5.0))))
            probs.append(
                dict(
                    H=random_spd(rng, nn, mu, mu * kappa),
                    B=rng.standard_normal((nn, mm)),
                    c=rng.standard_normal(nn),
                    C=rng.standard_normal((p, nn)) / np.sqrt(p),
                    d=rng.standard_normal(p),
                    lam=rng.standard_normal(mm),
                    w0=rng.standard_normal(nn),
                    mu=mu,
                )
            )
        L = max(pr["mu"] * kappa for pr in probs)
        lr = 1.0 / L
        refs = []
        for pr in probs:
            refs.append(
                closed_forms.quadratic_hypergrads(
                    pr["H"], pr["B"], pr["c"], pr["C"], pr["d"], gamma, pr["lam"], pr["w0"],
                    lr, K,
                )
            )
        arrays = stack(probs, batch)
        data = {k: arrays[k] for k in ("H", "B", "c", "C", "d")}
        data["gamma"] = gamma
        g, f = objectives.quadratic(batch is not None)
        q = max(1.0 - lr * pr["mu"] for pr in probs)
        info = dict(n=nn, m=mm, batch=batch, condition_number=kappa, contraction=q, steps=K,
                    lr=lr, gamma=gamma)
        return finish("quadratic", g, f, data, arrays["lam"], arrays["w0"],
                       GradientDescent(lr, K), stack(refs, batch), info, backend, dt)

    return build()


def ridge_problems(
    n: Size = (1, 5),
    *,
    batch: int | None = None,
    dtype: Any = "float64",
    backend: str = "numpy",
    condition_number: float = 20.0,
    steps: Size = (1, 30),
) -> st.SearchStrategy[GeneratedProblem]:
    """Ridge regression with one log-penalty per feature (V7), ``m = n``.

    ``g(w, λ) = ½‖Xw − y‖² + ½Σ_j e^{λ_j}w_j²``, ``f(w) = ½‖X_v w − y_v‖²``. The spectrum of
    ``XᵀX`` and ``λ ∈ [−1, 1]^n`` are drawn so that ``A = XᵀX + diag(e^λ)`` has condition
    number at most ``condition_number`` (which must be at least 3). The suggested inner
    solver is ``GradientDescent(lr=1/λ_max(A), steps=K)`` from a random ``w0``. References:
    ``exact`` (``−e^λ ⊙ w* ⊙ A⁻¹X_vᵀr_v``), ``unrolled`` (closed form through the Fréchet
    derivative of ``R^K``), ``w_star``, ``w_unrolled``.
    """
    n_r, k_r = int_range(n, "n"), int_range(steps, "steps")
    dt = common_arguments(batch, dtype, backend, condition_number, least=3.0)

    @st.composite
    def build(draw: Any) -> GeneratedProblem:
        nn, K = draw_int(draw, n_r), draw_int(draw, k_r)
        kappa = draw_kappa(draw, nn, condition_number, least=3.0)
        extra = draw(st.integers(0, 3))
        n_val = draw(st.integers(1, nn + 2))
        rng = draw_rng(draw)
        # cond(A) ≤ (s_max + e) / (1 + 1/e) = kappa  with  XᵀX eigenvalues in [1, s_max]
        s_max = max(1.0, kappa * (1 + np.exp(-1.0)) - np.e)
        B = 1 if batch is None else batch
        probs = []
        for _ in range(B):
            rows = nn + extra
            U = random_orthogonal(rng, rows)[:, :nn]
            X = (U * np.sqrt(spectrum(rng, nn, 1.0, s_max))) @ random_orthogonal(rng, nn)
            w_true = rng.standard_normal(nn)
            Xv = rng.standard_normal((n_val, nn))
            probs.append(
                dict(
                    X=X,
                    y=X @ w_true + 0.3 * rng.standard_normal(rows),
                    X_val=Xv,
                    y_val=Xv @ w_true + 0.3 * rng.standard_normal(n_val),
                    lam=rng.uniform(-1.0, 1.0, nn),
                    w0=rng.standard_normal(nn),
                )
            )
        eigs = [np.linalg.eigvalsh(p["X"].T @ p["X"] + np.diag(np.exp(p["lam"]))) for p in probs]
        lr = 1.0 / max(e[-1] for e in eigs)
        refs = []
        for p in probs:
            ref = closed_forms.ridge_hypergrads(p["X"], p["y"], p["X_val"], p["y_val"],
                                                p["lam"], p["w0"], lr, K)
            refs.append({k: v for k, v in ref.items() if k != "hessian"})
        arrays = stack(probs, batch)
        data = {k: arrays[k] for k in ("X", "y", "X_val", "y_val")}
        g, f = objectives.ridge(batch is not None)
        info = dict(
            n=nn, m=nn, batch=batch, condition_number=max(e[-1] / e[0] for e in eigs),
            contraction=max(1.0 - lr * e[0] for e in eigs), steps=K, lr=lr,
        )
        return finish("ridge", g, f, data, arrays["lam"], arrays["w0"],
                       GradientDescent(lr, K), stack(refs, batch), info, backend, dt)

    return build()
