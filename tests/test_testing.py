"""bilevel.testing: the strategies' reference answers, check_hypergrad and the profiles.

The references are checked against independent dense computations (explicit recursions
on Jacobian matrices, scipy's matrix exponential, dense solves) and finite differences;
then every method is checked against them where the theory says it applies.
"""

import numpy as np
import pytest
import scipy.linalg
from hypothesis import Phase, find, given, settings
from hypothesis import strategies as st

from bilevel import (
    CG,
    Adjoint,
    BilevelProblem,
    Direct,
    Forward,
    GradientDescent,
    GradientFlow,
    Implicit,
    Reverse,
    hypergrad,
)
from bilevel.backend import BackendError, available, to_numpy
from bilevel.testing import (
    GeneratedProblem,
    HypergradCheck,
    check_hypergrad,
    check_oracles,
    finite_difference_hypergrad,
    gradient_flow_problems,
    imaml_tasks,
    mlp_problems,
    quadratic_problems,
    register_profiles,
    ridge_hypergrads,
    ridge_problem,
    ridge_problems,
)
from bilevel.testing.closed_forms import STABILITY_POLYNOMIALS, divided_power_differences


def _np(gen: GeneratedProblem) -> dict:
    return to_numpy(gen.problem.data)


def _fd(fun, x, eps=1e-6):
    """Central differences of a scalar function of a vector."""
    out = np.zeros_like(x)
    for j in range(len(x)):
        e = np.zeros_like(x)
        e[j] = eps
        out[j] = (fun(x + e) - fun(x - e)) / (2 * eps)
    return out


def _one(strategy):
    """A deterministic example (hypothesis' minimal one) whose Hessian is not a multiple of I."""
    return find(
        strategy,
        lambda g: (g.info.get("condition_number") or 3.0) > 2.0,
        settings=settings(database=None, max_examples=50, derandomize=True,
                          phases=[Phase.generate]),
    )


def _close(a, b, rtol):
    a, b = np.asarray(to_numpy(a)), np.asarray(to_numpy(b))
    assert np.linalg.norm(a - b) <= rtol * max(np.linalg.norm(b), 1e-12), (a, b)


# --------------------------------------------------------------------- references themselves
@given(quadratic_problems(n=(1, 5), m=(1, 3), steps=(0 + 1, 25)))
def test_quadratic_references_match_dense_recursion_and_fd(gen):
    d = _np(gen)
    H, B, c, C, dd, gam = d["H"], d["B"], d["c"], d["C"], d["d"], d["gamma"]
    lam, w = gen.lam.copy(), gen.w0.copy()
    lr, K = gen.info["lr"], gen.info["steps"]
    Z = np.zeros((len(w), len(lam)))
    for _ in range(K):  # w_{k+1} = w_k − α(Hw_k − Bλ − c), Z_{k+1} = Z_k − α(HZ_k − B)
        w, Z = w - lr * (H @ w - B @ lam - c), Z - lr * (H @ Z - B)
    unrolled = Z.T @ C.T @ (C @ w - dd) + gam * lam
    _close(gen.references["w_unrolled"], w, 1e-10)
    _close(gen.references["unrolled"], unrolled, 1e-9)

    def F(lam_):
        ws = np.linalg.solve(H, B @ lam_ + c)
        return 0.5 * np.sum((C @ ws - dd) ** 2) + 0.5 * gam * lam_ @ lam_

    _close(gen.references["exact"], _fd(F, lam), 1e-6)
    assert gen.info["condition_number"] <= 10.0 + 1e-9
    assert np.linalg.cond(H) == pytest.approx(gen.info["condition_number"], rel=1e-8)


@given(ridge_problems(n=(1, 4), steps=(1, 25)))
def test_ridge_references_match_dense_recursion_and_fd(gen):
    d = _np(gen)
    X, y, Xv, yv = d["X"], d["y"], d["X_val"], d["y_val"]
    lam, w = gen.lam.copy(), gen.w0.copy()
    lr, K = gen.info["lr"], gen.info["steps"]
    A = X.T @ X + np.diag(np.exp(lam))
    Z = np.zeros((len(w), len(lam)))
    for _ in range(K):  # M = ∂∇g/∂λ = diag(e^λ ⊙ w)
        w, Z = w - lr * (A @ w - X.T @ y), Z - lr * (A @ Z + np.diag(np.exp(lam) * w))
    _close(gen.references["unrolled"], Z.T @ Xv.T @ (Xv @ w - yv), 1e-8)

    def F(lam_):
        ws = np.linalg.solve(X.T @ X + np.diag(np.exp(lam_)), X.T @ y)
        return 0.5 * np.sum((Xv @ ws - yv) ** 2)

    _close(gen.references["exact"], _fd(F, lam), 1e-6)
    assert np.linalg.cond(A) <= 20.0 * (1 + 1e-9)


@pytest.mark.parametrize("mean", [False, True])
@pytest.mark.parametrize("log_penalty", [True, False])
@pytest.mark.parametrize("m", [1, 3])
def test_ridge_closed_form_options_match_reverse_mode(mean, log_penalty, m):
    """Means, ρ = λ and one shared penalty: the closed forms against Reverse on the builder."""
    rng = np.random.default_rng(m)
    X, y = rng.standard_normal((9, 3)), rng.standard_normal(9)
    Xv, yv = rng.standard_normal((5, 3)), rng.standard_normal(5)
    lam, w0 = rng.uniform(0.2, 1.0, m), rng.standard_normal(3)
    problem = ridge_problem(X, y, Xv, yv, mean=mean, log_penalty=log_penalty)
    closed = ridge_hypergrads(X, y, Xv, yv, lam, w0, 0.05, 30, mean=mean,
                              log_penalty=log_penalty)
    res = hypergrad(problem, lam, w0, dynamics=GradientDescent(0.05, 30), method=Reverse())
    _close(res.grad, closed["unrolled"], 1e-10)
    _close(res.w, closed["w_unrolled"], 1e-10)
    at_solution = hypergrad(problem, lam, closed["w_star"], dynamics=GradientDescent(0.05, 2),
                            method=Implicit(Direct()))
    _close(at_solution.grad, closed["exact"], 1e-9)


def test_ridge_problem_takes_any_penalty_map():
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((8, 4)), rng.standard_normal(8)
    Xv, yv = rng.standard_normal((5, 4)), rng.standard_normal(5)
    groups = np.eye(2)[np.arange(4) % 2]  # one penalty per group of features
    grouped = ridge_problem(X, y, Xv, yv, penalty=lambda lam: np.exp(lam) @ groups.T)
    per_feature = ridge_problem(X, y, Xv, yv)
    lam, w0 = np.array([0.3, -0.2]), rng.standard_normal(4)
    inner = GradientDescent(0.05, 20)
    a = hypergrad(grouped, lam, w0, dynamics=inner).grad
    b = hypergrad(per_feature, groups @ lam, w0, dynamics=inner).grad
    _close(a, groups.T @ b, 1e-12)


def _rk_dense(S, c, r, theta, h, K, scheme):
    """The scheme's stages applied to (u, J) for u' = −Su + c(θ), J = du/dθ, dc/dθ = rI."""
    n = len(theta)
    u, J = theta.copy(), np.eye(n)

    def field(u_, J_):
        return -S @ u_ + c, -S @ J_ + r * np.eye(n)

    for _ in range(K):
        if scheme == "euler":
            du, dJ = field(u, J)
            u, J = u + h * du, J + h * dJ
        elif scheme == "heun":
            k1 = field(u, J)
            k2 = field(u + h * k1[0], J + h * k1[1])
            u, J = u + h / 2 * (k1[0] + k2[0]), J + h / 2 * (k1[1] + k2[1])
        else:
            k1 = field(u, J)
            k2 = field(u + h / 2 * k1[0], J + h / 2 * k1[1])
            k3 = field(u + h / 2 * k2[0], J + h / 2 * k2[1])
            k4 = field(u + h * k3[0], J + h * k3[1])
            u = u + h / 6 * (k1[0] + 2 * k2[0] + 2 * k3[0] + k4[0])
            J = J + h / 6 * (k1[1] + 2 * k2[1] + 2 * k3[1] + k4[1])
    return u, J


@pytest.mark.parametrize("scheme", sorted(STABILITY_POLYNOMIALS))
@settings(max_examples=5)
@given(data=st.data())
def test_gradient_flow_references_match_rk_stages_and_expm(scheme, data):
    gen = data.draw(gradient_flow_problems(n=(1, 4), steps=(1, 20), scheme=scheme))
    d = _np(gen)
    P, a, Q, b, r = d["P"], d["a"], d["Q"], d["b"], d["prox"]
    theta, T, K = gen.lam.copy(), gen.info["horizon"], gen.info["steps"]
    S = P + r * np.eye(len(a))
    u, J = _rk_dense(S, P @ a + r * theta, r, theta, T / K, K, scheme)
    _close(gen.references["w_unrolled"], u, 1e-10)
    _close(gen.references["unrolled"], J.T @ Q @ (u - b), 1e-9)
    E = scipy.linalg.expm(-S * T)
    w_star = np.linalg.solve(S, P @ a + r * theta)
    uT = E @ theta + (np.eye(len(a)) - E) @ w_star  # V9
    JT = E + r * np.linalg.solve(S, np.eye(len(a)) - E)
    _close(gen.references["flow"], JT.T @ Q @ (uT - b), 1e-9)
    _close(gen.references["exact"], r * np.linalg.solve(S, Q @ (w_star - b)), 1e-9)


@given(imaml_tasks(n=(1, 4), steps=(1, 30)))
def test_imaml_references_match_dense_gd_and_closed_form(gen):
    d = _np(gen)
    P, a, Q, b, r = d["P"], d["a"], d["Q"], d["b"], d["prox"]
    theta, lr, K = gen.lam.copy(), gen.info["lr"], gen.info["steps"]
    n = len(theta)
    assert np.linalg.eigvalsh(P)[0] == pytest.approx(0.0, abs=1e-9)  # a singular task loss
    phi, J = theta.copy(), np.eye(n)
    for _ in range(K):  # ∇G = P(φ − a) + r(φ − θ)
        grad, jac = P @ (phi - a) + r * (phi - theta), P @ J + r * J - r * np.eye(n)
        phi, J = phi - lr * grad, J - lr * jac
    _close(gen.references["unrolled"], J.T @ Q @ (phi - b), 1e-9)
    phi_star = np.linalg.solve(P + r * np.eye(n), P @ a + r * theta)
    _close(gen.references["exact"], np.linalg.solve(np.eye(n) + P / r, Q @ (phi_star - b)), 1e-9)


@given(st.integers(1, 4), st.integers(1, 12), st.integers(0, 1000))
def test_divided_power_differences_is_the_derivative_of_the_matrix_power(n, K, seed):
    rng = np.random.default_rng(seed)
    R = rng.standard_normal((n, n))
    R = 0.5 * (R + R.T) / n
    E = rng.standard_normal((n, n))
    E = E + E.T
    r, U = np.linalg.eigh(R)
    analytic = U @ (divided_power_differences(r, K) * (U.T @ E @ U)) @ U.T
    eps = 1e-6
    mp = np.linalg.matrix_power
    fd = (mp(R + eps * E, K) - mp(R - eps * E, K)) / (2 * eps)
    np.testing.assert_allclose(analytic, fd, atol=1e-7 * max(1, np.abs(fd).max()))


def test_mlp_reference_matches_plain_central_differences():
    gen = _one(mlp_problems(steps=5))
    coarse = finite_difference_hypergrad(gen.problem, gen.lam, gen.w0, dynamics=gen.dynamics,
                                         eps=1e-5)
    _close(gen.references["unrolled"], coarse, 1e-6)
    assert gen.references["unrolled"].shape == gen.lam.shape


# --------------------------------------------------------------------- methods against references
# Every method against every family's references: tests/test_conformance.py.


def test_discrete_flow_converges_to_the_matrix_exponential():
    # V4: at fixed T the exact gradient of the RK4 flow tends to the continuous one as O(h⁴)
    gen = _one(gradient_flow_problems(n=3, steps=8, horizon=1.0, proximal=0.5))
    errors = []
    for K in (8, 16, 32):
        res = hypergrad(gen.problem, gen.lam,
            dynamics=GradientFlow(1.0, K, "rk4"), method=Adjoint())
        errors.append(np.linalg.norm(res.grad - gen.references["flow"]))
    assert errors[0] > 0
    assert errors[1] < errors[0] / 10 and errors[2] < errors[1] / 10, errors


@settings(max_examples=4)
@given(quadratic_problems(n=(1, 4), steps=(1, 10), dtype="float32"))
def test_float32_problems(gen):
    assert gen.lam.dtype == gen.w0.dtype == gen.references["exact"].dtype == np.float32
    res = check_hypergrad(gen.problem, gen.lam, gen.w0, dynamics=gen.dynamics, method=Reverse(),
                          reference=gen.references["unrolled"])
    assert res.grad.dtype == np.float32


@pytest.mark.cupy
def test_cupy_problems_match_numpy_references():
    import cupy

    gen = _one(quadratic_problems(backend="cupy", steps=(1, 10)))
    assert isinstance(gen.lam, cupy.ndarray)
    check_hypergrad(gen.problem, gen.lam, gen.w0, dynamics=gen.dynamics, method=Reverse(),
                    reference=gen.references["unrolled"], rtol=1e-9)
    gen = _one(mlp_problems(backend="cupy", steps=3, batch=2))
    check_hypergrad(gen.problem, gen.lam, gen.w0, dynamics=gen.dynamics, method=Reverse(),
                    reference=gen.references["unrolled"], rtol=1e-6)


# --------------------------------------------------------------------- check_hypergrad itself
def _fixed_quadratic(K=40):
    return _one(quadratic_problems(n=4, m=2, steps=K, condition_number=4.0))


def test_check_hypergrad_passes_and_reports_errors():
    gen = _fixed_quadratic()
    out = check_hypergrad(gen.problem, gen.lam, gen.w0, dynamics=gen.dynamics)  # Reverse vs FD
    assert isinstance(out, HypergradCheck)
    assert out.rel_error < 1e-8 and out.result.success
    assert "finite differences" in out.reference_name
    out = check_hypergrad(gen.problem, gen.lam, gen.w0, dynamics=gen.dynamics, method=Reverse(),
                          reference=Forward())
    assert out.rel_error < 1e-12

    def closed_form(lam):
        return gen.references["unrolled"]

    out = check_hypergrad(gen.problem, gen.lam, gen.w0, dynamics=gen.dynamics,
                          reference=closed_form)
    assert out.reference_name == "closed_form(lam)"


def test_check_hypergrad_fails_readably_on_a_wrong_user_oracle():
    gen = _fixed_quadratic()
    H = to_numpy(gen.problem.data["H"])

    def wrong_hvp(w, lam, v, data):  # forgets a factor: 0.5 H v instead of H v
        return 0.5 * (H @ v)

    problem = BilevelProblem(gen.problem.inner, gen.problem.outer, data=gen.problem.data,
                             oracles={"inner_hvp": wrong_hvp})
    with pytest.raises(AssertionError) as info:
        check_hypergrad(problem, gen.lam, gen.w0, dynamics=gen.dynamics, method=Reverse())
    msg = str(info.value)
    for text in ("values disagree", "method grad:", "reference:", "difference:",
                 "relative error", "n_hvp", "inner_hvp", "FAIL"):
        assert text in msg, (text, msg)
    with pytest.raises(AssertionError, match="inner_hvp"):
        check_oracles(problem, gen.w0, gen.lam)


def test_check_hypergrad_fails_with_too_few_inner_steps():
    gen = _fixed_quadratic(K=3)
    with pytest.raises(AssertionError) as info:
        check_hypergrad(gen.problem, gen.lam, gen.w0, dynamics=gen.dynamics,
                        method=Implicit(CG(), inner_tol=None), reference=gen.references["exact"])
    msg = str(info.value)
    assert "values disagree" in msg and "inner_residual" in msg and "linear_solve" in msg
    # with the inner stationarity test on, the method's own diagnostics flag the failure
    with pytest.warns(UserWarning), pytest.raises(AssertionError, match="inner"):
        check_hypergrad(gen.problem, gen.lam, gen.w0, dynamics=gen.dynamics,
                        method=Implicit(CG()), reference=gen.references["exact"], rtol=1e3)


def test_check_hypergrad_batched_message_names_the_worst_problem():
    gen = _one(quadratic_problems(n=3, m=2, steps=2, batch=3))
    with pytest.raises(AssertionError, match="worst of 3 problems"):
        check_hypergrad(gen.problem, gen.lam, gen.w0, dynamics=gen.dynamics,
                        method=Implicit(Direct(), inner_tol=None),
                        reference=gen.references["exact"], rtol=1e-8)


def test_check_hypergrad_argument_errors():
    gen = _fixed_quadratic(K=5)
    with pytest.raises(ValueError, match="reference must be"):
        check_hypergrad(gen.problem, gen.lam, gen.w0, dynamics=gen.dynamics, reference="nonsense")
    with pytest.raises(TypeError, match="reference must be"):
        check_hypergrad(gen.problem, gen.lam, gen.w0, dynamics=gen.dynamics, reference=3)
    with pytest.raises(ValueError, match="shape"):
        check_hypergrad(gen.problem, gen.lam, gen.w0, dynamics=gen.dynamics, reference=np.zeros(7))
    with pytest.raises(TypeError, match="method must be"):
        check_hypergrad(gen.problem, gen.lam, gen.w0, dynamics=gen.dynamics, method="reverse")
    with pytest.raises(TypeError, match="dynamics must be"):
        check_hypergrad(gen.problem, gen.lam, gen.w0, dynamics=None)
    with pytest.raises(ValueError, match="starting point"):
        finite_difference_hypergrad(gen.problem, gen.lam, dynamics=gen.dynamics)


def test_old_inner_keyword_and_attribute_warn_and_still_work():
    gen = _fixed_quadratic(K=5)
    with pytest.warns(DeprecationWarning, match="dynamics"):
        dyn = gen.inner
    assert dyn is gen.dynamics
    with pytest.warns(DeprecationWarning, match="dynamics="):
        old = check_hypergrad(gen.problem, gen.lam, gen.w0, inner=dyn)
    new = check_hypergrad(gen.problem, gen.lam, gen.w0, dynamics=dyn)
    np.testing.assert_array_equal(old.grad, new.grad)
    with pytest.warns(DeprecationWarning, match="dynamics="):
        fd = finite_difference_hypergrad(gen.problem, gen.lam, gen.w0, inner=dyn)
    np.testing.assert_array_equal(fd, finite_difference_hypergrad(gen.problem, gen.lam,
                                                                  gen.w0, dynamics=dyn))
    with pytest.raises(TypeError, match="both"):
        check_hypergrad(gen.problem, gen.lam, gen.w0, dynamics=dyn, inner=dyn)


def test_check_oracles_passes_on_generated_problems():
    for gen in (_fixed_quadratic(5), _one(ridge_problems(n=3)), _one(mlp_problems())):
        report = check_oracles(gen.problem, gen.w0, gen.lam)
        assert report.ok


# --------------------------------------------------------------------- arguments and profiles
@pytest.mark.parametrize(
    "make, error, text",
    [
        (lambda: quadratic_problems(n=0), ValueError, "n must satisfy"),
        (lambda: quadratic_problems(m=(3, 1)), ValueError, "m must satisfy"),
        (lambda: quadratic_problems(n=2.5), TypeError, "n must be an int"),
        (lambda: quadratic_problems(dtype="int32"), ValueError, "dtype"),
        (lambda: quadratic_problems(batch=0), ValueError, "batch"),
        (lambda: quadratic_problems(condition_number=0.5), ValueError, "condition_number"),
        (lambda: ridge_problems(condition_number=2.0), ValueError, "condition_number"),
        (lambda: gradient_flow_problems(scheme="rk45"), ValueError, "scheme"),
        (lambda: gradient_flow_problems(proximal=(0.0, 2.0)), ValueError, "proximal"),
        (lambda: imaml_tasks(prox=-1.0), ValueError, "prox"),
        (lambda: mlp_problems(m=3), ValueError, "m "),
    ],
)
def test_strategy_arguments_are_validated(make, error, text):
    with pytest.raises(error, match=text):
        make()


@pytest.mark.skipif(available("cupy"), reason="CuPy is available here")
def test_cupy_backend_request_without_gpu_is_a_clear_error():
    with pytest.raises(BackendError, match="cupy"):
        quadratic_problems(backend="cupy")


def test_generated_problem_repr_and_info():
    gen = _one(imaml_tasks(n=3, batch=2))
    text = repr(gen)
    assert "iMAML task" in text and "n=3" in text and "batch=2" in text
    assert gen.w0 is None and gen.lam.shape == (2, 3)
    assert set(gen.references) >= {"exact", "unrolled", "w_star", "w_unrolled"}


def test_register_profiles_reads_the_environment(monkeypatch):
    monkeypatch.delenv("BILEVEL_HYPOTHESIS_PROFILE", raising=False)
    monkeypatch.delenv("HYPOTHESIS_PROFILE", raising=False)
    assert register_profiles(load=False) == "ci"
    monkeypatch.setenv("HYPOTHESIS_PROFILE", "thorough")
    assert register_profiles(load=False) == "thorough"
    monkeypatch.setenv("BILEVEL_HYPOTHESIS_PROFILE", "ci")
    assert register_profiles(load=False) == "ci"
    monkeypatch.setenv("BILEVEL_HYPOTHESIS_PROFILE", "no-such-profile")
    with pytest.raises(ValueError, match="no-such-profile"):
        register_profiles()
    assert settings.get_profile("thorough").max_examples == 300
    assert settings.get_profile("ci").derandomize


def test_example_verify_your_problem_runs():
    # the user-facing example file, short configuration: its fast checks, called directly
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "examples" / "verify_your_problem.py"
    spec = importlib.util.spec_from_file_location("verify_your_problem", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    example.test_oracles_match_finite_differences()
    example.test_reverse_is_the_derivative_of_the_unrolled_training()
    example.test_forward_equals_reverse()
    example.test_my_solver_settings_on_problems_with_known_answers()


@pytest.mark.parametrize("grouped", [False, True])
def test_ridge_closed_form_oracles_match_autograd(grouped):
    """ridge_oracles (hand-written, used by the benchmarks) against autograd's derivatives."""
    from bilevel.testing import ridge_oracles, ridge_problem

    rng = np.random.default_rng(3)
    X, y, Xv, yv = (rng.standard_normal(s) for s in ((9, 6), (9,), (5, 6), (5,)))
    G = np.eye(2)[np.arange(6) % 2] if grouped else None
    m = 2 if grouped else 6
    penalty = (lambda lam: np.exp(lam) @ G.T) if grouped else None
    oracles = ridge_oracles(X, y, Xv, yv, groups=G)
    problem = ridge_problem(X, y, Xv, yv, penalty=penalty, oracles=oracles)
    report = problem.check_oracles(rng.standard_normal(6), rng.standard_normal(m),
                                   reference="autograd", rtol=1e-10)
    assert report.ok, str(report)
