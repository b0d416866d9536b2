"""Tests for bilevel.dynamics: step maps, their VJPs and JVPs, schedules, batches and ``run``.

Every Jacobian product of a step map is checked two ways: the transpose identity
``⟨cot, J·tan⟩ = ⟨Jᵀ·cot, tan⟩`` between :meth:`step_jvp` and :meth:`step_vjp`, and central
finite differences of :meth:`step` along the tangent. Float64 throughout.
"""

import dataclasses

import autograd.numpy as anp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bilevel import BilevelProblem, GradientDescent, GradientFlow, Momentum, NonFiniteError
from bilevel.dynamics import Dynamics, minibatch_indices, run

N_DATA, N_FEAT, M_LAM = 12, 4, 3


def make_problem(seed: int) -> BilevelProblem:
    """Logistic-type smooth inner objective with three hyperparameters entering nonlinearly.

    ``g(w, λ) = mean(softplus(−y·(1+λ₁)·Xw)) + ½e^{λ₀}‖w‖² + λ₂ Σ tanh(w)``; works for
    ``w`` of shape ``(n,)`` and ``(B, n)`` (then λ is ``(B, 3)``).
    """
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N_DATA, N_FEAT))
    y = np.sign(rng.standard_normal(N_DATA))

    def g(w, lam, data):
        Xd, yd = data
        lam0, lam1, lam2 = lam[..., 0:1], lam[..., 1:2], lam[..., 2:3]
        margin = -yd * (1.0 + lam1) * (w @ Xd.T)
        loss = anp.mean(anp.logaddexp(0.0, margin), axis=-1)
        reg = 0.5 * anp.sum(anp.exp(lam0) * w**2, axis=-1)
        return loss + reg + anp.sum(lam2 * anp.tanh(w), axis=-1)

    def f(w, lam, data):
        return 0.5 * anp.sum((w - 0.3) ** 2, axis=-1)

    return BilevelProblem(g, f, data=(X, y))


def batches_for(problem: BilevelProblem, size: int, seed: int):
    X, y = problem.data
    idx = minibatch_indices(N_DATA, size, seed)

    def batch(k):
        i = idx(k)
        return X[i], y[i]

    return batch


def dynamics_cases(K: int, problem: BilevelProblem, seed: int):
    lrs = 0.05 + 0.1 * np.random.default_rng(seed).random(K)
    return {
        "gd": GradientDescent(0.2, K),
        "gd-schedule": GradientDescent(lrs, K),
        "gd-callable": GradientDescent(lambda k: 0.3 / (1 + k), K),
        "gd-batches": GradientDescent(0.2, K, batches=batches_for(problem, 5, seed)),
        "momentum": Momentum(0.1, 0.8, K),
        "momentum-batches": Momentum(lrs, 0.5, K, batches=batches_for(problem, 6, seed)),
        "flow-euler": GradientFlow(0.6, K, scheme="euler"),
        "flow-heun": GradientFlow(0.6, K, scheme="heun"),
        "flow-rk4": GradientFlow(0.6, K, scheme="rk4"),
    }


CASES = list(dynamics_cases(3, make_problem(0), 0))


def vdot(a, b):
    return sum(float(np.sum(x * y)) for x, y in zip(a, b, strict=True))


def random_state(dyn, rng, n, batch=None):
    shape = (n,) if batch is None else (batch, n)
    w = 0.5 * rng.standard_normal(shape)
    s = dyn.init(w)
    # a nonzero velocity exercises the full momentum state map
    return tuple(x + 0.1 * rng.standard_normal(shape) if i else x for i, x in enumerate(s))


@pytest.mark.parametrize("case", CASES)
@given(seed=st.integers(0, 2**16), k=st.integers(0, 2))
def test_step_jvp_vjp_transpose_identity_and_finite_differences(case, seed, k):
    rng = np.random.default_rng(seed)
    problem = make_problem(seed)
    dyn = dynamics_cases(3, problem, seed)[case]
    lam = 0.3 * rng.standard_normal(M_LAM)
    s = random_state(dyn, rng, N_FEAT)
    tan = tuple(rng.standard_normal(x.shape) for x in s)
    tan_lam = rng.standard_normal(M_LAM)
    cot = tuple(rng.standard_normal(x.shape) for x in s)

    s_next = dyn.step(problem, s, lam, k)
    s_jvp, t_out = dyn.step_jvp(problem, s, lam, k, tan, tan_lam)
    c_state, c_lam = dyn.step_vjp(problem, s, lam, k, cot)

    assert len(s_next) == len(s) == len(t_out) == len(c_state)
    for a, b in zip(s_next, s_jvp, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)
    assert c_lam.shape == lam.shape
    lhs = vdot(cot, t_out)
    rhs = vdot(c_state, tan) + float(np.sum(c_lam * tan_lam))
    assert lhs == pytest.approx(rhs, rel=1e-11, abs=1e-12)

    eps = 1e-6
    plus = dyn.step(problem, tuple(x + eps * t for x, t in zip(s, tan, strict=True)),
                    lam + eps * tan_lam, k)
    minus = dyn.step(problem, tuple(x - eps * t for x, t in zip(s, tan, strict=True)),
                     lam - eps * tan_lam, k)
    for p, m_, t in zip(plus, minus, t_out, strict=True):
        np.testing.assert_allclose((p - m_) / (2 * eps), t, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("case", ["gd", "momentum", "flow-rk4", "gd-batches"])
def test_batched_step_products_equal_per_problem(case):
    rng = np.random.default_rng(7)
    problem = make_problem(7)
    dyn = dynamics_cases(3, problem, 7)[case]
    B = 3
    lam = 0.3 * rng.standard_normal((B, M_LAM))
    s = random_state(dyn, rng, N_FEAT, batch=B)
    tan = tuple(rng.standard_normal(x.shape) for x in s)
    tan_lam = rng.standard_normal((B, M_LAM))
    cot = tuple(rng.standard_normal(x.shape) for x in s)
    nxt = dyn.step(problem, s, lam, 1)
    _, t_out = dyn.step_jvp(problem, s, lam, 1, tan, tan_lam)
    c_state, c_lam = dyn.step_vjp(problem, s, lam, 1, cot)
    for b in range(B):
        sb = tuple(x[b] for x in s)
        nb = dyn.step(problem, sb, lam[b], 1)
        _, tb = dyn.step_jvp(problem, sb, lam[b], 1, tuple(x[b] for x in tan), tan_lam[b])
        cb, clb = dyn.step_vjp(problem, sb, lam[b], 1, tuple(x[b] for x in cot))
        for full, single in zip(nxt + t_out + c_state, nb + tb + cb, strict=True):
            np.testing.assert_allclose(full[b], single, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(c_lam[b], clb, rtol=1e-12, atol=1e-14)


def test_euler_flow_is_gradient_descent():
    """Explicit Euler with h = T/K is gradient descent with lr = h, step and VJP alike."""
    rng = np.random.default_rng(3)
    problem = make_problem(3)
    flow, gd = GradientFlow(0.8, 4, scheme="euler"), GradientDescent(0.2, 4)
    lam = 0.2 * rng.standard_normal(M_LAM)
    s = (rng.standard_normal(N_FEAT),)
    cot = (rng.standard_normal(N_FEAT),)
    np.testing.assert_allclose(flow.step(problem, s, lam, 0)[0], gd.step(problem, s, lam, 0)[0],
                               rtol=1e-15, atol=1e-15)
    (a1,), b1 = flow.step_vjp(problem, s, lam, 0, cot)
    (a2,), b2 = gd.step_vjp(problem, s, lam, 0, cot)
    np.testing.assert_allclose(a1, a2, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(b1, b2, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize(("scheme", "order"), [("euler", 1), ("heun", 2), ("rk4", 4)])
def test_gradient_flow_matches_matrix_exponential(scheme, order):
    """Quadratic g = ½(u−a)ᵀP(u−a): u(T) = a + e^{−PT}(u₀ − a), error O(h^p)."""
    from scipy.linalg import expm

    rng = np.random.default_rng(11)
    Q, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    P = (Q * np.array([0.5, 1.0, 1.5, 2.0])) @ Q.T
    a = rng.standard_normal(4)
    problem = BilevelProblem(lambda u, lam: 0.5 * (u - a) @ P @ (u - a) + 0 * anp.sum(lam),
                             lambda u, lam: anp.sum(u))
    u0, T = rng.standard_normal(4), 1.0
    exact = a + expm(-P * T) @ (u0 - a)
    errors = []
    for K in (20, 40):
        dyn = GradientFlow(T, K, scheme=scheme)
        errors.append(np.linalg.norm(run(problem, dyn, u0, np.zeros(1))[0] - exact))
    rate = np.log2(errors[0] / errors[1])
    assert rate == pytest.approx(order, abs=0.3)


def test_momentum_matches_its_recursion_and_starts_at_zero_velocity():
    rng = np.random.default_rng(5)
    problem = make_problem(5)
    dyn = Momentum(0.1, 0.7, 5)
    lam, w0 = 0.1 * rng.standard_normal(M_LAM), rng.standard_normal(N_FEAT)
    w, v = w0.copy(), np.zeros(N_FEAT)
    for _ in range(5):
        v = 0.7 * v + problem.inner_grad(w, lam)
        w = w - 0.1 * v
    s = run(problem, dyn, w0, lam)
    np.testing.assert_allclose(s[0], w, rtol=1e-14)
    np.testing.assert_allclose(s[1], v, rtol=1e-14)
    assert np.all(dyn.init(w0)[1] == 0)
    assert Momentum.weights(s) is s[0]
    cot = dyn.cotangent(np.ones(N_FEAT))
    assert len(cot) == 2 and np.all(cot[1] == 0)


def test_run_visits_states_in_order_and_resumes():
    rng = np.random.default_rng(2)
    problem = make_problem(2)
    dyn = GradientDescent(0.2, 6)
    lam, w0 = 0.1 * rng.standard_normal(M_LAM), rng.standard_normal(N_FEAT)
    seen = []
    full = run(problem, dyn, w0, lam, on_step=lambda k, s: seen.append((k, s[0].copy())))
    assert [k for k, _ in seen] == list(range(6))
    np.testing.assert_array_equal(seen[0][1], w0)
    half = run(problem, dyn, w0, lam, stop=3)
    np.testing.assert_array_equal(half[0], seen[3][1])
    rest = run(problem, dyn, w0, lam, start=3, state=half)
    np.testing.assert_array_equal(rest[0], full[0])


def test_run_reports_the_step_of_a_non_finite_gradient():
    """g = ¼Σw⁴ with lr = 1 from w = 3 overflows after a few steps; the error names the step."""
    problem = BilevelProblem(lambda w, lam: 0.25 * anp.sum(w**4) + anp.sum(lam * w),
                             lambda w, lam: anp.sum(w))
    w = np.array([3.0])
    expected = None
    with np.errstate(over="ignore", invalid="ignore"):
        for k in range(20):
            grad = w**3
            if not np.all(np.isfinite(grad)):
                expected = k
                break
            w = w - grad
        assert expected is not None
        with pytest.raises(NonFiniteError) as info:
            run(problem, GradientDescent(1.0, 20), np.array([3.0]), np.zeros(1))
    assert info.value.step == expected
    assert info.value.what == "inner_grad"


def test_minibatch_indices_are_deterministic_per_step():
    idx = minibatch_indices(20, 5, seed=3)
    a, b = idx(4), idx(4)
    np.testing.assert_array_equal(a, b)
    assert len(set(a.tolist())) == 5 and all(0 <= i < 20 for i in a)
    assert any(not np.array_equal(idx(0), idx(k)) for k in range(1, 6))
    assert not np.array_equal(minibatch_indices(20, 5, seed=4)(4), a)
    with pytest.raises(ValueError, match="batch_size"):
        minibatch_indices(5, 6, seed=0)
    with pytest.raises(ValueError, match="batch_size"):
        minibatch_indices(5, 0, seed=0)


def test_schedules_and_arguments_are_validated():
    dyn = GradientDescent([0.1, 0.2, 0.3], 3)
    assert [dyn.lr_at(k) for k in range(3)] == [0.1, 0.2, 0.3]
    with pytest.raises(ValueError, match="3 entries"):
        GradientDescent([0.1, 0.2], 3)
    with pytest.raises(ValueError, match="positive"):
        GradientDescent(0.0, 3)
    with pytest.raises(ValueError, match="steps"):
        GradientDescent(0.1, 0)
    with pytest.raises(ValueError, match="steps"):
        GradientDescent(0.1, 2.5)
    with pytest.raises(ValueError, match="beta"):
        Momentum(0.1, 1.0, 3)
    with pytest.raises(ValueError, match="horizon"):
        GradientFlow(0.0, 3)
    flow = GradientFlow(2.0, 8, scheme="heun")
    assert flow.h == pytest.approx(0.25)
    assert "heun" in repr(flow) and "steps=3" in repr(dyn)


# --------------------------------------------------------------------------- derived rules

HAND_RULES = ["gd", "gd-schedule", "gd-batches", "momentum", "momentum-batches", "flow-euler",
            "flow-heun", "flow-rk4"]


@pytest.mark.parametrize("case", HAND_RULES)
@pytest.mark.parametrize("batch", [None, 2])
def test_hand_step_jvp_equals_the_autograd_derived_one(case, batch):
    """The kept hand-written JVP rules equal the base class's derived JVP to rounding."""
    rng = np.random.default_rng(4)
    problem = make_problem(4)
    dyn = dynamics_cases(3, problem, 4)[case]
    assert type(dyn).step_jvp is not Dynamics.step_jvp
    lam = 0.3 * rng.standard_normal((M_LAM,) if batch is None else (batch, M_LAM))
    s = random_state(dyn, rng, N_FEAT, batch=batch)
    tan = tuple(rng.standard_normal(x.shape) for x in s)
    tan_lam = rng.standard_normal(lam.shape)
    hand = dyn.step_jvp(problem, s, lam, 1, tan, tan_lam)
    derived = Dynamics.step_jvp(dyn, problem, s, lam, 1, tan, tan_lam)
    for a, b in zip(hand[0] + hand[1], derived[0] + derived[1], strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("case", HAND_RULES)
@pytest.mark.parametrize("batch", [None, 2])
def test_hand_step_vjp_equals_the_autograd_derived_one(case, batch):
    """The kept hand-written VJP rules equal the base class's derived VJP to rounding."""
    rng = np.random.default_rng(6)
    problem = make_problem(6)
    dyn = dynamics_cases(3, problem, 6)[case]
    assert type(dyn).step_vjp is not Dynamics.step_vjp
    lam = 0.3 * rng.standard_normal((M_LAM,) if batch is None else (batch, M_LAM))
    s = random_state(dyn, rng, N_FEAT, batch=batch)
    cot = tuple(rng.standard_normal(x.shape) for x in s)
    hand = dyn.step_vjp(problem, s, lam, 2, cot)
    derived = Dynamics.step_vjp(dyn, problem, s, lam, 2, cot)
    for a, b in zip(hand[0] + (hand[1],), derived[0] + (derived[1],), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-13, atol=1e-15)


def test_derived_products_count_one_hvp_or_jvp_per_gradient_and_use_user_oracles():
    problem = make_problem(8)
    calls = {"hvp": 0}

    def user_hvp(w, lam, v, data):
        calls["hvp"] += 1
        return make_problem(8).inner_hvp(w, lam, v, data)

    user = BilevelProblem(problem.inner, problem.outer, data=problem.data,
                          oracles={"inner_hvp": user_hvp})
    rng = np.random.default_rng(8)
    lam, w = 0.3 * rng.standard_normal(M_LAM), rng.standard_normal(N_FEAT)
    for dyn, grads in ((GradientDescent(0.2, 3), 1), (GradientFlow(0.6, 3, "rk4"), 4)):
        before = problem.counts.snapshot()
        Dynamics.step_vjp(dyn, problem, (w,), lam, 0, (np.ones(N_FEAT),))
        after = problem.counts.snapshot()
        assert after["hvp"] - before["hvp"] == grads
        assert after["grad"] - before["grad"] == grads
        Dynamics.step_jvp(dyn, problem, (w,), lam, 0, (np.ones(N_FEAT),), np.ones(M_LAM))
        assert problem.counts.jvp - after["jvp"] == grads
        calls["hvp"] = 0
        got = Dynamics.step_vjp(dyn, user, (w,), lam, 0, (np.ones(N_FEAT),))
        want = Dynamics.step_vjp(dyn, problem, (w,), lam, 0, (np.ones(N_FEAT),))
        assert calls["hvp"] == grads
        np.testing.assert_allclose(got[0][0], want[0][0], rtol=1e-12)
        np.testing.assert_allclose(got[1], want[1], rtol=1e-12)


@dataclasses.dataclass(frozen=True)
class Nesterov(Dynamics):
    """A dynamics written with ``init`` and ``step`` only: its products are derived."""

    lr: float
    beta: float
    steps: int
    name = "test-nesterov"

    def init(self, w0):
        return (w0, 0 * w0)

    def step(self, problem, state, lam, k):
        w, v = state
        v = self.beta * v - self.lr * problem.inner_grad(w + self.beta * v, lam)
        return (w + v, v)


@given(seed=st.integers(0, 2**16))
def test_a_dynamics_with_only_init_and_step_gets_exact_products(seed):
    rng = np.random.default_rng(seed)
    problem = make_problem(seed)
    dyn = Nesterov(0.1, 0.6, 3)
    lam = 0.3 * rng.standard_normal(M_LAM)
    s = random_state(dyn, rng, N_FEAT)
    tan = tuple(rng.standard_normal(x.shape) for x in s)
    tan_lam = rng.standard_normal(M_LAM)
    cot = tuple(rng.standard_normal(x.shape) for x in s)
    nxt, t_out = dyn.step_jvp(problem, s, lam, 0, tan, tan_lam)
    c_state, c_lam = dyn.step_vjp(problem, s, lam, 0, cot)
    for a, b in zip(nxt, dyn.step(problem, s, lam, 0), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-14)
    lhs = vdot(cot, t_out)
    assert lhs == pytest.approx(vdot(c_state, tan) + float(np.sum(c_lam * tan_lam)), rel=1e-11)
    eps = 1e-6
    plus = dyn.step(problem, tuple(x + eps * t for x, t in zip(s, tan, strict=True)),
                    lam + eps * tan_lam, 0)
    minus = dyn.step(problem, tuple(x - eps * t for x, t in zip(s, tan, strict=True)),
                     lam - eps * tan_lam, 0)
    for p, m_, t in zip(plus, minus, t_out, strict=True):
        np.testing.assert_allclose((p - m_) / (2 * eps), t, rtol=1e-6, atol=1e-8)


# --------------------------------------------------------------------------- objects


@pytest.mark.parametrize("case", [c for c in CASES if c != "gd-callable"])
def test_dynamics_pickle_and_compare_equal(case):
    import pickle

    dyn = dynamics_cases(3, make_problem(0), 0)[case]
    if dyn.batches is not None:  # a module-level, picklable batch map
        dyn = dataclasses.replace(dyn, batches=minibatch_indices(N_DATA, 5, seed=1))
    back = pickle.loads(pickle.dumps(dyn))
    assert back == dyn and repr(back) == repr(dyn)
    if isinstance(dyn, GradientFlow):
        assert back.h == dyn.h and back.scheme == dyn.scheme
    else:
        assert [back.lr_at(k) for k in range(3)] == [dyn.lr_at(k) for k in range(3)]
    with pytest.raises(dataclasses.FrozenInstanceError):
        dyn.steps = 4


def test_dynamics_are_registered_and_reprs_are_short():
    from bilevel.registry import lookup, names

    assert {"gradient-descent", "momentum", "gradient-flow"} <= set(names("dynamics"))
    assert lookup("dynamics", "gd") is GradientDescent
    assert lookup("dynamics", "GradientFlow") is GradientFlow
    assert repr(GradientDescent(0.1, 3)) == "GradientDescent(lr=0.1, steps=3)"
    assert repr(GradientDescent(lambda k: 0.1, 3)) == "GradientDescent(lr=schedule, steps=3)"
    assert repr(GradientFlow(1.0, 4, "heun")) == (
        "GradientFlow(horizon=1.0, steps=4, scheme='heun')")
    assert repr(Momentum([0.1] * 3, 0.5, 3)) == "Momentum(lr=PerStep(3 steps), beta=0.5, steps=3)"


def test_at_step_tags_the_error():
    from bilevel.nonfinite import at_step

    with pytest.raises(NonFiniteError) as info, at_step(7):
        raise NonFiniteError("inner_grad", "boom")
    assert info.value.step == 7
    assert NonFiniteError("x", "y").step is None
