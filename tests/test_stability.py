"""bilevel.stability: real stability bounds of the Runge–Kutta schemes and the monitor."""

import numpy as np
import pytest

from bilevel.ode import SCHEMES
from bilevel.stability import StabilityMonitor, real_stability_bound, steps_needed


def test_real_stability_bounds_of_the_schemes():
    assert real_stability_bound(SCHEMES["euler"]) == pytest.approx(2.0, abs=1e-9)
    assert real_stability_bound(SCHEMES["heun"]) == pytest.approx(2.0, abs=1e-9)
    # RK4: 1 − x + x²/2 − x³/6 + x⁴/24 = 1 at x ≈ 2.785293563
    x = real_stability_bound(SCHEMES["rk4"])
    assert x == pytest.approx(2.785293563405, abs=1e-9)
    assert 1 - x + x**2 / 2 - x**3 / 6 + x**4 / 24 == pytest.approx(1.0, abs=1e-9)


def test_steps_needed_meets_the_bound():
    # h·λ = 2.5 with K = 20 steps against a bound of 2: K' = ⌈20·2.5/2⌉ = 25
    assert steps_needed(20, 2.5, 2.0) == 25
    assert steps_needed(20, 1.0, 2.0) == 21  # always more than K


@pytest.mark.parametrize("batched", [False, True])
def test_monitor_measures_the_secant_curvature_of_euler_on_a_quadratic(batched):
    """Euler on ½λu² (one problem per row): the secant curvature of every step is λ."""
    lam, h, K = np.array([[3.0], [0.5]]), 0.8, 6
    mon = StabilityMonitor(SCHEMES["euler"], h, K)
    u = np.array([[1.0], [-2.0]])
    if not batched:
        lam, u = lam[0], u[0]
    for k in range(K):
        mon.forward(k, u, lam * u)
        u = u - h * lam * u
    top, first = mon.worst("forward")
    assert top == pytest.approx(h * lam.max())
    assert first == (0 if h * lam.max() > 2 else None)
    problems = []
    report = mon.report(continuous=False, problems=problems)
    assert report["step_stiffness"] == pytest.approx(h * lam.max())
    assert bool(problems) == (first is not None)
