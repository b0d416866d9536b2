"""Tests for bilevel.methods.reverse: full, truncated and checkpointed reverse-mode unrolling.

References: the linear-quadratic closed form (docs/theory.rst V2), convergence of unrolled to
implicit (V5), truncated reverse = Neumann series at a fixed point (V6), one-step MAML (V10),
central finite differences of λ ↦ f(w_K(λ), λ), and identities between the variants.
"""

import autograd.numpy as anp
import numpy as np
import pytest
from autograd import grad as ag_grad
from hypothesis import given
from hypothesis import strategies as st
from shared_problems import N_MLP, dyn_for, fd_gradient, mlp, rel, spd

from bilevel import (
    BilevelProblem,
    GradientDescent,
    HypergradError,
    HypergradWarning,
    Reverse,
    hypergrad,
)
from bilevel.dynamics import run
from bilevel.linalg import neumann
from bilevel.testing import ridge_hypergrads, ridge_problem

# --------------------------------------------------------------------------- problems


def linear_quadratic(n, m, seed):
    """V2: g = ½wᵀHw − wᵀ(Bλ + c), f = ½‖Cw − d‖² (works batched)."""
    rng = np.random.default_rng(seed)
    H = spd(n, rng)
    Bm, c = rng.standard_normal((n, m)), rng.standard_normal(n)
    C, d = rng.standard_normal((n + 1, n)), rng.standard_normal(n + 1)

    def g(w, lam):
        return 0.5 * anp.sum((w @ H) * w, axis=-1) - anp.sum(w * (lam @ Bm.T + c), axis=-1)

    def f(w, lam):
        return 0.5 * anp.sum((w @ C.T - d) ** 2, axis=-1)

    return BilevelProblem(g, f), (H, Bm, c, C, d)


def lq_closed_form(mats, lam, w0, alpha, K):
    H, Bm, c, C, d = mats
    n = H.shape[0]
    R = np.eye(n) - alpha * H
    RK = np.linalg.matrix_power(R, K)
    w_star = np.linalg.solve(H, Bm @ lam + c)
    wK = RK @ w0 + (np.eye(n) - RK) @ w_star
    grad_K = Bm.T @ (np.eye(n) - RK) @ np.linalg.solve(H, C.T @ (C @ wK - d))
    grad_ift = Bm.T @ np.linalg.solve(H, C.T @ (C @ w_star - d))
    return wK, grad_K, grad_ift, w_star


def ridge(n_feat, seed):
    """V7 (bilevel.testing's ridge problem and closed form) on random data."""
    rng = np.random.default_rng(seed)
    X, y = rng.standard_normal((3 * n_feat, n_feat)), rng.standard_normal(3 * n_feat)
    Xv, yv = rng.standard_normal((2 * n_feat, n_feat)), rng.standard_normal(2 * n_feat)

    def closed_form(lam):
        closed = ridge_hypergrads(X, y, Xv, yv, lam)
        return closed["w_star"], closed["exact"], closed["hessian"]

    return ridge_problem(X, y, Xv, yv), closed_form


def mlp_problem(seed, n_data=10):
    """λ = (log L2 penalty, three input scalings); data dict with train and validation sets."""
    rng = np.random.default_rng(seed)
    data = dict(
        X=rng.standard_normal((n_data, 3)),
        y=rng.standard_normal(n_data),
        Xv=rng.standard_normal((7, 3)),
        yv=rng.standard_normal(7),
    )

    def g(w, lam, data):
        scale = 1.0 + anp.tanh(lam[..., 1:4])
        r = mlp(w, data["X"] * scale[..., None, :]) - data["y"]
        return anp.mean(r**2, axis=-1) + 0.5 * anp.exp(lam[..., 0]) * anp.sum(w**2, axis=-1)

    def f(w, lam, data):
        r = mlp(w, data["Xv"]) - data["yv"]
        return anp.mean(r**2, axis=-1) + 0.01 * anp.sum(lam**2, axis=-1)

    return BilevelProblem(g, f, data=data)


def unrolled_value(problem, dyn, w0_of, lam):
    s = run(problem, dyn, w0_of(lam), lam)
    return problem.outer_value(dyn.weights(s), lam)


# --------------------------------------------------------------------------- closed forms


@given(n=st.integers(1, 6), m=st.integers(1, 3), K=st.integers(1, 25), seed=st.integers(0, 2**16))
def test_reverse_matches_linear_quadratic_closed_form(n, m, K, seed):
    problem, mats = linear_quadratic(n, m, seed)
    rng = np.random.default_rng(seed + 1)
    lam, w0 = rng.standard_normal(m), rng.standard_normal(n)
    alpha = 0.3  # < 2 / λ_max(H) = 0.5
    wK, grad_K, _, _ = lq_closed_form(mats, lam, w0, alpha, K)
    res = hypergrad(problem, lam, w0, dynamics=GradientDescent(alpha, K), method=Reverse())
    assert res.success and res.message == "ok"
    np.testing.assert_allclose(res.w, wK, rtol=1e-10, atol=1e-12)
    assert rel(res.grad, grad_K) < 1e-10 or np.linalg.norm(grad_K) < 1e-12
    assert res.n_hvp == K


def assert_geometric_decay(Ks, errs, q):
    """Errors fall monotonically, at a per-step rate no worse than q·((K₂+1)/(K₁+1))^{1/ΔK}."""
    assert all(b < a for a, b in zip(errs, errs[1:], strict=False))
    for i in range(len(Ks) - 1):
        (K1, e1), (K2, e2) = (Ks[i], errs[i]), (Ks[i + 1], errs[i + 1])
        rate = (e2 / e1) ** (1.0 / (K2 - K1))
        assert rate <= 1.01 * q * ((K2 + 1) / (K1 + 1)) ** (1.0 / (K2 - K1))


def test_unrolled_converges_to_implicit_geometrically():
    """V5: ‖∇F_K − ∇F‖ ≤ C·(K+1)·q^K, q = max|1 − αμ|, |1 − αL| (on V2 and on ridge V7)."""
    problem, mats = linear_quadratic(5, 2, seed=3)
    H, Bm, c, C, d = mats
    rng = np.random.default_rng(4)
    lam, w0 = rng.standard_normal(2), rng.standard_normal(5)
    alpha, q = 0.2, max(abs(1 - 0.2 * 1.0), abs(1 - 0.2 * 4.0))
    _, _, grad_ift, w_star = lq_closed_form(mats, lam, w0, alpha, 1)
    # explicit constant: ∇F_K − ∇F = −BᵀR^K H⁻¹Cᵀ(Cw_K − d) + BᵀH⁻¹CᵀC R^K (w_0 − w*)
    norm = np.linalg.norm
    dist = norm(w0 - w_star)
    const = norm(Bm, 2) * norm(np.linalg.inv(H), 2) * norm(C, 2) * (
        norm(C @ w_star - d) + 2 * norm(C, 2) * dist
    )
    Ks = [5, 10, 20, 40, 80]
    errs = [
        norm(hypergrad(problem, lam, w0, dynamics=GradientDescent(alpha, K)).grad - grad_ift)
        for K in Ks
    ]
    for K, e in zip(Ks, errs, strict=True):
        assert e <= const * q**K
    assert_geometric_decay(Ks, errs, q)
    assert errs[-1] < 1e-6

    rproblem, closed = ridge(4, seed=5)
    lam = 0.5 * np.random.default_rng(6).standard_normal(4)
    _, grad_true, A = closed(lam)
    eig = np.linalg.eigvalsh(A)
    alpha = 1.0 / eig[-1]
    q = max(abs(1 - alpha * eig[0]), abs(1 - alpha * eig[-1]))
    Ks = [10, 20, 40, 80]
    errs = [
        rel(hypergrad(rproblem, lam, np.zeros(4), dynamics=GradientDescent(alpha, K)).grad,
            grad_true)
        for K in Ks
    ]
    assert_geometric_decay(Ks, errs, q)
    assert errs[-1] < 1e-9


# --------------------------------------------------------------------------- truncation


@given(T=st.integers(1, 12), K_extra=st.integers(0, 6), seed=st.integers(0, 2**16))
def test_truncated_reverse_equals_neumann_series_on_quadratic(T, K_extra, seed):
    """V6 with constant Jacobians: h_T = ∇_λf − Mᵀ·α Σ_{j<T} (I − αH)^j ∇_w f(w_K)."""
    problem, (H, Bm, c, C, d) = linear_quadratic(4, 2, seed)
    rng = np.random.default_rng(seed + 2)
    lam, w0, alpha = rng.standard_normal(2), rng.standard_normal(4), 0.25
    K = T + K_extra
    res = hypergrad(problem, lam, w0,
        dynamics=GradientDescent(alpha, K), method=Reverse(truncate=T))
    gw = C.T @ (C @ res.w - d)
    R = np.eye(4) - alpha * H
    series = alpha * sum(np.linalg.matrix_power(R, j) for j in range(T)) @ gw
    # M = ∂(∇_w g)/∂λ = −B, so −Mᵀ v = Bᵀ v
    np.testing.assert_allclose(res.grad, Bm.T @ series, rtol=1e-10, atol=1e-12)
    solve = neumann(lambda v: H @ v, gw, alpha=alpha, maxiter=T)
    np.testing.assert_allclose(res.grad, Bm.T @ solve.x, rtol=1e-10, atol=1e-12)
    assert res.truncated_steps == K - T
    assert res.n_hvp == T


@pytest.mark.parametrize("T", [1, 3, 10])
def test_truncated_and_full_reverse_at_a_fixed_point_equal_neumann_on_ridge(T):
    """V6 at w* for ridge (M depends on w): truncated reverse from w0 = w* is T Neumann terms."""
    problem, closed = ridge(4, seed=8)
    lam = 0.3 * np.random.default_rng(9).standard_normal(4)
    w_star, _, A = closed(lam)
    alpha = 1.0 / np.linalg.eigvalsh(A)[-1]
    gw = problem.outer_grads(w_star, lam)[0]
    v = neumann(lambda u: A @ u, gw, alpha=alpha, maxiter=T).x
    expected = -problem.inner_mixed_vjp(w_star, lam, v)  # ∇_λ f = 0 here
    trunc = hypergrad(problem, lam, w_star, dynamics=GradientDescent(alpha, T + 5),
                      method=Reverse(truncate=T))
    np.testing.assert_allclose(trunc.grad, expected, rtol=1e-9, atol=1e-12)
    full = hypergrad(problem, lam, w_star, dynamics=GradientDescent(alpha, T), method=Reverse())
    np.testing.assert_allclose(full.grad, expected, rtol=1e-9, atol=1e-12)


def test_truncate_at_least_K_is_full_reverse():
    problem = mlp_problem(1)
    rng = np.random.default_rng(1)
    lam, w0 = 0.3 * rng.standard_normal(4), 0.5 * rng.standard_normal(N_MLP)
    dyn = GradientDescent(0.1, 6)
    full = hypergrad(problem, lam, w0, dynamics=dyn, method=Reverse())
    trunc = hypergrad(problem, lam, w0, dynamics=dyn, method=Reverse(truncate=50))
    np.testing.assert_array_equal(full.grad, trunc.grad)
    assert trunc.truncated_steps == 0


def maml_problem(seed):
    """MAML: w0 = θ = λ, g = L̂(w) (train loss), f = L(w) (query loss); λ only via init."""
    rng = np.random.default_rng(seed)
    X, y = rng.standard_normal((8, 3)), rng.standard_normal(8)
    Xq, yq = rng.standard_normal((6, 3)), rng.standard_normal(6)

    def L_train(w):
        return anp.mean((mlp(w, X) - y) ** 2, axis=-1)

    def L_query(w):
        return anp.mean((mlp(w, Xq) - yq) ** 2, axis=-1)

    problem = BilevelProblem(lambda w, lam: L_train(w), lambda w, lam: L_query(w),
                             init=lambda lam: lam)
    return problem, L_train, L_query


def test_truncated_reverse_on_maml_raises_a_clear_error():
    problem, _, _ = maml_problem(0)
    theta = 0.5 * np.random.default_rng(0).standard_normal(N_MLP)
    with pytest.raises(ValueError, match="only\\s+through the init map"):
        hypergrad(problem, theta, dynamics=GradientDescent(0.1, 5), method=Reverse(truncate=2))


# --------------------------------------------------------------------------- MAML (V10)


def test_one_step_maml_second_and_first_order_match_their_references():
    """∇_θ L(θ − α∇L̂(θ)) = (I − α∇²L̂(θ))∇L(φ); FOMAML = ∇L(φ) (Hessian dropped)."""
    problem, L_train, L_query = maml_problem(3)
    theta = 0.5 * np.random.default_rng(3).standard_normal(N_MLP)
    alpha = 0.3
    res = hypergrad(problem, theta, dynamics=GradientDescent(alpha, 1), method=Reverse())
    phi = theta - alpha * ag_grad(L_train)(theta)
    gq = ag_grad(L_query)(phi)
    hess = np.array([ag_grad(lambda t, i=i: ag_grad(L_train)(t)[i])(theta) for i in range(N_MLP)])
    np.testing.assert_allclose(res.grad, gq - alpha * hess @ gq, rtol=1e-12, atol=1e-14)
    fd_second = fd_gradient(lambda t: L_query(t - alpha * ag_grad(L_train)(t)), theta)
    assert rel(res.grad, fd_second) < 1e-6

    # first order: the same unrolled map with the inner Hessian replaced by zero (A_k = I)
    first = BilevelProblem(
        problem.inner,
        problem.outer,
        init=problem.init,
        oracles={
            "inner_hvp": lambda w, lam, v, data: np.zeros_like(v),
            "inner_mixed_vjp": lambda w, lam, u, data: np.zeros_like(lam),
        },
    )
    fo = hypergrad(first, theta, dynamics=GradientDescent(alpha, 1), method=Reverse())
    np.testing.assert_allclose(fo.grad, gq, rtol=1e-12, atol=1e-14)
    # its finite-difference reference: θ enters L only through φ with dφ/dθ = I
    fd_first = fd_gradient(lambda t: L_query(phi + (t - theta)), theta)
    assert rel(fo.grad, fd_first) < 1e-6
    assert rel(fo.grad, res.grad) > 1e-3  # the two orders genuinely differ here


@pytest.mark.parametrize("K", [1, 4])
def test_multi_step_maml_reverse_matches_finite_differences(K):
    problem, L_train, L_query = maml_problem(4)
    theta = 0.5 * np.random.default_rng(4).standard_normal(N_MLP)
    dyn = GradientDescent(0.2, K)
    res = hypergrad(problem, theta, dynamics=dyn, method=Reverse())
    fd = fd_gradient(lambda t: unrolled_value(problem, dyn, lambda lam: lam, t), theta)
    assert rel(res.grad, fd) < 1e-6


# --------------------------------------------------------------------------- finite differences


@pytest.mark.parametrize("kind", ["gd", "schedule", "momentum", "batches", "rk4", "heun"])
@given(K=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_reverse_matches_finite_differences_on_tanh_mlp(kind, K, seed):
    K = min(K, 3) if kind in ("rk4", "heun") else K  # multi-stage steps cost more
    problem = mlp_problem(seed)
    rng = np.random.default_rng(seed)
    lam, w0 = 0.3 * rng.standard_normal(4), 0.5 * rng.standard_normal(N_MLP)
    dyn = dyn_for(kind, K, problem, seed)
    res = hypergrad(problem, lam, w0, dynamics=dyn, method=Reverse())
    fd = fd_gradient(lambda lm: unrolled_value(problem, dyn, lambda _: w0, lm), lam)
    assert rel(res.grad, fd) < 1e-6
    np.testing.assert_allclose(res.value, unrolled_value(problem, dyn, lambda _: w0, lam),
                               rtol=1e-13)


# --------------------------------------------------------------------------- checkpointing


@pytest.mark.parametrize(
    ("K", "c", "kind"),
    [(1, 1, "gd"), (5, 1, "momentum"), (5, 2, "gd"), (17, 3, "momentum"), (17, 16, "gd"),
     (30, 4, "gd"), (30, 7, "momentum")],
)
def test_checkpointed_reverse_equals_full_reverse(K, c, kind):
    problem = mlp_problem(K + c)
    rng = np.random.default_rng(K * c)
    lam, w0 = 0.3 * rng.standard_normal(4), 0.5 * rng.standard_normal(N_MLP)
    dyn = dyn_for(kind, K, problem, 0)
    full = hypergrad(problem, lam, w0, dynamics=dyn, method=Reverse())
    ck = hypergrad(problem, lam, w0, dynamics=dyn, method=Reverse(checkpoints=c))
    np.testing.assert_allclose(ck.grad, full.grad, rtol=1e-14, atol=1e-16)
    np.testing.assert_array_equal(ck.w, full.w)
    assert ck.max_states_held <= c + 1
    assert full.max_states_held == K + 1 and full.steps_recomputed == 0
    if c + 1 < K + 1:
        assert ck.steps_recomputed > 0
    assert ck.n_hvp == full.n_hvp == K


def test_truncated_checkpointed_reverse_equals_truncated():
    problem = mlp_problem(2)
    rng = np.random.default_rng(2)
    lam, w0 = 0.3 * rng.standard_normal(4), 0.5 * rng.standard_normal(N_MLP)
    dyn = GradientDescent(0.1, 30)
    a = hypergrad(problem, lam, w0, dynamics=dyn, method=Reverse(truncate=12))
    b = hypergrad(problem, lam, w0, dynamics=dyn, method=Reverse(truncate=12, checkpoints=3))
    np.testing.assert_allclose(b.grad, a.grad, rtol=1e-14, atol=1e-16)
    assert b.max_states_held <= 4 and a.max_states_held == 13


# --------------------------------------------------------------------------- batches of problems


@pytest.mark.parametrize("method", [Reverse(), Reverse(checkpoints=2), Reverse(truncate=3)])
@pytest.mark.parametrize("kind", ["gd", "momentum"])
def test_batched_problems_equal_a_per_problem_loop(method, kind):
    problem = mlp_problem(6)
    rng = np.random.default_rng(6)
    B = 3
    lam, w0 = 0.3 * rng.standard_normal((B, 4)), 0.5 * rng.standard_normal((B, N_MLP))
    dyn = dyn_for(kind, 6, problem, 0)
    res = hypergrad(problem, lam, w0, dynamics=dyn, method=method)
    assert res.grad.shape == (B, 4) and res.value.shape == (B,)
    for b in range(B):
        one = hypergrad(problem, lam[b], w0[b], dynamics=dyn, method=method)
        np.testing.assert_allclose(res.grad[b], one.grad, rtol=1e-11, atol=1e-14)
        np.testing.assert_allclose(res.w[b], one.w, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(res.value[b], one.value, rtol=1e-12)


# --------------------------------------------------------------------------- failures


def quartic_problem():
    """g = ¼Σw⁴ + λ·w: gradient descent with lr = 1 from w = 3 overflows within a few steps."""
    return BilevelProblem(lambda w, lam: 0.25 * anp.sum(w**4) + anp.sum(lam * w),
                          lambda w, lam: anp.sum(w**2))


def overflow_step(w0):
    w = np.array(w0, dtype=float)
    with np.errstate(over="ignore", invalid="ignore"):
        for k in range(50):
            if not np.all(np.isfinite(w**3)):
                return k
            w = w - w**3
    raise AssertionError("no overflow")


@pytest.mark.parametrize("method", [Reverse(), Reverse(checkpoints=2), Reverse(truncate=3)])
def test_nan_in_inner_loop_is_reported_with_its_step(method):
    problem, w0, lam = quartic_problem(), np.array([3.0]), np.zeros(1)
    step = overflow_step(w0)
    dyn = GradientDescent(1.0, 20)
    with np.errstate(over="ignore", invalid="ignore"):
        with pytest.warns(HypergradWarning, match=f"step {step}"):
            res = hypergrad(problem, lam, w0, dynamics=dyn, method=method)
        assert not res.success
        assert f"inner step {step}" in res.message and "inner_grad" in res.message
        assert res.nonfinite_step == step
        assert np.all(np.isnan(res.grad))
        with pytest.raises(HypergradError, match=f"step {step}") as info:
            hypergrad(problem, lam, w0, dynamics=dyn, method=method, strict=True)
    assert info.value.result.success is False


def test_reverse_rejects_bad_arguments():
    with pytest.raises(ValueError, match="truncate"):
        Reverse(truncate=0)
    with pytest.raises(ValueError, match="truncate"):
        Reverse(truncate=1.5)
    with pytest.raises(ValueError, match="checkpoints"):
        Reverse(checkpoints=0)
    assert repr(Reverse(truncate=3, checkpoints=2)) == "Reverse(truncate=3, checkpoints=2)"
    assert repr(Reverse()) == "Reverse()"
