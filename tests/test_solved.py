"""Implicit differentiation at a given solution: ``dynamics=Solved()``."""

import autograd.numpy as anp
import numpy as np
import pytest
from autograd import grad, hessian
from scipy.optimize import minimize

from bilevel import BilevelProblem, Forward, Implicit, Reverse, hypergrad, registry
from bilevel.api import HypergradWarning
from bilevel.dynamics import Solved
from bilevel.methods import FirstOrder

RNG = np.random.default_rng(0)
N, D = 60, 6
X = RNG.standard_normal((N, D))
Y = X @ RNG.standard_normal(D) + 0.1 * RNG.standard_normal(N)
XV = RNG.standard_normal((40, D))
YV = XV @ RNG.standard_normal(D)
LAM = np.linspace(-2.0, 0.5, D)


def ridge_problem():
    def g(w, lam):
        return 0.5 * anp.sum((X @ w - Y) ** 2) / N + 0.5 * anp.sum(anp.exp(lam) * w**2)
    def f(w, lam):
        return 0.5 * anp.sum((XV @ w - YV) ** 2) / 40
    return BilevelProblem(g, f)


def ridge_closed_form(lam):
    A = X.T @ X / N + np.diag(np.exp(lam))
    w = np.linalg.solve(A, X.T @ Y / N)
    v = np.linalg.solve(A, XV.T @ (XV @ w - YV) / 40)
    return w, -np.exp(lam) * w * v


LABELS = (Y > 0).astype(float)


def logistic_problem():
    def g(w, lam):
        z = X @ w
        return anp.sum(anp.logaddexp(0, z) - LABELS * z) / N + 0.5 * anp.sum(anp.exp(lam) * w**2)

    def f(w, lam):
        return 0.5 * anp.sum((XV @ w - YV) ** 2) / 40
    return BilevelProblem(g, f)


def logistic_reference(lam):
    """Newton to machine precision, then the IFT formula with the exact Hessian (NumPy)."""
    w = np.zeros(D)
    for _ in range(50):
        p = 1 / (1 + np.exp(-X @ w))
        grad = X.T @ (p - LABELS) / N + np.exp(lam) * w
        H = X.T @ (X * (p * (1 - p))[:, None]) / N + np.diag(np.exp(lam))
        w = w - np.linalg.solve(H, grad)
    v = np.linalg.solve(H, XV.T @ (XV @ w - YV) / 40)
    return w, -np.exp(lam) * w * v


def scipy_solution(problem, lam):
    def g(w):
        return problem.inner(w, lam)
    res = minimize(g, np.zeros(D), jac=grad(g), hess=hessian(g), method="trust-exact",
                   options={"gtol": 1e-13})
    return res.x


@pytest.mark.parametrize("make, reference", [(ridge_problem, ridge_closed_form),
                                             (logistic_problem, logistic_reference)])
def test_implicit_at_scipy_solution_equals_closed_form(make, reference):
    problem = make()
    w_star = scipy_solution(problem, LAM)
    res = hypergrad(problem, LAM, w_star, dynamics=Solved(), method=Implicit(),
                    on_failure="raise")
    w_ref, grad_ref = reference(LAM)
    assert res.success and res.inner_converged
    np.testing.assert_allclose(res.grad, grad_ref, rtol=0, atol=1e-9)
    assert res.w is w_star
    assert float(res.inner_residual) < 1e-9
    assert res.n_grad >= 1 and res.linear_solve.converged


def test_poor_solution_is_reported_not_accepted():
    problem = ridge_problem()
    w_star, _ = ridge_closed_form(LAM)
    with pytest.warns(HypergradWarning, match="the given solution is not optimal"):
        res = hypergrad(problem, LAM, w_star + 1e-3, dynamics=Solved(), method=Implicit())
    assert not res.success and not res.inner_converged
    assert float(res.inner_residual) > 1e-5
    ok = hypergrad(problem, LAM, w_star + 1e-3, dynamics=Solved(),
                   method=Implicit(inner_tol=None))
    assert ok.success  # the test can be switched off


def test_batched_given_solutions():
    lams = np.stack([LAM, LAM - 1.0])
    ws = np.stack([ridge_closed_form(lam)[0] for lam in lams])
    def g(w, lam):
        return (0.5 * anp.sum((w @ X.T - Y) ** 2, axis=1) / N
                + 0.5 * anp.sum(anp.exp(lam) * w**2, axis=1))
    def f(w, lam):
        return 0.5 * anp.sum((w @ XV.T - YV) ** 2, axis=1) / 40
    res = hypergrad(BilevelProblem(g, f), lams, ws, dynamics=Solved(), method=Implicit())
    assert res.success and res.problem_success.all()
    for i, lam in enumerate(lams):
        np.testing.assert_allclose(res.grad[i], ridge_closed_form(lam)[1], atol=1e-9)


@pytest.mark.parametrize("method", [Reverse(), Forward()])
def test_unrolled_methods_refuse_solved(method):
    with pytest.raises(NotImplementedError, match="Solved"):
        hypergrad(ridge_problem(), LAM, np.zeros(D), dynamics=Solved(), method=method)


def test_first_order_at_given_solution():
    w_star, _ = ridge_closed_form(LAM)
    res = hypergrad(ridge_problem(), LAM, w_star, dynamics=Solved(), method=FirstOrder())
    assert res.success and np.allclose(res.w, w_star)


def test_registered_and_plain():
    assert registry.lookup("dynamics", "solved") is Solved
    assert registry.lookup("dynamics", "given") is Solved
    assert repr(Solved()) == "Solved()" and Solved() == Solved() and Solved().steps == 0
    import pickle

    assert pickle.loads(pickle.dumps(Solved())) == Solved()


def test_objective_singular_at_zero_still_judged():
    """g = Σ(w − log w) + ...: ∇g(0) is not finite, so the scale of the test falls back to 1."""

    def g(w, lam):
        return anp.sum(w - anp.log(w)) + 0.5 * anp.sum(anp.exp(lam) * (w - 1) ** 2)

    def f(w, lam):
        return anp.sum(w**2)

    lam = np.zeros(3)
    res = hypergrad(BilevelProblem(g, f), lam, np.ones(3), dynamics=Solved(),
                    method=Implicit(), on_failure="raise")
    assert res.success and float(res.inner_residual) == 0.0
    with pytest.warns(HypergradWarning, match="not optimal"):
        hypergrad(BilevelProblem(g, f), lam, np.full(3, 1.1), dynamics=Solved(),
                  method=Implicit())


def test_given_solution_wins_over_a_warm_started_state():
    """With ``Solved()`` the ``w`` passed is the solution, even when ``state`` holds an
    earlier iterate (outer loops carry one from step to step)."""
    from bilevel import HypergradState

    problem = ridge_problem()
    w_star = scipy_solution(problem, LAM)
    state = HypergradState()
    state.w = w_star + 1.0  # a stale iterate from another λ
    res = hypergrad(problem, LAM, w_star, dynamics=Solved(), method=Implicit(), state=state,
                    on_failure="raise")
    np.testing.assert_allclose(res.grad, ridge_closed_form(LAM)[1], rtol=0, atol=1e-9)
    assert res.w is w_star
