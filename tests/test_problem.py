"""Tests of bilevel.problem: every oracle against closed forms and finite differences (float64),
batch axis = loop over problems, user oracles, linearize, and the bad-input errors."""

import autograd.numpy as anp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bilevel import BilevelProblem, NonFiniteError
from bilevel.tree import ravel

# --------------------------------------------------------------------------- problems


def ridge_data(d=4, n_tr=9, n_val=7, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "X": rng.standard_normal((n_tr, d)),
        "y": rng.standard_normal(n_tr),
        "Xv": rng.standard_normal((n_val, d)),
        "yv": rng.standard_normal(n_val),
    }


def ridge_problem(data, ops=anp, **kw):
    """V7: g = ½‖Xw − y‖² + ½ Σ_j e^{λ_j} w_j², f = ½‖X_v w − y_v‖² + 0.05‖λ‖².

    Written with ``axis=-1`` reductions so one definition serves w of shape (n,) and (B, n).
    """

    def g(w, lam, D):
        r = ops.matmul(w, D["X"].T) - D["y"]
        return 0.5 * ops.sum(r * r, axis=-1) + 0.5 * ops.sum(ops.exp(lam) * w * w, axis=-1)

    def f(w, lam, D):
        r = ops.matmul(w, D["Xv"].T) - D["yv"]
        return 0.5 * ops.sum(r * r, axis=-1) + 0.05 * ops.sum(lam * lam, axis=-1)

    return BilevelProblem(g, f, data=data, name="ridge", **kw)


def ridge_closed_forms(D, w, lam):
    X, y, Xv, yv = D["X"], D["y"], D["Xv"], D["yv"]
    el = np.exp(lam)
    return {
        "grad": X.T @ (X @ w - y) + el * w,
        "H": X.T @ X + np.diag(el),
        "M": np.diag(el * w),
        "outer": (Xv.T @ (Xv @ w - yv), 0.1 * lam),
    }


def mlp_problem(seed=1):
    """A small tanh MLP; λ = (log L2 of layer 1, log L2 of layer 2, log input scale)."""
    rng = np.random.default_rng(seed)
    X, Xv = rng.standard_normal((10, 3)), rng.standard_normal((8, 3))
    y, yv = np.sin(X).sum(1), np.sin(Xv).sum(1)
    params = {"W1": rng.standard_normal((3, 5)) * 0.5, "b1": rng.standard_normal(5) * 0.1,
              "W2": rng.standard_normal(5) * 0.5, "b2": np.zeros(())}
    w0, unravel = ravel(params)

    def predict(w, lam, A):
        p = unravel(w)
        h = anp.tanh(anp.matmul(A * anp.exp(lam[2]), p["W1"]) + p["b1"])
        return anp.matmul(h, p["W2"]) + p["b2"]

    def g(w, lam):
        p = unravel(w)
        fit = anp.mean((predict(w, lam, X) - y) ** 2)
        return fit + 0.5 * anp.exp(lam[0]) * anp.sum(p["W1"] ** 2) + 0.5 * anp.exp(
            lam[1]
        ) * anp.sum(p["W2"] ** 2)

    def f(w, lam):
        return anp.mean((predict(w, lam, Xv) - yv) ** 2) + 0.01 * anp.sum(lam**2)

    lam = np.array([-1.0, -0.5, 0.2])
    return BilevelProblem(g, f, name="mlp"), w0 + 0.1 * rng.standard_normal(w0.size), lam


# --------------------------------------------------------------------------- finite differences


def fd_jacobian(fun, x, eps=1e-6):
    """Central-difference Jacobian of ``fun`` at ``x``: shape fun(x).shape + x.shape."""
    cols = []
    for i in range(x.size):
        e = np.zeros_like(x)
        e.flat[i] = eps
        cols.append((np.asarray(fun(x + e)) - np.asarray(fun(x - e))) / (2 * eps))
    return np.stack(cols, axis=-1)


def _point(kind):
    if kind == "ridge":
        D = ridge_data()
        rng = np.random.default_rng(5)
        return ridge_problem(D), rng.standard_normal(4), rng.standard_normal(4) * 0.5
    return mlp_problem()


@pytest.fixture(params=["ridge", "mlp"])
def point(request):
    return _point(request.param)


def test_inner_and_outer_gradients_against_finite_differences(point):
    p, w, lam = point
    fd_gw = fd_jacobian(lambda x: p.inner_value(x, lam), w)
    np.testing.assert_allclose(p.inner_grad(w, lam), fd_gw, rtol=1e-7, atol=1e-8)
    f, gw, gl = p.outer_value_and_grads(w, lam)
    assert np.ndim(f) == 0 and np.isclose(f, p.outer_value(w, lam))
    np.testing.assert_allclose(gw, fd_jacobian(lambda x: p.outer_value(x, lam), w),
                               rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(gl, fd_jacobian(lambda x: p.outer_value(w, x), lam),
                               rtol=1e-7, atol=1e-8)
    gw2, gl2 = p.outer_grads(w, lam)
    np.testing.assert_array_equal(gw2, gw)
    np.testing.assert_array_equal(gl2, gl)


def test_second_order_oracles_against_finite_differences(point):
    p, w, lam = point
    H = fd_jacobian(lambda x: p.inner_grad(x, lam), w)
    M = fd_jacobian(lambda x: p.inner_grad(w, x), lam)
    rng = np.random.default_rng(0)
    v, u = rng.standard_normal(w.size), rng.standard_normal(w.size)
    e = rng.standard_normal(lam.size)
    tol = dict(rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(p.inner_hvp(w, lam, v), H @ v, **tol)
    np.testing.assert_allclose(p.inner_mixed_vjp(w, lam, u), M.T @ u, **tol)
    np.testing.assert_allclose(p.inner_mixed_jvp(w, lam, e), M @ e, **tol)
    gw, t = p.inner_grad_jvp(w, lam, v, e)
    np.testing.assert_allclose(gw, p.inner_grad(w, lam), rtol=1e-13)
    np.testing.assert_allclose(t, H @ v + M @ e, **tol)
    np.testing.assert_allclose(p.inner_grad_jvp(w, lam, v, None)[1], H @ v, **tol)
    np.testing.assert_allclose(p.inner_grad_jvp(w, lam, None, e)[1], M @ e, **tol)
    lin = p.linearize(w, lam)
    np.testing.assert_allclose(lin.grad, gw, rtol=1e-13)
    np.testing.assert_allclose(lin.hvp(v), H @ v, **tol)
    np.testing.assert_allclose(lin.mixed_vjp(u), M.T @ u, **tol)
    hu, mu = lin.vjp(u)
    np.testing.assert_allclose(hu, H @ u, **tol)
    np.testing.assert_allclose(mu, M.T @ u, **tol)


def test_ridge_oracles_equal_closed_forms():
    D = ridge_data()
    p = ridge_problem(D)
    rng = np.random.default_rng(2)
    w, lam, v, e = (rng.standard_normal(4) for _ in range(4))
    cf = ridge_closed_forms(D, w, lam)
    np.testing.assert_allclose(p.inner_grad(w, lam), cf["grad"], rtol=1e-12)
    np.testing.assert_allclose(p.inner_hvp(w, lam, v), cf["H"] @ v, rtol=1e-12)
    np.testing.assert_allclose(p.inner_mixed_vjp(w, lam, v), cf["M"].T @ v, rtol=1e-12)
    np.testing.assert_allclose(p.inner_mixed_jvp(w, lam, e), cf["M"] @ e, rtol=1e-12)
    gw, gl = p.outer_grads(w, lam)
    np.testing.assert_allclose(gw, cf["outer"][0], rtol=1e-12)
    np.testing.assert_allclose(gl, cf["outer"][1], rtol=1e-12)


def test_check_oracles_passes_on_autograd_oracles(point):
    p, w, lam = point
    report = p.check_oracles(w, lam, reference="fd", rtol=1e-6)
    assert report.ok, str(report)
    assert set(report.errors) == {
        "inner_grad", "inner_hvp", "inner_mixed_vjp", "inner_mixed_jvp", "outer_grads"
    }
    assert set(report.references.values()) == {"finite differences"}
    report.raise_if_failed()


def test_counts_record_the_work():
    p, w, lam = _point("ridge")
    p.inner_grad(w, lam)
    p.inner_hvp(w, lam, w)
    p.inner_mixed_jvp(w, lam, lam)
    p.outer_grads(w, lam)
    c = p.counts.snapshot()
    assert c["hvp"] == 1 and c["jvp"] == 1 and c["outer_grad"] == 1
    assert c["grad"] == 2  # inner_grad + the gradient traced for the HVP


def test_data_argument_overrides_and_two_argument_objectives():
    D1, D2 = ridge_data(seed=0), ridge_data(seed=1)
    p = ridge_problem(D1)
    w, lam = np.ones(4), np.zeros(4)
    np.testing.assert_allclose(p.inner_grad(w, lam, data=D2),
                               ridge_closed_forms(D2, w, lam)["grad"], rtol=1e-12)
    np.testing.assert_allclose(p.inner_grad(w, lam), ridge_closed_forms(D1, w, lam)["grad"],
                               rtol=1e-12)
    p2 = BilevelProblem(lambda w, lam: anp.sum((w - lam) ** 2), lambda w, lam: anp.sum(w**2))
    np.testing.assert_allclose(p2.inner_grad(w, lam), 2 * (w - lam))


def test_init_map_products_against_finite_differences():
    init = lambda lam: 2.0 * anp.tanh(lam)  # noqa: E731
    p = BilevelProblem(lambda w, lam: anp.sum(w**2), lambda w, lam: anp.sum(w), init=init)
    lam, a = np.array([0.3, -1.2, 0.7]), np.array([1.0, 2.0, -0.5])
    C = fd_jacobian(lambda x: init(x), lam)
    np.testing.assert_allclose(p.initial_point(lam), init(lam))
    np.testing.assert_allclose(p.init_vjp(lam, a), C.T @ a, rtol=1e-7)
    np.testing.assert_allclose(p.init_jvp(lam, a), C @ a, rtol=1e-7)
    no_init = BilevelProblem(lambda w, lam: anp.sum(w**2), lambda w, lam: anp.sum(w))
    np.testing.assert_array_equal(no_init.init_vjp(lam, a), np.zeros(3))
    with pytest.raises(ValueError, match="no starting point"):
        no_init.initial_point(lam)


# --------------------------------------------------------------------------- batch axis


def _batched_point(B, seed):
    rng = np.random.default_rng(seed)
    D = ridge_data()
    return ridge_problem(D), rng.standard_normal((B, 4)), rng.standard_normal((B, 4)) * 0.5


@given(B=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_batch_axis_equals_loop_over_problems(B, seed):
    p, W, L = _batched_point(B, seed)
    rng = np.random.default_rng(seed + 1)
    V, U, E = rng.standard_normal((B, 4)), rng.standard_normal((B, 4)), rng.standard_normal((B, 4))
    batched = {
        "g": p.inner_value(W, L),
        "grad": p.inner_grad(W, L),
        "hvp": p.inner_hvp(W, L, V),
        "mvjp": p.inner_mixed_vjp(W, L, U),
        "mjvp": p.inner_mixed_jvp(W, L, E),
        "gjvp": p.inner_grad_jvp(W, L, V, E)[1],
        "outer": p.outer_value_and_grads(W, L),
        "lin": p.linearize(W, L).vjp(U),
    }
    TOL = dict(rtol=1e-12, atol=1e-14)  # rounding level; entries can be near zero
    assert batched["g"].shape == (B,) and batched["outer"][0].shape == (B,)
    for b in range(B):
        w, lam = W[b], L[b]
        np.testing.assert_allclose(batched["g"][b], p.inner_value(w, lam), **TOL)
        np.testing.assert_allclose(batched["grad"][b], p.inner_grad(w, lam), **TOL)
        np.testing.assert_allclose(batched["hvp"][b], p.inner_hvp(w, lam, V[b]), **TOL)
        np.testing.assert_allclose(batched["mvjp"][b], p.inner_mixed_vjp(w, lam, U[b]),
                                   **TOL)
        np.testing.assert_allclose(batched["mjvp"][b], p.inner_mixed_jvp(w, lam, E[b]),
                                   **TOL)
        np.testing.assert_allclose(batched["gjvp"][b],
                                   p.inner_grad_jvp(w, lam, V[b], E[b])[1], **TOL)
        for got, want in zip(batched["outer"], p.outer_value_and_grads(w, lam), strict=True):
            np.testing.assert_allclose(got[b], want, **TOL)
        for got, want in zip(batched["lin"], p.linearize(w, lam).vjp(U[b]), strict=True):
            np.testing.assert_allclose(got[b], want, **TOL)


def test_check_oracles_with_batch_axis():
    p, W, L = _batched_point(3, 0)
    assert p.check_oracles(W, L, reference="fd", rtol=1e-6).ok


# --------------------------------------------------------------------------- user oracles


class Recorder:
    """Closed-form ridge oracles that count their calls (``wrong`` corrupts one of them)."""

    def __init__(self, D, wrong=None):
        self.D, self.wrong, self.calls = D, wrong, {}

    def _hit(self, name):
        self.calls[name] = self.calls.get(name, 0) + 1

    def inner_grad(self, w, lam, D):
        self._hit("inner_grad")
        return D["X"].T @ (D["X"] @ w - D["y"]) + np.exp(lam) * w

    def inner_hvp(self, w, lam, v, D):
        self._hit("inner_hvp")
        penalty = 0.0 if self.wrong == "inner_hvp" else np.exp(lam) * v  # drops e^λ ⊙ v
        return D["X"].T @ (D["X"] @ v) + penalty

    def inner_mixed_vjp(self, w, lam, u, D):
        self._hit("inner_mixed_vjp")
        out = np.exp(lam) * w * u
        return -out if self.wrong == "inner_mixed_vjp" else out

    def inner_mixed_jvp(self, w, lam, e, D):
        self._hit("inner_mixed_jvp")
        return np.exp(lam) * w * e

    def outer_grads(self, w, lam, D):
        self._hit("outer_grads")
        return D["Xv"].T @ (D["Xv"] @ w - D["yv"]), 0.1 * lam

    def oracles(self):
        names = ["inner_grad", "inner_hvp", "inner_mixed_vjp", "inner_mixed_jvp", "outer_grads"]
        return {k: getattr(self, k) for k in names}


def test_user_oracles_are_used_and_agree_with_autograd():
    D = ridge_data()
    rec = Recorder(D)
    mine, ref = ridge_problem(D, oracles=rec.oracles()), ridge_problem(D)
    rng = np.random.default_rng(3)
    w, lam, v = rng.standard_normal(4), rng.standard_normal(4), rng.standard_normal(4)
    for name, args in [("inner_grad", ()), ("inner_hvp", (v,)), ("inner_mixed_vjp", (v,)),
                       ("inner_mixed_jvp", (v,))]:
        before = rec.calls.get(name, 0)
        got = getattr(mine, name)(w, lam, *args)
        assert rec.calls[name] == before + 1, name
        np.testing.assert_allclose(got, getattr(ref, name)(w, lam, *args), rtol=1e-12)
    for got, want in zip(mine.outer_grads(w, lam), ref.outer_grads(w, lam), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12)
    assert rec.calls["outer_grads"] == 1
    lin = mine.linearize(w, lam)
    n_hvp = rec.calls["inner_hvp"]
    np.testing.assert_allclose(lin.hvp(v), ref.inner_hvp(w, lam, v), rtol=1e-12)
    assert rec.calls["inner_hvp"] == n_hvp + 1
    report = mine.check_oracles(w, lam)
    assert report.ok, str(report)
    assert set(report.references.values()) == {"autograd"}
    assert "user" in str(report)


@pytest.mark.parametrize("wrong", ["inner_hvp", "inner_mixed_vjp"])
@pytest.mark.parametrize("reference", ["auto", "fd"])
def test_check_oracles_flags_a_wrong_oracle(wrong, reference):
    D = ridge_data()
    p = ridge_problem(D, oracles=Recorder(D, wrong=wrong).oracles())
    w, lam = np.ones(4), np.zeros(4)
    report = p.check_oracles(w, lam, reference=reference, rtol=1e-6)
    assert not report.ok
    assert report.failed == [wrong]
    assert report.errors[wrong] > 1e-2
    assert "FAIL" in str(report)
    with pytest.raises(AssertionError, match=wrong):
        report.raise_if_failed()


def test_user_oracle_with_wrong_shape_is_named():
    D = ridge_data()
    p = ridge_problem(D, oracles={"inner_mixed_vjp": lambda w, lam, u, D: u[:2]})
    with pytest.raises(ValueError, match=r"'inner_mixed_vjp' returned shape \(2,\).*lam, \(4,\)"):
        p.inner_mixed_vjp(np.ones(4), np.zeros(4), np.ones(4))
    p = ridge_problem(D, oracles={"outer_grads": lambda w, lam, D: w})
    with pytest.raises(ValueError, match="must return a pair"):
        p.outer_grads(np.ones(4), np.zeros(4))


def test_oracle_dict_validation():
    g = lambda w, lam: anp.sum(w**2)  # noqa: E731
    with pytest.raises(ValueError, match="unknown oracle name.*'inner_hess'"):
        BilevelProblem(g, g, oracles={"inner_hess": g})
    with pytest.raises(TypeError, match="oracle 'inner_grad' must be callable"):
        BilevelProblem(g, g, oracles={"inner_grad": 3})
    with pytest.raises(TypeError, match="inner must be callable"):
        BilevelProblem(None, g)
    with pytest.raises(TypeError, match="outer must be callable"):
        BilevelProblem(g, "f")
    with pytest.raises(TypeError, match="init must be callable"):
        BilevelProblem(g, g, init=np.zeros(2))


# --------------------------------------------------------------------------- linearize


def test_linearize_traces_the_objective_once():
    D = ridge_data()
    calls = {"g": 0}
    base = ridge_problem(D)

    def g(w, lam, data):
        calls["g"] += 1
        return base.inner(w, lam, data)

    p = BilevelProblem(g, base.outer, data=D)
    w, lam = np.ones(4), np.zeros(4)
    rng = np.random.default_rng(0)
    vs = [rng.standard_normal(4) for _ in range(10)]
    lin = p.linearize(w, lam)
    assert calls["g"] == 1
    products = [lin.hvp(v) for v in vs]
    assert calls["g"] == 1
    lin.vjp(vs[0])
    mixed = [lin.mixed_vjp(v) for v in vs]
    assert calls["g"] == 2  # the (w, λ) map is traced lazily, once
    calls["g"] = 0
    fresh = [p.inner_hvp(w, lam, v) for v in vs]
    assert calls["g"] == len(vs)
    for a, b in zip(products, fresh, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-13)
    for v, m in zip(vs, mixed, strict=True):
        np.testing.assert_allclose(m, p.inner_mixed_vjp(w, lam, v), rtol=1e-13)
    assert p.counts.hvp == 3 * len(vs) + 1 + len(vs)


def test_linearize_speedup_benchmark_runs():
    from bilevel.bench.oracles import linearize_speedup

    ratio = linearize_speedup(quick=True)
    assert np.isfinite(ratio) and ratio > 0


# --------------------------------------------------------------------------- bad input


@pytest.fixture
def ridge():
    return ridge_problem(ridge_data())


@pytest.mark.parametrize(
    "w, lam, match",
    [
        (np.zeros(5), np.zeros(4), r"failed for w of shape \(5,\) and lam of shape \(4,\)"),
        (np.zeros(4), np.zeros(3), r"failed for w of shape \(4,\) and lam of shape \(3,\)"),
        (np.zeros((2, 4)), np.zeros(4), r"lam needs the same leading axis, shape \(2, m\)"),
        (np.zeros((2, 4)), np.zeros((3, 4)), r"lam needs the same leading axis.*got \(3, 4\)"),
        (np.zeros((1, 2, 4)), np.zeros(4), r"w must be a flat vector \(n,\) or a batch"),
    ],
)
def test_shape_errors_name_the_argument(ridge, w, lam, match):
    with pytest.raises(ValueError, match=match):
        ridge.validate(w, lam)
    with pytest.raises(ValueError, match=match):
        ridge.inner_grad(w, lam)


@pytest.mark.parametrize(
    "w, lam, name, dtype",
    [
        (np.zeros(4, dtype=np.int64), np.zeros(4), "w", "int64"),
        (np.zeros(4), np.zeros(4, dtype=np.int32), "lam", "int32"),
        (np.zeros(4, dtype=object), np.zeros(4), "w", "object"),
        (np.zeros(4), np.zeros(4, dtype=bool), "lam", "bool"),
    ],
)
def test_dtype_errors_name_the_argument(ridge, w, lam, name, dtype):
    match = f"{name} must have a floating dtype .*got {dtype}"
    for call in (ridge.validate, ridge.inner_grad, ridge.outer_grads, ridge.linearize):
        with pytest.raises(TypeError, match=match):
            call(w, lam)
    with pytest.raises(TypeError, match=match):
        ridge.inner_hvp(w, lam, np.ones(4))


def test_non_array_inputs(ridge):
    with pytest.raises(TypeError, match="w must be an array, got list"):
        ridge.validate([0.0] * 4, np.zeros(4))
    with pytest.raises(TypeError, match="lam must be an array, got float"):
        ridge.inner_grad(np.zeros(4), 0.5)


def test_non_scalar_objective_is_reported():
    vec = BilevelProblem(lambda w, lam: w * lam, lambda w, lam: anp.sum(w))
    with pytest.raises(ValueError, match=r"inner objective must return a scalar .* shape \(3,\)"):
        vec.validate(np.ones(3), np.ones(3))
    with pytest.raises(ValueError, match="inner objective must return a scalar"):
        vec.inner_grad(np.ones(3), np.ones(3))
    # batched w: the objective must keep the batch axis, (B,)
    total = BilevelProblem(lambda w, lam: anp.sum(w * lam), lambda w, lam: anp.sum(w, axis=-1))
    with pytest.raises(ValueError, match=r"must return shape \(2,\).*returned shape \(\)"):
        total.validate(np.ones((2, 3)), np.ones((2, 3)))
    keep = BilevelProblem(lambda w, lam: anp.sum(w * lam, axis=-1),
                          lambda w, lam: anp.sum(w, axis=-1, keepdims=True))
    with pytest.raises(ValueError, match=r"outer objective must return shape \(2,\).*\(2, 1\)"):
        keep.outer_grads(np.ones((2, 3)), np.ones((2, 3)))


def test_nonfinite_values_and_derivatives_raise():
    nan_g = BilevelProblem(lambda w, lam: anp.sum(w) * np.nan, lambda w, lam: anp.sum(w))
    with pytest.raises(NonFiniteError, match="inner value") as info:
        nan_g.validate(np.ones(2), np.ones(2))
    assert info.value.what == "inner value"
    inf_f = BilevelProblem(lambda w, lam: anp.sum(w**2), lambda w, lam: anp.sum(anp.exp(w * lam)))
    with np.errstate(all="ignore"):
        with pytest.raises(NonFiniteError, match="outer value"):
            inf_f.validate(np.ones(2), np.full(2, 1e3))
        with pytest.raises(NonFiniteError, match="outer value"):
            inf_f.outer_grads(np.ones(2), np.full(2, 1e3))
    sqrt_g = BilevelProblem(lambda w, lam: anp.sum(anp.sqrt(w) * lam), lambda w, lam: anp.sum(w))
    w0, lam = np.array([0.0, 1.0]), np.ones(2)
    with np.errstate(all="ignore"):
        assert np.isfinite(sqrt_g.inner_value(w0, lam))
        with pytest.raises(NonFiniteError) as info:
            sqrt_g.inner_grad(w0, lam)
        assert info.value.what == "inner_grad"
        with pytest.raises(NonFiniteError) as info:
            sqrt_g.inner_mixed_vjp(np.array([1.0, 4.0]), lam, np.array([np.inf, 0.0]))
        assert info.value.what == "inner_mixed_vjp"
        loose = BilevelProblem(sqrt_g.inner, sqrt_g.outer, check_finite=False)
        assert np.isinf(loose.inner_grad(w0, lam)[0])


def test_repr_and_name():
    p = ridge_problem(ridge_data(), oracles={"inner_grad": Recorder(ridge_data()).inner_grad})
    assert repr(p) == "BilevelProblem(name='ridge', init=no, oracles=['inner_grad'])"


# --------------------------------------------------------------------------- structure


def test_old_import_paths_and_the_public_surface_the_oracles_use():
    from bilevel.nonfinite import NonFiniteError as NFE
    from bilevel.oracle_checks import OracleReport as OR
    from bilevel.oracles import DerivedOracles
    from bilevel.oracles import Linearization as Lin
    from bilevel.problem import (
        ORACLE_NAMES,
        BilevelProblem,
        Linearization,
        NonFiniteError,
        OracleCounts,
        OracleReport,
        at_step,
    )

    assert (Linearization, NonFiniteError, OracleReport) == (Lin, NFE, OR)
    assert "inner_hvp" in ORACLE_NAMES and OracleCounts().snapshot()["grad"] == 0
    assert callable(at_step) and issubclass(BilevelProblem, DerivedOracles)
    D = ridge_data()
    p, w, lam = ridge_problem(D), np.ones(4), np.zeros(4)
    assert p.resolve_data(None) is D and p.resolve_data("other") == "other"
    np.testing.assert_allclose(p.evaluate("inner", w, lam), p.inner(w, lam, D))
    np.testing.assert_allclose(p.evaluate("outer", w, lam), p.outer(w, lam, D))
    np.testing.assert_allclose(p.grad_map(w, lam), ridge_closed_forms(D, w, lam)["grad"])
    assert p.counts.snapshot() == OracleCounts().snapshot()  # the surface is uncounted
    with pytest.raises(TypeError, match="floating"):
        p.check_point(w, np.zeros(4, dtype=int))
    ref = ridge_problem(D, oracles={"inner_grad": Recorder(D).inner_grad}).reference()
    assert ref.oracles == {} and not ref.check_finite and ref.data is D


def test_inner_grad_is_differentiable_through_the_oracles():
    """autograd through ``inner_grad`` takes H and M from the (user) oracles, counted."""
    from autograd import grad, make_jvp

    D = ridge_data()
    rec = Recorder(D)
    p = ridge_problem(D, oracles={"inner_hvp": rec.inner_hvp,
                                  "inner_mixed_vjp": rec.inner_mixed_vjp})
    w, lam = np.linspace(-1, 1, 4), np.linspace(0.2, -0.3, 4)
    cf = ridge_closed_forms(D, w, lam)
    u = np.array([1.0, -2.0, 0.5, 0.3])
    gw = grad(lambda x: anp.sum(p.inner_grad(x, lam) * u))(w)
    gl = grad(lambda lm: anp.sum(p.inner_grad(w, lm) * u))(lam)
    np.testing.assert_allclose(gw, cf["H"] @ u, rtol=1e-12)
    np.testing.assert_allclose(gl, cf["M"].T @ u, rtol=1e-12)
    assert rec.calls["inner_hvp"] == 1 and rec.calls["inner_mixed_vjp"] == 1
    assert p.counts.hvp == 2
    _, t = make_jvp(lambda lm: p.inner_grad(w, lm))(lam)(u)
    np.testing.assert_allclose(t, cf["M"] @ u, rtol=1e-12)


def _ridge_g(w, lam, D):
    r = D["X"] @ w - D["y"]
    return 0.5 * anp.sum(r * r) + 0.5 * anp.sum(anp.exp(lam) * w * w)


def _ridge_f(w, lam, D):
    r = D["Xv"] @ w - D["yv"]
    return 0.5 * anp.sum(r * r)


def test_problem_pickles_with_module_level_objectives():
    import pickle

    D = ridge_data()
    p = BilevelProblem(_ridge_g, _ridge_f, data=D, oracles={"inner_hvp": Recorder(D).inner_hvp})
    back = pickle.loads(pickle.dumps(p))
    w, lam = np.ones(4), np.zeros(4)
    np.testing.assert_allclose(back.inner_grad(w, lam), ridge_closed_forms(D, w, lam)["grad"])
    np.testing.assert_allclose(back.inner_hvp(w, lam, w), p.inner_hvp(w, lam, w))


# --------------------------------------------------------------------------- CuPy


@pytest.mark.cupy
def test_ridge_oracles_on_cupy_match_numpy():
    import bilevel.numpy as bnp
    from bilevel import backend

    D = ridge_data()
    rng = np.random.default_rng(4)
    w, lam, v = rng.standard_normal(4), rng.standard_normal(4), rng.standard_normal(4)
    cpu = ridge_problem(D)
    gpu = ridge_problem(backend.to_backend(D, "cupy"), ops=bnp)
    wg, lg, vg = backend.to_backend((w, lam, v), "cupy")
    for name, args, gargs in [("inner_grad", (), ()), ("inner_hvp", (v,), (vg,)),
                              ("inner_mixed_vjp", (v,), (vg,)),
                              ("inner_mixed_jvp", (v,), (vg,))]:
        got = getattr(gpu, name)(wg, lg, *gargs)
        assert backend.name_of(got) == "cupy"
        np.testing.assert_allclose(backend.to_numpy(got), getattr(cpu, name)(w, lam, *args),
                                   rtol=1e-12)
    with pytest.raises(TypeError, match="w is a cupy array .*lam is a numpy array"):
        gpu.inner_grad(wg, lam)
