"""Tests of bilevel.hpo: problems, tuned dynamics, the outer loop, checkpoints, transforms."""

import os
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bilevel import (
    Forward,
    GradientDescent,
    HypergradError,
    HypergradWarning,
    Momentum,
    Reverse,
    hypergrad,
)
from bilevel.hpo import (
    SGD,
    Adam,
    Bounded,
    MinimizeOptions,
    TunedGradientDescent,
    TunedMomentum,
    get_transform,
    load_checkpoint,
    minimize,
    problems,
    save_checkpoint,
)
from bilevel.linalg import CG, Direct
from bilevel.methods.historyless import Historyless
from bilevel.methods.implicit import Implicit
from bilevel.outer import Checkpointing, Monitoring
from bilevel.testing import ridge_hypergrads

QUIET = Monitoring(progress=False)


def _regression(seed=0, n=40, d=4, noise=0.5):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    y = X @ rng.standard_normal(d) + noise * rng.standard_normal(n)
    h = n // 2
    return X[:h], y[:h], X[h:], y[h:]


def _fd_grad(F, lam, eps=1e-6):
    g = np.zeros_like(lam)
    for i in range(lam.size):
        e = np.zeros_like(lam)
        e[i] = eps
        g[i] = (F(lam + e) - F(lam - e)) / (2 * eps)
    return g


def _check_fd(problem, lam, w0, inner):
    methods = (Reverse(), Forward(warn_ratio=1e3))

    def F(lm):
        return float(hypergrad(problem, lm, w0, dynamics=inner).value)

    want = _fd_grad(F, lam)
    scale = max(np.abs(want).max(), 1e-3)
    grads = [hypergrad(problem, lam, w0, dynamics=inner, method=m).grad for m in methods]
    for m, got in zip(methods, grads, strict=True):
        assert np.abs(got - want).max() <= 1e-6 * scale, repr(m)
    return grads


# ------------------------------------------------------------------ problems vs FD
def test_ridge_hypergrad_fd_and_closed_form():
    X, y, Xv, yv = _regression()
    prob = problems.ridge(X, y, Xv, yv)
    lam = np.array([-1.0, 0.5, -0.3, 0.1])
    _check_fd(prob, lam, np.zeros(4), GradientDescent(0.3, 25))
    # closed form at the exact inner solution: ∇F = −ρ ⊙ w* ⊙ (A + diag ρ)⁻¹ ∇_w f
    closed = ridge_hypergrads(X, y, Xv, yv, lam, mean=True)
    res = hypergrad(prob, lam, closed["w_star"].copy(), dynamics=GradientDescent(0.3, 5),
                    method=Implicit(Direct()))
    np.testing.assert_allclose(res.grad, closed["exact"], rtol=1e-9, atol=1e-12)


def test_ridge_shared_penalty_equals_sum_of_per_feature():
    X, y, Xv, yv = _regression(1)
    inner = GradientDescent(0.3, 20)
    shared = hypergrad(problems.ridge(X, y, Xv, yv, per_feature=False), np.array([-0.5]),
                       np.zeros(4), dynamics=inner)
    per = hypergrad(problems.ridge(X, y, Xv, yv), np.full(4, -0.5), np.zeros(4), dynamics=inner)
    np.testing.assert_allclose(shared.grad, per.grad.sum(), rtol=1e-12)


@pytest.mark.parametrize("per_feature", [False, True])
def test_logistic_hypergrad_fd(per_feature):
    X, y, Xv, yv = _regression(2)
    prob = problems.logistic(X, (y > 0).astype(int), Xv, (yv > 0).astype(int),
                             per_feature=per_feature)
    lam = np.array([-0.7, 0.2, -1.0, 0.4]) if per_feature else np.array([-0.5])
    _check_fd(prob, lam, np.zeros(5), GradientDescent(0.5, 25))


def test_hyper_cleaning_hypergrad_fd():
    rng = np.random.default_rng(3)
    X, Xv = rng.standard_normal((6, 3)), rng.standard_normal((8, 3))
    y, yv = rng.integers(0, 3, 6), rng.integers(0, 3, 8)
    prob = problems.hyper_cleaning(X, y, Xv, yv)
    lam = rng.standard_normal(6)
    _check_fd(prob, lam, np.zeros(12), GradientDescent(0.5, 12))


@given(st.floats(-2.5, -0.5), st.floats(-2.0, 2.0))
def test_tuned_dynamics_fd_forward_reverse(log_lr, logit_beta):
    X, y, Xv, yv = _regression(4, n=30, d=3)
    prob, inner = problems.optimizer_tuning(X, y, Xv, yv, steps=6)
    assert isinstance(inner, TunedMomentum)
    _check_fd(prob, np.array([log_lr, logit_beta]), np.zeros(3), inner)
    prob, inner = problems.optimizer_tuning(X, y, Xv, yv, steps=6, momentum=False)
    assert isinstance(inner, TunedGradientDescent)
    _check_fd(prob, np.array([log_lr]), np.zeros(3), inner)


def test_tuned_dynamics_reproduce_fixed_dynamics():
    """exp(λ₀) = lr, σ(λ₁) = β: same iterates as GradientDescent / Momentum."""
    X, y, Xv, yv = _regression(5)
    prob, _ = problems.optimizer_tuning(X, y, Xv, yv, steps=10)
    lr, beta = 0.2, 0.6
    lam = np.array([np.log(lr), np.log(beta / (1 - beta))])
    w0 = np.zeros(4)
    a = hypergrad(prob, lam, w0, dynamics=TunedMomentum(10)).w
    b = hypergrad(prob, lam, w0, dynamics=Momentum(lr, beta, 10)).w
    np.testing.assert_allclose(a, b, rtol=1e-12)
    a = hypergrad(prob, lam, w0, dynamics=TunedGradientDescent(10)).w
    b = hypergrad(prob, lam, w0, dynamics=GradientDescent(lr, 10)).w
    np.testing.assert_allclose(a, b, rtol=1e-12)


def test_tuned_dynamics_with_penalty_in_lambda_and_batch_axis():
    """λ = (log ρ, log α): penalty in g, step size in the dynamics; batched == looped."""
    X, y, Xv, yv = _regression(6, d=3)
    prob = problems.ridge(X, y, Xv, yv, per_feature=False)
    base = prob.inner

    def g(w, lam, data):  # penalty reads λ[..., :1]; λ[..., 1] is the step size
        return base(w, lam[..., :1], data)

    two = type(prob)(g, prob.outer, data=prob.data)
    inner = TunedGradientDescent(8, lr_index=1)
    lam = np.array([[-1.0, np.log(0.3)], [0.5, np.log(0.2)]])
    w0 = np.zeros((2, 3))
    grads = _check_fd(two, lam[0], w0[0], inner)
    batched = hypergrad(two, lam, w0, dynamics=inner, method=Reverse()).grad
    np.testing.assert_allclose(batched[0], grads[0], rtol=1e-10)
    single = hypergrad(two, lam[1], w0[1], dynamics=inner, method=Forward()).grad
    np.testing.assert_allclose(batched[1], single, rtol=1e-10)


def test_problem_input_errors():
    X, y, Xv, yv = _regression()
    with pytest.raises(ValueError, match="X_train must be a 2-D"):
        problems.ridge(y, y, Xv, yv)
    with pytest.raises(ValueError, match="y_val must be a 1-D array of length 20"):
        problems.ridge(X, y, Xv, yv[:5])
    with pytest.raises(ValueError, match="features"):
        problems.ridge(X, y, Xv[:, :2], yv)
    with pytest.raises(TypeError, match="y_train must have an integer dtype"):
        problems.logistic(X, y, Xv, (yv > 0).astype(int))
    with pytest.raises(ValueError, match="binary labels"):
        problems.logistic(X, np.full(20, 2), Xv, (yv > 0).astype(int))
    with pytest.raises(ValueError, match="l2 must be positive"):
        problems.hyper_cleaning(X, np.zeros(20, int), Xv, np.ones(20, int), l2=0.0)
    with pytest.raises(ValueError, match="lr_index and beta_index must differ"):
        TunedMomentum(5, lr_index=1, beta_index=1)
    prob, inner = problems.optimizer_tuning(X, y, Xv, yv, steps=3)
    with pytest.raises(ValueError, match="m ≥ 2"):
        hypergrad(prob, np.zeros(1), np.zeros(4), dynamics=inner)


# ------------------------------------------------------------------ outer loop
def _fresh_value(prob, lam, w0, inner):
    return float(hypergrad(prob, lam, w0, dynamics=inner).value)


@pytest.mark.parametrize(
    "method", [Reverse(), Forward(), Implicit(CG(), inner_tol=None), Historyless()]
)
def test_minimize_lowers_validation_ridge(method):
    X, y, Xv, yv = _regression(7, n=60, d=5, noise=1.5)
    prob = problems.ridge(X, y, Xv, yv)
    inner, w0, lam0 = GradientDescent(0.3, 20), np.zeros(5), np.zeros(5)
    res = minimize(prob, lam0, w0, dynamics=inner, method=method, steps=10, monitoring=QUIET)
    assert res.steps == 10 and res.n_hypergrad == 10
    assert set(res.history) >= {"value", "grad_norm", "inner_residual", "time", "peak_memory"}
    long = GradientDescent(0.3, 100)
    assert _fresh_value(prob, res.lam, w0, long) < _fresh_value(prob, lam0, w0, long) - 1e-3
    assert res.best_value <= res.history["value"].min()


def test_result_has_scipy_names():
    """x, fun, jac: the best evaluated λ, F there and ∇F there; nit, nfev: step counts."""
    X, y, Xv, yv = _regression(7, n=60, d=5, noise=1.5)
    prob = problems.ridge(X, y, Xv, yv)
    inner = GradientDescent(0.3, 20)
    res = minimize(prob, np.zeros(5), np.zeros(5), dynamics=inner,
                   method=Implicit(CG(), inner_tol=None), steps=6, monitoring=QUIET)
    np.testing.assert_array_equal(res.x, res.best_lam)
    assert res.fun == res.best_value == res.history["value"].min()
    assert res.nit == res.nfev == res.steps == 6
    assert res.success and isinstance(res.message, str)
    best = int(np.argmin(res.history["value"]))
    assert np.linalg.norm(res.jac) == pytest.approx(res.history["grad_norm"][best])
    again = hypergrad(prob, res.x, np.zeros(5), dynamics=inner,
                      method=Implicit(CG(), inner_tol=None))
    assert float(again.value) == pytest.approx(res.fun, rel=0.05)


def test_minimize_lowers_validation_logistic_and_tunes_step_size():
    X, y, Xv, yv = _regression(8, n=80, d=4, noise=2.0)
    prob = problems.logistic(X, (y > 0).astype(int), Xv, (yv > 0).astype(int))
    inner = GradientDescent(1.0, 40)
    res = minimize(prob, np.array([1.0]), np.zeros(5), dynamics=inner, steps=10, monitoring=QUIET)
    assert _fresh_value(prob, res.lam, np.zeros(5), GradientDescent(1.0, 150)) < _fresh_value(
        prob, np.array([1.0]), np.zeros(5), GradientDescent(1.0, 150)
    )
    prob, inner = problems.optimizer_tuning(X, y, Xv, yv, steps=10)
    lam0 = np.array([np.log(0.02), 0.0])
    res = minimize(prob, lam0, np.zeros(4), dynamics=inner, method=Forward(), steps=12,
                   options=MinimizeOptions(warm_start=False), monitoring=QUIET)
    assert res.history["value"][-1] < 0.8 * res.history["value"][0]
    assert res.lam[0] > lam0[0]  # a short run wants a larger step


def test_transform_exp_equals_log_parameterized_problem():
    X, y, Xv, yv = _regression(9)
    inner, w0 = GradientDescent(0.3, 20), np.zeros(4)
    a = minimize(problems.ridge(X, y, Xv, yv), np.full(4, -1.0), w0, dynamics=inner, steps=8,
                 optimizer=SGD(lr=0.5), monitoring=QUIET)
    b = minimize(problems.ridge(X, y, Xv, yv, log_penalty=False), np.full(4, np.exp(-1.0)), w0,
                 dynamics=inner, steps=8, optimizer=SGD(lr=0.5), transform="exp", monitoring=QUIET)
    np.testing.assert_allclose(b.u, a.lam, rtol=1e-10)
    np.testing.assert_allclose(b.lam, np.exp(a.lam), rtol=1e-10)
    np.testing.assert_allclose(b.history["value"], a.history["value"], rtol=1e-10)


@pytest.mark.parametrize("name", ["identity", "exp", "sigmoid"])
def test_transform_derivative_and_inverse(name):
    T = get_transform(name) if name != "identity" else get_transform(None)
    u = np.linspace(-2, 2, 5)
    np.testing.assert_allclose(T.inverse(T.forward(u)), u, atol=1e-12)
    fd = (T.forward(u + 1e-6) - T.forward(u - 1e-6)) / 2e-6
    np.testing.assert_allclose(T.vjp(u, np.ones(5)), fd, rtol=1e-7)
    B = Bounded(-1.0, 3.0)
    np.testing.assert_allclose(B.inverse(B.forward(u)), u, atol=1e-12)
    fd = (B.forward(u + 1e-6) - B.forward(u - 1e-6)) / 2e-6
    np.testing.assert_allclose(B.vjp(u, np.ones(5)), fd, rtol=1e-7)


def test_bounds_target_and_callback_stop():
    X, y, Xv, yv = _regression(10)
    prob, inner, w0 = problems.ridge(X, y, Xv, yv), GradientDescent(0.3, 20), np.zeros(4)
    res = minimize(prob, np.zeros(4), w0, dynamics=inner, steps=10, optimizer=SGD(lr=50.0),
                   options=MinimizeOptions(bounds=(-0.5, 0.5)), monitoring=QUIET)
    assert np.all(np.abs(res.lam) <= 0.5) and np.any(np.abs(res.lam) == 0.5)
    first = minimize(prob, np.zeros(4), w0, dynamics=inner, steps=1, monitoring=QUIET)
    res = minimize(prob, np.zeros(4), w0, dynamics=inner, steps=10, monitoring=QUIET,
                   options=MinimizeOptions(target=first.value + 1.0))
    assert res.steps == 1 and "reached target" in res.message
    np.testing.assert_array_equal(res.lam, np.zeros(4))
    seen = []
    res = minimize(prob, np.zeros(4), w0, dynamics=inner, steps=10, monitoring=QUIET,
                   callback=lambda info: seen.append(info["step"]) or info["step"] == 2)
    assert seen == [0, 1, 2] and res.steps == 3 and "callback" in res.message


def test_nonfinite_hypergradient_stops_without_update():
    X, y, Xv, yv = _regression(11)
    prob = problems.ridge(X, y, Xv, yv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HypergradWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        res = minimize(prob, np.zeros(4), np.zeros(4), dynamics=GradientDescent(1e3, 400),
                       steps=5, monitoring=QUIET)
    assert not res.success and res.steps == 1 and "stopped at outer step 0" in res.message
    np.testing.assert_array_equal(res.lam, np.zeros(4))


def test_minimize_argument_errors():
    X, y, Xv, yv = _regression()
    prob, inner = problems.ridge(X, y, Xv, yv), GradientDescent(0.3, 5)
    with pytest.raises(TypeError, match="problem must be a BilevelProblem"):
        minimize(lambda w: w, np.zeros(4), dynamics=inner)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        minimize(prob, np.zeros(4), np.zeros(4), dynamics=inner, steps=0)
    with pytest.raises(ValueError, match="transform=Bounded"):
        minimize(prob, np.ones(4), np.zeros(4), dynamics=inner, transform="exp",
                 options=MinimizeOptions(bounds=(0, 1)))
    with pytest.raises(ValueError, match="lam0 must be positive"):
        minimize(prob, np.zeros(4), np.zeros(4), dynamics=inner, transform="exp")
    with pytest.raises(ValueError, match="transform must be"):
        minimize(prob, np.zeros(4), np.zeros(4), dynamics=inner, transform="log")
    with pytest.raises(TypeError, match="optimizer must have"):
        minimize(prob, np.zeros(4), np.zeros(4), dynamics=inner, optimizer=object())
    with pytest.raises(TypeError, match="dynamics must be a Dynamics"):
        minimize(prob, np.zeros(4), np.zeros(4), dynamics=3)


# ------------------------------------------------------------------ checkpoint / resume
def _stochastic_inner(t, rng):
    """Inner dynamics drawn per outer step from the checkpointed generator."""
    return GradientDescent(0.3, int(rng.integers(10, 20)))


@pytest.mark.parametrize(
    "method,inner",
    [
        (Implicit(CG(), inner_tol=None), GradientDescent(0.3, 15)),
        (Historyless(), _stochastic_inner),
        (Reverse(), _stochastic_inner),
    ],
)
def test_checkpoint_resume_is_bit_identical(tmp_path, method, inner):
    X, y, Xv, yv = _regression(12, n=50, d=5)
    prob = problems.ridge(X, y, Xv, yv)
    kw = dict(dynamics=inner, method=method, optimizer=Adam(lr=0.2), seed=3, monitoring=QUIET)
    straight = minimize(prob, np.zeros(5), np.zeros(5), steps=9, **kw)
    path = tmp_path / "run.npz"
    first = minimize(prob, np.zeros(5), np.zeros(5), steps=4,
                     checkpointing=Checkpointing(path), **kw)
    assert first.steps == 4
    resumed = minimize(prob, np.zeros(5), np.zeros(5), steps=9,
                       checkpointing=Checkpointing(path), **kw)
    assert resumed.steps == 9
    np.testing.assert_array_equal(resumed.lam, straight.lam)
    for key in ("value", "grad_norm", "inner_residual", "n_grad", "n_hvp", "step"):
        np.testing.assert_array_equal(resumed.history[key], straight.history[key])
    for key in ("mu", "nu"):
        np.testing.assert_array_equal(resumed.optimizer_state[key], straight.optimizer_state[key])
    assert resumed.optimizer_state["count"] == straight.optimizer_state["count"] == 9
    np.testing.assert_array_equal(resumed.state.w, straight.state.w)
    if straight.state.v is not None:
        np.testing.assert_array_equal(resumed.state.v, straight.state.v)
    assert resumed.state.t == straight.state.t
    # no temporary files left; the previous checkpoint is kept as run.npz.prev
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.npz", "run.npz.prev"]
    # a finished run resumes to itself without more work
    again = minimize(prob, np.zeros(5), np.zeros(5), steps=9,
                     checkpointing=Checkpointing(path), **kw)
    np.testing.assert_array_equal(again.lam, straight.lam)
    with pytest.raises(ValueError, match="shape"):
        minimize(prob, np.zeros(4), np.zeros(4), steps=10, checkpointing=Checkpointing(path), **kw)


def test_checkpoint_roundtrip_exact(tmp_path):
    rng = np.random.default_rng(0)
    payload = {
        "a": rng.standard_normal((3, 2)),
        "n": 7,
        "x": 0.1 + 0.2,
        "none": None,
        "s": "text",
        "nested": {"t": (1, 2.5, np.float32(1.25)), "lst": [np.arange(3), float("inf")]},
        "rng": rng.bit_generator.state,
    }
    path = os.path.join(tmp_path, "sub", "ck.npz")
    save_checkpoint(path, payload)
    back = load_checkpoint(path)
    np.testing.assert_array_equal(back["a"], payload["a"])
    assert back["n"] == 7 and back["x"] == 0.1 + 0.2 and back["none"] is None
    assert back["s"] == "text" and back["nested"]["t"][:2] == (1, 2.5)
    assert back["nested"]["t"][2] == np.float32(1.25) and back["nested"]["t"][2].dtype == np.float32
    np.testing.assert_array_equal(back["nested"]["lst"][0], np.arange(3))
    assert back["nested"]["lst"][1] == float("inf")
    g = np.random.default_rng()
    g.bit_generator.state = back["rng"]
    assert g.random() == rng.random()
    with pytest.raises(TypeError, match="cannot checkpoint object"):
        save_checkpoint(path, {"bad": object()})
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(os.path.join(tmp_path, "missing.npz"))


# ------------------------------------------------------------------ hyper-cleaning
def test_hyper_cleaning_downweights_corrupted_examples():
    rng = np.random.default_rng(0)
    C, d, n, nv = 3, 5, 60, 60
    centers = 3.0 * rng.standard_normal((C, d))
    y = rng.integers(0, C, n)
    yv = rng.integers(0, C, nv)
    X = centers[y] + rng.standard_normal((n, d))
    Xv = centers[yv] + rng.standard_normal((nv, d))
    corrupt = rng.random(n) < 0.5
    noisy = np.where(corrupt, (y + rng.integers(1, C, n)) % C, y)
    prob = problems.hyper_cleaning(X, noisy, Xv, yv, l2=1e-2)
    res = minimize(prob, np.zeros(n), np.zeros((d + 1) * C), dynamics=GradientDescent(0.5, 30),
                   method=Implicit(CG(), inner_tol=None), optimizer=Adam(lr=0.3), steps=25,
                   monitoring=QUIET)
    weights = 1 / (1 + np.exp(-res.lam))
    assert weights[corrupt].mean() < weights[~corrupt].mean() - 0.2
    assert res.history["value"][-1] < res.history["value"][0]


def test_old_keywords_warn_and_still_work(tmp_path):
    X, y, Xv, yv = _regression(13)
    prob, inner, w0 = problems.ridge(X, y, Xv, yv), GradientDescent(0.3, 10), np.zeros(4)
    path = tmp_path / "old.npz"
    with pytest.warns(DeprecationWarning) as rec:
        old = minimize(prob, np.zeros(4), w0, inner=inner, steps=3, progress=False,
                       checkpoint=path, checkpoint_every=2, bounds=(-1, 1), memory=None)
    text = " ".join(str(w.message) for w in rec)
    assert "minimize(inner=...) is deprecated; pass dynamics=..." in text
    assert "checkpointing=Checkpointing(path=...)" in text
    assert "monitoring=Monitoring(progress=...)" in text
    assert "options=MinimizeOptions(bounds=...)" in text
    new = minimize(prob, np.zeros(4), w0, dynamics=inner, steps=3, monitoring=QUIET,
                   options=MinimizeOptions(bounds=(-1, 1)))
    np.testing.assert_array_equal(old.lam, new.lam)
    assert np.isnan(old.history["peak_memory"]).all()
    with pytest.raises(TypeError, match="unexpected keyword argument 'innner'"):
        minimize(prob, np.zeros(4), w0, innner=inner)
    with pytest.raises(TypeError, match="both dynamics= and its old name inner="):
        minimize(prob, np.zeros(4), w0, dynamics=inner, inner=inner)


def test_resume_refuses_changed_configuration(tmp_path):
    X, y, Xv, yv = _regression(14)
    prob, inner, w0 = problems.ridge(X, y, Xv, yv), GradientDescent(0.3, 10), np.zeros(4)
    ck = Checkpointing(tmp_path / "run.npz")
    minimize(prob, np.zeros(4), w0, dynamics=inner, steps=2, checkpointing=ck, monitoring=QUIET)
    with pytest.raises(ValueError, match="different run.*optimizer.*resume=False"):
        minimize(prob, np.zeros(4), w0, dynamics=inner, steps=4, checkpointing=ck,
                 optimizer=SGD(0.1), monitoring=QUIET)


def test_resume_reads_the_old_hpo_checkpoint_format(tmp_path):
    """A checkpoint of the earlier ``bilevel.hpo.checkpoint/1`` format resumes exactly."""
    import json

    X, y, Xv, yv = _regression(15)
    prob, inner, w0 = problems.ridge(X, y, Xv, yv), GradientDescent(0.3, 10), np.zeros(4)
    kw = dict(dynamics=inner, method=Implicit(CG(), inner_tol=None), monitoring=QUIET)
    straight = minimize(prob, np.zeros(4), w0, steps=5, **kw)
    path = tmp_path / "run.npz"
    minimize(prob, np.zeros(4), w0, steps=2, checkpointing=Checkpointing(path), **kw)
    ck = load_checkpoint(path)
    old = {"t": ck["step"], "u": ck["params"], "optimizer_state": ck["optimizer_state"],
           "hypergrad_state": ck["extra"]["hypergrad_state"], "history": ck["history"],
           "rng": ck["rng"], "best": ck["extra"]["best"], "settings": ck["config"]}
    save_checkpoint(path, old)
    with np.load(path) as z:
        files = dict(z.items())
    meta = json.loads(str(files["__meta__"]))
    meta["format"] = "bilevel.hpo.checkpoint/1"
    files["__meta__"] = np.array(json.dumps(meta))
    np.savez(path, **files)
    resumed = minimize(prob, np.zeros(4), w0, steps=5, checkpointing=Checkpointing(path), **kw)
    np.testing.assert_array_equal(resumed.lam, straight.lam)
    np.testing.assert_array_equal(resumed.history["value"], straight.history["value"])


# ------------------------------------------------------------------ issue 13
@pytest.mark.parametrize("change", ["lam0", "w0", "dynamics", "method", "seed", "data"])
def test_checkpoint_of_another_run_is_refused_not_resumed(tmp_path, change):
    from bilevel.outer import ResumeError

    X, y, Xv, yv = _regression(5, n=30, d=3)
    prob = problems.ridge(X, y, Xv, yv)
    kw = dict(dynamics=GradientDescent(0.3, 10), method=Reverse(), steps=3, seed=0,
              monitoring=QUIET)
    path = tmp_path / "run.npz"
    minimize(prob, np.zeros(3), np.zeros(3), checkpointing=Checkpointing(path), **kw)
    before = path.read_bytes()
    lam0, w0 = np.zeros(3), np.zeros(3)
    if change == "lam0":
        lam0 = np.full(3, 2.0)
    elif change == "w0":
        w0 = np.ones(3)
    elif change == "dynamics":
        kw["dynamics"] = GradientDescent(0.3, 11)
    elif change == "method":
        kw["method"] = Reverse(truncate=2)
    elif change == "seed":
        kw["seed"] = 1
    else:
        prob = problems.ridge(X, y + 1.0, Xv, yv)
    with pytest.raises(ResumeError, match="different run") as err:
        minimize(prob, lam0, w0, checkpointing=Checkpointing(path), **{**kw, "steps": 6})
    assert err.value.fields and "resume=False" in str(err.value)
    assert path.read_bytes() == before  # nothing written, no stale best λ returned
    fresh = minimize(prob, lam0, w0, checkpointing=Checkpointing(path, resume=False),
                     **{**kw, "steps": 6})
    assert fresh.steps == 6 and fresh.message == "done 6 outer steps"


def test_nan_mid_loop_stops_with_success_false_and_keeps_the_last_good_step(tmp_path):
    import autograd.numpy as anp

    from bilevel import BilevelProblem
    from bilevel.outer import read_run

    poison = {"on": False}
    prob = BilevelProblem(
        lambda w, lam: 0.5 * anp.sum((w - lam) ** 2) + 0.05 * anp.sum(w ** 2),
        lambda w, lam: 0.5 * anp.sum((w - 1.0) ** 2) * (np.nan if poison["on"] else 1.0))

    def poison_after_step_2(info):
        poison["on"] = poison["on"] or info["step"] == 2

    path = tmp_path / "run.npz"
    res = minimize(prob, np.zeros(3), np.zeros(3), dynamics=GradientDescent(0.5, 30), steps=6,
                   callback=poison_after_step_2, monitoring=QUIET,
                   checkpointing=Checkpointing(path))
    assert not res.success and "outer step 3" in res.message and "non-finite" in res.message
    assert read_run(path)["step"] == 3 and np.all(np.isfinite(res.lam))
    poison["on"] = False
    with pytest.raises(HypergradError, match="non-finite outer value"):
        poison["on"] = True
        minimize(prob, np.zeros(3), np.zeros(3), dynamics=GradientDescent(0.5, 30), steps=2,
                 monitoring=QUIET, options=MinimizeOptions(on_failure="raise"))


@pytest.mark.parametrize("log_penalty", [True, False])
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("batched", [False, True])
def test_ridge_closed_form_oracles_equal_autograd(log_penalty, shared, batched):
    """hpo.problems.ridge's closed-form oracles (the default) against autograd's, each
    product at a random point: one penalty per feature or one shared, ρ = e^λ or λ, one
    problem or a batch of w against shared data."""
    from bilevel.hpo.problems import ridge as ridge_factory

    rng = np.random.default_rng(0)
    X, Xv = rng.standard_normal((30, 6)), rng.standard_normal((20, 6))
    y, yv = rng.standard_normal(30), rng.standard_normal(20)
    fast = ridge_factory(X, y, Xv, yv, log_penalty=log_penalty)
    ref = ridge_factory(X, y, Xv, yv, log_penalty=log_penalty, fast_oracles=False)
    assert fast.oracles and not ref.oracles
    m = 1 if shared else 6
    lam = rng.uniform(0.5, 1.5, (3, m) if batched else (m,))
    w = rng.standard_normal((3, 6) if batched else (6,))
    v, e = rng.standard_normal(w.shape), rng.standard_normal(lam.shape)
    pairs = [(fast.inner_grad(w, lam), ref.inner_grad(w, lam)),
             (fast.inner_hvp(w, lam, v), ref.inner_hvp(w, lam, v)),
             (fast.inner_mixed_vjp(w, lam, v), ref.inner_mixed_vjp(w, lam, v)),
             (fast.inner_mixed_jvp(w, lam, e), ref.inner_mixed_jvp(w, lam, e)),
             *zip(fast.outer_grads(w, lam), ref.outer_grads(w, lam), strict=True)]
    for got, want in pairs:
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
