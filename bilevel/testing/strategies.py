"""Hypothesis strategies generating bilevel problems with known hypergradients.

Each strategy draws sizes, a condition number and a random seed, builds the matrices in
NumPy float64, computes the reference answers there (:mod:`bilevel.testing.closed_forms`)
and returns a :class:`~bilevel.testing.generated.GeneratedProblem` whose arrays live on
the requested backend and dtype. Sizes are given as an ``int`` or an inclusive range
``(low, high)``; ``batch=B`` adds a leading axis of B independent problems.

=============================  =============================  ==============================
strategy                       problem                        references
=============================  =============================  ==============================
``quadratic_problems``         quadratic g, quadratic f (V2)  exact, unrolled (GD)
``ridge_problems``             per-feature ridge (V7)         exact, unrolled (GD)
``gradient_flow_problems``     proximal quadratic, w0 = θ     exact (T→∞), unrolled (RK
                               (V4, V9)                       scheme), flow (matrix exp.)
``imaml_tasks``                proximal quadratic task, w0=θ  exact (iMAML), unrolled (GD)
                               (V8)
``mlp_problems``               tanh network, weight decay     unrolled (finite differences)
=============================  =============================  ==============================
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from hypothesis import strategies as st

from .. import backend as _backend
from ..dynamics import GradientDescent, GradientFlow
from ..problem import BilevelProblem
from . import closed_forms, objectives
from .check import finite_difference_hypergrad
from .closed_forms import STABILITY_POLYNOMIALS
from .generated import (
    GeneratedProblem,
    check_dtype,
    random_orthogonal,
    random_spd,
    spectrum,
    stack,
    to_target,
)

__all__ = [
    "gradient_flow_problems",
    "imaml_tasks",
    "mlp_problems",
    "quadratic_problems",
    "ridge_problems",
]

Size = int | tuple[int, int]
Range = float | tuple[float, float]


def _int_range(value: Size, name: str, low: int = 1) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        lo = hi = int(value)
    elif isinstance(value, tuple) and len(value) == 2 and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value
    ):
        lo, hi = (int(v) for v in value)
    else:
        raise TypeError(f"{name} must be an int or a (low, high) pair of ints, got {value!r}")
    if not low <= lo <= hi:
        raise ValueError(f"{name} must satisfy {low} <= low <= high, got {value!r}")
    return lo, hi


def _float_range(value: Range, name: str, low: float, high: float = math.inf) -> tuple:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        lo = hi = float(value)
    elif isinstance(value, tuple) and len(value) == 2:
        lo, hi = (float(v) for v in value)
    else:
        raise TypeError(f"{name} must be a number or a (low, high) pair, got {value!r}")
    if not low <= lo <= hi <= high:
        raise ValueError(f"{name} must lie in [{low}, {high}] with low <= high, got {value!r}")
    return lo, hi


def _common(batch: int | None, dtype: Any, backend: str, condition_number: float,
            least: float = 1.0) -> np.dtype:
    if batch is not None and (
        not isinstance(batch, (int, np.integer)) or isinstance(batch, bool) or batch < 1
    ):
        raise ValueError(f"batch must be None or a positive int, got {batch!r}")
    if not (isinstance(condition_number, (int, float)) and condition_number >= least):
        raise ValueError(f"condition_number must be a number >= {least}, got {condition_number!r}")
    dt = check_dtype(dtype)
    _backend.module(backend)  # raises BackendError naming what is missing
    return dt


def _draw_int(draw: Any, bounds: tuple[int, int]) -> int:
    return draw(st.integers(*bounds))


def _draw_float(draw: Any, bounds: tuple[float, float]) -> float:
    lo, hi = bounds
    return lo if lo == hi else draw(st.floats(lo, hi, allow_nan=False, allow_infinity=False))


def _draw_kappa(draw: Any, n: int, condition_number: float, least: float = 1.0) -> float:
    """A condition number in ``[least, condition_number]`` (1 for a 1 × 1 matrix)."""
    kappa = _draw_float(draw, (least, float(condition_number)))
    return 1.0 if n == 1 else kappa


def _rng(draw: Any) -> np.random.Generator:
    return np.random.default_rng(draw(st.integers(0, 2**32 - 1)))


def _finish(
    kind: str,
    g: Any,
    f: Any,
    data: dict,
    lam: np.ndarray,
    w0: np.ndarray | None,
    inner: Any,
    refs: dict,
    info: dict,
    backend: str,
    dtype: np.dtype,
    init: Any = None,
) -> GeneratedProblem:
    problem = BilevelProblem(
        g, f, data=to_target(data, backend, dtype), init=init, name=f"generated {kind}"
    )
    info = {**info, "kind": kind, "dtype": str(dtype), "backend": backend}
    return GeneratedProblem(
        problem=problem,
        lam=to_target(lam, backend, dtype),
        w0=None if w0 is None else to_target(w0, backend, dtype),
        inner=inner,
        references=to_target(refs, backend, dtype),
        info=info,
    )


def _identity(lam: Any) -> Any:
    """``w0 = init(θ) = θ`` (MAML-style initialization)."""
    return lam


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
    """Linear-quadratic bilevel problems (ALGORITHMS V2).

    ``g(w, λ) = ½wᵀHw − wᵀ(Bλ + c)`` with ``H`` SPD, eigenvalues in ``[μ, κμ]``,
    ``κ ≤ condition_number``; ``f(w, λ) = ½‖Cw − d‖² + ½γ‖λ‖²``. The suggested inner
    solver is ``GradientDescent(lr=1/L, steps=K)`` from a random constant ``w0`` (with a
    batch, ``L`` is the largest eigenvalue over the batch). References: ``exact``
    (``BᵀH⁻¹Cᵀ(Cw* − d) + γλ``), ``unrolled`` (``Bᵀ(I − R^K)H⁻¹Cᵀ(Cw_K − d) + γλ``,
    ``R = I − αH``), ``w_star``, ``w_unrolled``. ``info["contraction"]`` is
    ``q = max_b(1 − αμ_b)``.
    """
    n_r, m_r, k_r = _int_range(n, "n"), _int_range(m, "m"), _int_range(steps, "steps")
    dt = _common(batch, dtype, backend, condition_number)

    @st.composite
    def build(draw: Any) -> GeneratedProblem:
        nn, mm, K = _draw_int(draw, n_r), _draw_int(draw, m_r), _draw_int(draw, k_r)
        kappa = _draw_kappa(draw, nn, condition_number)
        gamma = draw(st.sampled_from([0.0, 0.5]))
        rng = _rng(draw)
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
        return _finish("quadratic", g, f, data, arrays["lam"], arrays["w0"],
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
    """Ridge regression with one log-penalty per feature (ALGORITHMS V7), ``m = n``.

    ``g(w, λ) = ½‖Xw − y‖² + ½Σ_j e^{λ_j}w_j²``, ``f(w) = ½‖X_v w − y_v‖²``. The spectrum of
    ``XᵀX`` and ``λ ∈ [−1, 1]^n`` are drawn so that ``A = XᵀX + diag(e^λ)`` has condition
    number at most ``condition_number`` (which must be at least 3). The suggested inner
    solver is ``GradientDescent(lr=1/λ_max(A), steps=K)`` from a random ``w0``. References:
    ``exact`` (``−e^λ ⊙ w* ⊙ A⁻¹X_vᵀr_v``), ``unrolled`` (closed form through the Fréchet
    derivative of ``R^K``), ``w_star``, ``w_unrolled``.
    """
    n_r, k_r = _int_range(n, "n"), _int_range(steps, "steps")
    dt = _common(batch, dtype, backend, condition_number, least=3.0)

    @st.composite
    def build(draw: Any) -> GeneratedProblem:
        nn, K = _draw_int(draw, n_r), _draw_int(draw, k_r)
        kappa = _draw_kappa(draw, nn, condition_number, least=3.0)
        extra = draw(st.integers(0, 3))
        n_val = draw(st.integers(1, nn + 2))
        rng = _rng(draw)
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
                    Xv=Xv,
                    yv=Xv @ w_true + 0.3 * rng.standard_normal(n_val),
                    lam=rng.uniform(-1.0, 1.0, nn),
                    w0=rng.standard_normal(nn),
                )
            )
        eigs = [np.linalg.eigvalsh(p["X"].T @ p["X"] + np.diag(np.exp(p["lam"]))) for p in probs]
        lr = 1.0 / max(e[-1] for e in eigs)
        refs = [
            closed_forms.ridge_hypergrads(p["X"], p["y"], p["Xv"], p["yv"], p["lam"], p["w0"],
                                          lr, K)
            for p in probs
        ]
        arrays = stack(probs, batch)
        data = {k: arrays[k] for k in ("X", "y", "Xv", "yv")}
        g, f = objectives.ridge(batch is not None)
        info = dict(
            n=nn, m=nn, batch=batch, condition_number=max(e[-1] / e[0] for e in eigs),
            contraction=max(1.0 - lr * e[0] for e in eigs), steps=K, lr=lr,
        )
        return _finish("ridge", g, f, data, arrays["lam"], arrays["w0"],
                       GradientDescent(lr, K), stack(refs, batch), info, backend, dt)

    return build()


def _proximal_tasks(
    draw: Any,
    nn: int,
    batch: int | None,
    kappa: float,
    top: float,
    prox_frac: float,
) -> tuple[list[dict], float]:
    """Draw tasks with ``S = P + rI`` spectrum in ``[top/κ, top]`` and ``r = frac·top/κ``."""
    rng = _rng(draw)
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
    """Gradient flow on a proximal quadratic from ``w(0) = θ = λ`` (ALGORITHMS V4, V9).

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
    n_r, k_r = _int_range(n, "n"), _int_range(steps, "steps")
    t_r = _float_range(horizon, "horizon", 1e-6)
    p_r = _float_range(proximal, "proximal", 0.0, 1.0)
    if scheme not in STABILITY_POLYNOMIALS:
        raise ValueError(f"scheme must be one of {sorted(STABILITY_POLYNOMIALS)}, got {scheme!r}")
    dt = _common(batch, dtype, backend, condition_number)
    poly = STABILITY_POLYNOMIALS[scheme]

    @st.composite
    def build(draw: Any) -> GeneratedProblem:
        nn, K = _draw_int(draw, n_r), _draw_int(draw, k_r)
        T = _draw_float(draw, t_r)
        kappa = _draw_kappa(draw, nn, condition_number)
        frac = _draw_float(draw, p_r)
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
        return _finish("gradient flow", g, f, data, arrays["lam"], None,
                       GradientFlow(T, K, scheme=scheme), stack(refs, batch), info, backend,
                       dt, init=_identity)

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
    """iMAML on quadratic task losses (ALGORITHMS V8), meta-parameters ``λ = θ = w0``.

    Task loss ``L̂(φ) = ½(φ − a)ᵀP(φ − a)`` with ``P ⪰ 0`` (singular: its smallest eigenvalue
    is 0), inner objective ``G(φ, θ) = L̂(φ) + (r/2)‖φ − θ‖²`` with ``r`` drawn from
    ``prox``, meta loss ``L(φ) = ½(φ − b)ᵀQ(φ − b)``, ``init(θ) = θ``. ``S = P + rI`` has
    spectrum in ``[r, κr]``, ``κ ≤ condition_number``. The suggested inner solver is
    ``GradientDescent(lr=1/(κr), steps=K)`` from ``φ_0 = θ``. References: ``exact`` (the
    iMAML meta-gradient ``(I + P/r)⁻¹Q(φ* − b)``), ``unrolled`` (MAML through G,
    ``J_KᵀQ(φ_K − b)`` with ``J_K = (I − αS)^K + rS⁻¹(I − (I − αS)^K)``), ``w_star``,
    ``w_unrolled``.
    """
    n_r, k_r = _int_range(n, "n"), _int_range(steps, "steps")
    r_r = _float_range(prox, "prox", 1e-8)
    dt = _common(batch, dtype, backend, condition_number)

    @st.composite
    def build(draw: Any) -> GeneratedProblem:
        nn, K = _draw_int(draw, n_r), _draw_int(draw, k_r)
        kappa = _draw_kappa(draw, nn, condition_number)
        r = _draw_float(draw, r_r)
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
        return _finish("iMAML task", g, f, data, arrays["lam"], None, GradientDescent(lr, K),
                       stack(refs, batch), info, backend, dt, init=_identity)

    return build()


def mlp_problems(
    inputs: Size = (1, 3),
    hidden: Size = (2, 4),
    m: Size = (1, 2),
    *,
    batch: int | None = None,
    dtype: Any = "float64",
    backend: str = "numpy",
    samples: int = 8,
    steps: Size = (1, 8),
    lr: float = 0.2,
) -> st.SearchStrategy[GeneratedProblem]:
    """Smooth non-quadratic problems: a tanh network with learned weight decay.

    See :func:`bilevel.testing.objectives.mlp`: ``n = h·d + 2h + 1`` weights, ``m ∈ {1, 2}``
    log-penalties (λ drawn in ``[−2, 0]``), ``samples`` training and validation points.
    No closed form exists; the one reference, ``unrolled``, is the derivative of the
    K-step gradient-descent map by extrapolated central finite differences in float64
    (:func:`~bilevel.testing.check.finite_difference_hypergrad`, relative accuracy about
    1e-9). Use these problems for identities between methods (forward = reverse, discrete
    adjoint of Euler = reverse) and against that reference.
    """
    d_r, h_r = _int_range(inputs, "inputs"), _int_range(hidden, "hidden")
    m_r = _int_range(m, "m")
    if m_r[1] > 2:
        raise ValueError(f"m (number of weight-decay penalties) must be 1 or 2, got {m!r}")
    k_r = _int_range(steps, "steps")
    if not (isinstance(samples, int) and samples >= 1):
        raise ValueError(f"samples must be a positive int, got {samples!r}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    dt = _common(batch, dtype, backend, 1.0)

    @st.composite
    def build(draw: Any) -> GeneratedProblem:
        dd, hh = _draw_int(draw, d_r), _draw_int(draw, h_r)
        mm, K = _draw_int(draw, m_r), _draw_int(draw, k_r)
        rng = _rng(draw)
        nn = objectives.mlp_shapes(dd, hh)[-1]
        probs = []
        for _ in range(1 if batch is None else batch):
            teacher = rng.standard_normal(dd)
            X, Xv = rng.standard_normal((2, samples, dd)) / np.sqrt(dd)
            probs.append(
                dict(
                    X=X,
                    y=np.sin(X @ teacher) + 0.1 * rng.standard_normal(samples),
                    Xv=Xv,
                    yv=np.sin(Xv @ teacher) + 0.1 * rng.standard_normal(samples),
                    lam=rng.uniform(-2.0, 0.0, mm),
                    w0=0.5 * rng.standard_normal(nn),
                )
            )
        arrays = stack(probs, batch)
        data = {k: arrays[k] for k in ("X", "y", "Xv", "yv")}
        g, f = objectives.mlp(batch is not None, dd, hh, mm)
        inner = GradientDescent(lr, K)
        reference = BilevelProblem(g, f, data=data)
        ref = finite_difference_hypergrad(reference, arrays["lam"], arrays["w0"], inner=inner)
        info = dict(n=nn, m=mm, batch=batch, inputs=dd, hidden=hh, samples=samples, steps=K,
                    lr=lr, condition_number=None)
        return _finish("MLP", g, f, data, arrays["lam"], arrays["w0"], inner,
                       {"unrolled": np.asarray(ref)}, info, backend, dt)

    return build()
