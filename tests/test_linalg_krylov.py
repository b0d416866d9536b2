"""GMRES and BiCGSTAB: general systems, batches, budgets, breakdowns, the common signature."""

import pickle

import numpy as np
import pytest

from bilevel import linalg
from bilevel.linalg import GMRES, BiCGSTAB, SolveResult
from bilevel.registry import lookup, names

RNG = np.random.default_rng(3)


def nonsymmetric(n, shift=3.0, rng=RNG):
    return np.eye(n) * shift + rng.standard_normal((n, n)) / np.sqrt(n)


def matvec_of(A):
    if A.ndim == 3:
        return lambda V: np.einsum("bij,bj->bi", A, V)
    return lambda v: A @ v


SOLVERS = [GMRES(), GMRES(restart=3), BiCGSTAB()]


@pytest.mark.parametrize("solver", SOLVERS, ids=repr)
def test_nonsymmetric_system_solved(solver):
    A, b = nonsymmetric(30), RNG.standard_normal(30)
    res = solver(matvec_of(A), b)
    assert isinstance(res, SolveResult) and res.converged and not res.breakdown
    np.testing.assert_allclose(res.x, np.linalg.solve(A, b), atol=1e-9)
    assert res.relative_residual <= 1e-10 * 1.01
    assert res.residual_history[0] == pytest.approx(1.0) and res.n_matvec >= res.iterations


@pytest.mark.parametrize("solver", SOLVERS, ids=repr)
def test_batched_with_damping_and_warm_start(solver):
    As = np.stack([nonsymmetric(20, shift=2 + i) for i in range(4)])
    bs = RNG.standard_normal((4, 20))
    ref = np.linalg.solve(As + 0.2 * np.eye(20), bs[..., None])[..., 0]
    res = solver(matvec_of(As), bs, damping=0.2)
    assert res.converged and res.converged_mask.shape == (4,) and res.converged_mask.all()
    np.testing.assert_allclose(res.x, ref, atol=1e-9)
    warm = solver(matvec_of(As), bs, x0=ref + 1e-6, damping=0.2)
    assert warm.converged and warm.iterations < res.iterations


def test_gmres_without_restart_is_exact_after_n_iterations():
    A, b = nonsymmetric(12, shift=0.5), RNG.standard_normal(12)
    res = GMRES(tol=1e-12, restart=12, maxiter=12)(matvec_of(A), b)
    np.testing.assert_allclose(res.x, np.linalg.solve(A, b), atol=1e-8)


@pytest.mark.parametrize("cls", [GMRES, BiCGSTAB])
def test_fixed_budget_accepted(cls):
    A, b = nonsymmetric(40), RNG.standard_normal(40)
    res = cls.fixed(3)(matvec_of(A), b)
    assert res.converged and res.iterations == 3 and "fixed budget" in res.message
    assert res.relative_residual > 1e-6
    with pytest.raises(ValueError, match="needs maxiter"):
        cls(tol=None)


@pytest.mark.parametrize("cls", [GMRES, BiCGSTAB])
def test_iteration_cap_reported(cls):
    A, b = nonsymmetric(40, shift=0.3), RNG.standard_normal(40)
    res = cls(maxiter=2)(matvec_of(A), b)
    assert not res.converged and "did not converge in" in res.message


@pytest.mark.parametrize("solver", SOLVERS, ids=repr)
def test_nonfinite_matvec_is_a_breakdown(solver):
    res = solver(lambda v: v * np.nan, np.ones(5))
    assert not res.converged and res.breakdown and np.all(np.isfinite(res.x))


def test_bicgstab_breakdown_on_skew_system():
    """A skew-symmetric A gives ⟨r̂, A r̂⟩ = 0 at the first step: reported, not hidden."""
    A = np.array([[0.0, 1.0], [-1.0, 0.0]])
    res = BiCGSTAB()(matvec_of(A), np.array([1.0, 0.0]))
    assert not res.converged and res.breakdown and "breakdown" in res.message
    assert GMRES()(matvec_of(A), np.array([1.0, 0.0])).converged


@pytest.mark.parametrize("solver", SOLVERS, ids=repr)
def test_zero_rhs_and_signature(solver):
    res = solver(lambda v: 2 * v, np.zeros((2, 3)))
    assert res.converged and res.n_matvec == 0 and np.all(res.x == 0)
    with pytest.raises(ValueError, match="shape of b"):
        solver(lambda v: v[:2], np.ones(3))


def test_functions_registry_and_options():
    A, b = nonsymmetric(10), RNG.standard_normal(10)
    for fn, cls in ((linalg.gmres, GMRES), (linalg.bicgstab, BiCGSTAB)):
        np.testing.assert_array_equal(fn(matvec_of(A), b, damping=0.1).x,
                                      cls()(matvec_of(A), b, damping=0.1).x)
    assert {"gmres", "bicgstab"} <= set(names("solver"))
    assert lookup("solver", "GMRES") is GMRES and lookup("solver", "bicg-stab") is BiCGSTAB
    assert pickle.loads(pickle.dumps(GMRES(restart=5))) == GMRES(restart=5)
    with pytest.raises(ValueError, match="restart"):
        GMRES(restart=0)


@pytest.mark.parametrize("solver", SOLVERS + [GMRES.fixed(5)], ids=repr)
def test_runs_on_the_array_api_alone(solver):
    """Only the arrays' own namespace is used (array_api_strict stands in for CuPy)."""
    xs = pytest.importorskip("array_api_strict")
    A = xs.asarray(nonsymmetric(15))
    b = xs.asarray(RNG.standard_normal((2, 15)))
    res = solver(lambda v: v @ A.T, b)
    assert res.converged and type(res.x) is type(b)
