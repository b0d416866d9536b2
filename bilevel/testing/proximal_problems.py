"""Strategies for proximal quadratic problems with ``w0 = θ = λ``: gradient flow (V4, V9)
and iMAML tasks (V8).

``g(w, θ) = ½(w − a)ᵀP(w − a) + (r/2)‖w − θ‖²``, ``f(w) = ½(w − b)ᵀQ(w − b)``; the
references come from :func:`~bilevel.testing.closed_forms.proximal_quadratic_hypergrads`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import strategies as st

from ..dynamics import GradientDescent, GradientFlow
from . import closed_forms, objectives
from .closed_forms import STABILITY_POLYNOMIALS
from .draws import (
    Range,
    Size,
    common_arguments,
    draw_float,
    draw_int,
    draw_kappa,
    draw_rng,
    finish,
    float_range,
    identity_init,
    int_range,
)
from .generated import GeneratedProblem, random_spd, stack

__all__ = ["gradient_flow_problems", "imaml_tasks"]


def _proximal_tasks(
    draw: Any,
    nn: int,
    batch: int | None,
    kappa: float,
    top: float,
    prox_frac: float,
) -> tuple[list[dict], float]:
    """Draw tasks with ``S = P + rI`` spectrum in ``[top/κ, top]`` and ``r = frac·top/κ``."""
    rng = draw_rng(draw)
    prox = prox_frac * top / kappa
    probs = []
    for _ in range(1 if batch is None else batch):
        S = random_spd(rng, nn, top / kappa, top)
        probs.append(
            dict(
                P=S - prox * np.eye(nn),
                a=rng.standard_normal(nn),
                Q=random_spd(rng, nn, 0.5, 2.0),
                b=rng.standard_normal(nn),
                lam=rng.standard_normal(nn),
            )
        )
    return probs, prox


def gradient_flow_problems(
    n: Size = (1, 5),
    *,
    batch: int | None = None,
    dtype: Any = "float64",
    backend: str = "numpy",
    condition_number: float = 10.0,
    steps: Size = (1, 40),
    horizon: Range = (0.1, 3.0),
    scheme: str = "rk4",
    proximal: Range = (0.0, 1.0),
) -> st.SearchStrategy[GeneratedProblem]:
    """Gradient flow on a proximal quadratic from ``w(0) = θ = λ`` (V4, V9).

    ``g(w, θ) = ½(w − a)ᵀP(w − a) + (r/2)‖w − θ‖²``, ``f(w) = ½(w − b)ᵀQ(w − b)``,
    ``init(θ) = θ`` (``m = n``, ``w0`` is None). ``S = P + rI`` has condition number
    ``≤ condition_number``; its largest eigenvalue is set so that ``h·λ_max(S) ≤ 1`` for the
    step ``h = T/K`` (stable for every scheme); ``r = ρ·λ_min(S)`` with ρ drawn from
    ``proximal`` (ρ = 0 is pure A-MAML, ρ = 1 makes P singular). The suggested inner solver
    is ``GradientFlow(T, K, scheme)``. References: ``flow`` (continuous time,
    ``(e^{−ST} + rS⁻¹(I − e^{−ST}))Q(w(T) − b)``), ``unrolled`` (the same with ``e^{−ST}``
    replaced by ``p(−hS)^K``, p the scheme's stability polynomial: the exact derivative of
    the discrete flow), ``exact`` (the T → ∞ limit ``rS⁻¹Q(w* − b)``), ``w_star``,
    ``w_unrolled``, ``w_flow``.
    """
    n_r, k_r = int_range(n, "n"), int_range(steps, "steps")
    t_r = float_range(horizon, "horizon", 1e-6)
    p_r = float_range(proximal, "proximal", 0.0, 1.0)
    if scheme not in STABILITY_POLYNOMIALS:
        raise ValueError(f"scheme must be one of {sorted(STABILITY_POLYNOMIALS)}, got {scheme!r}")
    dt = common_arguments(batch, dtype, backend, condition_number)
    poly = STABILITY_POLYNOMIALS[scheme]

    @st.composite
    def build(draw: Any) -> GeneratedProblem:
        nn, K = draw_int(draw, n_r), draw_int(draw, k_r)
        T = draw_float(draw, t_r)
        kappa = draw_kappa(draw, nn, condition_number)
        frac = draw_float(draw, p_r)
        h = T / K
        top = draw(st.floats(0.1, 1.0)) / h
        probs, prox = _proximal_tasks(draw, nn, batch, kappa, top, frac)
        refs = [
            closed_forms.proximal_quadratic_hypergrads(
                p["P"], p["a"], p["Q"], p["b"], prox, p["lam"], lambda s: poly(-h * s), K,
                horizon=T,
            )
            for p in probs
        ]
        arrays = stack(probs, batch)
        data = {k: arrays[k] for k in ("P", "a", "Q", "b")}
        data["prox"] = prox
        g, f = objectives.proximal_quadratic(batch is not None)
        info = dict(n=nn, m=nn, batch=batch, condition_number=kappa, steps=K, horizon=T,
                    h=h, scheme=scheme, prox=prox, contraction=float(np.exp(-top / kappa * h)))
        return finish("gradient flow", g, f, data, arrays["lam"], None,
                       GradientFlow(T, K, scheme=scheme), stack(refs, batch), info, backend,
                       dt, init=identity_init)

    return build()


def imaml_tasks(
    n: Size = (1, 5),
    *,
    batch: int | None = None,
    dtype: Any = "float64",
    backend: str = "numpy",
    condition_number: float = 10.0,
    steps: Size = (1, 40),
    prox: Range = (0.5, 4.0),
) -> st.SearchStrategy[GeneratedProblem]:
    """iMAML on quadratic task losses (V8), meta-parameters ``λ = θ = w0``.

    Task loss ``L̂(φ) = ½(φ − a)ᵀP(φ − a)`` with ``P ⪰ 0`` (singular: its smallest eigenvalue
    is 0), inner objective ``G(φ, θ) = L̂(φ) + (r/2)‖φ − θ‖²`` with ``r`` drawn from
    ``prox``, meta loss ``L(φ) = ½(φ − b)ᵀQ(φ − b)``, ``init(θ) = θ``. ``S = P + rI`` has
    spectrum in ``[r, κr]``, ``κ ≤ condition_number``. The suggested inner solver is
    ``GradientDescent(lr=1/(κr), steps=K)`` from ``φ_0 = θ``. References: ``exact`` (the
    iMAML meta-gradient ``(I + P/r)⁻¹Q(φ* − b)``), ``unrolled`` (MAML through G,
    ``J_KᵀQ(φ_K − b)`` with ``J_K = (I − αS)^K + rS⁻¹(I − (I − αS)^K)``), ``w_star``,
    ``w_unrolled``.
    """
    n_r, k_r = int_range(n, "n"), int_range(steps, "steps")
    r_r = float_range(prox, "prox", 1e-8)
    dt = common_arguments(batch, dtype, backend, condition_number)

    @st.composite
    def build(draw: Any) -> GeneratedProblem:
        nn, K = draw_int(draw, n_r), draw_int(draw, k_r)
        kappa = draw_kappa(draw, nn, condition_number)
        r = draw_float(draw, r_r)
        probs, prox_ = _proximal_tasks(draw, nn, batch, kappa, kappa * r, 1.0)
        lr = 1.0 / (kappa * r)
        refs = [
            closed_forms.proximal_quadratic_hypergrads(
                p["P"], p["a"], p["Q"], p["b"], prox_, p["lam"], lambda s: 1.0 - lr * s, K
            )
            for p in probs
        ]
        arrays = stack(probs, batch)
        data = {k: arrays[k] for k in ("P", "a", "Q", "b")}
        data["prox"] = prox_
        g, f = objectives.proximal_quadratic(batch is not None)
        info = dict(n=nn, m=nn, batch=batch, condition_number=kappa, steps=K, lr=lr,
                    prox=prox_, contraction=1.0 - 1.0 / kappa)
        return finish("iMAML task", g, f, data, arrays["lam"], None, GradientDescent(lr, K),
                       stack(refs, batch), info, backend, dt, init=identity_init)

    return build()
