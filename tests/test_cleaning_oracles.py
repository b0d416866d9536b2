"""Analytic oracles of hyper-cleaning (bilevel.hpo.cleaning_oracles) against autograd.

First order (inner gradient, outer gradients) and second order (HVP by the R-operator,
mixed products both ways, and the unrolled hypergradients of Reverse and Forward) agree with
the autograd derivatives of the same objectives to rounding.
"""

from __future__ import annotations

import numpy as np
import pytest

from bilevel import CG, Forward, GradientDescent, Implicit, Reverse, hypergrad
from bilevel.hpo.problems import hyper_cleaning

N, D, C = 40, 6, 4


def close(a, b, tol=1e-12):
    return np.max(np.abs(a - b)) <= tol * max(np.max(np.abs(b)), 1.0)


def pair(seed=0, **kwargs):
    rng = np.random.default_rng(seed)
    X, Xv = rng.standard_normal((N, D)), rng.standard_normal((N // 2, D))
    y, yv = rng.integers(0, C, N), rng.integers(0, C, N // 2)
    fast = hyper_cleaning(X, y, Xv, yv, n_classes=C, l2=0.05, **kwargs)
    slow = hyper_cleaning(X, y, Xv, yv, n_classes=C, l2=0.05, fast_oracles=False)
    w = rng.standard_normal((D + 1) * C)
    lam = rng.standard_normal(N)
    return fast, slow, w, lam, rng


def test_fast_oracles_are_the_default_and_optional():
    fast, slow, *_ = pair()
    assert sorted(fast.oracles) == ["inner_grad", "inner_hvp", "inner_mixed_jvp",
                                    "inner_mixed_vjp", "outer_grads"]
    assert not slow.oracles
    with pytest.raises(TypeError, match="fast_oracles"):
        pair(fast_oracles="yes")


def test_each_oracle_equals_autograd():
    fast, slow, w, lam, rng = pair()
    v, u, e = (rng.standard_normal(w.shape), rng.standard_normal(w.shape),
               rng.standard_normal(lam.shape))
    assert close(fast.inner_grad(w, lam), slow.inner_grad(w, lam))
    assert close(fast.inner_hvp(w, lam, v), slow.inner_hvp(w, lam, v))
    assert close(fast.inner_mixed_vjp(w, lam, u), slow.inner_mixed_vjp(w, lam, u))
    assert close(fast.inner_mixed_jvp(w, lam, e), slow.inner_mixed_jvp(w, lam, e))
    for a, b in zip(fast.outer_grads(w, lam), slow.outer_grads(w, lam), strict=True):
        assert close(a, b)
    # the products at one point share one forward pass, and a new point or direction is
    # never served from that cache
    lin = fast.linearize(w, lam, trace=False)
    hu, mu = lin.vjp(u)
    assert close(hu, slow.inner_hvp(w, lam, u)) and close(mu, slow.inner_mixed_vjp(w, lam, u))
    w2 = w + 0.1
    assert close(fast.inner_hvp(w2, lam, v), slow.inner_hvp(w2, lam, v))
    assert close(fast.inner_mixed_vjp(w2, lam, u), slow.inner_mixed_vjp(w2, lam, u))
    report = fast.check_oracles(w, lam)
    assert report.ok, report


@pytest.mark.filterwarnings("ignore:Forward mode propagates")
@pytest.mark.parametrize("method", [Reverse(), Forward(), Reverse(checkpoints=3)])
def test_unrolled_hypergradient_equals_autograd(method):
    fast, slow, _, lam, _ = pair(1)
    w0 = np.zeros((D + 1) * C)
    dyn = GradientDescent(0.5, 12)
    a = hypergrad(fast, lam, w0, dynamics=dyn, method=method)
    b = hypergrad(slow, lam, w0, dynamics=dyn, method=method)
    assert a.success and b.success
    assert close(a.grad, b.grad) and close(a.w, b.w)
    np.testing.assert_allclose(a.inner_residual, b.inner_residual, rtol=1e-10)


def test_implicit_hypergradient_equals_autograd():
    fast, slow, _, lam, _ = pair(2)
    w0 = np.zeros((D + 1) * C)
    dyn = GradientDescent(1.0, 300)
    a = hypergrad(fast, lam, w0, dynamics=dyn, method=Implicit(CG(tol=1e-12)))
    b = hypergrad(slow, lam, w0, dynamics=dyn, method=Implicit(CG(tol=1e-12)))
    assert close(a.grad, b.grad, 1e-9)
