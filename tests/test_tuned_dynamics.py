"""Tuned dynamics whose step derivatives are derived by autograd (bilevel.hpo.tuned_dynamics).

Per-step step sizes (TunedSchedule) and Adam (TunedAdam): the hypergradients of Reverse and
Forward, which differentiate the step map through DerivedDynamics, match central finite
differences of the unrolled outer loss F(λ) = f(w_K(λ), λ).
"""

from __future__ import annotations

import numpy as np
import pytest

import bilevel.numpy as bnp
from bilevel import BilevelProblem, Forward, Reverse, hypergrad
from bilevel.dynamics import run
from bilevel.hpo import DerivedDynamics, TunedAdam, TunedSchedule

N, D = 30, 5


def problem(seed=0):
    """Ridge with one log-penalty in λ[0] (the rest of λ tunes the dynamics)."""
    rng = np.random.default_rng(seed)
    X, Xv = rng.standard_normal((N, D)), rng.standard_normal((N, D))
    w_true = rng.standard_normal(D)
    y, yv = X @ w_true + 0.3 * rng.standard_normal(N), Xv @ w_true

    def g(w, lam):
        r = bnp.matmul(X, w) - y
        return 0.5 * bnp.mean(r * r) + 0.5 * bnp.exp(lam[0]) * bnp.sum(w * w)

    def f(w, lam):
        r = bnp.matmul(Xv, w) - yv
        return 0.5 * bnp.mean(r * r)

    return BilevelProblem(g, f)


def unrolled_loss(p, dyn, lam, w0):
    return float(p.outer_value(dyn.weights(run(p, dyn, w0, lam)), lam))


def finite_differences(p, dyn, lam, w0, h=1e-6):
    out = np.zeros_like(lam)
    for i in range(lam.size):
        e = np.zeros_like(lam)
        e[i] = h
        out[i] = (unrolled_loss(p, dyn, lam + e, w0) - unrolled_loss(p, dyn, lam - e, w0)) / (2 * h)
    return out


CASES = {
    "schedule": (TunedSchedule(6, offset=1), np.r_[-2.0, np.log(np.linspace(0.2, 0.5, 6))]),
    "adam": (TunedAdam(8, lr_index=1), np.array([-2.0, np.log(0.05)])),
    "adam_beta1": (TunedAdam(8, lr_index=1, beta1_index=2), np.array([-2.0, np.log(0.05), 1.0])),
}


@pytest.mark.filterwarnings("ignore:Forward mode propagates")
@pytest.mark.parametrize("method", [Reverse(), Forward(), Reverse(checkpoints=2)])
@pytest.mark.parametrize("name", sorted(CASES))
def test_derived_step_derivatives_match_finite_differences(name, method):
    dyn, lam = CASES[name]
    assert isinstance(dyn, DerivedDynamics)
    p = problem()
    w0 = np.full(D, 0.1)
    res = hypergrad(p, lam, w0, dynamics=dyn, method=method)
    assert res.success
    fd = finite_differences(p, dyn, lam, w0)
    np.testing.assert_allclose(res.grad, fd, rtol=1e-6, atol=1e-9)
    assert np.all(res.grad[1:] != 0)  # the dynamics' hyperparameters are differentiated


def test_schedule_and_adam_check_their_inputs():
    with pytest.raises(ValueError, match="λ must have shape"):
        hypergrad(problem(), np.zeros(3), np.zeros(D), dynamics=TunedSchedule(6, offset=1))
    with pytest.raises(ValueError, match="differ"):
        TunedAdam(3, lr_index=0, beta1_index=0)
    with pytest.raises(ValueError, match="beta2"):
        TunedAdam(3, beta2=1.0)
    assert "TunedAdam(steps=3" in repr(TunedAdam(3))
