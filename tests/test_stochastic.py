"""Stochastic bilevel methods (bilevel.stochastic) on the quadratic family with a closed form."""

from __future__ import annotations

import numpy as np
import pytest

from bilevel import registry
from bilevel.outer import Checkpointing, Monitoring, ResumeError
from bilevel.stochastic import (
    SABA,
    SOBA,
    AmIGO,
    Schedule,
    StocBiO,
    StochasticProblem,
    families,
    solve,
)

QUIET = Monitoring(progress=False, memory=None)


def _family(noise: float = 0.2, **kw):
    return families.quadratic(n_inner=256, n_outer=256, dim_inner=6, dim_outer=3,
                              mu_inner=0.5, mu_outer=0.5, noise=noise, seed=1, **kw)


@pytest.fixture(scope="module")
def noisy():
    return _family(0.2)


@pytest.fixture(scope="module")
def exact():
    return _family(0.0)


def _methods(lr: float, batch_size: int = 32) -> list:
    kw = dict(lr_inner=lr, lr_outer=lr, batch_size=batch_size)
    return [SOBA(exponent=0.0, **kw), SABA(**kw), AmIGO(inner_steps=2, v_steps=2, **kw),
            StocBiO(inner_steps=2, v_steps=30, **kw)]


def _error(fam, lam) -> float:
    return float(np.linalg.norm(lam - fam.lam_star) / np.linalg.norm(fam.lam_star))


def _run(fam, method, steps, **kw):
    return solve(fam.problem, method, fam.lam0, fam.w0, steps=steps, monitoring=QUIET,
                 eval_every=steps, **kw)


def test_registered():
    assert registry.names("stochastic") == ["SOBA", "SABA", "AmIGO", "StocBiO"]
    assert registry.lookup("stochastic", "stoc-bio") is StocBiO


def test_closed_form_is_the_optimum(noisy):
    lam = noisy.lam_star
    F = noisy.value
    eps = 1e-4
    for k in range(lam.size):
        e = np.zeros_like(lam)
        e[k] = eps
        assert F(lam + e) > F(lam) and F(lam - e) > F(lam)
        assert abs((F(lam + e) - F(lam - e)) / (2 * eps)) < 1e-6


def test_minibatch_oracles_average_to_full_batch(noisy):
    prob, b = noisy.problem, 64
    rng = np.random.default_rng(0)
    w, lam, v = rng.standard_normal(6), rng.standard_normal(3), rng.standard_normal(6)
    parts = [prob.inner_products(w, lam, prob.batch("inner", k, b), v)
             for k in range(prob.n_batches("inner", b))]
    full = prob.inner_products(w, lam, prob.batch("inner", 0, prob.n_inner), v)
    for i in range(3):
        np.testing.assert_allclose(np.mean([p[i] for p in parts], axis=0), full[i], atol=1e-12)
    picked = prob.select("inner", np.arange(b))
    for a, c in zip(prob.inner_products(w, lam, picked, v),
                    prob.inner_products(w, lam, prob.batch("inner", 0, b), v), strict=True):
        np.testing.assert_array_equal(a, c)
    with pytest.raises(ValueError, match="indices"):
        prob.select("outer", np.array([0, prob.n_outer]))
    out = [prob.outer_grads(w, lam, prob.batch("outer", k, b)) for k in range(4)]
    np.testing.assert_allclose(np.mean([o[0] for o in out], axis=0),
                               prob.full.outer_grads(w, lam)[0], atol=1e-12)


@pytest.mark.parametrize("index", range(4), ids=["SOBA", "SABA", "AmIGO", "StocBiO"])
def test_converges_without_noise(exact, index):
    """Samples equal to their mean: every method reaches λ* (StocBiO up to its Neumann
    truncation (1 − γμ)^S ≈ 2e-4 with γ = μ = 0.5, S = 30)."""
    method = _methods(0.5)[index]
    res = _run(exact, method, (400, 400, 150, 80)[index])
    assert res.success
    assert _error(exact, res.lam) < (1e-3 if index == 3 else 1e-6)


@pytest.mark.parametrize("index", range(4), ids=["SOBA", "SABA", "AmIGO", "StocBiO"])
def test_converges_with_noise_within_step_size_tolerance(noisy, index):
    """Constant steps α: the iterates reach a neighbourhood of λ* of size O(α) (tolerance
    α/2 in relative error); SABA's variance reduction removes it (exact convergence)."""
    lr = 0.5
    method = _methods(lr)[index]
    res = _run(noisy, method, (200, 200, 80, 50)[index])
    tol = 1e-3 if method.name == "SABA" else lr / 2
    assert _error(noisy, res.lam) < tol
    assert noisy.suboptimality(res.lam) < tol


def test_saba_full_batch_is_deterministic_soba(noisy):
    """With one batch SABA's SAGA estimates are the full-batch terms: SABA = SOBA (full
    batch, constant steps), the deterministic single-loop method."""
    kw = dict(lr_inner=0.5, lr_outer=0.5, batch_size=10_000)
    a = _run(noisy, SABA(**kw), 60)
    b = _run(noisy, SOBA(exponent=0.0, **kw), 60)
    np.testing.assert_allclose(a.lam, b.lam, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(a.w, b.w, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(a.v, b.v, rtol=1e-12, atol=1e-12)


def test_saba_full_memory_init(noisy):
    res = _run(noisy, SABA(lr_inner=0.5, lr_outer=0.5, batch_size=32, init_memory="full"), 200)
    assert _error(noisy, res.lam) < 1e-3


@pytest.mark.parametrize("method", [SABA(lr_inner=0.5, lr_outer=0.5, batch_size=32),
                                    AmIGO(lr_inner=0.5, lr_outer=0.5, inner_steps=2,
                                          v_steps=2, batch_size=32)], ids=["SABA", "AmIGO"])
def test_checkpoint_resume_bit_identical(noisy, tmp_path, method):
    path = str(tmp_path / "run.npz")
    kw = dict(evaluate=noisy.value, seed=3)
    whole = solve(noisy.problem, method, noisy.lam0, noisy.w0, steps=30, eval_every=5,
                  monitoring=QUIET, **kw)
    killed = solve(noisy.problem, method, noisy.lam0, noisy.w0, steps=30, eval_every=5,
                   monitoring=QUIET, checkpointing=Checkpointing(path, every=4),
                   callback=lambda state, step: state.step == 17, **kw)
    assert killed.steps == 17 and "callback" in killed.message
    resumed = solve(noisy.problem, method, noisy.lam0, noisy.w0, steps=30, eval_every=5,
                    monitoring=QUIET, checkpointing=Checkpointing(path, every=4), **kw)
    for key in ("lam", "w", "v"):
        assert np.array_equal(whole[key], resumed[key])
    if "memory" in whole.state:
        for k, table in whole.state["memory"].items():
            assert np.array_equal(table, resumed.state["memory"][k])
    assert np.array_equal(whole.history["n_samples"], resumed.history["n_samples"])
    assert np.array_equal(whole.evaluations["value"], resumed.evaluations["value"])
    with pytest.raises(ResumeError, match="seed"):
        solve(noisy.problem, method, noisy.lam0, noisy.w0, steps=30, eval_every=5,
              monitoring=QUIET, checkpointing=Checkpointing(path), evaluate=noisy.value,
              seed=4)


def test_counts_and_history(noisy):
    res = _run(noisy, SOBA(batch_size=32), 10, evaluate=noisy.value)
    # one inner trace (gradient, HVP, cross: 3 products) and one outer gradient per step
    assert list(res.history["n_samples"]) == [32 * 4] * 10
    assert list(res.evaluations["step"]) == [0, 10]
    assert np.all(np.diff(res.history["lr_outer"]) < 0)


def test_schedule():
    s = Schedule(0.4, 0.5)
    assert s(0) == 0.4 and s(3) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="exponent"):
        Schedule(0.1, 2.0)


def test_bad_inputs(noisy):
    prob = noisy.problem
    with pytest.raises(ValueError, match="lr_inner"):
        SOBA(lr_inner=-1.0)
    with pytest.raises(ValueError, match="batch_size"):
        SABA(batch_size=0)
    with pytest.raises(ValueError, match="init_memory"):
        SABA(init_memory="half")
    with pytest.raises(TypeError, match="StochasticProblem"):
        solve(prob.full, SOBA(), noisy.lam0, noisy.w0)
    with pytest.raises(TypeError, match="stochastic method"):
        solve(prob, "SOBA", noisy.lam0, noisy.w0)
    with pytest.raises(TypeError, match="lam0"):
        solve(prob, SOBA(), np.zeros(3, dtype=int), noisy.w0)
    with pytest.raises(ValueError, match="NaN"):
        solve(prob, SOBA(), np.full(3, np.nan), noisy.w0)
    with pytest.raises(ValueError, match="steps"):
        solve(prob, SOBA(), noisy.lam0, noisy.w0, steps=0)
    with pytest.raises(ValueError, match="same leading"):
        StochasticProblem(prob.inner, prob.outer, {"a": np.zeros((3, 2)), "b": np.zeros((4, 2))},
                          prob.outer_data)
    with pytest.raises(TypeError, match="inner_data"):
        StochasticProblem(prob.inner, prob.outer, [1, 2], prob.outer_data)


def test_divergence_is_reported(noisy):
    with np.errstate(over="ignore", invalid="ignore"):
        res = _run(noisy, SOBA(lr_inner=50.0, lr_outer=50.0, exponent=0.0), 200)
    assert not res.success
    assert "non-finite" in res.message and "lr_inner" in res.message


def test_bench_rows_table_and_plot(tmp_path, monkeypatch):
    from bilevel.bench import stochastic as bench

    monkeypatch.setitem(bench._SIZES, "quick", dict(bench._SIZES["quick"], budget_s=0.3,
                                                      points=3))
    result = bench.run(quick=True, methods=["saba", "Implicit(CG)"], families=("quadratic",))
    assert [r["label"] for r in result["rows"]] == ["SABA", "Implicit(CG)"]
    for row in result["rows"]:
        rel = bench.relative(result, row)
        assert rel[0] == pytest.approx(1.0) and np.all(rel > -1e-9)
        assert row["seconds"][-1] >= 0.3 and row["samples"][-1] > 0
    text = bench.to_markdown(result)
    assert "seconds to 1e-3" in text and "| quadratic | SABA |" in text
    assert bench.plot(result, str(tmp_path / "s.png")).endswith("s.png")
    with pytest.raises(ValueError, match="unknown method"):
        bench.run(quick=True, methods=["MRBO"])


def test_bench_cli_refuses_unknown_method(capsys):
    from bilevel.cli import main

    assert main(["bench", "stochastic", "--methods", "MRBO", "--no-progress"]) == 2
    assert "MRBO" in capsys.readouterr().err


def test_solve_docstring_example():
    import doctest
    import importlib

    module = importlib.import_module("bilevel.stochastic.solve")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 3 and result.failed == 0


@pytest.mark.cupy
def test_cupy_matches_numpy():
    """Same data, seed and method on CuPy and NumPy: the same iterates to rounding."""
    from bilevel.backend import to_numpy

    kw = dict(n_inner=256, n_outer=128, dim_inner=6, dim_outer=3, seed=2)
    method = SABA(lr_inner=0.5, lr_outer=0.5, batch_size=32)
    out = []
    for backend in ("numpy", "cupy"):
        fam = families.quadratic(backend=backend, **kw)
        res = solve(fam.problem, method, fam.lam0, fam.w0, steps=50, monitoring=QUIET)
        out.append(to_numpy(res.lam))
    np.testing.assert_allclose(out[0], out[1], rtol=1e-9, atol=1e-12)


def test_deterministic_value_fingerprint_is_stable():
    """The evaluate function is part of a run's fingerprint: calling it (which warm-starts
    its inner solve) must not change its description, or a resume would be refused."""
    from bilevel.outer import describe

    fam = families.regularization(n_train=128, n_val=64, features=4, reference_steps=5)
    before = describe(fam.value)
    value = fam.value(fam.lam0 + 0.5)
    assert np.isfinite(value) and value >= fam.value_star - 1e-9
    assert describe(fam.value) == before
