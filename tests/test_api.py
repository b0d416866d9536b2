"""Tests of bilevel.api: hypergrad() arguments, HypergradResult, strictness, warm starts."""

import dataclasses
import pickle
import warnings

import autograd.numpy as anp
import numpy as np
import pytest

from bilevel import (
    CG,
    Adjoint,
    BilevelProblem,
    FirstOrder,
    Forward,
    GradientDescent,
    Historyless,
    HypergradError,
    HypergradResult,
    HypergradState,
    HypergradWarning,
    Implicit,
    Reverse,
    hypergrad,
    value_and_hypergrad,
)
from bilevel.api import Method
from bilevel.registry import lookup, names


def shift_problem(**kw):
    """g = ½‖w − λ‖², f = ½‖w‖². GD with step α from 0: w_K = (1 − r^K) λ, r = 1 − α,
    so F_K(λ) = ½(1 − r^K)²‖λ‖² and ∇F_K = (1 − r^K)² λ."""
    g = lambda w, lam: 0.5 * anp.sum((w - lam) ** 2)  # noqa: E731
    f = lambda w, lam: 0.5 * anp.sum(w**2)  # noqa: E731
    return BilevelProblem(g, f, **kw)


LAM = np.array([1.0, -2.0, 0.5])


@pytest.mark.parametrize("method", [Reverse(), Forward()])
def test_hypergrad_closed_form_and_diagnostics(method):
    alpha, K = 0.3, 12
    c = 1 - (1 - alpha) ** K
    res = hypergrad(shift_problem(), LAM, np.zeros(3), dynamics=GradientDescent(alpha, K),
                    method=method)
    np.testing.assert_allclose(res.grad, c**2 * LAM, rtol=1e-12)
    np.testing.assert_allclose(res.w, c * LAM, rtol=1e-12)
    np.testing.assert_allclose(res.value, 0.5 * c**2 * LAM @ LAM, rtol=1e-12)
    np.testing.assert_allclose(res.inner_residual, (1 - c) * np.linalg.norm(LAM), rtol=1e-9)
    assert res.success is True and res.message == "ok"
    assert res.method == repr(method)
    assert res.time > 0 and res.n_grad >= 1
    # every step needs a gradient (alone, or inside a JVP) and a second-order product
    assert res.n_grad + res.n_jvp >= K and res.n_hvp + res.n_jvp >= K


def test_value_and_hypergrad_equals_hypergrad():
    kw = dict(dynamics=GradientDescent(0.5, 8), method=Reverse())
    value, grad = value_and_hypergrad(shift_problem(), LAM, np.zeros(3), **kw)
    res = hypergrad(shift_problem(), LAM, np.zeros(3), **kw)
    np.testing.assert_allclose(value, res.value, rtol=1e-15)
    np.testing.assert_allclose(grad, res.grad, rtol=1e-15)


def test_init_map_gives_the_starting_point_one_step_maml():
    """V10: with w0 = θ and one GD step, ∇_θ f(θ − α∇g(θ)) = (I − αP)(w1 − b)."""
    P = np.diag([1.0, 2.0, 3.0])
    a, b, alpha = np.array([1.0, 0.0, -1.0]), np.array([0.5, 0.5, 0.5]), 0.1
    p = BilevelProblem(lambda w, th: 0.5 * (w - a) @ P @ (w - a),
                       lambda w, th: 0.5 * anp.sum((w - b) ** 2), init=lambda th: th)
    theta = np.array([0.2, -0.3, 0.4])
    w1 = theta - alpha * P @ (theta - a)
    res = hypergrad(p, theta, dynamics=GradientDescent(alpha, 1), method=Reverse())
    np.testing.assert_allclose(res.grad, (np.eye(3) - alpha * P) @ (w1 - b), rtol=1e-12)


def test_argument_errors():
    p, gd = shift_problem(), GradientDescent(0.1, 3)
    with pytest.raises(TypeError, match="problem must be a BilevelProblem"):
        hypergrad(lambda w, lam: 0.0, LAM, np.zeros(3), dynamics=gd)
    with pytest.raises(TypeError, match="needs inner dynamics, e.g. dynamics=GradientDescent"):
        hypergrad(p, LAM, np.zeros(3))
    with pytest.raises(TypeError, match="dynamics must be a Dynamics object, got Reverse"):
        hypergrad(p, LAM, np.zeros(3), dynamics=Reverse())
    for wrong in ("reverse", CG(), Reverse):
        with pytest.raises(TypeError, match="method must be a hypergradient method object"):
            hypergrad(p, LAM, np.zeros(3), dynamics=gd, method=wrong)
    with pytest.raises(ValueError, match="no starting point: pass w0=... or give the problem"):
        hypergrad(p, LAM, dynamics=gd)
    with pytest.raises(TypeError, match="lam must have a floating dtype"):
        hypergrad(p, np.array([1, 2, 3]), np.zeros(3), dynamics=gd)
    with pytest.raises(ValueError, match="lam needs the same leading axis"):
        hypergrad(p, LAM, np.zeros((2, 3)), dynamics=gd)


def test_old_inner_keyword_warns_and_agrees():
    p, gd = shift_problem(), GradientDescent(0.1, 3)
    new = hypergrad(p, LAM, np.zeros(3), dynamics=gd)
    with pytest.warns(DeprecationWarning, match="now passed as dynamics="):
        old = hypergrad(p, LAM, np.zeros(3), inner=gd)
    np.testing.assert_array_equal(old.grad, new.grad)
    with pytest.raises(TypeError, match="both dynamics= and its old name inner="):
        hypergrad(p, LAM, np.zeros(3), dynamics=gd, inner=gd)


@np.errstate(over="ignore", invalid="ignore")
def test_on_failure_policies():
    # w ↦ w − α·4w³ with α = 1e3 from w = 1 overflows within a few steps
    p = BilevelProblem(lambda w, lam: anp.sum(w**4 + lam * w), lambda w, lam: anp.sum(w**2))
    gd = GradientDescent(1e3, 6)
    with pytest.warns(HypergradWarning):
        warned = hypergrad(p, LAM, np.ones(3), dynamics=gd)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet = hypergrad(p, LAM, np.ones(3), dynamics=gd, on_failure="ignore")
    assert not warned.success and not quiet.success and np.isnan(quiet.grad).all()
    with pytest.raises(HypergradError):
        hypergrad(p, LAM, np.ones(3), dynamics=gd, on_failure="raise")
    with pytest.raises(ValueError, match="on_failure must be one of"):
        hypergrad(p, LAM, np.ones(3), dynamics=gd, on_failure="skip")


class CheckingMethod(Method):
    """A method that refuses every dynamics (exercises Method.check_dynamics)."""

    def compute(self, problem, lam, w0, inner, state):
        return Reverse().compute(problem, lam, w0, inner, state)

    def check_dynamics(self, inner):
        raise ValueError(f"CheckingMethod cannot run with {inner!r}")


def test_method_check_dynamics_is_called():
    with pytest.raises(ValueError, match="cannot run with GradientDescent"):
        hypergrad(shift_problem(), LAM, np.zeros(3), dynamics=GradientDescent(0.1, 2),
                  method=CheckingMethod())


class NaNMethod(Method):
    """A method returning a NaN hypergradient (hypergrad must flag it, never pass it on)."""

    def compute(self, problem, lam, w0, inner, state):
        return HypergradResult(grad=lam * np.nan, w=w0, value=problem.outer_value(w0, lam))


def test_nan_hypergradient_is_flagged_and_strict_raises():
    p = shift_problem()
    with pytest.warns(HypergradWarning, match="NaN or inf"):
        res = hypergrad(p, LAM, np.zeros(3), dynamics=GradientDescent(0.1, 2), method=NaNMethod())
    assert res.success is False and "NaN" in res.message
    assert res.inner_residual == pytest.approx(np.linalg.norm(LAM))
    with pytest.raises(HypergradError) as info:
        hypergrad(p, LAM, np.zeros(3), dynamics=GradientDescent(0.1, 2), method=NaNMethod(),
                  strict=True)
    assert info.value.result.success is False
    assert "NaNMethod()" in str(info.value)


def test_diverging_inner_solve_is_reported_not_silent():
    p = shift_problem()
    gd = GradientDescent(1e155, 6)  # |1 − α|^k overflows: the inner gradient becomes inf
    with np.errstate(all="ignore"):
        with pytest.warns(HypergradWarning, match="non-finite"):
            res = hypergrad(p, LAM, np.zeros(3), dynamics=gd, method=Reverse())
        assert res.success is False
        assert np.all(np.isnan(res.grad)) and res.grad.shape == LAM.shape
        with pytest.raises(HypergradError, match="non-finite") as info:
            hypergrad(p, LAM, np.zeros(3), dynamics=gd, method=Reverse(), strict=True)
    assert info.value.result.success is False
    assert np.isnan(info.value.result.value)


def test_warm_start_state_carries_w_across_calls():
    p, gd = shift_problem(), GradientDescent(0.2, 5)
    state = HypergradState()
    first = hypergrad(p, LAM, np.zeros(3), dynamics=gd, method=Reverse(), state=state)
    assert state.t == 1
    np.testing.assert_array_equal(state.w, first.w)
    second = hypergrad(p, LAM, np.zeros(3), dynamics=gd, method=Reverse(), state=state)
    direct = hypergrad(p, LAM, first.w, dynamics=gd, method=Reverse())
    assert state.t == 2
    np.testing.assert_allclose(second.w, direct.w, rtol=1e-15)
    np.testing.assert_allclose(second.grad, direct.grad, rtol=1e-15)
    # with an init map, w0 = init(λ) every time; the state only counts calls
    q = shift_problem(init=lambda lam: 0.0 * lam)
    s2 = HypergradState()
    a = hypergrad(q, LAM, dynamics=gd, method=Reverse(), state=s2)
    b = hypergrad(q, LAM, dynamics=gd, method=Reverse(), state=s2)
    np.testing.assert_allclose(a.grad, b.grad, rtol=1e-15)
    assert s2.t == 2 and s2.w is None


def test_result_attribute_access_and_repr():
    res = HypergradResult(grad=np.arange(3.0), success=True, message="ok", big=np.zeros((4, 5)))
    assert res.grad is res["grad"]
    res.extra = 3
    assert res["extra"] == 3
    assert set(dir(res)) == {"grad", "success", "message", "big", "extra"}
    with pytest.raises(AttributeError, match="no field 'missing'; available: \\['big', 'extra'"):
        res.missing  # noqa: B018
    text = repr(res)
    assert "grad: array([0., 1., 2.])" in text
    assert "big: <array shape=(4, 5) dtype=float64>" in text
    assert text.index("big") < text.index("extra") < text.index("grad")  # sorted keys
    assert repr(HypergradResult()) == "HypergradResult()"
    assert isinstance(res, dict)


def test_hypergrad_warning_is_not_raised_on_success():
    with warnings.catch_warnings():
        warnings.simplefilter("error", HypergradWarning)
        res = hypergrad(shift_problem(), LAM, np.zeros(3), dynamics=GradientDescent(0.5, 3))
    assert res.method == "Reverse()"  # the default method


def test_shared_types_live_below_the_api_and_are_re_exported():
    import bilevel.api as api
    from bilevel.methods import base

    for name in ("Method", "HypergradResult", "HypergradState", "HypergradWarning",
                 "HypergradError", "failure_result", "norm_per_problem", "ON_FAILURE",
                 "resolve_dynamics"):
        assert getattr(api, name) is getattr(base, name), name


ALL_METHODS = [
    Reverse(), Reverse(truncate=5), Reverse(checkpoints=3), Forward(), Forward(warn_ratio=2.0),
    Implicit(), Implicit(CG(tol=1e-6), damping=0.1, inner_tol=None), Historyless(),
    Historyless(beta=0.1, tol=1e-3), Adjoint(), Adjoint("reconstruct", discrete=False),
    FirstOrder(),
]


@pytest.mark.parametrize("method", ALL_METHODS, ids=repr)
def test_methods_are_frozen_picklable_and_registered(method):
    assert pickle.loads(pickle.dumps(method)) == method or isinstance(method, Implicit)
    again = pickle.loads(pickle.dumps(method))
    assert repr(again) == repr(method) and type(again) is type(method)
    with pytest.raises(dataclasses.FrozenInstanceError):
        method.name_of_a_field = 1
    assert lookup("method", method.name) is type(method)
    assert set(names("method")) >= {"reverse", "forward", "implicit", "adjoint",
                                    "historyless", "first-order"}


def test_method_repr_reads_like_the_constructor_call():
    assert repr(Reverse()) == "Reverse()"
    assert repr(Reverse(truncate=5)) == "Reverse(truncate=5)"
    assert repr(Forward()) == "Forward()" and repr(FirstOrder()) == "FirstOrder()"
    assert repr(Implicit()) == "Implicit()"
    solver = CG(tol=1e-6)
    assert repr(Implicit(solver, damping=0.1)) == f"Implicit(solver={solver!r}, damping=0.1)"
    assert repr(Historyless(0.2, tol=1e-3)) == "Historyless(beta=0.2, tol=0.001)"
    assert repr(Adjoint("store", checkpoints=None)) == "Adjoint(trajectory='store', discrete=True)"
    # positional order of the constructors is kept
    assert Reverse(4, 2).truncate == 4 and Reverse(4, 2).checkpoints == 2
    assert Implicit(solver, 0.5).damping == 0.5 and Historyless(0.3, 0.1).damping == 0.1
    assert Adjoint("store", False).discrete is False


def test_nonfinite_outer_objective_names_the_last_step():
    p = BilevelProblem(lambda w, lam: 0.5 * anp.sum((w - lam) ** 2),
                       lambda w, lam: anp.sum(anp.log(w)))
    with np.errstate(all="ignore"), pytest.warns(HypergradWarning, match="at inner step 3"):
        res = hypergrad(p, LAM, np.ones(3), dynamics=GradientDescent(0.5, 3))
    assert res.nonfinite_step == 3 and not res.success
