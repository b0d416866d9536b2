"""Conv4's lean forward (fused normalization, max-pool before ReLU) equals the textbook
order conv → batch statistics → ReLU → max-pool, written in plain NumPy."""

import numpy as np

from bilevel.meta.models import Conv4


def _conv(x, w):
    n, c, h, wd = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    cols = np.stack([xp[:, :, i:i + h, j:j + wd] for i in range(3) for j in range(3)], axis=2)
    return np.einsum("ock,nckhw->nohw", w.reshape(w.shape[0], c, 9), cols)


def _pool(h):
    n, c, s, _ = h.shape
    s2 = s // 2
    return h[:, :, :2 * s2, :2 * s2].reshape(n, c, s2, 2, s2, 2).max(axis=(3, 5))


def reference_features(model, theta, x):
    p = model._unpack(theta, "backbone")
    out = []
    for xt in x:
        h = xt
        for blk in range(4):
            h = _conv(h, p[f"conv{blk}"])
            mu, var = h.mean(axis=(0, 2, 3), keepdims=True), h.var(axis=(0, 2, 3), keepdims=True)
            h = (h - mu) / np.sqrt(var + model.eps)
            h = h * p[f"gamma{blk}"][:, None, None] + p[f"beta{blk}"][:, None, None]
            h = _pool(np.maximum(h, 0.0)) if model.pools[blk] else np.maximum(h, 0.0)
        out.append(h.reshape(len(xt), -1))
    return np.stack(out)


def test_conv4_features_equal_the_textbook_order():
    model = Conv4(in_channels=2, hidden=5, ways=3, image_size=12, dtype="float64")
    rng = np.random.default_rng(0)
    theta = model.init(rng)
    theta = theta + 0.1 * rng.standard_normal(theta.shape)  # scales and shifts away from 1, 0
    x = rng.standard_normal((3, 4, 2, 12, 12))
    backbone = theta[model.split["backbone"]]
    np.testing.assert_allclose(model.features(backbone, x),
                               reference_features(model, backbone, x), rtol=1e-10, atol=1e-12)
