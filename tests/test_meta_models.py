"""Meta-learning models: one vectorized meta-batch call equals the per-task loop; forward
passes against NumPy; gradients against finite differences (float64)."""

import autograd
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bilevel import backend
from bilevel.meta.models import MLP, Conv4, ConvCoLearner, QuadraticModel


def rng(seed=0):
    return np.random.default_rng(seed)


def tiny_conv(**kw):
    return Conv4(in_channels=1, hidden=4, ways=3, image_size=8, dtype="float64", **kw)


def per_task_params(model, n_tasks, seed):
    return np.stack([model.init(rng(seed + t)) for t in range(n_tasks)])


CASES = {
    "mlp-relu": (lambda: MLP((2, 7, 5, 3), "relu"), (4, 6, 2)),
    "mlp-tanh": (lambda: MLP((1, 8, 1), "tanh"), (3, 5, 1)),
    "conv4": (tiny_conv, (3, 4, 1, 8, 8)),
    "conv4-no-norm": (lambda: tiny_conv(norm=False), (2, 3, 1, 8, 8)),
    "quadratic": (lambda: QuadraticModel(4), (3, 4, 4)),
    "conv-colearner": (lambda: ConvCoLearner(3, 4, hidden=2, ways=3, dtype="float64"),
                       (3, 4, 3, 4, 4)),
}


@pytest.mark.parametrize("name", list(CASES))
@given(seed=st.integers(0, 2**20))
def test_meta_batch_equals_per_task_loop(name, seed):
    make, xshape = CASES[name]
    model = make()
    x = rng(seed).standard_normal(xshape)
    n_tasks = xshape[0]
    thetas = per_task_params(model, n_tasks, seed)
    batched = model.apply(thetas, x)
    shared = model.apply(thetas[0], x)
    for t in range(n_tasks):
        alone = model.apply(thetas[t], x[t : t + 1])
        np.testing.assert_allclose(batched[t : t + 1], alone, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(
            shared[t : t + 1], model.apply(thetas[0], x[t : t + 1]), rtol=1e-12, atol=1e-13
        )
    split = model.split
    via_parts = model.head(
        thetas[..., split["head"]], model.features(thetas[..., split["backbone"]], x)
    )
    np.testing.assert_array_equal(via_parts, batched)
    assert split["head"].stop == model.n_params == thetas.shape[1]


def test_mlp_forward_matches_numpy():
    model = MLP((3, 5, 2), "tanh")
    theta = model.init(rng(1))
    assert model.n_params == 3 * 5 + 5 + 5 * 2 + 2
    w0 = theta[:15].reshape(3, 5)
    b0 = theta[15:20]
    w1 = theta[20:30].reshape(5, 2)
    b1 = theta[30:]
    x = rng(2).standard_normal((2, 4, 3))
    np.testing.assert_allclose(model.apply(theta, x), np.tanh(x @ w0 + b0) @ w1 + b1, rtol=1e-13)
    assert model.split == {"backbone": slice(0, 20), "head": slice(20, 32)}


def test_conv4_layout_and_normalization():
    model = Conv4()
    assert model.n_params == 112005 and model.n_features == 64  # MAML Omniglot network
    assert model.split["head"] == slice(111680, 112005)
    theta = model.init(rng(0))
    assert theta.dtype == np.float32
    assert Conv4(image_size=84, in_channels=3).n_features == 64 * 5 * 5
    small = tiny_conv()
    th = small.init(rng(1))
    x = rng(2).standard_normal((2, 5, 1, 8, 8))
    # per-task batch statistics: scaling one task's images (the convolutions are linear)
    # leaves its outputs unchanged up to eps and leaves the other task untouched
    x2 = x.copy()
    x2[1] = 3.0 * x2[1]
    np.testing.assert_allclose(small.apply(th, x2), small.apply(th, x), rtol=1e-4, atol=1e-5)


def test_losses_and_accuracy():
    model = MLP((2, 4, 3), loss="cross_entropy")
    pred = rng(0).standard_normal((2, 5, 3))
    y = rng(1).integers(0, 3, size=(2, 5))
    logp = pred - np.log(np.exp(pred).sum(-1, keepdims=True))
    expected = -np.take_along_axis(logp, y[..., None], -1)[..., 0].mean(1)
    np.testing.assert_allclose(model.loss(pred, y), expected, rtol=1e-13)
    np.testing.assert_allclose(model.accuracy(pred, y), (pred.argmax(-1) == y).mean(1))
    reg = MLP((1, 4, 2))
    target = rng(2).standard_normal((2, 5, 2))
    np.testing.assert_allclose(
        reg.loss(pred[..., :2], target), ((pred[..., :2] - target) ** 2).mean((1, 2))
    )
    with pytest.raises(ValueError, match="labels"):
        model.loss(pred, y[:, :3])
    with pytest.raises(ValueError, match="shape of pred"):
        reg.loss(pred, target)


def _fd_check(fun, theta, seed, eps=1e-6, n_dirs=3):
    grad = autograd.grad(fun)(theta)
    for k in range(n_dirs):
        v = rng(seed + k).standard_normal(theta.shape)
        fd = (fun(theta + eps * v) - fun(theta - eps * v)) / (2 * eps)
        np.testing.assert_allclose(np.sum(grad * v), fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("per_task", [False, True])
def test_conv4_gradient_matches_finite_differences(per_task):
    model = tiny_conv()
    x = rng(3).standard_normal((2, 6, 1, 8, 8))
    y = rng(4).integers(0, 3, size=(2, 6))
    theta = per_task_params(model, 2, 5) if per_task else model.init(rng(5))

    def loss(th):
        return np.sum(model.loss(model.apply(th, x), y))

    _fd_check(loss, theta, seed=10)


def test_mlp_hessian_vector_product_matches_finite_differences():
    model = MLP((1, 6, 6, 1), "tanh")
    x = rng(0).uniform(-5, 5, size=(3, 5, 1))
    y = np.sin(x)
    theta = per_task_params(model, 3, 1)

    def loss(th):
        return np.sum(model.loss(model.apply(th, x), y))

    v = rng(2).standard_normal(theta.shape)
    hvp = autograd.grad(lambda th: np.sum(autograd.grad(loss)(th) * v))(theta)
    eps = 1e-5
    g = autograd.grad(loss)
    fd = (g(theta + eps * v) - g(theta - eps * v)) / (2 * eps)
    np.testing.assert_allclose(hvp, fd, rtol=1e-5, atol=1e-7)


def test_quadratic_model_gradient_is_p_times_residual():
    from bilevel.meta.tasks import QuadraticTasks

    e = QuadraticTasks(4, query_shift=0.3).sample(3, rng(0))
    model = QuadraticModel(4)
    phi = per_task_params(model, 3, 1)
    grad = autograd.grad(lambda p: np.sum(model.loss(model.apply(p, e.x_support), e.y_support)))(
        phi
    )
    np.testing.assert_allclose(grad, np.einsum("tij,tj->ti", e.info["P"], phi - e.info["a"]))
    assert model.split["backbone"] == slice(0, 0)


def test_model_argument_errors():
    model = MLP((2, 3, 1))
    x = np.zeros((2, 4, 2))
    with pytest.raises(ValueError, match="theta must have shape"):
        model.apply(np.zeros(5), x)
    with pytest.raises(ValueError, match="per-task parameters have 3 tasks"):
        model.apply(np.zeros((3, model.n_params)), x)
    with pytest.raises(ValueError, match="x must have shape"):
        model.apply(np.zeros(model.n_params), x[0])
    with pytest.raises(ValueError, match="activation"):
        MLP((1, 2), activation="gelu")
    with pytest.raises(ValueError, match="loss"):
        MLP((1, 2), loss="hinge")
    with pytest.raises(TypeError, match="rng"):
        model.init(0)
    with pytest.raises(ValueError, match="x must have shape"):
        tiny_conv().apply(tiny_conv().init(rng()), np.zeros((1, 2, 1, 9, 9)))


@pytest.mark.cupy
@pytest.mark.parametrize("name", ["mlp-tanh", "conv4"])
def test_models_on_cupy_match_numpy(name):
    make, xshape = CASES[name]
    model = make()
    x = rng(0).standard_normal(xshape)
    thetas = per_task_params(model, xshape[0], 1)
    ref = model.apply(thetas, x)
    out = model.apply(backend.to_backend(thetas, "cupy"), backend.to_backend(x, "cupy"))
    assert backend.name_of(out) == "cupy"
    np.testing.assert_allclose(backend.to_numpy(out), ref, rtol=1e-10, atol=1e-12)
    assert backend.name_of(model.init(rng(0), backend="cupy")) == "cupy"


def test_mlp_truncated_normal_init_as_maml_reference_code():
    model = MLP((1, 40, 40, 1), init_std=0.01)
    theta = model.init(np.random.default_rng(0))
    w = theta[model.split["backbone"]][:40]  # first-layer weights
    assert np.all(np.abs(w) <= 0.02) and 0.005 < np.std(w) < 0.015
    assert np.all(theta[40:80] == 0.0)  # first-layer biases
    with pytest.raises(ValueError, match="init_std"):
        MLP(init_std=0)


def test_conv4_feature_map_is_the_block4_map_before_pooling():
    model = Conv4(in_channels=1, hidden=4, ways=3, image_size=28, dtype="float64")
    theta = model.init(rng(0))
    x = rng(1).standard_normal((2, 3, 1, 28, 28))
    fmap = model.feature_map(theta[model.split["backbone"]], x)
    assert fmap.shape == (2, 3, 4, 3, 3)  # 28 -> 14 -> 7 -> 3, block 4 unpooled
    pooled = fmap[..., :2, :2].max(axis=(-2, -1)).reshape(2, 3, -1)
    np.testing.assert_allclose(model.features(theta[model.split["backbone"]], x), pooled)
    co = ConvCoLearner.for_model(model)
    assert (co.channels, co.side, co.ways, co.n_features) == (4, 3, 3, 4)
    assert co.apply(co.init(rng(2)), fmap).shape == (2, 3, 3)
