"""Optimality conditions for implicit differentiation: root, fixed point, proximal gradient."""

import pickle

import autograd.numpy as anp
import numpy as np
import pytest

import bilevel.numpy as bnp
from bilevel import CG, BilevelProblem, GradientDescent, Implicit, hypergrad
from bilevel.conditions import (
    Condition,
    FixedPoint,
    ProximalGradient,
    Root,
    Stationarity,
    soft_threshold,
)
from bilevel.dynamics import Solved
from bilevel.linalg import GMRES, BiCGSTAB, Direct

RNG = np.random.default_rng(1)
N, D = 50, 5
X = RNG.standard_normal((N, D))
Y = X @ RNG.standard_normal(D) + 0.1 * RNG.standard_normal(N)
XV = RNG.standard_normal((30, D))
YV = XV @ RNG.standard_normal(D)
LAM = np.linspace(-1.5, 0.5, D)
def G(w, lam):
    return 0.5 * anp.sum((X @ w - Y) ** 2) / N + 0.5 * anp.sum(anp.exp(lam) * w**2)
def F(w, lam):
    return 0.5 * anp.sum((XV @ w - YV) ** 2) / 30
def RIDGE_GRAD(w, lam, data):
    return X.T @ (X @ w - Y) / N + anp.exp(lam) * w


def ridge():
    A = X.T @ X / N + np.diag(np.exp(LAM))
    w = np.linalg.solve(A, X.T @ Y / N)
    v = np.linalg.solve(A, XV.T @ (XV @ w - YV) / 30)
    return w, -np.exp(LAM) * w * v


def test_default_is_stationarity_and_bit_identical():
    w0 = np.zeros(D)
    gd = GradientDescent(0.3, 200)
    a = hypergrad(BilevelProblem(G, F), LAM, w0, dynamics=gd, method=Implicit())
    b = hypergrad(BilevelProblem(G, F), LAM, w0, dynamics=gd,
                  method=Implicit(CG(), condition=Stationarity()))
    assert np.array_equal(a.grad, b.grad) and a.n_hvp == b.n_hvp
    assert Implicit() == Implicit(condition=Stationarity()) == Implicit(CG())
    assert repr(Implicit()) == "Implicit()"
    assert Implicit().solver == CG()


@pytest.mark.parametrize("condition", [
    Root(RIDGE_GRAD),
    Root(RIDGE_GRAD, symmetric=True),
    FixedPoint(lambda w, lam, data: w - 0.5 * RIDGE_GRAD(w, lam, data)),
])
def test_root_and_fixed_point_equal_closed_form(condition):
    w_star, ref = ridge()
    method = Implicit(condition=condition)
    assert isinstance(method.solver, CG if condition.symmetric else GMRES)
    res = hypergrad(BilevelProblem(G, F), LAM, w_star, dynamics=Solved(), method=method,
                    on_failure="raise")
    np.testing.assert_allclose(res.grad, ref, atol=1e-10)
    assert float(res.inner_residual) < 1e-12 and res.n_hvp > 0


@pytest.mark.parametrize("solver", [GMRES(), GMRES(restart=2), BiCGSTAB(), Direct()])
def test_any_solver_for_a_root(solver):
    w_star, ref = ridge()
    res = hypergrad(BilevelProblem(G, F), LAM, w_star, dynamics=Solved(),
                    method=Implicit(solver, condition=Root(RIDGE_GRAD)))
    assert res.success
    np.testing.assert_allclose(res.grad, ref, atol=1e-9)


def test_non_symmetric_root_against_finite_differences():
    """F(w, λ) = A w + tanh(w) − B λ: J = A + diag(1 − tanh²) is not symmetric."""
    A = np.eye(4) * 3 + RNG.standard_normal((4, 4)) * 0.5
    B = RNG.standard_normal((4, 3))
    def fun(w, lam, data):
        return A @ w + anp.tanh(w) - B @ lam
    def f(w, lam):
        return anp.sum(anp.sin(w)) + anp.sum(lam**2)
    def g(w, lam):
        return anp.sum(w**2)  # never used with Solved and a root condition

    def solve(lam):
        w = np.zeros(4)
        for _ in range(100):
            J = A + np.diag(1 - np.tanh(w) ** 2)
            w = w - np.linalg.solve(J, fun(w, lam, None))
        return w

    lam = np.array([0.3, -0.2, 0.5])
    res = hypergrad(BilevelProblem(g, f), lam, solve(lam), dynamics=Solved(),
                    method=Implicit(condition=Root(fun)), on_failure="raise")
    eps = 1e-6
    fd = [(f(solve(lam + eps * e), lam + eps * e) - f(solve(lam - eps * e), lam - eps * e))
          / (2 * eps) for e in np.eye(3)]
    np.testing.assert_allclose(res.grad, fd, atol=1e-8)


def test_root_batched():
    lams = np.stack([LAM, LAM + 0.5])
    def g(w, lam):
        return (0.5 * anp.sum((w @ X.T - Y) ** 2, axis=1) / N
                + 0.5 * anp.sum(anp.exp(lam) * w**2, axis=1))
    def f(w, lam):
        return 0.5 * anp.sum((w @ XV.T - YV) ** 2, axis=1) / 30
    def fun(w, lam, data):
        return (w @ X.T - Y) @ X / N + anp.exp(lam) * w
    ws = np.stack([np.linalg.solve(X.T @ X / N + np.diag(np.exp(lam)), X.T @ Y / N)
                   for lam in lams])
    res = hypergrad(BilevelProblem(g, f), lams, ws, dynamics=Solved(),
                    method=Implicit(condition=Root(fun)), on_failure="raise")
    assert res.problem_success.all()
    np.testing.assert_allclose(res.grad[0], ridge()[1], atol=1e-10)


def test_unconverged_root_is_reported():
    w_star, _ = ridge()
    res = hypergrad(BilevelProblem(G, F), LAM, w_star + 0.01, dynamics=Solved(),
                    method=Implicit(condition=Root(RIDGE_GRAD)), on_failure="ignore")
    assert not res.success and "‖F(w)‖" in res.message


# ---------------------------------------------------------------------- Lasso
LX = RNG.standard_normal((80, 12))
W_TRUE = np.r_[[2.0, -1.0, 1.5, 0.5], np.zeros(8)]
LY = LX @ W_TRUE + 0.3 * RNG.standard_normal(80)
LXV = RNG.standard_normal((40, 12))
LYV = LXV @ W_TRUE + 0.3 * RNG.standard_normal(40)
def SMOOTH(w, lam, data):
    return 0.5 * bnp.sum((LX @ w - LY) ** 2) / 80
def LASSO_G(w, lam):
    return SMOOTH(w, lam, None) + anp.exp(lam[0]) * anp.sum(anp.abs(w))
def LASSO_F(w, lam):
    return 0.5 * anp.sum((LXV @ w - LYV) ** 2) / 40
STEP = 1 / np.linalg.eigvalsh(LX.T @ LX / 80).max()


def lasso(alpha, iters=20000):
    """ISTA to machine precision (no scikit-learn needed)."""
    w = np.zeros(12)
    for _ in range(iters):
        z = w - STEP * LX.T @ (LX @ w - LY) / 80
        w_new = np.sign(z) * np.maximum(np.abs(z) - STEP * alpha, 0)
        if np.max(np.abs(w_new - w)) < 1e-16:
            return w_new
        w = w_new
    return w


@pytest.mark.parametrize("log_scale", [True, False])
def test_lasso_hypergradient_support_formula_and_fd(log_scale):
    alpha = 0.1
    w = lasso(alpha)
    S = w != 0
    assert 0 < S.sum() < 12
    l1 = (lambda lam, data: bnp.exp(lam[0])) if log_scale else (lambda lam, data: lam[0])
    lam = np.array([np.log(alpha) if log_scale else alpha])
    g = LASSO_G if log_scale else (lambda w, lam: SMOOTH(w, lam, None)
                                   + lam[0] * anp.sum(anp.abs(w)))
    cond = ProximalGradient(SMOOTH, l1, step=STEP)
    res = hypergrad(BilevelProblem(g, LASSO_F), lam, w, dynamics=Solved(),
                    method=Implicit(condition=cond), on_failure="raise")
    XS = LX[:, S]
    dw = -np.linalg.solve(XS.T @ XS / 80, np.sign(w[S])) * (alpha if log_scale else 1.0)
    support = (LXV.T @ (LXV @ w - LYV) / 40)[S] @ dw
    np.testing.assert_allclose(res.grad, [support], rtol=1e-9)
    eps = 1e-6 * (1 if log_scale else alpha)
    up, down = (alpha * np.exp(eps), alpha * np.exp(-eps)) if log_scale else (alpha + eps,
                                                                               alpha - eps)
    fd = (LASSO_F(lasso(up), 0) - LASSO_F(lasso(down), 0)) / (2 * eps)
    np.testing.assert_allclose(res.grad, [fd], rtol=1e-6)


def test_lasso_step_does_not_change_hypergradient():
    w = lasso(0.1)
    lam = np.array([np.log(0.1)])
    grads = [hypergrad(BilevelProblem(LASSO_G, LASSO_F), lam, w, dynamics=Solved(),
                       method=Implicit(condition=ProximalGradient(
                           SMOOTH, lambda lam, d: bnp.exp(lam[0]), step=s))).grad
             for s in (STEP, 0.3 * STEP)]
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-9)


def test_elastic_net_per_feature_weights():
    """Elastic net with per-feature ℓ1 weights c = e^λ and an ℓ2 term: FD on the support."""
    def smooth(w, lam, d):
        return SMOOTH(w, lam, d) + 0.05 * bnp.sum(w**2)
    def l1(lam, d):
        return bnp.exp(lam)
    lam = np.full(12, np.log(0.08))

    def solve(lam):
        w = np.zeros(12)
        for _ in range(30000):
            z = w - STEP * (LX.T @ (LX @ w - LY) / 80 + 0.1 * w)
            w = np.sign(z) * np.maximum(np.abs(z) - STEP * np.exp(lam), 0)
        return w

    w = solve(lam)
    def g(w, lam):
        return smooth(w, lam, None) + anp.sum(anp.exp(lam) * anp.abs(w))
    res = hypergrad(BilevelProblem(g, LASSO_F), lam, w, dynamics=Solved(),
                    method=Implicit(condition=ProximalGradient(smooth, l1, step=STEP)),
                    on_failure="raise")
    eps = 1e-5
    for i in np.flatnonzero(w)[:3]:
        e = np.eye(12)[i] * eps
        fd = (LASSO_F(solve(lam + e), 0) - LASSO_F(solve(lam - e), 0)) / (2 * eps)
        np.testing.assert_allclose(res.grad[i], fd, rtol=1e-5)
    assert np.all(res.grad[w == 0] == 0)  # off the support λᵢ does not move w*


def test_soft_threshold_derivative_is_support_indicator():
    from autograd import elementwise_grad

    z = np.array([-2.0, -0.5, 0.2, 1.5])
    assert np.allclose(soft_threshold(z, 1.0), [-1.0, 0.0, 0.0, 0.5])
    assert np.allclose(elementwise_grad(soft_threshold)(z, 1.0), [1, 0, 0, 1])


def test_conditions_validate_print_and_pickle():
    with pytest.raises(TypeError, match="fun must be a function"):
        Root(3)
    with pytest.raises(TypeError, match="optimality condition"):
        Implicit(condition="root")
    with pytest.raises(ValueError, match="step"):
        ProximalGradient(SMOOTH, np.exp, step=0.0)
    assert repr(Root(np.tanh)) == "Root(tanh)"
    assert "condition=FixedPoint" in repr(Implicit(condition=FixedPoint(np.tanh)))
    assert isinstance(Stationarity(), Condition)
    assert pickle.loads(pickle.dumps(Implicit(condition=Root(np.tanh)))) == \
        Implicit(condition=Root(np.tanh))


def test_root_shape_error():
    with pytest.raises(ValueError, match="shape of w"):
        hypergrad(BilevelProblem(G, F), LAM, np.zeros(D), dynamics=Solved(),
                  method=Implicit(condition=Root(lambda w, lam, d: w[:2])))
