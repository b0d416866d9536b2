"""Inner solvers with a line search: L-BFGS and Newton (any linear solver)."""

import pickle

import autograd.numpy as anp
import numpy as np
import pytest

from bilevel import BilevelProblem, Forward, Implicit, Reverse, hypergrad, registry
from bilevel.dynamics import LBFGS, Newton, run
from bilevel.linalg import CG, Direct

RNG = np.random.default_rng(5)
N, D = 200, 12
X = RNG.standard_normal((N, D))
LABELS = (X @ RNG.standard_normal(D) + 0.5 * RNG.standard_normal(N) > 0).astype(float)
XV = RNG.standard_normal((50, D))
YV = XV @ RNG.standard_normal(D)
LAM = np.linspace(-4.0, -1.0, D)


def g(w, lam):
    z = w @ X.T
    return (anp.sum(anp.logaddexp(0, z) - LABELS * z, axis=-1) / N
            + 0.5 * anp.sum(anp.exp(lam) * w**2, axis=-1))


def f(w, lam):
    return 0.5 * anp.sum((w @ XV.T - YV) ** 2, axis=-1) / 50


def reference(lam):
    w = np.zeros(D)
    for _ in range(40):
        p = 1 / (1 + np.exp(-X @ w))
        H = X.T @ (X * (p * (1 - p))[:, None]) / N + np.diag(np.exp(lam))
        w = w - np.linalg.solve(H, X.T @ (p - LABELS) / N + np.exp(lam) * w)
    v = np.linalg.solve(H, XV.T @ (XV @ w - YV) / 50)
    return w, -np.exp(lam) * w * v


@pytest.mark.parametrize("dynamics", [LBFGS(300), LBFGS(300, memory=3), Newton(40),
                                      Newton(40, solver=Direct(cache=True))], ids=repr)
def test_inner_solution_and_hypergradient(dynamics):
    w_ref, grad_ref = reference(LAM)
    res = hypergrad(BilevelProblem(g, f), LAM, np.zeros(D), dynamics=dynamics,
                    method=Implicit(inner_tol=1e-9), on_failure="raise")
    np.testing.assert_allclose(res.w, w_ref, atol=1e-8)
    np.testing.assert_allclose(res.grad, grad_ref, atol=1e-9)


def test_lbfgs_stops_when_converged_and_is_batched():
    problem = BilevelProblem(g, f)
    lams = np.stack([LAM, LAM + 1.0])
    state = run(problem, LBFGS(500), np.zeros((2, D)), lams)
    assert bool(np.all(state[-1]))  # every problem done
    for i in range(2):
        np.testing.assert_allclose(state[0][i], reference(lams[i])[0], atol=1e-8)
    before = problem.counts.grad
    hypergrad(problem, LAM, np.zeros(D), dynamics=LBFGS(500), method=Implicit())
    assert problem.counts.grad - before < 100  # far fewer gradients than steps


def test_quadratic_solved_in_one_newton_step_with_cached_direct():
    A = X.T @ X / N

    def ridge(w, lam):
        return (0.5 * anp.sum((w @ X.T - LABELS) ** 2, axis=-1) / N
                + 0.5 * anp.sum(anp.exp(lam) * w**2, axis=-1))

    solver = Direct(cache=True)
    problem = BilevelProblem(ridge, f)
    for lam in (LAM, LAM + 0.5):
        res = hypergrad(problem, lam, np.zeros(D), dynamics=Newton(1, solver=solver),
                        method=Implicit(solver), on_failure="raise")
        w = np.linalg.solve(A + np.diag(np.exp(lam)), X.T @ LABELS / N)
        np.testing.assert_allclose(res.w, w, atol=1e-12)
        assert "cached: reused" in res.linear_solve.message


@pytest.mark.parametrize("method", [Reverse(), Forward()])
@pytest.mark.parametrize("dynamics", [LBFGS(3), Newton(3)], ids=repr)
def test_unrolled_methods_refuse(method, dynamics):
    with pytest.raises(NotImplementedError, match="not differentiated"):
        hypergrad(BilevelProblem(g, f), LAM, np.zeros(D), dynamics=dynamics, method=method)


def test_options_registry_pickle():
    with pytest.raises(ValueError, match="memory"):
        LBFGS(10, memory=0)
    with pytest.raises(TypeError, match="solver"):
        Newton(3, solver=3)
    assert registry.lookup("dynamics", "L-BFGS") is LBFGS
    assert registry.lookup("dynamics", "newton") is Newton
    assert pickle.loads(pickle.dumps(LBFGS(5))) == LBFGS(5)
    newton = Newton(2, solver=CG(tol=1e-8))
    assert pickle.loads(pickle.dumps(newton)) == newton
