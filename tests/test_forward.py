"""Tests for bilevel.methods.forward: forward-mode hypergradients (docs/theory.rst §2.3).

Forward mode and reverse mode differentiate the same unrolled map, so they must agree to
rounding (V1); both must match central finite differences; the linear-quadratic closed form
(V2) gives exact references, including the derivative with respect to the step size.
"""

import warnings

import autograd.numpy as anp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from shared_problems import N_MLP, dyn_for, fd_gradient, mlp, rel, spd

from bilevel import (
    BilevelProblem,
    Forward,
    GradientDescent,
    HypergradError,
    HypergradWarning,
    Reverse,
    hypergrad,
)
from bilevel.dynamics import run


def mlp_problem(seed, with_init=False):
    """λ = (log L2 penalty, three input scalings); optionally w0 = init(λ) depends on λ too."""
    rng = np.random.default_rng(seed)
    data = dict(
        X=rng.standard_normal((10, 3)),
        y=rng.standard_normal(10),
        Xv=rng.standard_normal((7, 3)),
        yv=rng.standard_normal(7),
    )
    base = 0.5 * rng.standard_normal(N_MLP)

    def g(w, lam, data):
        scale = 1.0 + anp.tanh(lam[..., 1:4])
        r = mlp(w, data["X"] * scale[..., None, :]) - data["y"]
        return anp.mean(r**2, axis=-1) + 0.5 * anp.exp(lam[..., 0]) * anp.sum(w**2, axis=-1)

    def f(w, lam, data):
        r = mlp(w, data["Xv"]) - data["yv"]
        return anp.mean(r**2, axis=-1) + 0.01 * anp.sum(lam**2, axis=-1)

    init = (lambda lam: base * anp.exp(0.5 * lam[0]) + 0.1 * anp.sum(lam)) if with_init else None
    return BilevelProblem(g, f, data=data, init=init)


def unrolled_value(problem, dyn, w0, lam):
    start = problem.initial_point(lam) if problem.init is not None else w0
    return problem.outer_value(dyn.weights(run(problem, dyn, start, lam)), lam)


# --------------------------------------------------------------------------- V1


@pytest.mark.parametrize(
    "kind", ["gd", "schedule", "momentum", "momentum-schedule", "batches", "heun", "rk4"]
)
@given(K=st.integers(1, 5), seed=st.integers(0, 2**16), with_init=st.booleans())
def test_forward_equals_reverse_and_finite_differences(kind, K, seed, with_init):
    K = min(K, 2) if kind in ("rk4", "heun") else K  # multi-stage steps cost more
    problem = mlp_problem(seed, with_init=with_init)
    rng = np.random.default_rng(seed)
    lam = 0.3 * rng.standard_normal(4)
    w0 = None if with_init else 0.5 * rng.standard_normal(N_MLP)
    dyn = dyn_for(kind, K, problem, seed)
    fwd = hypergrad(problem, lam, w0, dynamics=dyn, method=Forward())
    rev = hypergrad(problem, lam, w0, dynamics=dyn, method=Reverse())
    assert fwd.success and rev.success
    assert rel(fwd.grad, rev.grad) < 1e-12
    np.testing.assert_array_equal(fwd.w, rev.w)
    assert fwd.tangent_columns == 4
    fd = fd_gradient(lambda lm: unrolled_value(problem, dyn, w0, lm), lam)
    assert rel(fwd.grad, fd) < 1e-6


# --------------------------------------------------------------------------- V2


@given(n=st.integers(1, 5), m=st.integers(1, 3), K=st.integers(1, 20), seed=st.integers(0, 2**16))
def test_forward_matches_linear_quadratic_closed_form(n, m, K, seed):
    """∇F_K = Bᵀ(I − R^K)H⁻¹Cᵀ(Cw_K − d) with R = I − αH (docs/theory.rst V2)."""
    rng = np.random.default_rng(seed)
    H, Bm, c = spd(n, rng), rng.standard_normal((n, m)), rng.standard_normal(n)
    C, d = rng.standard_normal((n + 1, n)), rng.standard_normal(n + 1)
    problem = BilevelProblem(lambda w, lam: 0.5 * w @ H @ w - w @ (Bm @ lam + c),
                             lambda w, lam: 0.5 * anp.sum((C @ w - d) ** 2))
    lam, w0, alpha = rng.standard_normal(m), rng.standard_normal(n), 0.3
    R = np.eye(n) - alpha * H
    RK = np.linalg.matrix_power(R, K)
    w_star = np.linalg.solve(H, Bm @ lam + c)
    wK = RK @ w0 + (np.eye(n) - RK) @ w_star
    expected = Bm.T @ (np.eye(n) - RK) @ np.linalg.solve(H, C.T @ (C @ wK - d))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HypergradWarning)  # m > n is allowed, only slower
        res = hypergrad(problem, lam, w0, dynamics=GradientDescent(alpha, K), method=Forward())
    np.testing.assert_allclose(res.w, wK, rtol=1e-10, atol=1e-12)
    assert rel(res.grad, expected) < 1e-10 or np.linalg.norm(expected) < 1e-12
    assert res.n_jvp == K * m


@given(n=st.integers(1, 5), K=st.integers(1, 15), seed=st.integers(0, 2**16))
def test_forward_derivative_with_respect_to_the_step_size(n, K, seed):
    """dw_K/dα = −K·H·R^{K−1}(w_0 − w*) for GD with step α on ½wᵀHw − cᵀw (V2).

    The step size lives in the dynamics, so it is made a hyperparameter by scaling the
    objective: g(w, α) = α·g̃(w) with lr = 1 is gradient descent with step α on g̃. The outer
    objectives f_i(w) = w_i read dw_K/dα off the hypergradient one coordinate at a time.
    """
    rng = np.random.default_rng(seed)
    H, c, w0 = spd(n, rng), rng.standard_normal(n), rng.standard_normal(n)
    alpha = np.array([0.1 + 0.3 * rng.random()])  # < 2 / λ_max(H) = 0.5
    w_star = np.linalg.solve(H, c)
    R = np.eye(n) - alpha[0] * H
    expected = -K * H @ np.linalg.matrix_power(R, K - 1) @ (w0 - w_star)

    def g(w, a):
        return a[0] * (0.5 * w @ H @ w - c @ w)

    def coordinate(i):
        return lambda w, a: w[i]

    dyn = GradientDescent(1.0, K)
    got, got_rev = np.zeros(n), np.zeros(n)
    for i in range(n):
        problem = BilevelProblem(g, coordinate(i))
        got[i] = hypergrad(problem, alpha, w0, dynamics=dyn, method=Forward()).grad[0]
        got_rev[i] = hypergrad(problem, alpha, w0, dynamics=dyn, method=Reverse()).grad[0]
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got_rev, got, rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------- MAML (V10)


def test_one_step_maml_forward_equals_second_order_formula():
    """∇_θ L(θ − α∇L̂(θ)) = (I − α∇²L̂(θ))∇L(φ): forward mode with m = n tangent columns."""
    from autograd import grad as ag_grad
    from autograd import hessian

    rng = np.random.default_rng(2)
    X, y = rng.standard_normal((8, 3)), rng.standard_normal(8)
    Xq, yq = rng.standard_normal((6, 3)), rng.standard_normal(6)

    def L_train(w):
        return anp.mean((mlp(w, X) - y) ** 2)

    def L_query(w):
        return anp.mean((mlp(w, Xq) - yq) ** 2)

    problem = BilevelProblem(lambda w, lam: L_train(w), lambda w, lam: L_query(w),
                             init=lambda lam: lam)
    theta, alpha = 0.5 * rng.standard_normal(N_MLP), 0.3
    res = hypergrad(problem, theta, dynamics=GradientDescent(alpha, 1), method=Forward())
    phi = theta - alpha * ag_grad(L_train)(theta)
    expected = (np.eye(N_MLP) - alpha * hessian(L_train)(theta)) @ ag_grad(L_query)(phi)
    np.testing.assert_allclose(res.grad, expected, rtol=1e-11, atol=1e-14)
    assert res.tangent_columns == N_MLP


# --------------------------------------------------------------------------- batches


@pytest.mark.parametrize("kind", ["gd", "momentum", "rk4"])
def test_batched_problems_equal_a_per_problem_loop(kind):
    problem = mlp_problem(5)
    rng = np.random.default_rng(5)
    B = 3
    lam, w0 = 0.3 * rng.standard_normal((B, 4)), 0.5 * rng.standard_normal((B, N_MLP))
    dyn = dyn_for(kind, 3, problem, 5)
    res = hypergrad(problem, lam, w0, dynamics=dyn, method=Forward())
    rev = hypergrad(problem, lam, w0, dynamics=dyn, method=Reverse())
    assert res.grad.shape == (B, 4) and res.value.shape == (B,)
    np.testing.assert_allclose(res.grad, rev.grad, rtol=1e-12, atol=1e-15)
    for b in range(B):
        one = hypergrad(problem, lam[b], w0[b], dynamics=dyn, method=Forward())
        np.testing.assert_allclose(res.grad[b], one.grad, rtol=1e-11, atol=1e-14)
        np.testing.assert_allclose(res.w[b], one.w, rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------- diagnostics


def test_nan_in_inner_loop_is_reported_with_its_step():
    """g = ¼Σw⁴ + λ·w with lr = 1 from w = 3 overflows; the result names the step."""
    problem = BilevelProblem(lambda w, lam: 0.25 * anp.sum(w**4) + anp.sum(lam * w),
                             lambda w, lam: anp.sum(w**2))
    w0, lam = np.array([3.0]), np.zeros(1)
    w, step = w0.copy(), None
    with np.errstate(over="ignore", invalid="ignore"):
        for k in range(50):
            if not np.all(np.isfinite(w**3)):
                step = k
                break
            w = w - w**3
        assert step is not None
        dyn = GradientDescent(1.0, 20)
        with pytest.warns(HypergradWarning, match=f"inner step {step}"):
            res = hypergrad(problem, lam, w0, dynamics=dyn, method=Forward())
        assert not res.success and res.nonfinite_step == step
        assert np.all(np.isnan(res.grad))
        with pytest.raises(HypergradError, match=f"inner step {step}"):
            hypergrad(problem, lam, w0, dynamics=dyn, method=Forward(), strict=True)


def test_forward_warns_when_hyperparameters_outnumber_parameters():
    problem = BilevelProblem(lambda w, lam: 0.5 * anp.sum((w - anp.sum(lam)) ** 2),
                             lambda w, lam: anp.sum(w**2))
    with pytest.warns(HypergradWarning, match="m=5 tangent columns for n=2"):
        res = hypergrad(problem, np.ones(5), np.zeros(2), dynamics=GradientDescent(0.5, 3),
                        method=Forward())
    # w_K = (1 − 0.5³)·Σλ in each coordinate, f = Σw², ∂f/∂λ_j = 2·Σ_i w_i·(1 − 0.5³)
    wk = (1 - 0.5**3) * 5.0
    np.testing.assert_allclose(res.grad, np.full(5, 2 * 2 * wk * (1 - 0.5**3)), rtol=1e-13)
    assert res.n_jvp == 3 * 5
