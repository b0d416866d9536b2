"""Memory claims of the unrolled family, measured with tracemalloc (deterministic, not timed).

``Reverse`` stores the K + 1 iterates, so its peak grows by about ``8n`` bytes per step;
``Reverse(checkpoints=c)``, ``Reverse(truncate=T)`` and ``Forward`` hold a number of states
that does not depend on K. Also a smoke test of :mod:`bilevel.bench.memory`.
"""

import functools

import numpy as np
import pytest

from bilevel import BilevelProblem, Forward, GradientDescent, Momentum, Reverse, hypergrad
from bilevel.bench import memory as bench

N = 4000  # one float64 state is 32 kB, well above the per-step bookkeeping
STATE = 8 * N


def diagonal_problem():
    """g = ½Σ e^{λ₀} d_i w_i² − Σ w_i (b_i + λ₁ u_i), f = ½‖w − 1‖²: n = 4000, m = 2.

    Closed-form oracles (no autodiff tape), so the iterates are what can grow with K.
    """
    rng = np.random.default_rng(0)
    d, b, u = 1 + rng.random(N), rng.standard_normal(N), rng.standard_normal(N)

    def g(w, lam):
        return 0.5 * np.exp(lam[0]) * np.sum(d * w**2) - np.sum(w * (b + lam[1] * u))

    def f(w, lam):
        return 0.5 * np.sum((w - 1.0) ** 2)

    oracles = {
        "inner_grad": lambda w, lam, data: np.exp(lam[0]) * d * w - b - lam[1] * u,
        "inner_hvp": lambda w, lam, v, data: np.exp(lam[0]) * d * v,
        "inner_mixed_vjp": lambda w, lam, a, data: np.array(
            [np.exp(lam[0]) * np.sum(d * w * a), -np.sum(u * a)]
        ),
        "inner_mixed_jvp": lambda w, lam, e, data: e[0] * np.exp(lam[0]) * d * w - e[1] * u,
        "outer_grads": lambda w, lam, data: (w - 1.0, np.zeros(2)),
    }
    return BilevelProblem(g, f, oracles=oracles), np.array([0.1, 0.2]), np.zeros(N)


def test_oracles_of_the_memory_problem_are_right():
    problem, lam, _ = diagonal_problem()
    w = np.random.default_rng(1).standard_normal(N)
    problem.check_oracles(w, lam, reference="fd", rtol=1e-6).raise_if_failed()


METHODS = {
    "reverse": Reverse,
    "checkpoints=4": lambda: Reverse(checkpoints=4),
    "checkpoints=6": lambda: Reverse(checkpoints=6),
    "truncate=5": lambda: Reverse(truncate=5),
    "forward": Forward,
}


@functools.cache
def peak(name, K, momentum=False):
    """Peak bytes of one hypergradient with method ``METHODS[name]`` and K inner steps."""
    problem, lam, w0 = diagonal_problem()
    method = METHODS[name]()
    inner = Momentum(0.2, 0.5, K) if momentum else GradientDescent(0.3, K)
    hypergrad(problem, lam, w0, dynamics=inner, method=method)  # warm-up outside the trace
    res, bytes_ = bench.peak_memory(lambda: hypergrad(problem, lam, w0, dynamics=inner,
                                                      method=method))
    assert res.success
    return bytes_


@pytest.mark.parametrize("momentum", [False, True])
def test_reverse_memory_grows_linearly_in_K(momentum):
    states_per_step = 2 if momentum else 1  # momentum stores (w, v)
    small, large = peak("reverse", 10, momentum), peak("reverse", 80, momentum)
    growth = large - small
    expected = 70 * states_per_step * STATE
    assert 0.8 * expected <= growth <= 2.0 * expected
    assert large > 3 * small


@pytest.mark.parametrize("name", ["checkpoints=4", "truncate=5", "forward"])
def test_bounded_memory_methods_do_not_grow_with_K(name):
    small, large = peak(name, 10), peak(name, 80)
    full = peak("reverse", 80)
    assert large <= 1.25 * small + 4 * STATE
    assert large < 0.4 * full


def test_checkpointed_reverse_holds_at_most_c_plus_one_states():
    c = 6
    bytes_ = peak("checkpoints=6", 60)
    full = peak("reverse", 60)
    # c + 1 states plus the working set of one step; the full store holds 61
    assert bytes_ <= (c + 1) * STATE + (full - 61 * STATE) + 4 * STATE


def test_memory_benchmark_runs_and_reports(tmp_path):
    result = bench.run(
        quick=True,
        methods=["Reverse", "Reverse(checkpoints)", "Forward"],
        problems=["ridge"],
        K_grid=(10, 40, 160),
    )
    rows = result["rows"]
    assert {r["method"] for r in rows} == {"Reverse", "Reverse(checkpoints)", "Forward"}
    assert all(r["success"] and r["peak_bytes"] > 0 and r["seconds"] >= 0 for r in rows)
    assert {r["K"] for r in rows} == {10, 40, 160}
    rev = {r["K"]: r for r in rows if r["method"] == "Reverse"}
    assert rev[160]["n_hvp"] == 4 * rev[40]["n_hvp"] > 0
    slopes = result["slopes"]["ridge"]
    assert slopes["Reverse"] > 0.6
    assert slopes["Forward"] < 0.2 and slopes["Reverse(checkpoints)"] < 0.4
    text = bench.to_markdown(result)
    assert "### ridge" in text and "| Reverse |" in text and "K=160" in text
    path = bench.plot(result, str(tmp_path / "memory.png"))
    with open(path, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "Reverse" in bench.default_methods() and "Forward" in bench.default_methods()


def test_memory_benchmark_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown method"):
        bench.run(quick=True, methods=["Backprop"])
    with pytest.raises(ValueError, match="unknown problem"):
        bench.run(quick=True, problems=["resnet"])
    with pytest.raises(ValueError, match="backend"):
        bench.run(quick=True, backend="jax")
