"""Implicit differentiation: closed forms (V7, V8), solver equivalence and scale invariance
(V11), warm starts, HOAG tolerances and failure reporting."""

import dataclasses
import warnings

import autograd.numpy as anp
import numpy as np
import pytest
from hypothesis import given
from shared_problems import relerr, ridge

from bilevel import (
    CG,
    BilevelProblem,
    Direct,
    FixedPoint,
    Forward,
    GradientDescent,
    HypergradError,
    HypergradState,
    HypergradWarning,
    Implicit,
    Momentum,
    Neumann,
    Reverse,
    hypergrad,
)
from bilevel.testing import imaml_tasks, ridge_problems


@pytest.mark.parametrize(
    "solver",
    [CG(), Neumann(alpha=0.2, maxiter=250), FixedPoint(alpha=0.2, maxiter=400, tol=1e-13),
     Direct()],
    ids=["cg", "neumann", "fixed_point", "direct"],
)
def test_ridge_closed_form_every_solver(solver):
    problem, lam, _, exact, A, lr = ridge()
    assert 0.2 < 2 / np.linalg.eigvalsh(A)[-1]
    res = hypergrad(problem, lam, np.zeros(4), dynamics=GradientDescent(lr, 150),
                    method=Implicit(solver))
    assert res.success, res.message
    assert relerr(res.grad, exact) < 1e-9
    assert res.linear_solve.converged
    # the reported linear residual is the true one of the returned v (to rounding)
    b = problem.outer_grads(res.w, lam)[0]
    true = np.linalg.norm(A @ res.v - b)
    assert abs(float(res.linear_residual) - true) <= 1e-9 * np.linalg.norm(b) + 1e-12


@pytest.mark.parametrize("method", [Reverse(), Forward(), Reverse(checkpoints=4)],
                         ids=["reverse", "forward", "reverse-ckpt"])
def test_ridge_unrolled_large_K_matches_closed_form(method):
    problem, lam, _, exact, _, lr = ridge()
    res = hypergrad(problem, lam, np.zeros(4), dynamics=GradientDescent(lr, 150), method=method)
    assert relerr(res.grad, exact) < 1e-9


@given(ridge_problems(n=(1, 4), steps=(1, 3)))
def test_ridge_generated_exact_from_solution(gen):
    """Started at w* (one inner step keeps it there), AID-CG is the IFT answer."""
    w_star = gen.references["w_star"]
    res = hypergrad(gen.problem, gen.lam, w_star, dynamics=gen.dynamics, method=Implicit(CG()))
    np.testing.assert_allclose(res.grad, gen.references["exact"], rtol=1e-8, atol=1e-10)
    assert res.success


def test_cg_with_n_iterations_equals_direct():
    """V11: CG after n iterations equals the dense solve."""
    problem, lam, w_star, _, _, _ = ridge(seed=3)
    inner = GradientDescent(0.1, 1)
    direct = hypergrad(problem, lam, w_star, dynamics=inner, method=Implicit(Direct()))
    cg = hypergrad(problem, lam, w_star, dynamics=inner,
                   method=Implicit(CG(tol=1e-12, maxiter=4), inner_tol=None))
    np.testing.assert_allclose(cg.grad, direct.grad, rtol=1e-10)
    assert cg.success and cg.linear_iterations <= 4


def scale(fun, c):
    return lambda w, lam, data: c * fun(w, lam, data)


def test_scale_invariance_of_the_implicit_system():
    """V11: scaling g by c scales H and M alike; FP step α does not change the answer."""
    problem, lam, w_star, exact, A, _ = ridge(seed=1)
    inner = GradientDescent(1e-3, 1)
    for c in (0.1, 1.0, 10.0):
        scaled = BilevelProblem(scale(problem.inner, c), problem.outer, data=problem.data)
        res = hypergrad(scaled, lam, w_star, dynamics=inner, method=Implicit(CG(), inner_tol=None))
        assert relerr(res.grad, exact) < 1e-10
        np.testing.assert_allclose(res.v, np.linalg.solve(c * A, problem.outer_grads(
            w_star, lam)[0]), rtol=1e-9)
    L = np.linalg.eigvalsh(A)[-1]
    grads = [
        hypergrad(problem, lam, w_star, dynamics=inner,
                  method=Implicit(FixedPoint(alpha=a / L, maxiter=2000, tol=1e-14))).grad
        for a in (0.3, 1.0, 1.7)
    ]
    for grad in grads:
        assert relerr(grad, exact) < 1e-10


def test_implicit_is_limit_of_unrolled():
    """V5: Reverse over K steps approaches Implicit as K grows, geometrically."""
    problem, lam, _, exact, _, lr = ridge(seed=2)
    errs = [relerr(hypergrad(problem, lam, np.zeros(4), dynamics=GradientDescent(lr, K),
                             method=Reverse()).grad, exact) for K in (5, 10, 20, 40)]
    assert all(b < a for a, b in zip(errs, errs[1:], strict=False))
    assert errs[-1] < 1e-3 * errs[0]


def test_imaml_quadratic_batched_closed_form():
    """V8: iMAML on B quadratic tasks, solved as one batch, per-task closed form."""
    rng = np.random.default_rng(4)
    B, n, r = 3, 4, 2.0
    Ps, a, b = [], rng.standard_normal((B, n)), rng.standard_normal((B, n))
    for _ in range(B):
        M = rng.standard_normal((n, n))
        Ps.append(M @ M.T / n)
    P = np.stack(Ps)
    Q = np.eye(n)
    theta = rng.standard_normal((B, n))

    def g(w, th):
        d = w - a
        return 0.5 * anp.einsum("bi,bij,bj->b", d, P, d) + 0.5 * r * anp.sum((w - th) ** 2, 1)

    def f(w, th):
        return 0.5 * anp.sum((w - b) ** 2, axis=1)

    problem = BilevelProblem(g, f, init=lambda th: th)
    S = P + r * np.eye(n)
    L = max(np.linalg.eigvalsh(s)[-1] for s in S)
    res = hypergrad(problem, theta, dynamics=GradientDescent(1.0 / L, 200), method=Implicit(CG()))
    assert res.success, res.message
    assert res.grad.shape == (B, n)
    for i in range(B):
        phi = np.linalg.solve(S[i], P[i] @ a[i] + r * theta[i])
        want = np.linalg.solve(np.eye(n) + P[i] / r, Q @ (phi - b[i]))
        np.testing.assert_allclose(res.grad[i], want, rtol=1e-9)
        np.testing.assert_allclose(res.w[i], phi, rtol=1e-9)
    assert res.linear_solve.converged_mask.shape == (B,)


@given(imaml_tasks(n=(1, 4), steps=(1, 2)))
def test_imaml_generated(gen):
    res = hypergrad(gen.problem, gen.lam, gen.references["w_star"], dynamics=gen.dynamics,
                    method=Implicit(CG()))
    np.testing.assert_allclose(res.grad, gen.references["exact"], rtol=1e-8, atol=1e-10)


def test_any_dynamics_momentum():
    problem, lam, _, exact, _, lr = ridge()
    res = hypergrad(problem, lam, np.zeros(4), dynamics=Momentum(0.5 * lr, 0.5, 200),
                    method=Implicit(CG()))
    assert res.success and relerr(res.grad, exact) < 1e-9


def test_warm_start_and_hoag_schedule():
    problem, lam, _, exact, _, lr = ridge(seed=5)
    state = HypergradState()
    method = Implicit(CG(), tol_schedule=lambda t: 1e-4 * 0.01**t)
    first = hypergrad(problem, lam, np.zeros(4), dynamics=GradientDescent(lr, 60), method=method,
                      state=state)
    assert first.tol == pytest.approx(1e-4) and not first.warm_started
    assert state.t == 1 and state.v is first.v and state.w is first.w
    second = hypergrad(problem, lam, None, dynamics=GradientDescent(lr, 60), method=method,
                       state=state)
    assert second.tol == pytest.approx(1e-6) and second.warm_started
    assert relerr(second.grad, exact) < relerr(first.grad, exact)
    assert relerr(second.grad, exact) < 1e-6
    # a v warm start at the exact solution needs no CG iteration beyond the first residual
    again = hypergrad(problem, lam, None, dynamics=GradientDescent(lr, 60),
                      method=Implicit(CG(tol=1e-6)), state=state)
    assert again.warm_started and again.linear_iterations == 0


@dataclasses.dataclass(frozen=True)
class FrozenCG:
    """A frozen solver object (the tolerance schedule must copy it, not mutate it)."""

    tol: float = 1e-10

    def __call__(self, matvec, b, x0=None, damping=0.0):
        return CG(tol=self.tol)(matvec, b, x0, damping=damping)


def test_tol_schedule_with_a_frozen_solver():
    problem, lam, _, exact, _, lr = ridge(seed=5)
    solver = FrozenCG()
    method = Implicit(solver, tol_schedule=lambda t: 1e-8)
    res = hypergrad(problem, lam, np.zeros(4), dynamics=GradientDescent(lr, 200), method=method)
    assert res.tol == 1e-8 and solver.tol == 1e-10 and method.solver is solver
    assert res.success and relerr(res.grad, exact) < 1e-6


def test_unconverged_inner_warns_and_raises_under_strict():
    problem, lam, _, _, _, lr = ridge()
    inner = GradientDescent(lr, 2)
    with pytest.warns(HypergradWarning, match="inner solve not converged"):
        res = hypergrad(problem, lam, np.zeros(4), dynamics=inner, method=Implicit(CG()))
    assert not res.success and not res.inner_converged
    assert float(res.inner_residual) > 1e-3
    with pytest.raises(HypergradError, match="inner solve not converged") as info:
        hypergrad(problem, lam, np.zeros(4), dynamics=inner, method=Implicit(CG()), strict=True)
    assert info.value.result.inner_converged is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = hypergrad(problem, lam, np.zeros(4), dynamics=inner,
                        method=Implicit(CG(), inner_tol=None))
    assert res.success


def indefinite_problem():
    """g = ½wᵀSw − wᵀλ with S indefinite; started at its stationary point S⁻¹λ."""
    S = np.diag([2.0, 1.0, -0.5])
    g = lambda w, lam: 0.5 * anp.dot(w, anp.dot(S, w)) - anp.dot(w, lam)  # noqa: E731
    f = lambda w, lam: 0.5 * anp.sum((w - 1.0) ** 2)  # noqa: E731
    lam = np.array([1.0, -1.0, 0.5])
    return BilevelProblem(g, f), lam, np.linalg.solve(S, lam), S


def test_indefinite_hessian_cg_breakdown_reported_and_strict():
    problem, lam, w_star, _ = indefinite_problem()
    inner = GradientDescent(0.1, 1)
    with pytest.warns(HypergradWarning, match="breakdown"):
        res = hypergrad(problem, lam, w_star, dynamics=inner, method=Implicit(CG()))
    assert not res.success and res.linear_solve.breakdown
    assert "linear solve failed" in res.message
    with pytest.raises(HypergradError, match="breakdown"):
        hypergrad(problem, lam, w_star, dynamics=inner, method=Implicit(CG()), strict=True)
    # enough damping restores positive definiteness: the answer is then the damped IFT
    S = np.diag([2.0, 1.0, -0.5])
    res = hypergrad(problem, lam, w_star, dynamics=inner, method=Implicit(CG(), damping=1.0))
    b = w_star - 1.0
    np.testing.assert_allclose(res.grad, np.linalg.solve(S + np.eye(3), b), rtol=1e-10)


def test_nonfinite_inner_step_reported():
    """A NaN appearing at inner step k is reported with k."""
    lam = np.array([-6.0, -6.0])
    g = lambda w, lam: 0.5 * anp.sum((w - lam) ** 2) + anp.sum(anp.sqrt(w + 2.0))  # noqa: E731
    f = lambda w, lam: anp.sum(w**2)  # noqa: E731
    lr, w = 0.15, np.zeros(2)
    k = 0
    while np.all(w + 2.0 > 0):
        w = w - lr * ((w - lam) + 0.5 / np.sqrt(w + 2.0))
        k += 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.warns(HypergradWarning, match=f"at inner step {k}"):
            res = hypergrad(BilevelProblem(g, f), lam, np.zeros(2),
                            dynamics=GradientDescent(lr, k + 5), method=Implicit(CG()))
        assert res.nonfinite_step == k and not res.success
        with pytest.raises(HypergradError):
            hypergrad(BilevelProblem(g, f), lam, np.zeros(2), dynamics=GradientDescent(lr, k + 5),
                      method=Implicit(CG()), strict=True)


def test_bad_arguments():
    with pytest.raises(TypeError, match="solver"):
        Implicit(solver="cg")
    with pytest.raises(ValueError, match="damping"):
        Implicit(CG(), damping=-1.0)
    with pytest.raises(ValueError, match="inner_tol"):
        Implicit(CG(), inner_tol=0.0)
    with pytest.raises(ValueError, match="tol_schedule"):
        Implicit(Neumann(0.1, 10), tol_schedule=lambda t: 0.1)
    assert "damping=0.5" in repr(Implicit(CG(), damping=0.5))


def test_accuracy_benchmark_quick():
    """bilevel.bench.accuracy: errors fall with the budget and reach the closed form."""
    from bilevel.bench import accuracy

    result = accuracy.run(quick=True, methods=["Implicit(CG)", "Historyless", "Reverse"])
    for name in ("Implicit(CG)", "Historyless", "Reverse"):
        rows = [r for r in result["rows"] if r["method"] == name]
        errs = [r["rel_error"] for r in rows]
        assert errs[-1] < 1e-8 and errs[-1] < errs[0], (name, errs)
        if name != "Implicit(CG)":  # CG stops early once converged
            assert all(r["n_hvp"] >= r["budget"] for r in rows)
    assert "| Implicit(CG) |" in accuracy.to_markdown(result)
    with pytest.raises(ValueError, match="unknown method"):
        accuracy.run(quick=True, methods=["Magic"])
