"""Direct(cache=True): the factorisation kept across solves, and batched materialisation."""

import pickle

import autograd.numpy as anp
import numpy as np
import pytest

from bilevel import BilevelProblem, Implicit, hypergrad
from bilevel.conditions import BlockOperator, Root
from bilevel.dynamics import Solved
from bilevel.linalg import Direct
from bilevel.linalg.factored import materialize

RNG = np.random.default_rng(7)
N, D = 120, 10
X = RNG.standard_normal((N, D))
Y = RNG.standard_normal(N)
G = X.T @ X / N


def spd(shift):
    return G + np.diag(shift)


def counted(A):
    calls = []

    def mv(v):
        calls.append(1)
        return (A @ v[..., None])[..., 0] if A.ndim == 3 else A @ v

    return mv, calls


def test_reuse_diagonal_update_and_new_matrix():
    solver, b = Direct(cache=True), RNG.standard_normal(D)
    mv, calls = counted(spd(np.ones(D)))
    res = solver(mv, b)
    assert res.converged and "materialised" in res.message and len(calls) == D + 1
    np.testing.assert_allclose(res.x, np.linalg.solve(spd(np.ones(D)), b), atol=1e-12)
    calls.clear()
    assert "reused" in solver(mv, b).message and len(calls) == 2
    shift = np.linspace(0.1, 2, D)
    mv2, calls2 = counted(spd(shift))
    res = solver(mv2, b, damping=0.3)
    assert "diagonal update" in res.message and len(calls2) == 3
    np.testing.assert_allclose(res.x, np.linalg.solve(spd(shift) + 0.3 * np.eye(D), b),
                               atol=1e-12)
    other = spd(shift) + 0.01 * np.outer(np.arange(D), np.arange(D)) / D
    res = solver(counted(other)[0], b)
    assert "materialised" in res.message
    np.testing.assert_allclose(res.x, np.linalg.solve(other, b), atol=1e-12)


def test_cached_batched_and_non_positive_definite():
    solver = Direct(cache=True)
    As = np.stack([spd(np.full(D, 1.0 + i)) for i in range(3)])
    bs = RNG.standard_normal((3, D))
    for _ in range(2):
        res = solver(counted(As)[0], bs)
        np.testing.assert_allclose(res.x, np.linalg.solve(As, bs[..., None])[..., 0],
                                   atol=1e-12)
    indefinite = np.diag(np.r_[-1.0, np.ones(D - 1)])
    res = Direct(cache=True)(lambda v: indefinite @ v, np.ones(D))
    assert res.converged and res.x[0] == pytest.approx(-1.0)


def test_stale_cache_is_caught_by_the_true_residual():
    """A change the probes cannot see is still caught: the residual uses matvec itself."""
    solver, b = Direct(cache=True), RNG.standard_normal(D)
    solver(lambda v: spd(np.ones(D)) @ v, b)
    solver._memory.A = solver._memory.A + 0.5  # corrupt the cache behind the probes' back
    solver._memory.factor = None
    solver._memory.probes = [np.zeros(D), np.zeros(D)]  # so the probe sees no change
    res = solver(lambda v: spd(np.ones(D)) @ v, b)
    assert res.converged and "materialised" in res.message


def test_cache_not_pickled_nor_compared():
    solver = Direct(cache=True)
    solver(lambda v: 2 * v, np.ones(3))
    copy = pickle.loads(pickle.dumps(solver))
    assert copy == solver and copy._memory.A is None
    assert repr(copy) == "Direct(max_n=4096, cache=True)"


def test_block_materialisation_and_fallback():
    A = spd(np.ones(D))
    calls = []
    op = BlockOperator(lambda v: A @ v, lambda V: calls.append(1) or V @ A.T)
    M, count = materialize(np, op, np.ones(D))
    np.testing.assert_allclose(M, A, atol=1e-14)
    assert count == 2 and calls == [1]
    broken = BlockOperator(lambda v: A @ v, lambda V: V[:, :2])  # wrong shape: fall back
    M, count = materialize(np, broken, np.ones(D))
    np.testing.assert_allclose(M, A, atol=1e-14)
    assert count == D
    lying = BlockOperator(lambda v: A @ v, lambda V: 2 * V @ A.T)  # disagrees: fall back
    np.testing.assert_allclose(materialize(np, lying, np.ones(D))[0], A, atol=1e-14)


def batch_ridge(w, lam):
    return 0.5 * anp.sum((w @ X.T - Y) ** 2, axis=-1) / N + 0.5 * anp.sum(anp.exp(lam) * w**2,
                                                                          axis=-1)


def plain_ridge(w, lam):  # no batch axis: X @ w
    return 0.5 * anp.sum((X @ w - Y) ** 2) / N + 0.5 * anp.sum(anp.exp(lam) * w**2)


def outer(w, lam):
    return anp.sum(anp.sin(w), axis=-1)


@pytest.mark.parametrize("inner", [batch_ridge, plain_ridge])
def test_implicit_with_cached_direct_over_outer_steps(inner):
    solver = Direct(cache=True)
    problem = BilevelProblem(inner, outer)
    for lam in (np.zeros(D), np.linspace(-1, 1, D)):
        A = spd(np.exp(lam))
        w = np.linalg.solve(A, X.T @ Y / N)
        ref = -np.exp(lam) * w * np.linalg.solve(A, np.cos(w))
        before = problem.counts.hvp
        res = hypergrad(problem, lam, w, dynamics=Solved(), method=Implicit(solver))
        np.testing.assert_allclose(res.grad, ref, atol=1e-12)
        assert res.success
    assert "diagonal update" in res.linear_solve.message
    assert problem.counts.hvp - before <= 4  # 2 probes + residual + mixed product


def test_root_block_materialisation():
    fun = lambda w, lam, data: (w @ X.T - Y) @ X / N + anp.exp(lam) * w  # noqa: E731
    lam = np.zeros(D)
    w = np.linalg.solve(spd(np.exp(lam)), X.T @ Y / N)
    problem = BilevelProblem(batch_ridge, outer)
    res = hypergrad(problem, lam, w, dynamics=Solved(),
                    method=Implicit(Direct(), condition=Root(fun)))
    assert res.success and res.linear_solve.n_matvec == 2
    np.testing.assert_allclose(res.grad, -w * np.linalg.solve(spd(np.ones(D)), np.cos(w)),
                               atol=1e-12)


def test_non_symmetric_matrix_uses_lu_not_cholesky():
    A = np.eye(D) * 3 + RNG.standard_normal((D, D)) / 4  # Cholesky would read one triangle
    solver, b = Direct(cache=True), RNG.standard_normal(D)
    for _ in range(2):
        res = solver(lambda v: A @ v, b)
        assert res.converged
        np.testing.assert_allclose(res.x, np.linalg.solve(A, b), atol=1e-12)


def test_cached_direct_runs_on_the_array_api_alone():
    xs = pytest.importorskip("array_api_strict")
    S = xs.asarray(spd(np.ones(D)))
    b = xs.asarray(RNG.standard_normal((2, D)))
    solver = Direct(cache=True)
    assert solver(lambda v: v @ S, b).converged
    res = solver(lambda v: v @ S + 0.5 * v, b)
    assert res.converged and "diagonal update" in res.message
