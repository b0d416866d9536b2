"""Tests for bilevel.linalg: closed forms, the dense reference, and identities between solvers."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bilevel import linalg
from bilevel.linalg import CG, Direct, FixedPoint, Neumann, SolveResult


def spd(n, seed, cond=10.0):
    """Random SPD matrix with eigenvalues in [1, cond]."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    eig = np.linspace(1.0, cond, n)
    return (q * eig) @ q.T


def matvec_of(A):
    """``v ↦ A v`` for (n,) and for batches (B, n) with a shared or per-problem A."""
    if A.ndim == 2:
        return lambda v: v @ A.T
    return lambda v: np.einsum("bij,bj->bi", A, v)


@given(n=st.integers(1, 12), seed=st.integers(0, 2**16))
def test_cg_solves_spd_to_tolerance(n, seed):
    A = spd(n, seed)
    b = np.random.default_rng(seed + 1).standard_normal(n)
    res = linalg.cg(matvec_of(A), b, tol=1e-10)
    assert isinstance(res, SolveResult)
    assert res.converged and not res.breakdown
    x_true = np.linalg.solve(A, b)
    assert np.linalg.norm(A @ res.x - b) <= 1e-9 * np.linalg.norm(b)
    np.testing.assert_allclose(res.x, x_true, rtol=1e-8, atol=1e-9)
    assert float(res.residual_norm) == pytest.approx(np.linalg.norm(A @ res.x - b), abs=1e-9)
    assert res.n_matvec == res.iterations
    assert len(res.residual_history) == res.iterations + 1
    assert res.converged_mask is None


def test_cg_after_n_iterations_equals_direct():
    n = 8
    A = spd(n, 3, cond=50.0)
    b = np.random.default_rng(4).standard_normal(n)
    res = linalg.cg(matvec_of(A), b, tol=0.0, maxiter=n)
    ref = linalg.direct(matvec_of(A), b)
    assert ref.converged and ref.n_matvec == n
    np.testing.assert_allclose(ref.x, np.linalg.solve(A, b), rtol=1e-12)
    np.testing.assert_allclose(res.x, ref.x, rtol=1e-8, atol=1e-10)
    assert res.iterations <= n


def test_cg_warm_start_counts_one_extra_matvec_and_helps():
    n = 10
    A = spd(n, 5, cond=100.0)
    b = np.random.default_rng(6).standard_normal(n)
    x_true = np.linalg.solve(A, b)
    cold = linalg.cg(matvec_of(A), b, tol=1e-10)
    warm = linalg.cg(matvec_of(A), b, x0=x_true + 1e-9, tol=1e-6)
    assert warm.converged
    assert warm.n_matvec == warm.iterations + 1
    assert warm.iterations < cold.iterations


def test_cg_breakdown_on_indefinite_is_reported_not_nan():
    A = np.diag([1.0, -2.0, 3.0])
    b = np.ones(3)
    res = linalg.cg(matvec_of(A), b)
    assert res.breakdown and not res.converged
    assert np.all(np.isfinite(res.x)) and np.any(res.x != 0)
    assert "breakdown" in res.message and "pᵀAp" in res.message and "damping" in res.message
    # the suggested damping restores positive definiteness for this system
    assert "damping must exceed" in res.message
    fixed = linalg.cg(matvec_of(A), b, damping=2.5)
    assert fixed.converged and not fixed.breakdown
    np.testing.assert_allclose(fixed.x, b / (np.diag(A) + 2.5), rtol=1e-10)


def test_cg_singular_breakdown_and_nonfinite_matvec():
    A = np.diag([1.0, 0.0])
    res = linalg.cg(matvec_of(A), np.array([0.0, 1.0]))
    assert res.breakdown and not res.converged and np.all(np.isfinite(res.x))

    def bad(v):
        return v * np.nan

    res = linalg.cg(bad, np.ones(3))
    assert res.breakdown and not res.converged
    assert "non-finite" in res.message
    np.testing.assert_array_equal(res.x, np.zeros(3))  # the last finite iterate, reported


def test_batched_cg_equals_per_problem_with_separate_convergence():
    n, B = 7, 3
    # 1, 3 and 7 distinct eigenvalues: CG needs 1, 3 and 7 iterations
    q, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((n, n)))
    spectra = [np.full(n, 2.0), np.array([1.0, 1, 1, 5, 5, 9, 9]), np.linspace(1.0, 50.0, n)]
    As = np.stack([(q * e) @ q.T for e in spectra])
    rng = np.random.default_rng(0)
    bs = rng.standard_normal((B, n))
    bs[0] *= 1e-3  # different scales: convergence is per problem, relative to each ‖b‖
    res = linalg.cg(matvec_of(As), bs, tol=1e-9)
    assert res.converged and res.converged_mask.shape == (B,)
    assert res.residual_norm.shape == (B,) and res.b_norm.shape == (B,)
    iters = []
    for i in range(B):
        single = linalg.cg(matvec_of(As[i]), bs[i], tol=1e-9)
        iters.append(single.iterations)
        np.testing.assert_allclose(res.x[i], single.x, rtol=1e-12, atol=1e-14)
        assert float(res.residual_norm[i]) == pytest.approx(float(single.residual_norm))
    assert iters == [1, 3, 7]  # the problems really stopped at different iterations
    assert res.iterations == max(iters)


def test_batched_cg_breakdown_flags_only_the_bad_problem():
    n = 4
    As = np.stack([spd(n, 1), np.diag([1.0, -1.0, 2.0, 3.0])])
    bs = np.ones((2, n))
    res = linalg.cg(matvec_of(As), bs)
    assert res.breakdown and not res.converged
    assert res.converged_mask.tolist() == [True, False]
    np.testing.assert_allclose(res.x[0], np.linalg.solve(As[0], bs[0]), rtol=1e-9)
    assert "1 of 2 problems" in res.message


@given(J=st.integers(1, 15), seed=st.integers(0, 2**16))
def test_neumann_equals_fixed_point_and_partial_sums(J, seed):
    n = 5
    A = spd(n, seed, cond=4.0)
    b = np.random.default_rng(seed).standard_normal(n)
    alpha = 1.0 / 4.0
    nm = linalg.neumann(matvec_of(A), b, alpha=alpha, maxiter=J)
    fp = linalg.fixed_point(matvec_of(A), b, alpha=alpha, maxiter=J, tol=0.0)
    np.testing.assert_array_equal(nm.x, fp.x)
    # closed form: α Σ_{j<J} (I − αA)^j b
    term, total = b.copy(), np.zeros(n)
    for _ in range(J):
        total += alpha * term
        term = term - alpha * (A @ term)
    np.testing.assert_allclose(nm.x, total, rtol=1e-12, atol=1e-14)
    assert nm.iterations == J and nm.n_matvec == J
    assert nm.converged  # fixed budget: no divergence
    assert float(nm.residual_norm) == pytest.approx(np.linalg.norm(A @ nm.x - b), rel=1e-10)


def test_fixed_point_converges_with_early_stop():
    A = spd(6, 2, cond=5.0)
    b = np.ones(6)
    res = linalg.fixed_point(matvec_of(A), b, alpha=1.0 / 5.0, maxiter=1000, tol=1e-10)
    assert res.converged and res.iterations < 1000
    np.testing.assert_allclose(res.x, np.linalg.solve(A, b), rtol=1e-8)
    short = linalg.fixed_point(matvec_of(A), b, alpha=1.0 / 5.0, maxiter=3, tol=1e-10)
    assert not short.converged and "did not converge" in short.message
    # Neumann with a tolerance stops early at the same iterate
    nm = linalg.neumann(matvec_of(A), b, alpha=1.0 / 5.0, maxiter=1000, tol=1e-10)
    np.testing.assert_array_equal(nm.x, res.x)


def test_batched_fixed_point_per_problem_stop():
    A = spd(4, 8, cond=3.0)
    bs = np.stack([np.ones(4), 1e3 * np.arange(4.0)])
    res = linalg.fixed_point(matvec_of(A), bs, alpha=0.3, maxiter=500, tol=1e-8)
    assert res.converged and res.converged_mask.tolist() == [True, True]
    for i in range(2):
        single = linalg.fixed_point(matvec_of(A), bs[i], alpha=0.3, maxiter=500, tol=1e-8)
        np.testing.assert_allclose(res.x[i], single.x, rtol=1e-14)
        assert float(res.residual_norm[i]) == pytest.approx(float(single.residual_norm))
    assert res.iterations == max(
        linalg.fixed_point(matvec_of(A), b, alpha=0.3, maxiter=500, tol=1e-8).iterations
        for b in bs
    )


def test_divergence_is_reported():
    A = np.diag([1.0, 10.0])
    b = np.ones(2)
    for solve in (linalg.neumann, linalg.fixed_point):
        res = solve(matvec_of(A), b, alpha=0.5, maxiter=200)
        assert not res.converged
        assert "diverged" in res.message and "alpha*lambda_max(A) must be < 2" in res.message
        assert np.all(np.isfinite(res.x))
        assert res.iterations < 200
        assert float(res.residual_norm) <= 1e6 * math.sqrt(2) + 1e-9


def test_damping():
    A = spd(5, 11)
    b = np.arange(1.0, 6.0)
    delta = 0.7
    x_true = np.linalg.solve(A + delta * np.eye(5), b)
    for solver in (CG(tol=1e-12), Direct(), FixedPoint(alpha=0.08, maxiter=5000, tol=1e-12)):
        res = solver(matvec_of(A), b, damping=delta)
        assert res.converged, (solver, res.message)
        np.testing.assert_allclose(res.x, x_true, rtol=1e-9)
    nm = Neumann(alpha=0.08, maxiter=3000)(matvec_of(A), b, damping=delta)
    np.testing.assert_allclose(nm.x, x_true, rtol=1e-9)


def test_zero_rhs_returns_zero_converged():
    A = spd(3, 0)
    for solve in (linalg.cg, linalg.neumann, linalg.fixed_point, linalg.direct):
        res = solve(matvec_of(A), np.zeros(3), x0=np.ones(3))
        assert res.converged
        np.testing.assert_array_equal(res.x, np.zeros(3))
        assert float(res.residual_norm) == 0.0
    # a batch with one zero right-hand side
    res = linalg.cg(matvec_of(A), np.stack([np.zeros(3), np.ones(3)]), x0=np.ones((2, 3)))
    assert res.converged
    np.testing.assert_array_equal(res.x[0], np.zeros(3))


def test_direct_singular_uses_least_squares_and_reports():
    A = np.diag([2.0, 0.0])
    res = linalg.direct(matvec_of(A), np.array([1.0, 0.0]))
    assert res.converged and "singular" in res.message
    np.testing.assert_allclose(res.x, [0.5, 0.0])
    res = linalg.direct(matvec_of(A), np.array([1.0, 1.0]))
    assert not res.converged and np.all(np.isfinite(res.x))


def test_direct_batched_matches_per_problem():
    As = np.stack([spd(4, 1), spd(4, 2)])
    bs = np.ones((2, 4))
    res = linalg.direct(matvec_of(As), bs)
    assert res.converged_mask.tolist() == [True, True]
    for i in range(2):
        np.testing.assert_allclose(res.x[i], np.linalg.solve(As[i], bs[i]), rtol=1e-12)


def test_bad_input_errors():
    A = spd(3, 0)
    mv = matvec_of(A)
    with pytest.raises(ValueError, match="b must have shape"):
        linalg.cg(mv, np.ones((2, 2, 2)))
    with pytest.raises(TypeError, match="real floating"):
        linalg.cg(mv, np.ones(3, dtype=np.int64))
    with pytest.raises(ValueError, match="x0 must have the shape of b"):
        linalg.cg(mv, np.ones(3), x0=np.ones(4))
    with pytest.raises(ValueError, match="matvec must return an array of the shape of b"):
        linalg.cg(lambda v: v[:2], np.ones(3))
    with pytest.raises(TypeError, match="matvec must be callable"):
        linalg.neumann(A, np.ones(3))
    with pytest.raises(ValueError, match="damping"):
        linalg.cg(mv, np.ones(3), damping=-1.0)
    with pytest.raises(ValueError, match="alpha"):
        linalg.fixed_point(mv, np.ones(3), alpha=0.0)
    with pytest.raises(ValueError, match="maxiter"):
        linalg.cg(mv, np.ones(3), maxiter=-1)
    with pytest.raises(ValueError, match="max_n=2"):
        linalg.direct(mv, np.ones(3), max_n=2)
    with pytest.raises(ValueError, match="tol"):
        CG(tol=-1.0)


def test_strategy_objects_names_and_repr():
    for solver, name in [(CG(), "cg"), (Neumann(), "neumann"), (FixedPoint(), "fixed_point"),
                         (Direct(), "direct")]:
        assert solver.name == name
        assert type(solver).__name__ in repr(solver)
    assert repr(CG(tol=1e-6)) == "CG(tol=1e-06, atol=0.0, maxiter=None)"


def test_float32_and_array_api_strict():
    A = spd(4, 7).astype(np.float32)
    b = np.ones(4, dtype=np.float32)
    res = linalg.cg(matvec_of(A), b, tol=1e-5)
    assert res.converged and res.x.dtype == np.float32
    xps = pytest.importorskip("array_api_strict")
    As = xps.asarray(spd(4, 7))
    bs = xps.ones(4, dtype=xps.float64)
    for solve in (linalg.cg, linalg.fixed_point, linalg.direct):
        kw = {"alpha": 0.1, "maxiter": 2000} if solve is linalg.fixed_point else {}
        res = solve(lambda v: xps.matmul(As, v), bs, **kw)
        assert res.converged, res.message
        np.testing.assert_allclose(
            np.asarray(res.x), np.linalg.solve(spd(4, 7), np.ones(4)), rtol=1e-8
        )


def test_solvers_are_frozen_registered_and_pickle():
    import dataclasses
    import pickle

    from bilevel.registry import lookup, names

    assert {"cg", "neumann", "fixed_point", "direct"} <= set(names("solver"))
    for solver in (CG(tol=1e-6, maxiter=7), Neumann(0.5, 3), FixedPoint(0.5, 3, 1e-4),
                   Direct(max_n=9)):
        assert lookup("solver", solver.name) is type(solver)
        assert pickle.loads(pickle.dumps(solver)) == solver
        with pytest.raises(dataclasses.FrozenInstanceError):
            solver.maxiter = 1
    assert lookup("solver", "Fixed-Point") is FixedPoint
    assert dataclasses.replace(CG(), tol=1e-3).tol == 1e-3
    assert not hasattr(Neumann(), "tol")  # a fixed budget of terms, no tolerance
    assert Neumann() == Neumann(alpha=1.0, maxiter=100)
    assert FixedPoint() == FixedPoint(alpha=1.0, maxiter=100, tol=1e-10)
    with pytest.raises(ValueError, match="alpha must be a finite number > 0"):
        Neumann(alpha=-1.0)
    with pytest.raises(ValueError, match="maxiter must be an integer >= 0"):
        FixedPoint(maxiter=-1)


def test_functions_call_the_classes():
    A = spd(5, 3, cond=4.0)
    b = np.arange(1.0, 6.0)
    mv = matvec_of(A)
    pairs = [
        (linalg.cg(mv, b, tol=1e-8, maxiter=9, damping=0.1), CG(1e-8, 0.0, 9)(mv, b, None, 0.1)),
        (linalg.neumann(mv, b, alpha=0.2, maxiter=7), Neumann(0.2, 7)(mv, b)),
        (linalg.fixed_point(mv, b, alpha=0.2, maxiter=50, tol=1e-6),
         FixedPoint(0.2, 50, 1e-6)(mv, b)),
        (linalg.direct(mv, b, damping=0.3), Direct()(mv, b, damping=0.3)),
    ]
    for by_function, by_class in pairs:
        np.testing.assert_array_equal(by_function.x, by_class.x)
        assert by_function.message == by_class.message
        assert by_function.n_matvec == by_class.n_matvec


def test_cg_non_finite_warm_start_is_a_breakdown_not_convergence():
    A = spd(3, 0)
    res = linalg.cg(matvec_of(A), np.ones(3), x0=np.array([np.nan, 0.0, 0.0]))
    assert res.breakdown and not res.converged
    assert "non-finite initial residual" in res.message


def test_neumann_needs_at_least_one_term():
    """Zero terms would return x = 0 as if solved: refused at construction."""
    with pytest.raises(ValueError, match="maxiter must be an integer >= 1, got 0"):
        linalg.Neumann(maxiter=0)
