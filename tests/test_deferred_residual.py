"""The unrolled methods' ``inner_residual`` is deferred: computed on its first read, kept.

Reverse, Forward, FirstOrder and Adjoint do not need ``‖∇_w g(w_K, λ)‖`` for their own
success test, so the extra inner gradient at the final iterate is spent only when someone
reads it
(issue 15: 11 % of a MAML K = 1 meta-gradient). Every way of reading a result still sees it.
"""

from __future__ import annotations

import copy
import pickle

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
    GradientFlow,
    HypergradResult,
    Implicit,
    Reverse,
    hypergrad,
)

LAM = np.array([1.0, -2.0, 0.5])
ALPHA, K = 0.3, 6


def problem():
    return BilevelProblem(lambda w, lam: 0.5 * anp.sum((w - lam) ** 2),
                          lambda w, lam: 0.5 * anp.sum(w**2))


def expected_residual():
    return (1 - ALPHA) ** K * np.linalg.norm(LAM)  # w_K = (1 − (1 − α)^K) λ


def run(method, p=None):
    return hypergrad(p or problem(), LAM, np.zeros(3), dynamics=GradientDescent(ALPHA, K),
                     method=method)


@pytest.mark.parametrize("method", [Reverse(), Reverse(checkpoints=2), Forward(),
                                    FirstOrder()], ids=repr)
def test_the_residual_costs_one_gradient_on_first_read_only(method):
    p = problem()
    res = run(method, p)
    assert res.deferred("inner_residual") and "inner_residual" in res
    spent = p.counts.snapshot()["grad"]
    np.testing.assert_allclose(res.inner_residual, expected_residual(), rtol=1e-9)
    assert not res.deferred("inner_residual")
    assert p.counts.snapshot()["grad"] == spent + 1
    assert res["inner_residual"] == res.get("inner_residual") == res.inner_residual
    assert p.counts.snapshot()["grad"] == spent + 1  # kept


def test_every_method_without_its_own_residual_defers_it():
    res = hypergrad(problem(), LAM, np.zeros(3), dynamics=GradientFlow(0.5, 8),
                    method=Adjoint())
    assert res.deferred("inner_residual") and float(res.inner_residual) > 0


def test_n_grad_counts_only_the_work_done():
    p = problem()
    res = run(Reverse(), p)
    assert res.n_grad == p.counts.snapshot()["grad"] + p.counts.snapshot()["outer_grad"]


@pytest.mark.parametrize("read", [
    lambda r: pickle.loads(pickle.dumps(r)),
    copy.copy,
    copy.deepcopy,
    dict,
    lambda r: dict(r.items()),
    lambda r: {**r},
    lambda r: r.copy(),
], ids=["pickle", "copy", "deepcopy", "dict", "items", "unpack", "copy-method"])
def test_every_listing_of_a_result_holds_the_residual(read):
    res = run(Reverse())
    out = read(res)
    np.testing.assert_allclose(out["inner_residual"], expected_residual(), rtol=1e-9)
    if isinstance(out, HypergradResult):
        assert not out.deferred("inner_residual")


def test_repr_keys_and_equality_compute_it():
    res = run(Reverse())
    assert "inner_residual:" in repr(res)
    res2 = run(Reverse())
    assert "inner_residual" in list(res2.keys()) and len(res2) == len(res)
    assert sorted(res) == sorted(run(Reverse()))


def test_a_stored_value_wins_and_pop_reads_the_deferred_one():
    res = run(Forward())
    res.inner_residual = 3.0
    assert res.inner_residual == 3.0 and dict(res)["inner_residual"] == 3.0
    other = run(FirstOrder())
    np.testing.assert_allclose(other.pop("inner_residual"), expected_residual(), rtol=1e-9)
    assert "inner_residual" not in other
    assert other.get("inner_residual", "gone") == "gone"
    assert other.setdefault("inner_residual", 1.5) == 1.5


def test_deferral_on_a_plain_result():
    calls = []
    res = HypergradResult(grad=1.0)
    res.defer("extra", lambda: calls.append(1) or 42)
    assert "extra" in res and not calls
    assert res.extra == 42 and res.extra == 42 and calls == [1]
    with pytest.raises(AttributeError, match="no field"):
        res.missing  # noqa: B018
    with pytest.raises(KeyError):
        res["missing"]


def test_implicit_still_computes_it_for_its_own_test():
    res = hypergrad(problem(), LAM, np.zeros(3), dynamics=GradientDescent(0.5, 60),
                    method=Implicit(CG()))
    assert not res.deferred("inner_residual") and res.success


def test_meta_step_keeps_the_residual_deferred_until_read():
    """A MAML meta-step does not pay the residual's inner gradient unless someone reads it;
    read, it is the worst task's ‖∇_w g(w_K)‖, and a settled step carries it."""
    from bilevel.meta import MAML, MLP, Sinusoid

    alg = MAML(MLP((1, 8, 1), activation="tanh"), 0.05, 1)
    episode = Sinusoid(n_shot=4, n_query=4).sample(3, np.random.default_rng(0))
    _, step = alg.meta_gradient(alg.init(np.random.default_rng(1)), episode)
    assert step.result.deferred("inner_residual")
    assert "inner_residual" in list(step)  # listed without computing
    assert step.result.deferred("inner_residual")
    value = step["inner_residual"]
    assert not step.result.deferred("inner_residual")
    assert value == pytest.approx(float(np.max(step.result["inner_residual"])))
    _, fresh = alg.meta_gradient(alg.init(np.random.default_rng(1)), episode)
    assert fresh.settled().diagnostics["inner_residual"] == value
