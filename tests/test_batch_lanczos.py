"""bilevel.batch (per-problem reductions) and bilevel.linalg.lanczos (estimate of λ_max)."""

import numpy as np
from shared_problems import spd

from bilevel.batch import dot_per_problem, largest, norm_per_problem, per_problem
from bilevel.linalg import lanczos_max_eigenvalue


def test_per_problem_reductions():
    x = np.arange(6.0).reshape(2, 3)
    np.testing.assert_allclose(dot_per_problem(x, x), [5.0, 50.0])
    np.testing.assert_allclose(norm_per_problem(x), np.sqrt([5.0, 50.0]))
    assert dot_per_problem(x[0], x[0]) == 5.0
    assert per_problem(np.array([1.0, 2.0]), x).shape == (2, 1)
    assert largest(np.array([1.0, 7.0, 3.0])) == 7.0 and isinstance(largest(x), float)


def test_lanczos_estimate_is_a_sharp_lower_bound():
    rng = np.random.default_rng(3)
    Q = np.linalg.qr(rng.standard_normal((12, 12)))[0]
    A = (Q * np.r_[np.linspace(0.1, 3.0, 11), 7.0]) @ Q.T  # a separated stiff mode
    top = lanczos_max_eigenvalue(lambda v: A @ v, rng.standard_normal(12), 8)
    assert 7.0 * (1 - 1e-3) < top <= 7.0 + 1e-12
    clustered = spd(12, rng, 0.1, 7.0)  # 8 steps, no gap: still a lower bound, within 5 %
    top = lanczos_max_eigenvalue(lambda v: clustered @ v, rng.standard_normal(12), 8)
    assert 7.0 * 0.95 < top <= 7.0 + 1e-12
    batch = np.stack([A, 2 * A])
    tops = lanczos_max_eigenvalue(lambda v: np.einsum("bij,bj->bi", batch, v),
                                  rng.standard_normal((2, 12)), 8)
    assert tops.shape == (2,) and np.all(tops <= [7.0 + 1e-12, 14.0 + 1e-12])
    np.testing.assert_allclose(tops, [7.0, 14.0], rtol=1e-3)
