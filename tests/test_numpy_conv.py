"""conv2d, max_pool2d, avg_pool2d against direct loops on tiny inputs, and their derivatives."""

import numpy as np
import pytest
from autograd import grad
from autograd.test_util import check_grads
from hypothesis import given
from hypothesis import strategies as st

import bilevel.numpy as bnp

MODES = ["fwd", "rev"]


def conv_reference(x, w, stride, padding):
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    ho, wo = (h + 2 * padding - kh) // stride + 1, (wd + 2 * padding - kw) // stride + 1
    y = np.zeros((n, o, ho, wo))
    for b in range(n):
        for f in range(o):
            for p in range(ho):
                for q in range(wo):
                    patch = xp[b, :, p * stride : p * stride + kh, q * stride : q * stride + kw]
                    y[b, f, p, q] = np.sum(patch * w[f])
    return y


def pool_reference(x, size, stride, reduce):
    *lead, h, w = x.shape
    ho, wo = (h - size) // stride + 1, (w - size) // stride + 1
    y = np.zeros((*lead, ho, wo))
    for p in range(ho):
        for q in range(wo):
            y[..., p, q] = reduce(
                x[..., p * stride : p * stride + size, q * stride : q * stride + size],
                axis=(-2, -1),
            )
    return y


@given(
    seed=st.integers(0, 2**31 - 1),
    k=st.sampled_from([(1, 1), (2, 3), (3, 3)]),
    stride=st.integers(1, 2),
    padding=st.integers(0, 2),
)
def test_conv2d_matches_loops(seed, k, stride, padding):
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal((2, 2, 5, 4)), rng.standard_normal((3, 2, *k))
    np.testing.assert_allclose(
        bnp.conv2d(x, w, stride=stride, padding=padding),
        conv_reference(x, w, stride, padding),
        rtol=1e-12,
        atol=1e-12,
    )


def test_conv2d_derivatives_and_bias():
    rng = np.random.default_rng(0)
    x, w, b = (
        rng.standard_normal((2, 2, 5, 5)),
        rng.standard_normal((3, 2, 3, 2)),
        rng.standard_normal(3),
    )
    f = lambda x, w, b: bnp.tanh(bnp.conv2d(x, w, b, stride=2, padding=1))  # noqa: E731
    check_grads(f, modes=MODES, order=2, argnum=(0, 1, 2))(x, w, b)
    np.testing.assert_allclose(bnp.conv2d(x, w, b), conv_reference(x, w, 1, 0) + b[:, None, None])
    # adjoint identity <patches(x), P> = <x, unpatches(P)>
    p = rng.standard_normal(bnp.nn.patches(x, 3, 2, 2, 1).shape)
    lhs = np.sum(bnp.nn.patches(x, 3, 2, 2, 1) * p)
    np.testing.assert_allclose(lhs, np.sum(x * bnp.nn.unpatches(p, 3, 2, 2, 1, x.shape)))


def test_conv2d_task_axis_equals_per_task_calls():
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((3, 2, 1, 4, 4)), rng.standard_normal((3, 2, 1, 3, 3))
    b = rng.standard_normal((3, 2))
    y = bnp.conv2d(x, w, b, padding=1)
    for t in range(3):
        np.testing.assert_allclose(y[t], bnp.conv2d(x[t], w[t], b[t], padding=1), rtol=1e-12)
    shared = bnp.conv2d(x, w[0])
    np.testing.assert_allclose(shared[1], bnp.conv2d(x[1], w[0]), rtol=1e-12)
    check_grads(lambda x, w: bnp.conv2d(x, w, stride=2), modes=MODES, order=2, argnum=(0, 1))(x, w)
    g = grad(lambda w: bnp.sum(bnp.conv2d(x, w) ** 2))(w)
    for t in range(3):
        gt = grad(lambda wt, t=t: bnp.sum(bnp.conv2d(x[t], wt) ** 2))(w[t])
        np.testing.assert_allclose(g[t], gt, rtol=1e-12)


def test_conv2d_shared_operand_derivatives_to_third_order():
    """One operand with the task axis, the other shared: the derivative of the shared one
    sums over tasks; forward and reverse to third order (the conv is a primitive)."""
    rng = np.random.default_rng(4)
    x, w = rng.standard_normal((2, 2, 2, 5, 5)), rng.standard_normal((2, 3, 2, 3, 3))
    check_grads(lambda x, w: bnp.tanh(bnp.conv2d(x, w, padding=1)), modes=MODES, order=3,
                argnum=(0, 1))(x[0], w)
    check_grads(lambda x, w: bnp.tanh(bnp.conv2d(x, w, stride=2, padding=2)), modes=MODES,
                order=2, argnum=(0, 1))(x, w[0])


@pytest.mark.parametrize("size,stride", [(2, None), (3, 1), (2, 1)])
def test_pools_match_loops(size, stride):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 2, 5, 4))
    s = size if stride is None else stride
    np.testing.assert_allclose(bnp.max_pool2d(x, size, stride), pool_reference(x, size, s, np.max))
    np.testing.assert_allclose(bnp.avg_pool2d(x, size, stride), pool_reference(x, size, s, np.mean))
    check_grads(lambda a: bnp.max_pool2d(a, size, stride), modes=MODES, order=2)(x[0])
    check_grads(lambda a: bnp.avg_pool2d(a, size, stride), modes=MODES, order=2)(x[0])


def test_max_pool_gradient_routes_to_the_maximum():
    x = np.array([[[[1.0, 2.0], [4.0, 3.0]]]])
    np.testing.assert_array_equal(
        grad(lambda a: bnp.sum(bnp.max_pool2d(a, 2)))(x), [[[[0, 0], [1, 0]]]]
    )


def test_conv_and_pool_argument_errors():
    x, w = np.zeros((1, 2, 4, 4)), np.zeros((3, 2, 3, 3))
    with pytest.raises(ValueError, match="channels"):
        bnp.conv2d(x, np.zeros((3, 1, 3, 3)))
    with pytest.raises(ValueError, match="x must be"):
        bnp.conv2d(x[0], w)
    with pytest.raises(ValueError, match="stride"):
        bnp.conv2d(x, w, stride=0)
    with pytest.raises(ValueError, match="exceeds"):
        bnp.conv2d(x, np.zeros((3, 2, 7, 7)))
    with pytest.raises(ValueError, match="window"):
        bnp.max_pool2d(x, 5)


def patches_reference(x, kh, kw, stride, padding):
    """im2col by explicit padding and loops: ``(..., C, kh·kw, Ho, Wo)``."""
    pad = [(0, 0)] * (x.ndim - 2) + [(padding, padding)] * 2
    xp = np.pad(x, pad)
    ho = (x.shape[-2] + 2 * padding - kh) // stride + 1
    wo = (x.shape[-1] + 2 * padding - kw) // stride + 1
    out = np.zeros(x.shape[:-2] + (kh * kw, ho, wo))
    for i in range(kh):
        for j in range(kw):
            for p in range(ho):
                for q in range(wo):
                    out[..., i * kw + j, p, q] = xp[..., p * stride + i, q * stride + j]
    return out


@given(
    seed=st.integers(0, 2**31 - 1),
    k=st.sampled_from([(1, 1), (2, 3), (3, 3), (3, 1)]),
    stride=st.integers(1, 3),
    padding=st.integers(0, 3),
    tasks=st.booleans(),
)
def test_columns_and_patches_match_padded_loops_and_are_adjoint(seed, k, stride, padding, tasks):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(((2,) if tasks else ()) + (3, 2, 5, 4))
    ref = patches_reference(x, *k, stride, padding)
    np.testing.assert_array_equal(bnp.nn.patches(x, *k, stride, padding), ref)
    # columns: the image axis N moved behind the kernel axis
    cols = bnp.nn.columns(x, *k, stride, padding)
    np.testing.assert_array_equal(cols, np.moveaxis(ref, -5, -3))
    # adjoint identities <patches(x), P> = <x, unpatches(P)>, same for columns
    p, q = rng.standard_normal(ref.shape), rng.standard_normal(cols.shape)
    np.testing.assert_allclose(
        np.sum(ref * p), np.sum(x * bnp.nn.unpatches(p, *k, stride, padding, x.shape)), rtol=1e-12
    )
    np.testing.assert_allclose(
        np.sum(cols * q), np.sum(x * bnp.nn.uncolumns(q, *k, stride, padding, x.shape)), rtol=1e-12
    )


def test_columns_pair_derivatives():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 2, 4, 4))
    q = rng.standard_normal(bnp.nn.columns(x, 3, 2, 2, 1).shape)
    f = lambda a: bnp.tanh(bnp.nn.columns(a, 3, 2, 2, 1))  # noqa: E731
    check_grads(f, modes=MODES, order=2)(x)
    g = lambda b: bnp.tanh(bnp.nn.uncolumns(b, 3, 2, 2, 1, x.shape))  # noqa: E731
    check_grads(g, modes=MODES, order=2)(q)


@pytest.mark.parametrize("shape,size", [((2, 3, 6, 4), 2), ((2, 1, 2, 7, 5), 2), ((1, 2, 7, 9), 3)])
def test_block_pools_equal_window_pools_with_ties(shape, size):
    """Non-overlapping pools (block_max/block_sum) against max/mean over patches: values,
    gradients, JVPs and Hessian-vector products, on inputs with many ties."""
    from autograd import make_jvp

    rng = np.random.default_rng(6)
    x = rng.integers(-1, 2, size=shape).astype(float)  # values in {-1, 0, 1}: ties everywhere
    v = rng.standard_normal(shape)
    by_windows = {
        "max": lambda a: bnp.max(bnp.nn.patches(a, size, size, size, 0), axis=-3),
        "avg": lambda a: bnp.mean(bnp.nn.patches(a, size, size, size, 0), axis=-3),
    }
    pools = {"max": bnp.max_pool2d, "avg": bnp.avg_pool2d}
    for name, pool in pools.items():
        f = lambda a, p=pool: bnp.sum(bnp.tanh(p(a, size)) ** 2)  # noqa: E731
        f_ref = lambda a, p=by_windows[name]: bnp.sum(bnp.tanh(p(a)) ** 2)  # noqa: E731
        np.testing.assert_array_equal(pool(x, size), by_windows[name](x))
        np.testing.assert_allclose(grad(f)(x), grad(f_ref)(x), rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(
            make_jvp(lambda a, p=pool: p(a, size))(x)(v)[1],
            make_jvp(by_windows[name])(x)(v)[1],
            rtol=1e-12,
        )
        np.testing.assert_allclose(
            make_jvp(grad(f))(x)(v)[1], make_jvp(grad(f_ref))(x)(v)[1], rtol=1e-10, atol=1e-12
        )


def test_block_sum_and_unblock_are_adjoint():
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal((2, 3, 6, 9)), rng.standard_normal((2, 3, 2, 3))
    np.testing.assert_allclose(
        np.sum(bnp.nn.block_sum(x, 3) * y), np.sum(x * bnp.nn.unblock(y, 3)), rtol=1e-12
    )
    np.testing.assert_allclose(bnp.nn.block_sum(x, 3), x.reshape(2, 3, 2, 3, 3, 3).sum((3, 5)))
    check_grads(lambda a: bnp.nn.block_max(a, 3), modes=MODES, order=2)(x)


def test_standardize_matches_mean_var_and_differentiates_to_third_order():
    from bilevel.numpy.nn import center, inv_rms, standardize

    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 4, 2, 3))
    scale = rng.standard_normal((2, 1, 4, 1, 1))
    axes = (1, 3, 4)
    mu, var = x.mean(axis=axes, keepdims=True), x.var(axis=axes, keepdims=True)
    np.testing.assert_allclose(standardize(x, axes, 0.1, scale),
                               (x - mu) / np.sqrt(var + 0.1) * scale, rtol=1e-12)
    np.testing.assert_allclose(standardize(x, axes), (x - mu) / np.sqrt(var + 1e-5), rtol=1e-10)
    check_grads(lambda a: center(a, axes), modes=MODES, order=2)(x)
    check_grads(lambda c: inv_rms(c, axes, 0.1), modes=MODES, order=3)(x)
    check_grads(lambda a, s: bnp.tanh(standardize(a, axes, 0.1, s)), modes=MODES, order=3)(x, scale)
