"""bilevel.numpy on CuPy: the device checks of test_numpy_strict, plus operator order and
NumPy scalars. Marked ``cupy`` (skipped without a GPU)."""

import numpy as np
import pytest
from autograd import grad, make_jvp
from autograd.test_util import check_grads
from test_numpy_strict import FUNCTIONS  # tests/ is on sys.path (pytest rootdir conftest)

import bilevel.numpy as bnp

pytestmark = pytest.mark.cupy
MODES = ["fwd", "rev"]


def cp():
    import cupy

    return cupy


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_values_gradients_hvp_and_check_grads(name):
    cupy = cp()
    rng = np.random.default_rng(0)
    x_np, v_np = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    on_np = lambda a: FUNCTIONS[name](a, lambda v: v)  # noqa: E731
    on_gpu = lambda a: FUNCTIONS[name](a, cupy.asarray)  # noqa: E731
    x = cupy.asarray(x_np)
    np.testing.assert_allclose(cupy.asnumpy(on_gpu(x)), on_np(x_np), rtol=1e-12, atol=1e-12)
    g = grad(on_gpu)(x)
    assert isinstance(g, cupy.ndarray)
    np.testing.assert_allclose(cupy.asnumpy(g), grad(on_np)(x_np), rtol=1e-10, atol=1e-12)
    hvp = make_jvp(grad(on_gpu))(x)(cupy.asarray(v_np))[1]
    np.testing.assert_allclose(
        cupy.asnumpy(hvp), make_jvp(grad(on_np))(x_np)(v_np)[1], rtol=1e-9, atol=1e-10
    )
    check_grads(on_gpu, modes=MODES, order=2)(x)


def test_operators_both_orders_and_numpy_scalars():
    cupy = cp()
    c = cupy.arange(1.0, 7.0).reshape(2, 3)

    def f(a):
        return bnp.sum(
            c * a
            + a * c
            + (c - a) / (a + c)
            + c @ a.T
            + a.T.T @ c.T
            + np.float64(2.0) * a
            + a ** np.float32(2.0)
            + a[:, 1:].sum()
            + a.reshape(3, 2).mean()
            + a.max(axis=0)[0]
        )

    check_grads(f, modes=MODES, order=2)(c + 0.5)


def test_float32_stays_float32_on_gpu():
    cupy = cp()
    x = cupy.ones((2, 3), dtype=cupy.float32)
    assert (bnp.sigmoid(x) * np.float64(2.0)).dtype == cupy.float32
    assert bnp.multiply(x, np.float64(2.0)).dtype == cupy.float32
    assert grad(lambda a: bnp.sum(bnp.tanh(a) ** 2))(x).dtype == cupy.float32


def test_conv_task_axis_on_gpu():
    cupy = cp()
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((2, 3, 1, 6, 6)), rng.standard_normal((2, 4, 1, 3, 3))
    y = bnp.conv2d(cupy.asarray(x), cupy.asarray(w), padding=1, stride=2)
    np.testing.assert_allclose(cupy.asnumpy(y), bnp.conv2d(x, w, padding=1, stride=2), rtol=1e-12)
    gw = grad(lambda w: bnp.sum(bnp.max_pool2d(bnp.conv2d(cupy.asarray(x), w), 2) ** 2))
    ref = grad(lambda w: bnp.sum(bnp.max_pool2d(bnp.conv2d(x, w), 2) ** 2))(w)
    np.testing.assert_allclose(cupy.asnumpy(gw(cupy.asarray(w))), ref, rtol=1e-10)
    labels = cupy.asarray([0, 1, 1])
    logits = cupy.asarray(rng.standard_normal((3, 2)))
    g = grad(bnp.softmax_cross_entropy)(logits, labels)
    assert isinstance(g, cupy.ndarray)


def test_mixing_numpy_and_cupy_names_the_arguments():
    cupy = cp()
    with pytest.raises(TypeError, match="different backends"):
        bnp.add(cupy.ones(3), np.ones(3))
