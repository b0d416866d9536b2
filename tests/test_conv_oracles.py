"""Analytic oracles of Conv4 (bilevel.meta.conv_oracles) against autograd.

Both normalization settings, even and odd image sides (the pool crops the odd row and
column), every inner problem that uses them (MAML, A-MAML, iMAML's proximal term, ANIL's
head on conv features): each oracle at a random point, and the meta-gradients of the fast
path and the autograd path, in float64 (to rounding) and float32, on NumPy and on
array_api_strict's second device.
"""

from __future__ import annotations

import pickle
from dataclasses import replace

import numpy as np
import pytest

from bilevel.backend import to_numpy
from bilevel.meta import Conv4, Episode
from bilevel.meta.algorithms import AMAML, ANIL, CML, IMAML, MAML
from bilevel.meta.conv_models import ConvCoLearner
from bilevel.meta.conv_oracles import Conv4Oracles, supports

pytestmark = [pytest.mark.filterwarnings("ignore::bilevel.HypergradWarning"),
              pytest.mark.filterwarnings("ignore:Output seems independent of input")]


def conv_case(norm=True, side=8, dtype="float64", T=2, ways=3):
    rng = np.random.default_rng(0)
    model = Conv4(hidden=4, ways=ways, image_size=side, norm=norm, dtype=dtype)

    def images(n):
        return rng.standard_normal((T, n, 1, side, side)).astype(dtype)

    ep = Episode(images(3), rng.integers(0, ways, (T, 3)), images(5),
                 rng.integers(0, ways, (T, 5)))
    return model, ep


def algorithms(model, K=2):
    return {
        "maml": MAML(model, 0.1, K),
        "anil": ANIL(model, 0.2, K),
        "imaml": IMAML(model, reg=2.0, inner_lr=0.05, steps=3),
        "amaml": AMAML(model, horizon=0.2, steps=2, scheme="rk4", reg=0.5),
    }


def rel(a, b):
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-300))


CASES = [(True, 8), (False, 8), (True, 7)]


@pytest.mark.parametrize("norm, side", CASES)
@pytest.mark.parametrize("name", ["maml", "anil", "imaml", "amaml"])
def test_each_oracle_equals_autograd(norm, side, name):
    """Gradient, HVP, mixed VJP/JVP and outer gradients at a random point, float64."""
    model, ep = conv_case(norm, side)
    alg = algorithms(model)[name]
    spec = replace(alg.specification(), fast_oracles=True)
    assert spec.problem_oracles() is not None
    theta = alg.init(np.random.default_rng(2))
    fast, lam, w0 = alg._problem(spec, theta, ep.x_support, ep.y_support, ep.x_query,
                                 ep.y_query)
    ref = fast.reference()
    rng = np.random.default_rng(3)
    w = fast.initial_point(lam) if w0 is None else w0
    w = w + 0.1 * rng.standard_normal(w.shape)
    v, e = rng.standard_normal(w.shape), rng.standard_normal(lam.shape)
    assert rel(fast.inner_grad(w, lam), ref.inner_grad(w, lam)) < 1e-10
    assert rel(fast.inner_hvp(w, lam, v), ref.inner_hvp(w, lam, v)) < 1e-10
    assert rel(fast.inner_mixed_vjp(w, lam, v), ref.inner_mixed_vjp(w, lam, v)) < 1e-10
    assert rel(fast.inner_mixed_jvp(w, lam, e), ref.inner_mixed_jvp(w, lam, e)) < 1e-10
    for a, b in zip(fast.outer_grads(w, lam), ref.outer_grads(w, lam), strict=True):
        assert rel(a, b) < 1e-10


def meta_gradients(alg, theta, ep):
    fast_spec = alg.specification()
    assert fast_spec.problem_oracles() is not None  # the analytic oracles by default
    slow_spec = replace(fast_spec, fast_oracles=False)
    assert slow_spec.problem_oracles() is None
    return (alg._hypergradient(fast_spec, theta, ep).grad,
            alg._hypergradient(slow_spec, theta, ep).grad)


@pytest.mark.parametrize("norm, side", CASES)
@pytest.mark.parametrize("name, K", [("maml", 1), ("maml", 3), ("anil", 3), ("imaml", None),
                                     ("amaml", None)])
def test_meta_gradient_equals_autograd(norm, side, name, K):
    model, ep = conv_case(norm, side)
    alg = algorithms(model, K or 2)[name]
    fast, ref = meta_gradients(alg, alg.init(np.random.default_rng(1)), ep)
    assert rel(fast, ref) < 1e-10


@pytest.mark.parametrize("name", ["maml", "anil", "imaml"])
def test_float32_meta_gradient_near_autograd(name):
    model, ep = conv_case(dtype="float32")
    alg = algorithms(model, 3)[name]
    fast, ref = meta_gradients(alg, alg.init(np.random.default_rng(1)), ep)
    assert fast.dtype == np.float32
    assert rel(fast, ref) < 1e-4


@pytest.mark.parametrize("name", ["maml", "anil"])
def test_analytic_conv_oracles_on_the_stand_in_device(name):
    """Every array created on the arrays' own device: array_api_strict's ``device1``."""
    xps = pytest.importorskip("array_api_strict")
    device = xps.Device("device1")

    def on_device(a):
        return xps.asarray(np.asarray(a), device=device)

    model, ep = conv_case()
    alg = algorithms(model)[name]
    theta = alg.init(np.random.default_rng(1))
    grad, _ = alg.meta_gradient(on_device(theta), Episode(*map(on_device, (
        ep.x_support, ep.y_support, ep.x_query, ep.y_query))))
    ref, _ = alg.meta_gradient(theta, ep)
    assert grad.device == device
    np.testing.assert_allclose(to_numpy(grad), ref, rtol=1e-12, atol=1e-14)


def test_oracles_cover_conv4_only():
    model, _ = conv_case()
    assert supports(model) and not supports(ConvCoLearner.for_model(model))
    cml = CML(MAML(model, 0.1, 2), ConvCoLearner.for_model(model, hidden=2), weight=0.5)
    assert replace(cml.specification(), fast_oracles=True).problem_oracles() is None
    assert MAML(model, 0.1, 2, fast_oracles=False)._spec().problem_oracles() is None


def test_conv_oracle_table_pickles():
    model, _ = conv_case()
    table = Conv4Oracles(model, head=True, backbone=model.split["backbone"]).table()
    assert set(pickle.loads(pickle.dumps(table))) == set(table)


@pytest.mark.parametrize("norm", [True, False])
def test_channel_slices_change_nothing(monkeypatch, norm):
    """NumPy runs a block's elementwise passes on slices of channels above a size: the
    HVP and the meta-gradient are those of one pass over all channels."""
    from bilevel.meta import conv_maps

    model, ep = conv_case(norm, side=7)
    alg = MAML(model, 0.1, 2)
    theta = alg.init(np.random.default_rng(1))
    ref = alg._hypergradient(alg.specification(), theta, ep).grad
    orc, rng = Conv4Oracles(model), np.random.default_rng(4)
    w = np.tile(theta, (2, 1))
    v = rng.standard_normal(w.shape)
    hv = orc.hvp(w, w, v, ep.x_support, ep.y_support)
    monkeypatch.setattr(conv_maps, "CHUNK", 40)  # one or two channels per slice
    assert len(conv_maps.chunks(np.zeros((2, 4, 3, 7, 7)))) > 1
    assert rel(alg._hypergradient(alg.specification(), theta, ep).grad, ref) < 1e-13
    assert rel(Conv4Oracles(model).hvp(w, w, v, ep.x_support, ep.y_support), hv) < 1e-13


def test_rebuilt_columns_give_the_same_products():
    from bilevel.meta.conv_oracles import ConvStack

    model, ep = conv_case()
    rng = np.random.default_rng(5)
    stack = ConvStack.of(model)
    lean = replace(stack, keep_columns=False)
    theta = np.tile(model.init(rng)[model.split["backbone"]], (2, 1))
    v = rng.standard_normal(theta.shape)
    d = rng.standard_normal((2, 3, model.n_features))
    outs = []
    for s in (stack, lean):
        tr = s.forward(theta, ep.x_support, v=v)
        out = np.empty_like(theta)
        s.r_backward(theta, v, tr, d, 0.5 * d, out)
        outs.append(out)
    np.testing.assert_array_equal(*outs)


@pytest.mark.parametrize("name", ["maml", "anil", "amaml"])
def test_outer_value_from_the_same_forward_pass(name):
    """``outer_value_and_grads``: the query loss with the gradients, no second forward."""
    model, ep = conv_case()
    alg = algorithms(model)[name]
    spec = replace(alg.specification(), fast_oracles=True)
    theta = alg.init(np.random.default_rng(2))
    fast, lam, w0 = alg._problem(spec, theta, ep.x_support, ep.y_support, ep.x_query,
                                 ep.y_query)
    w = fast.initial_point(lam) if w0 is None else w0
    w = w + 0.1 * np.random.default_rng(3).standard_normal(w.shape)
    oracle = fast.oracles["outer_value_and_grads"].fn.__self__
    value, gw, gl = oracle.outer_value_and_grads(w, lam, ep.x_query, ep.y_query)
    ref = fast.reference().outer_value_and_grads(w, lam)
    for a, b in zip((value, gw, gl), ref, strict=True):
        assert rel(a, b) < 1e-10
    for a, b in zip(fast.outer_value_and_grads(w, lam), ref, strict=True):  # as the core uses it
        assert rel(a, b) < 1e-10
