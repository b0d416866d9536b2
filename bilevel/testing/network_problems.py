"""Strategy for smooth non-quadratic problems: a tanh network with learned weight decay."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import strategies as st

from ..dynamics import GradientDescent
from ..problem import BilevelProblem
from . import objectives
from .draws import (
    Size,
    common_arguments,
    draw_int,
    draw_rng,
    finish,
    int_range,
)
from .finite_differences import finite_difference_hypergrad
from .generated import GeneratedProblem, stack

__all__ = ["mlp_problems"]


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
    d_r, h_r = int_range(inputs, "inputs"), int_range(hidden, "hidden")
    m_r = int_range(m, "m")
    if m_r[1] > 2:
        raise ValueError(f"m (number of weight-decay penalties) must be 1 or 2, got {m!r}")
    k_r = int_range(steps, "steps")
    if not (isinstance(samples, int) and samples >= 1):
        raise ValueError(f"samples must be a positive int, got {samples!r}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    dt = common_arguments(batch, dtype, backend, 1.0)

    @st.composite
    def build(draw: Any) -> GeneratedProblem:
        dd, hh = draw_int(draw, d_r), draw_int(draw, h_r)
        mm, K = draw_int(draw, m_r), draw_int(draw, k_r)
        rng = draw_rng(draw)
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
        dynamics = GradientDescent(lr, K)
        reference = BilevelProblem(g, f, data=data)
        ref = finite_difference_hypergrad(reference, arrays["lam"], arrays["w0"],
                                          dynamics=dynamics)
        info = dict(n=nn, m=mm, batch=batch, inputs=dd, hidden=hh, samples=samples, steps=K,
                    lr=lr, condition_number=None)
        return finish("MLP", g, f, data, arrays["lam"], arrays["w0"], dynamics,
                       {"unrolled": np.asarray(ref)}, info, backend, dt)

    return build()
