"""The core on the stand-in device: ``array_api_strict``'s non-default device ``device1``.

That device refuses conversion to NumPy and mixing with arrays of another device, like a
GPU array, so any array created without ``device=``, any NumPy call on a device array and
any host-only operation fails here. :func:`bilevel.hypergrad` with every registered method,
the meta-learning algorithms and the HPO problems run on it, and their results equal the
same computation on NumPy.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import bilevel.numpy as bnp
from bilevel import (
    CG,
    Adjoint,
    BilevelProblem,
    Forward,
    GradientDescent,
    GradientFlow,
    Historyless,
    Implicit,
    Momentum,
    Neumann,
    NonFiniteError,
    Reverse,
    hypergrad,
    registry,
)
from bilevel.backend import to_numpy
from bilevel.linalg import cg, fixed_point
from bilevel.linalg.cg import jacobi

xps = pytest.importorskip("array_api_strict")
DEVICE = xps.Device("device1")


def on_device(a):
    return None if a is None else xps.asarray(np.asarray(a), device=DEVICE)


def assert_on_device(x):
    assert x.device == DEVICE, f"result on {x.device}, not on the stand-in device"


def ridge_data(seed=0, n_rows=12, n=5):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n_rows, n)), rng.standard_normal(n_rows)


def g(w, lam, data):
    X, y = data
    r = X @ w - y
    return 0.5 * bnp.sum(r * r) + 0.5 * bnp.sum(bnp.exp(lam) * w * w)


def f(w, lam, data):
    X, y = data
    return 0.5 * bnp.sum((X @ w - y) ** 2) + 0.1 * bnp.sum(bnp.maximum(w, 0.0))


def problem_on(convert):
    X, y = ridge_data()
    return BilevelProblem(g, f, data=(convert(X), convert(y))), convert(np.zeros(5)), convert(
        np.full(5, 0.1))


def default_of(name):
    """A method instance and dynamics that suit it, for every registered method."""
    method = registry.lookup("method", name)()
    if name == "historyless":
        method = Historyless(tol=None)
    if name == "adjoint":
        return method, GradientFlow(0.2, 12, scheme="rk4")
    return method, GradientDescent(0.02, 12)


@pytest.mark.parametrize("name", registry.names("method"))
def test_every_method_runs_on_the_device_and_matches_numpy(name):
    method, dynamics = default_of(name)
    if name == "implicit":
        method = Implicit(CG(), inner_tol=None)
    results = []
    for convert in (on_device, np.asarray):
        problem, lam, w0 = problem_on(convert)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results.append(hypergrad(problem, lam, w0, dynamics=dynamics, method=method,
                                     on_failure="raise"))
    dev, ref = results
    assert_on_device(dev.grad)
    assert_on_device(dev.w)
    np.testing.assert_allclose(to_numpy(dev.grad), ref.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("method", [
    Reverse(checkpoints=3), Reverse(truncate=4), Forward(), Historyless(tol=None),
    Implicit(CG.fixed(5), inner_tol=None), Implicit(Neumann(0.01, 20), inner_tol=None),
    Adjoint("reconstruct"), Adjoint("store", discrete=False), Adjoint.paper(),
], ids=repr)
def test_method_options_run_on_the_device(method):
    dynamics = GradientFlow(0.05, 12, scheme="rk4") if isinstance(method, Adjoint) else (
        GradientDescent(0.02, 12))
    problem, lam, w0 = problem_on(on_device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = hypergrad(problem, lam, w0, dynamics=dynamics, method=method, on_failure="ignore")
    assert res.success, res.message
    assert_on_device(res.grad)


def test_batched_problems_and_momentum_on_the_device():
    X, y = ridge_data()
    B = 3
    data = (on_device(X), on_device(y))

    def g_batch(w, lam, data):
        X, y = data
        r = w @ X.T - y
        return 0.5 * bnp.sum(r * r, axis=-1) + 0.5 * bnp.sum(bnp.exp(lam) * w * w, axis=-1)

    def f_batch(w, lam, data):
        X, y = data
        return 0.5 * bnp.sum((w @ X.T - y) ** 2, axis=-1)

    problem = BilevelProblem(g_batch, f_batch, data=data)
    lam = on_device(np.linspace(-1, 1, B * 5).reshape(B, 5))
    w0 = on_device(np.zeros((B, 5)))
    for method, dynamics in ((Reverse(), Momentum(0.02, 0.5, 10)),
                             (Implicit(CG(), inner_tol=None), GradientDescent(0.02, 10))):
        res = hypergrad(problem, lam, w0, dynamics=dynamics, method=method, on_failure="raise")
        assert tuple(res.grad.shape) == (B, 5)
        assert_on_device(res.grad)


def test_a_nan_on_the_device_is_reported_at_its_step():
    """The deferred checks raise the same error, naming the same inner step, as NumPy."""
    messages = []
    for convert in (on_device, np.asarray):
        X, y = ridge_data()

        def g_blowing(w, lam, data):
            X, y = data
            return g(w, lam, data) + bnp.sum(bnp.exp(40.0 * w * w))

        problem = BilevelProblem(g_blowing, f, data=(convert(X), convert(y)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = hypergrad(problem, convert(np.zeros(5)), convert(np.full(5, 0.5)),
                            dynamics=GradientDescent(0.5, 20), method=Reverse(),
                            on_failure="ignore")
        assert not res.success
        messages.append((res.message.split(":")[0], res.get("nonfinite_step")))
    assert messages[0] == messages[1]
    assert messages[0][1] is not None


def test_deferred_checks_raise_once_after_the_loop():
    from bilevel.nonfinite import at_step, deferred_checks

    problem, lam, w0 = problem_on(on_device)
    bad = on_device(np.array([1.0, np.nan]))
    with pytest.raises(NonFiniteError) as info, deferred_checks():
        for k in range(4):
            with at_step(k):
                problem.require_finite("inner_grad", bad if k == 2 else lam)
    assert info.value.step == 2 and info.value.what == "inner_grad"


# ---------------------------------------------------------------------- linear solvers
def spd_system(n=40, seed=3):
    """A diagonally dominant SPD matrix with a badly scaled diagonal (κ ≈ 1e6)."""
    rng = np.random.default_rng(seed)
    d = np.logspace(0, 6, n)
    C = rng.standard_normal((n, n)) * 0.1
    A = np.diag(d) + 0.5 * np.sqrt(np.outer(d, d)) * (C + C.T) / n
    return A, rng.standard_normal(n)


@pytest.mark.parametrize("convert", [np.asarray, on_device], ids=["numpy", "device"])
def test_jacobi_preconditioning_cuts_cg_iterations(convert):
    A, b = spd_system()
    A_, b_ = convert(A), convert(b)
    plain = cg(lambda v: A_ @ v, b_, tol=1e-10, maxiter=2000)
    pre = cg(lambda v: A_ @ v, b_, tol=1e-10, maxiter=2000, M=jacobi(convert(np.diag(A))))
    assert plain.converged and pre.converged
    assert pre.iterations < plain.iterations / 3
    exact = np.linalg.solve(A, b)
    for res in (plain, pre):
        np.testing.assert_allclose(to_numpy(res.x), exact, rtol=1e-6, atol=1e-12)
    callable_M = cg(lambda v: A_ @ v, b_, tol=1e-10, M=lambda r: r / convert(np.diag(A)))
    assert callable_M.iterations == pre.iterations


def test_cg_with_tol_zero_stops_when_the_residual_underflows():
    A, b = spd_system(n=8)
    res = cg(lambda v: A @ v, b, tol=0.0, maxiter=10_000)
    assert res.converged
    # no iteration ran on a denormal residual (‖r‖² below the smallest normal number)
    normal = np.sqrt(np.finfo(float).smallest_normal) / np.linalg.norm(b)
    assert min(res.residual_history[:-1]) >= normal
    assert 0 < res.residual_history[-1] < normal
    np.testing.assert_allclose(res.x, np.linalg.solve(A, b), rtol=1e-8)


@pytest.mark.parametrize("every", [1, 3, 7])
def test_cg_check_every_changes_reads_not_results(every):
    A, b = spd_system(n=12)
    A_, b_ = on_device(A), on_device(b)
    ref = cg(lambda v: A @ v, b, tol=1e-8)
    res = cg(lambda v: A_ @ v, b_, tol=1e-8, check_every=every)
    assert res.iterations == ref.iterations and res.converged
    assert res.residual_history == pytest.approx(ref.residual_history, rel=1e-9, abs=1e-300)
    assert ref.n_matvec <= res.n_matvec < ref.n_matvec + every
    np.testing.assert_allclose(to_numpy(res.x), ref.x, rtol=1e-10)


def test_solvers_report_breakdowns_on_the_device():
    A = np.diag([1.0, -2.0, 3.0])
    b = np.ones(3)
    for convert in (np.asarray, on_device):
        A_, b_ = convert(A), convert(b)
        res = cg(lambda v, A_=A_: A_ @ v, b_)
        assert res.breakdown and not res.converged and "damping" in res.message
        fp = fixed_point(lambda v, A_=A_: A_ @ v, b_, alpha=0.1, maxiter=200)
        assert not fp.converged and "diverged" in fp.message


# ---------------------------------------------------------------------- meta-learning
# Reptile has no fast_oracles=False: it runs the analytic oracles (meta/model_oracles.py).
META = ["maml", "fomaml", "anil", "imaml", "amaml", "pretrain", "cml", "memoryreduced",
        "reptile"]


@pytest.mark.parametrize("name", META)
def test_meta_algorithms_run_on_the_device_and_match_numpy(name):
    from bilevel.meta import Episode, Sinusoid
    from bilevel.meta.models import MLP

    raw = Sinusoid(n_shot=4, n_query=4).sample(3, np.random.default_rng(0))
    episode = Episode(*(on_device(a) for a in (raw.x_support, raw.y_support, raw.x_query,
                                               raw.y_query)))
    cls = registry.lookup("algorithm", name)
    model = MLP((1, 8, 1), activation="relu")
    if name == "cml":
        base = registry.lookup("algorithm", "maml")(model, 0.05, 2, fast_oracles=False)
        alg = cls(base, MLP((8, 2, 1), activation="tanh"), weight=0.7)
    else:
        alg = cls(model) if name in ("pretrain", "reptile") else cls(model, fast_oracles=False)
    theta = alg.init(np.random.default_rng(1))
    grad, step = alg.meta_gradient(on_device(theta), episode)
    ref, ref_step = alg.meta_gradient(theta, raw)
    assert_on_device(grad)
    assert step.success == ref_step.success
    np.testing.assert_allclose(to_numpy(grad), ref, rtol=1e-9, atol=1e-12)


FAST = ["maml", "fomaml", "anil", "imaml", "amaml"]


@pytest.mark.filterwarnings("ignore::bilevel.HypergradWarning")
@pytest.mark.parametrize("act, loss", [("relu", "mse"), ("tanh", "cross_entropy")])
@pytest.mark.parametrize("name", FAST)
def test_analytic_oracles_run_on_the_device_and_match_numpy(name, act, loss):
    """The default fast path: the MLP's analytic oracles (backpropagation, R-operator)."""
    from bilevel.meta import Episode, Sinusoid
    from bilevel.meta.models import MLP

    rng = np.random.default_rng(0)
    if loss == "mse":
        model, raw = MLP((1, 6, 5, 1), activation=act), Sinusoid(4, 4).sample(3, rng)
    else:
        model = MLP((2, 6, 5, 3), activation=act, loss="cross_entropy")
        raw = Episode(rng.standard_normal((3, 4, 2)), rng.integers(0, 3, (3, 4)),
                      rng.standard_normal((3, 4, 2)), rng.integers(0, 3, (3, 4)))
    alg = registry.lookup("algorithm", name)(model, fast_oracles=True)
    assert alg.specification().problem_oracles() is not None
    theta = alg.init(np.random.default_rng(1))
    fields = (raw.x_support, raw.y_support, raw.x_query, raw.y_query)
    grad, _ = alg.meta_gradient(on_device(theta), Episode(*map(on_device, fields)))
    ref, _ = alg.meta_gradient(theta, raw)
    assert_on_device(grad)
    np.testing.assert_allclose(to_numpy(grad), ref, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------- HPO problems
def moved(tree):
    """Every array of a dict of arrays moved to the stand-in device."""
    return {k: on_device(v) for k, v in tree.items()}


def hpo_problem(name, convert):
    """An HPO problem built from data made by ``convert`` (device or NumPy),
    ``(problem, n, m, dynamics)``."""
    from bilevel.hpo import problems

    rng = np.random.default_rng(5)
    X, Xv = rng.standard_normal((20, 4)), rng.standard_normal((10, 4))
    y, yv = X @ np.ones(4) + 0.1 * rng.standard_normal(20), Xv @ np.ones(4)
    labels, labels_v = (y > 0).astype(np.int64), (yv > 0).astype(np.int64)
    X, Xv, y, yv, labels, labels_v = map(convert, (X, Xv, y, yv, labels, labels_v))
    if name == "optimizer_tuning":  # λ = (log α, logit β) of the tuned dynamics
        problem, dynamics = problems.optimizer_tuning(X, y, Xv, yv, steps=20)
        return problem, 4, 2, dynamics
    plain = GradientDescent(0.1, 20)
    built = {
        "ridge": lambda: (problems.ridge(X, y, Xv, yv), 4, 4, plain),
        "logistic": lambda: (problems.logistic(X, labels, Xv, labels_v), 5, 1, plain),
        "hyper_cleaning": lambda: (problems.hyper_cleaning(X, labels, Xv, labels_v), 10, 20,
                                   plain),
    }[name]
    return built()


@pytest.mark.parametrize("name", ["ridge", "logistic", "hyper_cleaning", "optimizer_tuning"])
def test_hpo_problems_run_on_the_device(name):
    """The factories take device arrays as they are; the hypergradient equals NumPy's."""
    results = []
    for convert in (on_device, np.asarray):
        problem, n, m, dynamics = hpo_problem(name, convert)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lam = np.full(m, -2.0) if name == "optimizer_tuning" else np.zeros(m)
            results.append(hypergrad(problem, convert(lam), convert(np.zeros(n)),
                                     dynamics=dynamics, method=Reverse(), on_failure="raise"))
    assert_on_device(results[0].grad)
    np.testing.assert_allclose(to_numpy(results[0].grad), results[1].grad, rtol=1e-9,
                               atol=1e-14)


def test_ode_divergence_is_found_at_the_same_step_on_the_device():
    from bilevel import ode

    found = []
    for convert in (np.asarray, on_device):
        with pytest.raises(ode.ODEDivergenceError) as info, np.errstate(over="ignore"):
            ode.integrate(lambda v: v**2, convert(np.ones(2)), 1.0, 50, "euler")
        found.append((info.value.step, to_numpy(info.value.y)))
    assert found[0][0] == found[1][0]
    np.testing.assert_array_equal(found[0][1], found[1][1])


def test_a_diverging_backward_reconstruction_fails_alike_on_the_device():
    """Adjoint("reconstruct"): the same step and cause on the device (checks deferred)."""

    def g_stiff(w, lam):
        return 0.5 * bnp.sum(bnp.exp(lam) * w * w)

    def f_target(w, lam):
        return 0.5 * bnp.sum((w - 1.0) ** 2)

    found = []
    for convert in (np.asarray, on_device):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = hypergrad(BilevelProblem(g_stiff, f_target),
                            convert(np.log(np.array([300.0, 1.0]))), convert(np.ones(2)),
                            dynamics=GradientFlow(10.0, 1200), method=Adjoint("reconstruct"),
                            on_failure="ignore")
        assert not res.success
        found.append((res.get("nonfinite_step"), res.message))
    assert found[0] == found[1] and found[0][0] is not None


@pytest.mark.parametrize("name", ["maml", "imaml"])
def test_conv4_meta_gradients_on_the_device(name):
    """Convolutions, pooling and normalization of Conv4 through MAML and iMAML."""
    from bilevel.meta import Episode
    from bilevel.meta.conv_models import Conv4

    rng = np.random.default_rng(0)
    arrays = (rng.standard_normal((2, 5, 1, 12, 12)), rng.integers(0, 5, (2, 5)),
              rng.standard_normal((2, 5, 1, 12, 12)), rng.integers(0, 5, (2, 5)))
    model = Conv4(1, hidden=4, ways=5, image_size=12, dtype="float64")
    alg = registry.lookup("algorithm", name)(model, inner_lr=0.1, steps=2, fast_oracles=False)
    theta = alg.init(np.random.default_rng(1))
    grad, _ = alg.meta_gradient(on_device(theta), Episode(*map(on_device, arrays)))
    ref, _ = alg.meta_gradient(theta, Episode(*arrays))
    assert_on_device(grad)
    np.testing.assert_allclose(to_numpy(grad), ref, rtol=1e-9, atol=1e-12)
