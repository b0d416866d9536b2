"""Backend independence without a GPU: bnp on ``array_api_strict`` arrays on a non-default device.

That device refuses conversion to NumPy and mixing with other devices, like a GPU array,
so any rule that builds NumPy arrays, or any missing box/vector-space support, fails here.
Values and derivatives (gradients, forward-over-reverse Hessian-vector products) are
compared with the same functions on NumPy.
"""

import numpy as np
import pytest
from autograd import grad, make_jvp
from autograd.test_util import check_grads
from hypothesis import given
from hypothesis import strategies as st

import bilevel.numpy as bnp

xps = pytest.importorskip("array_api_strict")
DEVICE = xps.Device("device1")
CPU = xps.Device("CPU_DEVICE")
MODES = ["fwd", "rev"]


def to_device(a):
    return xps.asarray(a, device=DEVICE)


def to_numpy(a):
    return np.asarray(a.to_device(CPU)) if hasattr(a, "to_device") else np.asarray(a)


LABELS = np.array([0, 2, 1])
IDX = np.array([2, 0, 0, 3])
IMG = np.random.default_rng(9).standard_normal((2, 1, 5, 5))

# Functions of one (3, 4) array; ``c(a)`` moves NumPy constants to the array's backend.
FUNCTIONS = {
    "elementwise": lambda x, c: bnp.sum(
        bnp.exp(x) * bnp.tanh(x)
        + bnp.sigmoid(x)
        - bnp.softplus(x)
        + bnp.sin(x) * bnp.cos(x)
        + bnp.log1p(bnp.abs(x))
        + bnp.expm1(x * 0.1)
        + bnp.sqrt(x * x + 1.0)
        + bnp.square(x)
    ),
    "binary": lambda x, c: bnp.sum(
        bnp.power(bnp.abs(x) + 1.0, 1.5)
        + bnp.maximum(x, 0.1)
        - bnp.minimum(x, -0.1)
        + 2.0 / (x * x + 1.0)
        + bnp.where(x > 0, x, 2.0 * x)
        + bnp.clip(x, -0.5, 0.5)
        + bnp.multiply(np.float64(0.5), x)
        - x
        + 3.0
    ),
    "reductions": lambda x, c: (
        bnp.mean(bnp.max(x, axis=0))
        + bnp.var(x, axis=1)[0, ...]
        + bnp.logsumexp(x)
        + bnp.sum(bnp.logsumexp(x, axis=-1, keepdims=True))
        + bnp.min(x)
    ),
    "linalg": lambda x, c: (
        bnp.sum(bnp.tanh(x @ x.T) @ x)
        + bnp.dot(x[0, ...], x[1, ...])
        + bnp.sum(bnp.matmul(bnp.stack([x, x * 2.0]), bnp.transpose(x)))
    ),
    "shape": lambda x, c: (
        bnp.sum(bnp.concatenate([bnp.reshape(x, (4, 3)), bnp.swapaxes(x, 0, 1)], axis=1) ** 2)
        + bnp.sum(bnp.squeeze(bnp.expand_dims(x, 0), 0) * bnp.broadcast_to(x[:1, ...], (3, 4)))
    ),
    "indexing": lambda x, c: (
        bnp.sum(x[1:, ::2] ** 2)
        + bnp.sum(bnp.take(x, c(IDX), axis=1) ** 3)
        + bnp.sum(x[c(LABELS), c(IDX[:3])] ** 2)
        + bnp.sum(bnp.take(x, c(IDX)) ** 2)
    ),
    "softmax": lambda x, c: (
        bnp.softmax_cross_entropy(x, c(LABELS))
        + bnp.sum(bnp.softmax(x, axis=0) ** 2)
        + bnp.sum(bnp.log_softmax(x) ** 2)
    ),
    "conv": lambda x, c: (
        bnp.sum(
            bnp.tanh(
                bnp.max_pool2d(
                    bnp.conv2d(c(IMG), bnp.reshape(x[:2, :], (2, 1, 2, 2)), x[2, :2], padding=1), 2
                )
            )
        )
        + bnp.sum(
            bnp.avg_pool2d(bnp.conv2d(c(IMG), bnp.reshape(x[2, :], (1, 1, 2, 2)), stride=2), 2)
        )
    ),
}


def run_both(fun, x_np):
    on_np = lambda a: fun(a, lambda v: v)  # noqa: E731
    on_dev = lambda a: fun(a, to_device)  # noqa: E731
    return on_np, on_dev, to_device(x_np)


@pytest.mark.parametrize("name", list(FUNCTIONS))
@given(seed=st.integers(0, 2**31 - 1))
def test_values_gradients_and_hvp_match_numpy(name, seed):
    rng = np.random.default_rng(seed)
    x_np, v_np = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    on_np, on_dev, x = run_both(FUNCTIONS[name], x_np)
    val = on_dev(x)
    assert val.device == DEVICE
    np.testing.assert_allclose(to_numpy(val), on_np(x_np), rtol=1e-12, atol=1e-12)
    g = grad(on_dev)(x)
    assert g.device == DEVICE and g.dtype == xps.float64
    np.testing.assert_allclose(to_numpy(g), grad(on_np)(x_np), rtol=1e-10, atol=1e-12)
    hvp = make_jvp(grad(on_dev))(x)(to_device(v_np))[1]
    np.testing.assert_allclose(
        to_numpy(hvp), make_jvp(grad(on_np))(x_np)(v_np)[1], rtol=1e-9, atol=1e-10
    )


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_check_grads_on_device(name):
    x_np = np.random.default_rng(4).standard_normal((3, 4))
    _, on_dev, x = run_both(FUNCTIONS[name], x_np)
    check_grads(on_dev, modes=MODES, order=2)(x)


def test_box_operators_and_scalars_on_device():
    x = to_device(np.arange(1.0, 7.0).reshape(2, 3))

    def f(a):
        return bnp.sum(
            (2.0 - a) * (a / 3.0)
            + (1.0 / a) ** 2
            + a.T.T
            - (-a)
            + abs(a)
            + 2.0**a
            + bnp.sum(bnp.reshape(a, (3, 2)))
            + bnp.mean(a[..., 1:])
            + bnp.max(a, axis=0)[0, ...]
        )

    check_grads(f, modes=MODES, order=2)(x)
    assert bnp.sum(x).device == DEVICE


def test_float32_on_device():
    x = xps.asarray(np.ones((2, 3)), dtype=xps.float32, device=DEVICE)
    y = bnp.sigmoid(x) * 2.0 + bnp.multiply(np.float32(1.0), x)
    assert y.dtype == xps.float32
    assert grad(lambda a: bnp.sum(bnp.tanh(a) ** 2))(x).dtype == xps.float32


def test_creation_like_device():
    x = to_device(np.ones((2, 3)))
    for a in [
        bnp.zeros_like(x),
        bnp.ones_like(x),
        bnp.zeros((2,), like=x),
        bnp.eye(2, like=x),
        bnp.arange(3, like=x),
        bnp.full((2,), 1.0, dtype=bnp.float32, like=x),
        bnp.linspace(0, 1, 3, like=x),
        bnp.asarray([1.0], like=x),
    ]:
        assert a.device == DEVICE
    assert bnp.full((2,), 1.0, dtype=bnp.float32, like=x).dtype == xps.float32


def test_mixing_devices_is_an_error_that_names_them():
    x = to_device(np.ones(3))
    with pytest.raises((TypeError, ValueError)):
        bnp.add(x, xps.asarray(np.ones(3), device=CPU))
    with pytest.raises(TypeError, match="different backends"):
        bnp.multiply(x, np.ones(3))


def test_conv_and_pool_image_derivatives_on_device():
    """Derivatives with respect to the images: the generic (non-NumPy) col2im paths."""
    rng = np.random.default_rng(5)
    x_np, w_np = rng.standard_normal((2, 2, 2, 5, 4)), rng.standard_normal((2, 3, 2, 3, 2))

    def f(x, w):
        y = bnp.conv2d(x, w, stride=1, padding=2)
        return bnp.sum(bnp.tanh(bnp.max_pool2d(y, 2))) + bnp.sum(bnp.avg_pool2d(y, 3, 1) ** 2)

    x, w = to_device(x_np), to_device(w_np)
    np.testing.assert_allclose(to_numpy(f(x, w)), f(x_np, w_np), rtol=1e-12)
    gx = grad(f)(x, w)
    assert gx.device == DEVICE
    np.testing.assert_allclose(to_numpy(gx), grad(f)(x_np, w_np), rtol=1e-10, atol=1e-12)
    check_grads(f, modes=MODES, order=2, argnum=(0, 1))(x, w)
