"""Peak memory (tracemalloc) of the memory-flat methods does not grow with the number of
inner steps K, while reverse mode's does (docs/theory.rst §3, memory).

The problem supplies its own oracles (a diagonal quadratic), so the measurement sees the
method's storage, not autodiff traces, and the long runs stay fast.
"""

import gc
import tracemalloc

import numpy as np
import pytest

from bilevel import (
    CG,
    Adjoint,
    BilevelProblem,
    GradientDescent,
    GradientFlow,
    Historyless,
    Implicit,
    Reverse,
    hypergrad,
)

N = 1000  # one state is 8 kB


def diagonal_problem():
    """g = ½wᵀDw − wᵀλ with D in [1, 2]; f = ½‖w − b‖²; all derivatives user-supplied."""
    rng = np.random.default_rng(0)
    d = np.linspace(1.0, 2.0, N)
    b = rng.standard_normal(N)
    oracles = dict(
        inner_grad=lambda w, lam, data: d * w - lam,
        inner_hvp=lambda w, lam, v, data: d * v,
        inner_mixed_vjp=lambda w, lam, u, data: -u,
        inner_mixed_jvp=lambda w, lam, e, data: -e,
        outer_grads=lambda w, lam, data: (w - b, np.zeros_like(lam)),
    )
    problem = BilevelProblem(
        lambda w, lam: 0.5 * np.dot(w, d * w) - np.dot(w, lam),
        lambda w, lam: 0.5 * np.sum((w - b) ** 2),
        oracles=oracles,
    )
    return problem, rng.standard_normal(N), np.zeros(N), d, b


def peak_bytes(method, inner_for_K, K):
    problem, lam, w0, _, _ = diagonal_problem()
    inner = inner_for_K(K)
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        res = hypergrad(problem, lam, w0, dynamics=inner, method=method)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert np.all(np.isfinite(res.grad))
    return peak, res


def gd(K):
    return GradientDescent(0.5, K)


def flow(K):
    return GradientFlow(1e-3 * K, K, "euler")


FLAT = [
    ("implicit-cg", Implicit(CG(), inner_tol=None), gd),
    ("historyless", Historyless(), gd),
    ("adjoint-checkpoint", Adjoint("checkpoint"), flow),
    ("adjoint-reconstruct", Adjoint("reconstruct", reconstruct_warn=1.0,
                                    reconstruct_tol=1.0), flow),
]


@pytest.mark.parametrize("name,method,inner", FLAT, ids=[f[0] for f in FLAT])
def test_peak_memory_flat_in_K(name, method, inner):
    small, _ = peak_bytes(method, inner, 50)
    large, res = peak_bytes(method, inner, 2000)
    if inner is gd:  # the measured run computes the right thing: ∇F = D⁻¹(λ/D − b)
        _, lam, _, d, b = diagonal_problem()
        np.testing.assert_allclose(res.grad, (lam / d - b) / d, rtol=1e-8, err_msg=name)
    state = 8 * N
    # generous: the checkpoint schedule holds ⌈log₂K⌉ + 2 states (8 at K=50, 13 at K=2000)
    assert large < 1.5 * small + 8 * state, (name, small, large)
    assert large < 40 * state, (name, large)


def test_reverse_peak_memory_grows_with_K():
    small, _ = peak_bytes(Reverse(), gd, 50)
    large, _ = peak_bytes(Reverse(), gd, 2000)
    assert large > 2000 * 8 * N * 0.9  # K stored states of n floats
    assert large > 10 * small

