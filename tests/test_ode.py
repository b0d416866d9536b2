"""Tests for bilevel.ode: convergence orders, exact discrete adjoints, JVP/VJP identities."""

import math

import numpy as np
import pytest
import scipy.linalg
from hypothesis import given
from hypothesis import strategies as st

from bilevel import ode
from bilevel.ode import SCHEMES, ODEDivergenceError, Tableau

N = 4


def spd(n, seed):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return (q * np.linspace(0.5, 2.0, n)) @ q.T


def nonlinear(P, p):
    """f(y) = −P y + p ⊙ sin(y), with its VJP and JVP in (y, p)."""

    def f(y):
        return -y @ P.T + p * np.sin(y)

    def f_vjp(Y, c):
        return -c @ P + p * np.cos(Y) * c, np.sum(np.sin(Y) * c, axis=tuple(range(Y.ndim - 1)))

    def f_jvp(Y, t, tp):
        return f(Y), -t @ P.T + p * np.cos(Y) * t + tp * np.sin(Y)

    return f, f_vjp, f_jvp


@pytest.mark.parametrize("name", ["euler", "heun", "rk4"])
def test_convergence_order_against_expm(name):
    P = spd(N, 0)
    y0 = np.arange(1.0, N + 1)
    T = 1.0
    exact = scipy.linalg.expm(-P * T) @ y0
    errors = []
    for K in (8, 16, 32):
        yK = ode.integrate(lambda y: -P @ y, y0, T / K, K, name)
        errors.append(np.linalg.norm(yK - exact))
    rates = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    order = SCHEMES[name].order
    assert np.all(np.abs(rates - order) < 0.3), rates


def test_euler_step_is_gradient_descent():
    P = spd(N, 1)
    a = np.ones(N)
    y = np.array([0.3, -1.0, 2.0, 0.5])

    def grad(w):
        return P @ (w - a)

    h = 0.1
    np.testing.assert_array_equal(ode.rk_step(lambda w: -grad(w), y, h, "euler"), y - h * grad(y))


def test_rk_stages_match_the_tableau():
    P = spd(N, 2)
    y = np.ones(N)
    h = 0.2
    Y = ode.rk_stages(lambda v: -P @ v, y, h, "rk4")
    k1 = -P @ y
    k2 = -P @ (y + h / 2 * k1)
    k3 = -P @ (y + h / 2 * k2)
    np.testing.assert_allclose(Y[0], y)
    np.testing.assert_allclose(Y[1], y + h / 2 * k1)
    np.testing.assert_allclose(Y[2], y + h / 2 * k2)
    np.testing.assert_allclose(Y[3], y + h * k3)


@pytest.mark.parametrize("name", ["euler", "heun", "rk4"])
def test_vjp_equals_dense_jacobian_for_linear_f(name):
    P = spd(N, 3)
    h = 0.3
    # the step map of a linear field is the matrix R(−hP) (stability polynomial); build it
    # column by column and compare its transpose with the VJP
    R = np.stack([ode.rk_step(lambda v: -P @ v, e, h, name) for e in np.eye(N)], axis=1)
    c = np.array([1.0, -2.0, 0.5, 3.0])
    cot_y, _ = ode.rk_step_vjp(lambda v: -P @ v, lambda Y, u: (-P.T @ u, 0.0), np.ones(N), h,
                               name, c)
    np.testing.assert_allclose(cot_y, R.T @ c, rtol=1e-13)
    # and R is the scheme's Taylor polynomial of exp(−hP) of degree = order (s = p here)
    order = SCHEMES[name].order
    poly = sum(np.linalg.matrix_power(-h * P, j) / math.factorial(j) for j in range(order + 1))
    np.testing.assert_allclose(R, poly, rtol=1e-12, atol=1e-14)


@given(seed=st.integers(0, 2**16), name=st.sampled_from(["euler", "heun", "rk4"]))
def test_vjp_matches_finite_differences(seed, name):
    rng = np.random.default_rng(seed)
    P = spd(N, seed)
    p = rng.standard_normal(N)
    y = rng.standard_normal(N)
    c = rng.standard_normal(N)
    dy = rng.standard_normal(N)
    dp = rng.standard_normal(N)
    h = 0.25
    f, f_vjp, _ = nonlinear(P, p)
    cot_y, cot_p = ode.rk_step_vjp(f, f_vjp, y, h, name, c)

    def phi(eps):
        g, _, _ = nonlinear(P, p + eps * dp)
        return c @ ode.rk_step(g, y + eps * dy, h, name)

    eps = 1e-6
    fd = (phi(eps) - phi(-eps)) / (2 * eps)
    assert cot_y @ dy + cot_p @ dp == pytest.approx(fd, rel=1e-7, abs=1e-8)
    # precomputed stages give the same result
    stages = ode.rk_stages(f, y, h, name)
    again = ode.rk_step_vjp(f, f_vjp, y, h, name, c, stages=stages)
    np.testing.assert_array_equal(again[0], cot_y)
    np.testing.assert_array_equal(again[1], cot_p)


@given(seed=st.integers(0, 2**16), name=st.sampled_from(["euler", "heun", "rk4"]))
def test_jvp_vjp_inner_product_identity(seed, name):
    rng = np.random.default_rng(seed)
    P = spd(N, seed + 7)
    p = rng.standard_normal(N)
    y, c, ty, tp = (rng.standard_normal(N) for _ in range(4))
    h = 0.2
    f, f_vjp, f_jvp = nonlinear(P, p)
    y_next, t_next = ode.rk_step_jvp(f, f_jvp, y, h, name, ty, tp)
    np.testing.assert_allclose(y_next, ode.rk_step(f, y, h, name), rtol=1e-15)
    cot_y, cot_p = ode.rk_step_vjp(f, f_vjp, y, h, name, c)
    # <c, J_y ty + J_p tp> = <J_yᵀ c, ty> + <J_pᵀ c, tp>
    assert c @ t_next == pytest.approx(cot_y @ ty + cot_p @ tp, rel=1e-12, abs=1e-13)


def test_batched_states():
    P = spd(N, 4)
    p = np.linspace(-1, 1, N)
    f, f_vjp, f_jvp = nonlinear(P, p)
    ys = np.stack([np.ones(N), np.arange(N, dtype=float)])
    cs = np.stack([np.arange(N, dtype=float), np.ones(N)])
    out = ode.rk_step(f, ys, 0.1, "rk4")
    bar_y, _ = ode.rk_step_vjp(f, f_vjp, ys, 0.1, "rk4", cs)
    for i in range(2):
        np.testing.assert_allclose(out[i], ode.rk_step(f, ys[i], 0.1, "rk4"), rtol=1e-14)
        single, _ = ode.rk_step_vjp(f, f_vjp, ys[i], 0.1, "rk4", cs[i])
        np.testing.assert_allclose(bar_y[i], single, rtol=1e-14)


def test_integrate_callback_and_divergence():
    seen = []
    y = ode.integrate(lambda v: -v, np.ones(2), 0.1, 3, "heun", lambda k, v: seen.append(k))
    assert seen == [0, 1, 2, 3]
    np.testing.assert_allclose(y, (1 - 0.1 + 0.005) ** 3 * np.ones(2))
    with pytest.raises(ODEDivergenceError, match="non-finite") as info, np.errstate(over="ignore"):
        ode.integrate(lambda v: v**2, np.ones(2), 1.0, 50, "euler")
    assert np.all(np.isfinite(info.value.y)) and info.value.step > 0


def test_scheme_registry_and_errors():
    assert set(SCHEMES) == {"euler", "heun", "rk4"}
    for tab in SCHEMES.values():
        assert sum(tab.b) == pytest.approx(1.0)
        assert all(sum(row) == pytest.approx(ci) for row, ci in zip(tab.a, tab.c, strict=True))
    assert ode.get_scheme("RK4") is SCHEMES["rk4"]
    assert ode.get_scheme(SCHEMES["heun"]) is SCHEMES["heun"]
    with pytest.raises(ValueError, match="euler"):
        ode.get_scheme("midpoint")
    with pytest.raises(ValueError, match="row 1"):
        Tableau("bad", a=((), (0.5, 0.5)), b=(0.5, 0.5), c=(0.0, 1.0), order=2)
    with pytest.raises(ValueError, match="steps"):
        ode.integrate(lambda v: v, np.ones(2), 0.1, -1, "euler")
    with pytest.raises(ValueError, match="cot must have the shape of y"):
        ode.rk_step_vjp(lambda v: v, lambda Y, u: (u, 0.0), np.ones(2), 0.1, "euler", np.ones(3))
    midpoint = Tableau("midpoint", a=((), (0.5,)), b=(0.0, 1.0), c=(0.0, 0.5), order=2)
    P = spd(N, 5)
    y0 = np.ones(N)
    e1 = np.linalg.norm(ode.integrate(lambda v: -P @ v, y0, 0.1, 10, midpoint)
                        - scipy.linalg.expm(-P) @ y0)
    e2 = np.linalg.norm(ode.integrate(lambda v: -P @ v, y0, 0.05, 20, midpoint)
                        - scipy.linalg.expm(-P) @ y0)
    assert 3.5 < e1 / e2 < 4.5  # a user tableau with a zero weight works (order 2)
