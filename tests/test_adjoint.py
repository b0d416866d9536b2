"""Adjoint method on gradient flow: closed forms through expm (V4), discrete adjoint of
Euler = reverse mode (V3), convergence orders of the continuous adjoint, A-MAML with a
proximal term and its iMAML limit (V9), memory policies and failure reporting."""

import warnings

import autograd.numpy as anp
import numpy as np
import pytest
from hypothesis import given
from scipy.linalg import expm

from bilevel import (
    CG,
    Adjoint,
    BilevelProblem,
    GradientDescent,
    GradientFlow,
    HypergradError,
    HypergradWarning,
    Implicit,
    Reverse,
    hypergrad,
)
from bilevel.testing import gradient_flow_problems


def relerr(a, b):
    return np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b)


def spd(rng, n, low, high):
    Q = np.linalg.qr(rng.standard_normal((n, n)))[0]
    return (Q * np.linspace(low, high, n)) @ Q.T


def quadratic_flow(seed=0, n=3):
    """V4: L̂(u) = ½(u − λ)ᵀP(u − λ), f = ½‖u − b‖², u(0) = θ fixed.

    Closed form: u(T) = λ + e^{−PT}(θ − λ), dF/dλ = (I − e^{−PT})(u(T) − b).
    """
    rng = np.random.default_rng(seed)
    P = spd(rng, n, 0.5, 2.0)
    b, theta, lam = rng.standard_normal((3, n))

    def g(u, lam):
        d = u - lam
        return 0.5 * anp.dot(d, anp.dot(P, d))

    def f(u, lam):
        return 0.5 * anp.sum((u - b) ** 2)

    def exact(T):
        E = expm(-P * T)
        uT = lam + E @ (theta - lam)
        return (np.eye(n) - E) @ (uT - b)

    return BilevelProblem(g, f), lam, theta, exact


def smooth_problem(seed=0, n=3, init=False):
    """A non-quadratic smooth inner objective (softplus + tanh couplings), λ in g."""
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((n, n)) / np.sqrt(n)
    c, b = rng.standard_normal((2, n))

    def g(u, lam):
        return (0.5 * anp.sum(u**2) + 0.3 * anp.sum(anp.log1p(anp.exp(anp.dot(W, u) + lam)))
                + 0.1 * anp.sum(anp.tanh(u * lam[0])))

    def f(u, lam):
        return anp.sum(anp.tanh(u - b)) + 0.5 * anp.sum((u - c) ** 2) + 0.1 * anp.sum(lam**2)

    lam = rng.standard_normal(n) * 0.5
    theta = rng.standard_normal(n)
    if init:
        # λ enters both g and the starting point u(0) = θ(λ) = λ + θ
        return BilevelProblem(g, f, init=lambda lam: lam + theta), lam, None
    return BilevelProblem(g, f), lam, theta


@pytest.mark.parametrize("scheme", ["euler", "heun", "rk4"])
@pytest.mark.parametrize("trajectory", ["store", "checkpoint"])
@given(data=gradient_flow_problems(n=(1, 4), steps=(1, 12)))
def test_discrete_adjoint_is_exact_gradient_of_the_scheme(scheme, trajectory, data):
    gen = data
    inner = GradientFlow(gen.dynamics.horizon, gen.dynamics.steps, scheme)
    res = hypergrad(gen.problem, gen.lam, dynamics=inner, method=Adjoint(trajectory))
    ref = hypergrad(gen.problem, gen.lam, dynamics=inner, method=Reverse())
    np.testing.assert_allclose(res.grad, ref.grad, rtol=1e-11, atol=1e-13)
    if scheme == "rk4":
        np.testing.assert_allclose(res.grad, gen.references["unrolled"], rtol=1e-9, atol=1e-12)


@given(gradient_flow_problems(n=(1, 4), steps=(1, 12), batch=2))
def test_batched_rk4_matches_unrolled_reference(gen):
    res = hypergrad(gen.problem, gen.lam, dynamics=gen.dynamics, method=Adjoint("checkpoint"))
    assert res.grad.shape == gen.lam.shape
    np.testing.assert_allclose(res.grad, gen.references["unrolled"], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("discrete", [True, False])
def test_rk4_matches_expm_closed_form(discrete):
    """V4 with λ in g: the −∫Mᵀa term against e^{−PT}."""
    problem, lam, theta, exact = quadratic_flow()
    T = 1.5
    res = hypergrad(problem, lam, theta, dynamics=GradientFlow(T, 60, "rk4"),
                    method=Adjoint("store", discrete=discrete))
    # RK4 forward is O(h⁴); the continuous (Heun-type) backward adds O(h²)
    assert relerr(res.grad, exact(T)) < (1e-7 if discrete else 1e-3)


def test_init_map_gives_a0_through_C():
    """V4 with λ = θ = u(0): dL(u_T)/dθ = e^{−PT}∇L(u_T)."""
    rng = np.random.default_rng(1)
    n, T = 3, 2.0
    P, a, b = spd(rng, n, 0.3, 1.5), rng.standard_normal(n), rng.standard_normal(n)
    g = lambda u, th: 0.5 * anp.dot(u - a, anp.dot(P, u - a))  # noqa: E731
    f = lambda u, th: 0.5 * anp.sum((u - b) ** 2)  # noqa: E731
    theta = rng.standard_normal(n)
    E = expm(-P * T)
    want = E @ (a + E @ (theta - a) - b)
    problem = BilevelProblem(g, f, init=lambda th: th)
    for traj in ("store", "checkpoint", "reconstruct"):
        res = hypergrad(problem, theta, dynamics=GradientFlow(T, 80, "rk4"), method=Adjoint(traj))
        assert relerr(res.grad, want) < 1e-7, traj
        np.testing.assert_allclose(res.adjoint_initial, res.grad, rtol=1e-12)


@pytest.mark.parametrize("init", [False, True])
def test_discrete_euler_adjoint_equals_reverse_over_gradient_descent(init):
    """V3: bit-for-bit the same recursion as reverse mode through GD with lr = h."""
    problem, lam, w0 = smooth_problem(init=init)
    K, T = 25, 2.0
    ref = hypergrad(problem, lam, w0, dynamics=GradientDescent(T / K, K), method=Reverse())
    for traj in ("store", "checkpoint"):
        res = hypergrad(problem, lam, w0, dynamics=GradientFlow(T, K, "euler"),
                        method=Adjoint(traj))
        np.testing.assert_allclose(res.grad, ref.grad, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(res.w, ref.w, rtol=1e-13)
    with pytest.warns(HypergradWarning, match="round-trip error"):
        res = hypergrad(problem, lam, w0, dynamics=GradientFlow(T, K, "euler"),
                        method=Adjoint("reconstruct", reconstruct_tol=1.0))
    assert res.success
    # Euler with step −h inverts Euler with step h only to O(h²) per step: the reported
    # round-trip error is that of an independent backward integration
    u, h = ref.w, T / K
    for _ in range(K):
        u = u + h * problem.inner_grad(u, lam)
    start = problem.initial_point(lam) if init else w0
    want = np.linalg.norm(u - start) / max(np.linalg.norm(start), np.linalg.norm(ref.w))
    assert res.reconstruction_error == pytest.approx(want, rel=1e-10)


@pytest.mark.parametrize("scheme,order", [("euler", 1), ("heun", 2), ("rk4", 2)])
def test_continuous_adjoint_convergence_order(scheme, order):
    """Continuous minus exact (closed form): O(h) with Euler, O(h²) with Heun-type steps."""
    problem, lam, theta, exact = quadratic_flow(seed=2)
    T = 2.0
    errs = []
    for K in (20, 40, 80):
        res = hypergrad(problem, lam, theta, dynamics=GradientFlow(T, K, scheme),
                        method=Adjoint("store", discrete=False))
        errs.append(np.linalg.norm(res.grad - exact(T)))
    rates = [np.log2(a / b) for a, b in zip(errs, errs[1:], strict=False)]
    assert all(abs(r - order) < 0.25 for r in rates), rates


@pytest.mark.parametrize("scheme,order", [("euler", 1), ("heun", 2)])
def test_continuous_minus_discrete_shrinks_with_h(scheme, order):
    """V3 on a non-quadratic g: the optimize-then-discretize gap closes at the scheme's order."""
    problem, lam, w0 = smooth_problem(seed=3)
    T, gaps = 1.0, []
    for K in (10, 20, 40):
        inner = GradientFlow(T, K, scheme)
        cont = hypergrad(problem, lam, w0, dynamics=inner, method=Adjoint("store", discrete=False))
        disc = hypergrad(problem, lam, w0, dynamics=inner, method=Adjoint("store"))
        gaps.append(np.linalg.norm(cont.grad - disc.grad))
    rates = [np.log2(a / b) for a, b in zip(gaps, gaps[1:], strict=False)]
    assert all(abs(r - order) < 0.3 for r in rates), rates


def amaml(seed=0, n=3, r=1.0, prox_in_outer=True):
    """V9: g = ½(u − a)ᵀP(u − a) + (r/2)‖u − θ‖², f = L(u) [+ (r/2)‖u − θ‖²], u(0) = θ."""
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((n, n))
    P = M @ M.T / n
    a, b = rng.standard_normal((2, n))
    theta = rng.standard_normal(n)

    def g(u, th):
        return 0.5 * anp.dot(u - a, anp.dot(P, u - a)) + 0.5 * r * anp.sum((u - th) ** 2)

    def f(u, th):
        out = 0.5 * anp.sum((u - b) ** 2)
        return out + 0.5 * r * anp.sum((u - th) ** 2) if prox_in_outer else out

    S = P + r * np.eye(n)
    return BilevelProblem(g, f, init=lambda th: th), theta, P, a, b, S


def test_amaml_proximal_closed_form():
    r, T = 1.0, 1.5
    problem, theta, P, a, b, S = amaml(r=r)
    n = len(theta)
    E = expm(-S * T)
    Sinv = np.linalg.inv(S)
    uT = E @ theta + (np.eye(n) - E) @ Sinv @ (P @ a + r * theta)
    J = E + r * Sinv @ (np.eye(n) - E)
    want = J.T @ ((uT - b) + r * (uT - theta)) - r * (uT - theta)
    for traj in ("checkpoint", "reconstruct"):
        res = hypergrad(problem, theta, dynamics=GradientFlow(T, 60, "rk4"), method=Adjoint(traj))
        np.testing.assert_allclose(res.w, uT, rtol=1e-7)
        assert relerr(res.grad, want) < 1e-7, traj
    res = hypergrad(problem, theta, dynamics=GradientFlow(T, 60, "rk4"),
                    method=Adjoint("store", discrete=False))
    assert relerr(res.grad, want) < 1e-3


def test_amaml_long_horizon_limit_is_imaml():
    """V9: as T → ∞, du_T/dθ → rS⁻¹ = (I + P/r)⁻¹, the iMAML Jacobian."""
    r = 1.0
    problem, theta, P, a, b, S = amaml(seed=1, r=r, prox_in_outer=False)
    T = 30.0  # e^{−λ_min(S)·T} ≤ e^{−30}
    h_max = 0.5 / np.linalg.eigvalsh(S)[-1]
    K = int(np.ceil(T / h_max))
    adj = hypergrad(problem, theta, dynamics=GradientFlow(T, K, "rk4"), method=Adjoint("store"))
    imaml = hypergrad(problem, theta, dynamics=GradientDescent(1 / np.linalg.eigvalsh(S)[-1], 300),
                      method=Implicit(CG()))
    phi = np.linalg.solve(S, P @ a + r * theta)
    want = np.linalg.solve(np.eye(len(theta)) + P / r, phi - b)
    np.testing.assert_allclose(imaml.grad, want, rtol=1e-9)
    np.testing.assert_allclose(adj.grad, want, rtol=1e-8)


def test_memory_policies_report_their_schedule():
    problem, lam, theta, _ = quadratic_flow()
    inner = GradientFlow(1.0, 64, "heun")
    store = hypergrad(problem, lam, theta, dynamics=inner, method=Adjoint("store"))
    ckpt = hypergrad(problem, lam, theta, dynamics=inner, method=Adjoint("checkpoint"))
    few = hypergrad(problem, lam, theta,
        dynamics=inner, method=Adjoint("checkpoint", checkpoints=2))
    assert store.max_states_held == 65 and store.steps_recomputed == 0
    assert ckpt.max_states_held <= 8 and ckpt.steps_recomputed > 0  # ⌈log₂64⌉ + 1 = 7
    assert few.max_states_held <= 3
    for res in (ckpt, few):
        np.testing.assert_allclose(res.grad, store.grad, rtol=1e-13)


def test_reconstruction_error_is_measured_and_judged():
    """Stiff long horizon: backward integration expands errors like e^{λ_max T}."""
    rng = np.random.default_rng(5)
    n = 3
    P = np.diag([0.5, 4.0, 12.0])
    b = rng.standard_normal(n)
    g = lambda u, lam: 0.5 * anp.dot(u - lam, anp.dot(P, u - lam))  # noqa: E731
    f = lambda u, lam: 0.5 * anp.sum((u - b) ** 2)  # noqa: E731
    problem, lam, theta = BilevelProblem(g, f), rng.standard_normal(n), rng.standard_normal(n)
    # RK4 with step −h inverts RK4 with step h up to O(h⁵) per step
    short = hypergrad(problem, lam, theta, dynamics=GradientFlow(0.2, 100, "rk4"),
                      method=Adjoint("reconstruct", reconstruct_warn=1e-6))
    assert short.success and short.reconstruction_error < 1e-8
    store = hypergrad(problem, lam, theta, dynamics=GradientFlow(0.2, 100, "rk4"),
                      method=Adjoint("store"))
    np.testing.assert_allclose(short.grad, store.grad, rtol=1e-7)

    long = GradientFlow(4.0, 100, "rk4")  # e^{12·4} ≈ 7e20 amplification
    with pytest.warns(HypergradWarning, match="reconstruction"):
        res = hypergrad(problem, lam, theta, dynamics=long, method=Adjoint("reconstruct"))
    assert not res.success and res.reconstruction_error > 1e-4
    with pytest.raises(HypergradError, match="reconstruct"):
        hypergrad(problem, lam, theta, dynamics=long, method=Adjoint("reconstruct"), strict=True)

    mid = GradientFlow(1.0, 40, "rk4")  # moderate growth: warned, still a success
    with pytest.warns(HypergradWarning, match="round-trip error"):
        res = hypergrad(problem, lam, theta, dynamics=mid,
                        method=Adjoint("reconstruct", reconstruct_warn=1e-14,
                                       reconstruct_tol=1.0))
    assert res.success and 1e-14 < res.reconstruction_error < 1.0


def test_nonfinite_inner_step_reported():
    lam = np.array([-6.0, -6.0])
    g = lambda w, lam: 0.5 * anp.sum((w - lam) ** 2) + anp.sum(anp.sqrt(w + 2.0))  # noqa: E731
    f = lambda w, lam: anp.sum(w**2)  # noqa: E731
    h, w, k = 0.15, np.zeros(2), 0
    while np.all(w + 2.0 > 0):
        w = w - h * ((w - lam) + 0.5 / np.sqrt(w + 2.0))
        k += 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for traj in ("store", "checkpoint", "reconstruct"):
            with pytest.warns(HypergradWarning, match=f"at inner step {k}"):
                res = hypergrad(BilevelProblem(g, f), lam, np.zeros(2),
                                dynamics=GradientFlow(h * (k + 5), k + 5, "euler"),
                                method=Adjoint(traj))
            assert res.nonfinite_step == k and not res.success


def test_needs_gradient_flow_and_valid_arguments():
    problem, lam, theta, _ = quadratic_flow()
    with pytest.raises(TypeError, match="GradientFlow"):
        hypergrad(problem, lam, theta, dynamics=GradientDescent(0.1, 5), method=Adjoint())
    with pytest.raises(ValueError, match="trajectory"):
        Adjoint("keep")
    with pytest.raises(ValueError, match="checkpoints"):
        Adjoint("store", checkpoints=3)
    with pytest.raises(ValueError, match="checkpoints"):
        Adjoint("checkpoint", checkpoints=0)
    with pytest.raises(TypeError, match="discrete"):
        Adjoint("store", discrete="yes")
    with pytest.raises(ValueError, match="reconstruct_tol"):
        Adjoint("reconstruct", reconstruct_tol=-1.0)
    with pytest.raises(ValueError, match="stiffness_iters"):
        Adjoint("store", discrete=False, stiffness_iters=-1)
    assert repr(Adjoint()) == "Adjoint(trajectory='checkpoint', discrete=True)"
    assert "stiffness_iters=0" in repr(Adjoint(discrete=False, stiffness_iters=0))


def stiff_quadratic(top=50.0, n=4, seed=0):
    """g = ½(u − λ)ᵀP(u − λ) with spectrum {0.5, 1, 3, top}; closed form as in V4."""
    rng = np.random.default_rng(seed)
    Q = np.linalg.qr(rng.standard_normal((n, n)))[0]
    P = (Q * np.array([0.5, 1.0, 3.0, top])) @ Q.T
    b, theta, lam = rng.standard_normal((3, n))
    g = lambda u, lam: 0.5 * anp.dot(u - lam, anp.dot(P, u - lam))  # noqa: E731
    f = lambda u, lam: 0.5 * anp.sum((u - b) ** 2)  # noqa: E731

    def exact(T):
        E = expm(-P * T)
        return (np.eye(n) - E) @ (lam + E @ (theta - lam) - b)

    return BilevelProblem(g, f), lam, theta, exact


def test_old_import_paths_of_stability_and_lanczos():
    """Both moved out of the method (bilevel.stability, bilevel.linalg); still importable."""
    from bilevel import linalg, stability
    from bilevel.methods.adjoint import lanczos_max_eigenvalue, real_stability_bound

    assert real_stability_bound is stability.real_stability_bound
    assert lanczos_max_eigenvalue is linalg.lanczos_max_eigenvalue


@pytest.mark.parametrize("scheme", ["euler", "heun", "rk4"])
@pytest.mark.parametrize("init", [False, True])
def test_discrete_adjoint_is_reverse_mode_over_the_scheme_step(scheme, init):
    """One code path: the discrete adjoint runs Reverse's recursion, so every memory policy
    gives bit-for-bit Reverse's hypergradient (and the same final iterate)."""
    problem, lam, w0 = smooth_problem(seed=4, init=init)
    inner = GradientFlow(1.5, 13, scheme)
    ref = hypergrad(problem, lam, w0, dynamics=inner, method=Reverse(checkpoints=3))
    for traj in ("store", "checkpoint"):
        res = hypergrad(problem, lam, w0, dynamics=inner, method=Adjoint(traj))
        np.testing.assert_array_equal(res.grad, ref.grad)
        np.testing.assert_array_equal(res.w, ref.w)
        assert res.n_grad == ref.n_grad - ref.steps_recomputed * inner.scheme.stages + (
            res.steps_recomputed * inner.scheme.stages)
        assert res.n_hvp == ref.n_hvp


@pytest.mark.parametrize("K", [4, 20, 24])
def test_unstable_continuous_adjoint_is_reported(K):
    """RK4 forward is stable for h·λ_max < 2.785, the Heun backward step only below 2.

    Spectrum top 50, T = 1: K = 20 gives h·λ = 2.5 (backward growth 1.625 per step),
    K = 24 gives 2.083 (marginal, 5 % per step), K = 4 a short run that the a priori
    Lanczos estimate must catch before the mode has grown.
    """
    problem, lam, theta, exact = stiff_quadratic()
    inner = GradientFlow(1.0, K, "rk4")
    with pytest.warns(HypergradWarning, match="Heun backward step"):
        res = hypergrad(problem, lam, theta,
            dynamics=inner, method=Adjoint("store", discrete=False))
    assert not res.success and res.unstable_step is not None
    assert 2.0 < res.step_stiffness <= 50.0 / K * (1 + 1e-12)
    assert "K ≥ 25 steps" in res.message  # ⌈λ_max·T / 2⌉
    if K > 4:  # forward stable: the discrete adjoint is right and says so
        assert relerr(res.grad, exact(1.0)) > 1.0  # the failure being reported is real
        ok = hypergrad(problem, lam, theta, dynamics=inner, method=Adjoint("store"))
        assert ok.success and ok.unstable_step is None
        assert relerr(ok.grad, exact(1.0)) < 1e-3
    with pytest.raises(HypergradError, match="continuous adjoint unstable"):
        hypergrad(problem, lam, theta, dynamics=inner, method=Adjoint("checkpoint", discrete=False),
                  strict=True)


def test_stable_continuous_adjoint_passes_the_checks():
    problem, lam, theta, exact = stiff_quadratic()
    res = hypergrad(problem, lam, theta, dynamics=GradientFlow(1.0, 30, "rk4"),
                    method=Adjoint("store", discrete=False), strict=True)
    assert res.success and res.unstable_step is None
    assert res.step_stiffness == pytest.approx(50.0 / 30, rel=1e-6)  # Lanczos is sharp here
    assert relerr(res.grad, exact(1.0)) < 1e-3
    plain = Adjoint("store", discrete=False, stiffness_iters=0)
    res0 = hypergrad(problem, lam, theta, dynamics=GradientFlow(1.0, 30, "rk4"), method=plain)
    assert res0.n_hvp == res.n_hvp - 8
    np.testing.assert_array_equal(res0.grad, res.grad)


@pytest.mark.parametrize("traj", ["store", "checkpoint", "reconstruct"])
def test_diverging_forward_flow_is_reported_with_its_step(traj):
    """h·λ = 3.5 > 2.785: RK4 multiplies the stiff mode by R(−3.5) ≈ 2.73 per step."""
    problem, lam, theta, _ = stiff_quadratic()
    inner = GradientFlow(1.0, 14, "rk4")  # h·λ_max = 50/14 ≈ 3.57, finite growth
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HypergradWarning)
        res = hypergrad(problem, lam, theta, dynamics=inner, method=Adjoint(traj))
    assert not res.success and "forward integration unstable at step" in res.message
    assert res.unstable_step is not None and 0 <= res.unstable_step < 14
    assert res.step_stiffness == pytest.approx(50.0 / 14, rel=1e-6)
    assert "K ≥ 18" in res.message  # ⌈50 / 2.785⌉
    with pytest.raises(HypergradError, match="forward integration unstable"):
        hypergrad(problem, lam, theta, dynamics=inner, method=Adjoint(traj), strict=True)
    # long enough to overflow: reported as a divergence at the step that produced inf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.warns(HypergradWarning, match="forward integration diverged"):
            far = hypergrad(problem, lam, theta, dynamics=GradientFlow(40.0, 560, "rk4"),
                            method=Adjoint(traj))
    assert not far.success and far.nonfinite_step is not None
    assert f"at inner step {far.nonfinite_step}" in far.message
    assert far.step_stiffness == pytest.approx(50.0 / 14, rel=1e-6)


def test_reconstruct_reports_the_stiff_case():
    """discrete=True with reconstruction: the backward RK4 pass with −h expands by e^{λT}."""
    problem, lam, theta, _ = stiff_quadratic()
    with pytest.warns(HypergradWarning, match="reconstruction"):
        res = hypergrad(problem, lam, theta, dynamics=GradientFlow(1.0, 24, "rk4"),
                        method=Adjoint("reconstruct"))
    assert not res.success and res.reconstruction_error > 1e-4
    assert res.unstable_step is None  # the forward pass itself is stable (h·λ ≈ 2.08)
