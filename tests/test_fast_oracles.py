"""Analytic oracles of the built-in MLP (bilevel.meta.model_oracles) against autograd.

Every covered model (relu and tanh, MSE and cross-entropy) and every inner problem that
uses them (MAML and A-MAML on all weights, iMAML's proximal term, ANIL's head on backbone
features), first order (gradient, outer gradients) and second order (HVP, mixed products,
the unrolled meta-gradient by Reverse and Forward) agree with the autograd path to rounding.
"""

from __future__ import annotations

import pickle
from dataclasses import replace

import numpy as np
import pytest

from bilevel import Forward
from bilevel.meta import Episode, Sinusoid
from bilevel.meta.algorithms import AMAML, ANIL, CML, IMAML, MAML
from bilevel.meta.model_oracles import MLPOracles, supports
from bilevel.meta.models import MLP, QuadraticModel

CASES = [(act, loss) for act in ("relu", "tanh") for loss in ("mse", "cross_entropy")]


def model_and_episode(act, loss, T=3, N=5):
    rng = np.random.default_rng(0)
    if loss == "mse":
        model = MLP((1, 5, 4, 1), activation=act)
        return model, Sinusoid(n_shot=N, n_query=N).sample(T, rng)
    model = MLP((2, 5, 4, 3), activation=act, loss="cross_entropy")
    ep = Episode(rng.standard_normal((T, N, 2)), rng.integers(0, 3, (T, N)),
                 rng.standard_normal((T, N, 2)), rng.integers(0, 3, (T, N)))
    return model, ep


def algorithms(model):
    return {
        "maml": MAML(model, 0.05, 3),
        "maml_forward": MAML(model, 0.05, 2, method=Forward()),
        "anil": ANIL(model, 0.3, 3),
        "anil_forward": ANIL(model, 0.3, 2, method=Forward()),
        "imaml": IMAML(model, reg=2.0, inner_lr=0.05, steps=5),
        "amaml": AMAML(model, horizon=0.2, steps=4, scheme="rk4", reg=0.5),
    }


def close(a, b, tol=1e-12):
    return np.max(np.abs(a - b)) <= tol * max(np.max(np.abs(b)), 1.0)


@pytest.mark.filterwarnings("ignore::bilevel.HypergradWarning")
@pytest.mark.parametrize("act, loss", CASES)
@pytest.mark.parametrize("name", ["maml", "maml_forward", "anil", "anil_forward", "imaml",
                                  "amaml"])
def test_fast_meta_gradient_equals_autograd(act, loss, name):
    model, ep = model_and_episode(act, loss)
    alg = algorithms(model)[name]
    fast_spec = alg.specification()
    assert fast_spec.problem_oracles() is not None  # the analytic oracles by default
    spec = replace(fast_spec, fast_oracles=False)  # autograd: the reference
    assert spec.problem_oracles() is None
    theta = alg.init(np.random.default_rng(1))
    fast = alg._hypergradient(fast_spec, theta, ep)
    ref = alg._hypergradient(spec, theta, ep)
    assert close(fast.grad, ref.grad)


@pytest.mark.parametrize("act, loss", CASES)
@pytest.mark.parametrize("name", ["maml", "anil", "imaml", "amaml"])
def test_each_oracle_equals_autograd(act, loss, name):
    """Gradient, HVP, mixed VJP/JVP and outer gradients at a random point."""
    model, ep = model_and_episode(act, loss)
    alg = algorithms(model)[name]
    spec = replace(alg.specification(), fast_oracles=True)
    theta = alg.init(np.random.default_rng(2))
    fast, lam, w0 = alg._problem(spec, theta, ep.x_support, ep.y_support, ep.x_query,
                                 ep.y_query)
    ref = fast.reference()
    rng = np.random.default_rng(3)
    w = (fast.initial_point(lam) if w0 is None else w0) + 0.1 * rng.standard_normal(
        (lam.shape[0], fast.initial_point(lam).shape[1] if w0 is None else w0.shape[1]))
    v, e = rng.standard_normal(w.shape), rng.standard_normal(lam.shape)
    assert close(fast.inner_grad(w, lam), ref.inner_grad(w, lam))
    assert close(fast.inner_hvp(w, lam, v), ref.inner_hvp(w, lam, v))
    assert close(fast.inner_mixed_vjp(w, lam, v), ref.inner_mixed_vjp(w, lam, v))
    assert close(fast.inner_mixed_jvp(w, lam, e), ref.inner_mixed_jvp(w, lam, e))
    for a, b in zip(fast.outer_value_and_grads(w, lam), ref.outer_value_and_grads(w, lam),
                    strict=True):
        assert close(a, b)
    report = fast.check_oracles(w, lam)  # the value is checked with the gradients
    assert "outer_value" in report.errors and report.ok, report.errors


def test_oracles_cover_only_what_they_know():
    assert supports(MLP((1, 4, 1))) and not supports(QuadraticModel(3))
    model, _ = model_and_episode("tanh", "mse")
    def fast(alg):
        return replace(alg.specification(), fast_oracles=True).problem_oracles()

    assert fast(MAML(QuadraticModel(3), 0.1, 2)) is None
    cml = CML(MAML(model, 0.05, 2), MLP((4, 2, 1), activation="tanh"), weight=0.5)
    assert fast(cml) is None  # appended parameters: autograd
    assert fast(MAML(model, 0.05, 2)) is not None
    assert MAML(model, 0.05, 2).specification().problem_oracles() is not None
    assert MAML(model, 0.05, 2, fast_oracles=False)._spec().problem_oracles() is None


def test_oracle_table_pickles():
    model, _ = model_and_episode("relu", "mse")
    table = MLPOracles(model, head=True, backbone=model.split["backbone"]).table()
    assert set(pickle.loads(pickle.dumps(table))) == set(table)


def test_outer_value_and_grads_oracle_is_checked():
    """A user ``outer_value_and_grads`` replaces the evaluation of ``f``; its shapes are
    checked and a wrong value is caught by ``check_oracles``."""
    from bilevel import BilevelProblem

    def g(w, lam):
        return 0.5 * (w * w).sum() - (w * lam).sum()

    def f(w, lam):
        return 0.5 * ((w - 1.0) ** 2).sum()

    right = {"outer_value_and_grads": lambda w, lam, data: (f(w, lam), w - 1.0, 0.0 * lam)}
    wrong = {"outer_value_and_grads": lambda w, lam, data: (f(w, lam) + 1.0, w - 1.0, 0.0 * lam)}
    bad = {"outer_value_and_grads": lambda w, lam, data: (w, w - 1.0, 0.0 * lam)}
    w, lam = np.arange(3.0), np.ones(3)
    p = BilevelProblem(g, f, oracles=right)
    assert p.outer_value_and_grads(w, lam)[0] == f(w, lam)
    assert p.check_oracles(w, lam).ok
    assert not BilevelProblem(g, f, oracles=wrong).check_oracles(w, lam).ok
    with pytest.raises(ValueError, match="outer_value_and_grads"):
        BilevelProblem(g, f, oracles=bad).outer_grads(w, lam)
