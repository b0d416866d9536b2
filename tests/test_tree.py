"""Tests of bilevel.tree: ravel/unravel round trips by views, batch axis, differentiability."""

from collections import namedtuple

import autograd.numpy as anp
import numpy as np
import pytest
from autograd import grad
from hypothesis import given
from hypothesis import strategies as st

from bilevel.tree import leaves, ravel

Layer = namedtuple("Layer", ["W", "b"])


def _tree(rng, lead=()):
    return {
        "conv": Layer(W=rng.standard_normal(lead + (2, 3)), b=rng.standard_normal(lead + (3,))),
        "heads": [rng.standard_normal(lead + (4,)), rng.standard_normal(lead + ())],
        "scale": (rng.standard_normal(lead + (1, 2)),),
    }


def _assert_same_tree(a, b):
    assert type(a) is type(b)
    if isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _assert_same_tree(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same_tree(x, y)
    else:
        assert a.shape == b.shape
        np.testing.assert_array_equal(a, b)


def test_round_trip_structure_and_values():
    tree = _tree(np.random.default_rng(0))
    flat, unravel = ravel(tree)
    assert flat.shape == (6 + 3 + 4 + 1 + 2,)
    np.testing.assert_array_equal(flat, np.concatenate([x.ravel() for x in leaves(tree)]))
    _assert_same_tree(unravel(flat), tree)
    assert isinstance(unravel(flat)["conv"], Layer)
    assert unravel.size == 16 and "n=16" in repr(unravel)


def test_unravel_returns_views_without_copies():
    flat, unravel = ravel(_tree(np.random.default_rng(1)))
    out = unravel(flat)
    for leaf in leaves(out):
        assert np.shares_memory(leaf, flat)
    flat[:] = np.arange(flat.size, dtype=float)
    np.testing.assert_array_equal(out["conv"].W, np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(out["heads"][1], 13.0)
    out["scale"][0][0, 1] = -7.0
    assert flat[-1] == -7.0


def test_batch_axis_round_trip_as_views():
    B = 3
    tree = _tree(np.random.default_rng(2), lead=(B,))
    flat, unravel = ravel(tree, batch=True)
    assert flat.shape == (B, 16)
    back = unravel(flat)
    _assert_same_tree(back, tree)
    for leaf in leaves(back):
        assert np.shares_memory(leaf, flat)
    for b in range(B):  # row b of the batch is the ravel of problem b
        one = {
            "conv": Layer(W=tree["conv"].W[b], b=tree["conv"].b[b]),
            "heads": [tree["heads"][0][b], tree["heads"][1][b]],
            "scale": (tree["scale"][0][b],),
        }
        np.testing.assert_array_equal(flat[b], ravel(one)[0])


def test_unravel_is_differentiable():
    tree = _tree(np.random.default_rng(3))
    flat, unravel = ravel(tree)

    def loss(v):
        t = unravel(v)
        return anp.sum(anp.tanh(t["conv"].W) ** 2) + anp.sum(t["heads"][0] * t["scale"][0][0, 0])

    g = grad(loss)(flat)
    gt = unravel(g)
    W = tree["conv"].W
    np.testing.assert_allclose(gt["conv"].W, 2 * np.tanh(W) * (1 - np.tanh(W) ** 2), rtol=1e-12)
    np.testing.assert_allclose(gt["heads"][0], np.full(4, tree["scale"][0][0, 0]), rtol=1e-12)
    np.testing.assert_allclose(gt["scale"][0][0, 0], tree["heads"][0].sum(), rtol=1e-12)
    np.testing.assert_array_equal(gt["conv"].b, 0.0)


def test_errors_name_the_problem():
    with pytest.raises(TypeError, match="found str at path \\('a', 1\\)"):
        ravel({"a": [np.ones(2), "x"]})
    with pytest.raises(ValueError, match="no arrays"):
        ravel({"a": []})
    with pytest.raises(ValueError, match="share the leading batch axis"):
        ravel([np.ones((2, 3)), np.ones((3, 3))], batch=True)
    with pytest.raises(ValueError, match="share the leading batch axis"):
        ravel([np.ones((2, 3)), np.ones(())], batch=True)
    _, unravel = ravel([np.ones(3), np.ones((2, 2))])
    with pytest.raises(ValueError, match="last axis 7, got shape \\(6,\\)"):
        unravel(np.ones(6))


shapes = st.lists(st.lists(st.integers(1, 3), max_size=3).map(tuple), min_size=1, max_size=4)


@given(shapes=shapes, nested=st.booleans(), batch=st.integers(0, 2))
def test_round_trip_random_structures(shapes, nested, batch):
    rng = np.random.default_rng(len(shapes))
    lead = (batch,) if batch else ()
    arrays = [rng.standard_normal(lead + s) for s in shapes]
    tree = {"x": arrays[0], "rest": [tuple(arrays[1:])]} if nested else list(arrays)
    flat, unravel = ravel(tree, batch=bool(batch))
    n = sum(int(np.prod(s)) for s in shapes)
    assert flat.shape == (lead + (n,))
    back = unravel(flat)
    _assert_same_tree(back, tree)
    assert all(np.shares_memory(leaf, flat) for leaf in leaves(back))
