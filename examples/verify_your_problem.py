"""Verify your own bilevel problem — an example test file, written as a user would write it.

The problem: logistic regression whose L2 penalty has one learned strength per feature,
``λ_j = log(penalty_j)``, tuned on a validation set::

    g(w, λ) = mean_i softplus(−y_i x_iᵀw) + ½ Σ_j e^{λ_j} w_j²     (training loss)
    f(w, λ) = mean_i softplus(−y_i x_iᵀw)  on validation data      (validation loss)

Before optimizing λ, check that (1) the derivative oracles are right, (2) the method you
picked computes the hypergradient of what you think it does, (3) your solver settings
are accurate enough, and (4) all of this holds over a range of hyperparameters.

Run it with ``pytest examples/verify_your_problem.py`` or ``python
examples/verify_your_problem.py``; it needs hypothesis and pytest (``pip install -e
".[verify]"``). Set ``HYPOTHESIS_PROFILE=thorough`` for many more random examples.
"""

import sys

import numpy as np

try:
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:  # a clear message, not a traceback
    sys.exit('this example needs hypothesis and pytest: pip install -e ".[verify]"')

import bilevel.numpy as bnp
from bilevel import (
    CG,
    BilevelProblem,
    Forward,
    GradientDescent,
    Historyless,
    Implicit,
    Reverse,
)
from bilevel.testing import check_hypergrad, check_oracles, register_profiles, ridge_problems

register_profiles()  # "ci" (few, fixed examples) unless HYPOTHESIS_PROFILE says otherwise

N_FEATURES = 4


def make_problem(seed: int = 0) -> BilevelProblem:
    """The user's problem: per-feature L2 penalties of a logistic regression."""
    rng = np.random.default_rng(seed)
    w_true = rng.standard_normal(N_FEATURES)
    X, Xv = rng.standard_normal((2, 40, N_FEATURES))
    y = np.sign(X @ w_true + 0.5 * rng.standard_normal(40))
    yv = np.sign(Xv @ w_true + 0.5 * rng.standard_normal(40))

    def training_loss(w, lam, data):
        margins = data["y"] * bnp.einsum("nd,d->n", data["X"], w)
        return bnp.mean(bnp.softplus(-margins)) + 0.5 * bnp.sum(bnp.exp(lam) * w * w)

    def validation_loss(w, lam, data):
        margins = data["yv"] * bnp.einsum("nd,d->n", data["Xv"], w)
        return bnp.mean(bnp.softplus(-margins))

    return BilevelProblem(training_loss, validation_loss,
                          data={"X": X, "y": y, "Xv": Xv, "yv": yv}, name="logistic L2")


PROBLEM = make_problem()
W0 = np.zeros(N_FEATURES)
LAM = np.full(N_FEATURES, -1.0)
# the training loss is e^{-1}-strongly convex and (1/4)‖X‖²/N + 1 smooth: lr 1 is stable
SHORT = GradientDescent(lr=1.0, steps=15)
LONG = GradientDescent(lr=1.0, steps=150)


def test_oracles_match_finite_differences():
    # gradients, Hessian-vector and mixed products against central differences
    check_oracles(PROBLEM, W0 + 0.1, LAM)


def test_reverse_is_the_derivative_of_the_unrolled_training():
    # Reverse differentiates the 15 gradient steps exactly: compare with finite differences
    check_hypergrad(PROBLEM, LAM, W0, dynamics=SHORT, method=Reverse(),
                    reference="finite-differences", rtol=1e-6)


def test_forward_equals_reverse():
    # two exact derivatives of the same unrolled map agree to rounding
    check_hypergrad(PROBLEM, LAM, W0, dynamics=SHORT, method=Forward(), reference=Reverse(),
                    rtol=1e-10)


def test_implicit_and_historyless_agree_with_long_unrolling():
    # at a converged inner solution the implicit hypergradient is the limit of unrolling
    for method in (Implicit(CG(tol=1e-10)), Historyless()):
        check_hypergrad(PROBLEM, LAM, W0, dynamics=LONG, method=method, reference=Reverse(),
                        rtol=1e-6)


@settings(max_examples=5)
@given(st.lists(st.floats(-2.0, 0.5), min_size=N_FEATURES, max_size=N_FEATURES))
def test_implicit_over_a_range_of_penalties(lam):
    # penalties in [e^-2, e^0.5]: the smoothness L ≤ e^0.5 + ‖X‖²/4N < 2.5, so lr = 0.5 is
    # stable (lr = 1 diverges for the strongest penalties, and check_hypergrad says so);
    # the weakest penalty e^-2 sets the contraction 1 − 0.5·e^-2 per step
    check_hypergrad(PROBLEM, np.array(lam), W0, dynamics=GradientDescent(lr=0.5, steps=300),
                    method=Implicit(CG(tol=1e-10)), reference=Reverse(), rtol=1e-5)


@settings(max_examples=5)
@given(ridge_problems(n=(1, 4), steps=120, condition_number=4.0))
def test_my_solver_settings_on_problems_with_known_answers(gen):
    # the configuration above, on generated ridge problems with a closed-form answer
    check_hypergrad(gen.problem, gen.lam, gen.w0, dynamics=gen.dynamics,
                    method=Implicit(CG(tol=1e-10)), reference=gen.references["exact"], rtol=1e-6)


if __name__ == "__main__":
    import pytest

    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider",
                          "-W", "ignore::pytest.PytestAssertRewriteWarning"]))
