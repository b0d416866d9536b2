"""No wrong number with ``success=True`` (issue 13, numerical half).

Each test is a case that used to return a wrong hypergradient reported as a success, or a
raw error that did not say what was wrong; it now fails with a message that names the cause.
"""

from __future__ import annotations

import warnings

import autograd
import autograd.numpy as anp
import numpy as np
import pytest

from bilevel import (
    BilevelProblem,
    Forward,
    GradientDescent,
    Historyless,
    Implicit,
    Momentum,
    Reverse,
    hypergrad,
)
from bilevel.api import TracingError
from bilevel.backend import unbox
from bilevel.linalg import FixedPoint, Neumann
from bilevel.methods import FirstOrder


def stiff():
    """g = 5‖w − λ‖² (H = 10 I), f = ½‖w − 1‖²: at λ = 0 the hypergradient is −1."""
    g = lambda w, lam: 5 * anp.sum((w - lam) ** 2)  # noqa: E731
    f = lambda w, lam: 0.5 * anp.sum((w - 1) ** 2)  # noqa: E731
    return BilevelProblem(g, f), np.zeros(3), np.zeros(3)


def quiet(*args, **kwargs):
    kwargs.setdefault("on_failure", "ignore")
    return hypergrad(*args, **kwargs)


@pytest.mark.parametrize("solver", [Neumann(alpha=0.205), FixedPoint(alpha=0.205, tol=0)])
def test_a_diverging_neumann_series_is_a_failure(solver):
    problem, lam, w0 = stiff()  # α·λ_max = 2.05: the series grows by 1.05 per term
    res = quiet(problem, lam, w0, dynamics=GradientDescent(0.05, 100), method=Implicit(solver))
    assert not res.success and "diverged" in res.message and "alpha" in res.message
    ok = quiet(problem, lam, w0, dynamics=GradientDescent(0.05, 100),
               method=Implicit(Neumann(alpha=0.15)))
    assert ok.success and np.allclose(ok.grad, -1.0)


def test_unstable_unrolled_gradient_descent_names_the_step_size():
    problem, lam, w0 = stiff()  # |1 − lr·L| = 1.5: the unrolled derivative grows as 1.5^K
    with pytest.warns(UserWarning, match=r"step size lr=0\.25"):
        res = hypergrad(problem, lam, w0, dynamics=GradientDescent(lr=0.25, steps=10))
    assert not res.success and res.unstable_step == 0
    assert res.step_stiffness == pytest.approx(2.5) and res.stability_bound == 2.0
    ok = hypergrad(problem, lam, w0, dynamics=GradientDescent(lr=0.15, steps=10))
    assert ok.success and ok.unstable_step is None and ok.step_stiffness == pytest.approx(1.5)


def test_unstable_momentum_uses_the_heavy_ball_bound():
    problem, lam, w0 = stiff()  # stable while lr·L < 2(1 + β) = 3
    assert quiet(problem, lam, w0, dynamics=Momentum(0.25, 0.5, 20)).success
    res = quiet(problem, lam, w0, dynamics=Momentum(0.35, 0.5, 20))
    assert not res.success and "lr=0.35" in res.message and res.stability_bound == 3.0


def test_unstable_steps_are_flagged_per_problem_in_a_batch():
    def batch(scales):
        c = np.asarray(scales)[:, None]
        return BilevelProblem(lambda w, lam: anp.sum(c * (w - lam) ** 2, axis=1),
                              lambda w, lam: 0.5 * anp.sum((w - 1) ** 2, axis=1))

    lam, w0, lr = np.zeros((2, 3)), np.zeros((2, 3)), GradientDescent([0.15] * 5, 5)
    assert quiet(batch([5.0, 5.0]), lam, w0, dynamics=lr).success
    res = quiet(batch([5.0, 50.0]), lam, w0, dynamics=lr)  # lr·L = 1.5 and 15
    assert not res.success and res.problem_success.tolist() == [True, False]


def test_maml_with_a_huge_inner_step_is_not_a_success():
    from bilevel.meta import Sinusoid
    from bilevel.meta.algorithms import MAML
    from bilevel.meta.models import MLP

    alg = MAML(MLP((1, 3, 1), activation="tanh"), 1e6, 3)
    episode = Sinusoid(n_shot=4, n_query=4).sample(2, np.random.default_rng(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, step = alg.meta_gradient(alg.init(np.random.default_rng(1)), episode)
    assert not step.success


@pytest.mark.parametrize("cut", [unbox, lambda x: np.asarray(unbox(x))])
def test_lambda_cut_out_of_the_trace_raises(cut):
    g = lambda w, lam: 0.5 * anp.sum((w - cut(lam)) ** 2)  # noqa: E731
    f = lambda w, lam: 0.5 * anp.sum((w - 1) ** 2)  # noqa: E731
    with pytest.raises(TracingError, match=r"anp"):
        hypergrad(BilevelProblem(g, f), np.zeros(3), np.zeros(3),
                  dynamics=GradientDescent(0.5, 10))


@pytest.mark.filterwarnings("ignore:Output seems independent of input")
def test_an_inner_objective_cut_from_w_raises():
    g = lambda w, lam: 0.5 * anp.sum((unbox(w) - lam) ** 2)  # noqa: E731
    f = lambda w, lam: 0.5 * anp.sum((w - 1) ** 2)  # noqa: E731
    with pytest.raises(TracingError, match="does not depend on w"):
        hypergrad(BilevelProblem(g, f), np.zeros(3), np.zeros(3),
                  dynamics=GradientDescent(0.5, 10))


def test_numpy_on_a_traced_value_gives_a_tracing_error():
    g = lambda w, lam: 0.5 * anp.sum((w - np.asarray(lam)) ** 2)  # noqa: E731
    f = lambda w, lam: 0.5 * anp.sum((w - 1) ** 2)  # noqa: E731
    with pytest.raises(TracingError, match="NumPy"):
        hypergrad(BilevelProblem(g, f), np.ones(3), np.zeros(3),
                  dynamics=GradientDescent(0.5, 10))


def test_a_genuine_zero_hypergradient_is_not_an_error():
    g = lambda w, lam: 0.5 * anp.sum((w - lam) ** 2)  # noqa: E731
    f = lambda w, lam: 0.5 * anp.sum((w - 1) ** 2)  # noqa: E731
    res = hypergrad(BilevelProblem(g, f), np.ones(3), np.ones(3),
                    dynamics=GradientDescent(0.5, 10))
    assert res.success and np.all(res.grad == 0)


def test_float_on_a_traced_value_says_so():
    g = lambda w, lam: float(lam[0]) * anp.sum(w ** 2)  # noqa: E731
    f = lambda w, lam: 0.5 * anp.sum((w - 1) ** 2)  # noqa: E731
    with pytest.raises(TracingError, match="Python float"):
        hypergrad(BilevelProblem(g, f), np.ones(3), np.zeros(3),
                  dynamics=GradientDescent(0.05, 10))


def ridge():
    A = np.diag([1.0, 2.0, 3.0])
    g = lambda w, lam: 0.5 * w @ A @ w - lam @ w  # noqa: E731
    return g, A


def test_historyless_judges_its_residual_by_default():
    g, _ = ridge()
    f = lambda w, lam: 0.5 * anp.sum((w - 1) ** 2)  # noqa: E731
    res = quiet(BilevelProblem(g, f), np.ones(3), np.zeros(3),
                dynamics=GradientDescent(0.1, 3), method=Historyless())
    assert not res.success and res.relative_linear_residual > 1e-2
    assert "final linear residual" in res.message


def test_historyless_no_false_alarm_when_the_outer_gradient_starts_at_zero():
    g, A = ridge()
    f = lambda w, lam: anp.sum(w ** 2)  # noqa: E731  ∇_w f(w0 = 0) = 0
    lam = np.ones(3)
    res = quiet(BilevelProblem(g, f), lam, np.zeros(3), dynamics=GradientDescent(0.3, 200),
                method=Historyless())
    w_star = np.linalg.solve(A, lam)
    assert res.success and not res.diverged
    np.testing.assert_allclose(res.grad, 2 * np.linalg.solve(A, w_star), rtol=1e-6)


def test_negative_per_step_learning_rates_are_rejected():
    with pytest.raises(ValueError, match="positive"):
        GradientDescent([-0.01] * 50, 50)
    with pytest.raises(ValueError, match="entry 2"):
        Momentum([0.1, 0.1, float("nan")], 0.5, 3)


@pytest.mark.parametrize("where", ["lam", "w0", "data"])
def test_nan_inputs_are_named(where):
    data = {"x": np.ones(3)}
    lam, w0 = np.zeros(3), np.zeros(3)
    {"lam": lam, "w0": w0, "data": data["x"]}[where][1] = np.nan
    g = lambda w, lam, d: 0.5 * anp.sum((w - lam * d["x"]) ** 2)  # noqa: E731
    f = lambda w, lam, d: 0.5 * anp.sum((w - 1) ** 2)  # noqa: E731
    res = quiet(BilevelProblem(g, f, data=data), lam, w0, dynamics=GradientDescent(0.1, 5))
    name = "data['x']" if where == "data" else where
    assert not res.success and f"the input {name} contains NaN" in res.message
    assert "step size" in res.message and "not the cause" in res.message


@pytest.mark.parametrize("method", [Implicit(), Historyless(), FirstOrder()])
def test_differentiating_through_hypergrad_needs_an_unrolled_method(method):
    problem, _, w0 = stiff()

    def outer(lam):
        return anp.sum(hypergrad(problem, lam, w0, dynamics=GradientDescent(0.05, 20),
                                 method=method).grad)

    with pytest.raises(TypeError, match="use Reverse"):
        autograd.grad(outer)(np.ones(3))


@pytest.mark.parametrize("method", [Reverse(), Forward()])
def test_differentiating_through_unrolled_methods_still_works(method):
    problem, _, w0 = stiff()

    def outer(lam):
        return anp.sum(hypergrad(problem, lam, w0, dynamics=GradientDescent(0.05, 20),
                                 method=method).grad)

    # w_K = λ − 0.5^20·λ, ∇F = (1 − 0.5^20)²(λ − 1 + …): a constant λ-derivative
    np.testing.assert_allclose(autograd.grad(outer)(np.ones(3)), (1 - 0.5 ** 20) ** 2,
                               rtol=1e-10)


def test_the_stability_test_is_the_same_under_checkpointing_and_truncation():
    problem, lam, w0 = stiff()
    dyn = GradientDescent(0.25, 12)
    full = quiet(problem, lam, w0, dynamics=dyn)
    ck = quiet(problem, lam, w0, dynamics=dyn, method=Reverse(checkpoints=2))
    assert (ck.success, ck.unstable_step, ck.step_stiffness) == (
        full.success, full.unstable_step, full.step_stiffness)
    # six swept steps at |1 − lr·λ| = 1.5 amplify by 11 > GROWTH_LIMIT; three (3.4×) do not
    short = quiet(problem, lam, w0, dynamics=dyn, method=Reverse(truncate=6))
    assert not short.success and short.unstable_step == 6  # the first swept step
    assert quiet(problem, lam, w0, dynamics=dyn, method=Reverse(truncate=3)).success


def test_a_stable_run_reports_its_stiffness():
    problem, lam, w0 = stiff()
    res = hypergrad(problem, lam, w0, dynamics=GradientDescent(0.05, 10))
    assert res.success and res.step_stiffness == pytest.approx(0.5)
    assert res.stability_bound == 2.0 and res.unstable_step is None


def test_nan_in_a_meta_learning_episode_is_named_and_goes_through_the_policy():
    from bilevel.meta import Sinusoid
    from bilevel.meta.algorithms import MAML
    from bilevel.meta.models import MLP

    alg = MAML(MLP((1, 3, 1), activation="tanh"), 0.05, 3)
    episode = Sinusoid(n_shot=4, n_query=4).sample(2, np.random.default_rng(0))
    episode.x_support[0, 1, 0] = np.nan
    _, step = alg.meta_gradient(alg.init(np.random.default_rng(1)), episode)
    assert not step.success and "the input data.x_support contains NaN" in step.message


def test_float32_and_a_zero_cotangent_are_no_false_alarm():
    g = lambda w, lam: 0.5 * anp.sum((w - lam) ** 2)  # noqa: E731
    f = lambda w, lam: 0.5 * anp.sum((w - 1) ** 2)  # noqa: E731
    ones = np.ones(3, dtype=np.float32)
    res = hypergrad(BilevelProblem(g, f), ones, ones, dynamics=GradientDescent(0.5, 5))
    assert res.success and res.step_stiffness == 0.0  # a_K = ∇_w f = 0: nothing to judge
    res = hypergrad(BilevelProblem(g, f), 0 * ones, ones, dynamics=GradientDescent(0.5, 5))
    assert res.success and res.step_stiffness == pytest.approx(0.5)


def test_one_overshooting_maml_step_is_not_a_failure():
    """K = 1 with lr·λ_max ≈ 3.6: the derivative is amplified 2.6×, exact, not diverging."""
    def g1(w, lam):
        return 0.5 * 180.0 * anp.sum((w - lam) ** 2)

    def f1(w, lam):
        return 0.5 * anp.sum((w - 1.0) ** 2)

    res = quiet(BilevelProblem(g1, f1, init=lambda lam: lam), np.zeros(3), None,
                dynamics=GradientDescent(0.02, 1))
    assert res.success and res.unstable_step is None and res.step_stiffness > 2
    # the same step size for 10 steps multiplies errors by 2.6^10: a failure naming lr
    res = quiet(BilevelProblem(g1, f1, init=lambda lam: lam), np.zeros(3), None,
                dynamics=GradientDescent(0.02, 10))
    assert not res.success and "lr=0.02" in res.message


@pytest.mark.parametrize("method", [Reverse(), Forward()])
def test_unrolled_methods_refuse_undifferentiated_dynamics_before_any_work(method):
    """NewtonCG's line search has no step derivatives: refused by check_dynamics, not mid-sweep."""
    from bilevel.dynamics import NewtonCG

    def g(w, lam):
        return anp.sum((w - lam) ** 2)

    calls = []

    def f(w, lam):
        calls.append(1)
        return anp.sum(w ** 2)

    with pytest.raises(NotImplementedError, match="NewtonCG's line search is not differentiated"):
        hypergrad(BilevelProblem(g, f), np.ones(2), np.zeros(2), dynamics=NewtonCG(3),
                  method=method)
    assert not calls  # refused before the inner loop or any evaluation
