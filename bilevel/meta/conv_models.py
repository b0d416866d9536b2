"""Convolutional models for few-shot image classification (Conv4 and CML's co-learner).

Same conventions as :mod:`bilevel.meta.models`: pure functions of one flat parameter vector,
a leading task axis on inputs, :mod:`bilevel.numpy` arithmetic (NumPy and CuPy, any order).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

import bilevel.numpy as bnp
from bilevel.numpy.nn import standardize

from .model_base import Model, _shape
from .tasks.base import check_count

__all__ = ["Conv4", "ConvCoLearner"]


class Conv4(Model):
    """The four-block convolutional network of MAML / Vinyals et al. (2016).

    Each block: 3×3 convolution (padding 1, ``hidden`` channels) → normalization with the
    batch statistics of each task (mean and variance over that task's images and pixels,
    no running statistics; learned scale ``γ`` and shift ``β``) → ReLU → 2×2 max-pool.
    The pool is applied while the feature map is at least 2×2, so images smaller than 16
    pixels still work (8×8 → 4, 2, 1, 1). The flattened features feed the linear head
    with ``ways`` outputs. The pool is computed before the ReLU (the two commute: the same
    values, and the same derivatives away from exact zeros), and the normalization is the
    fused :func:`bilevel.numpy.nn.standardize`. Convolutions have no bias when normalized
    (the mean subtraction would cancel it). Init: He normal for convolutions,
    ``N(0, 1/fan_in)`` for the head.

    Cost per call: ``O(T·N·Σ_l hidden·C_l·9·H_l·W_l)`` time; the im2col columns take
    ``T·N·C_l·9·H_l·W_l`` floats per layer.

    Parameters
    ----------
    in_channels, hidden, ways, image_size
        Input channels, channels per block, classes, input side.
    norm
        Use the per-task batch normalization (else a conv bias instead).
    eps
        Variance offset of the normalization.
    loss, dtype
        As for :class:`MLP` (defaults ``"cross_entropy"``, float32).
    """

    activation = "relu"

    def __init__(
        self,
        in_channels: int = 1,
        hidden: int = 64,
        ways: int = 5,
        image_size: int = 28,
        norm: bool = True,
        eps: float = 1e-5,
        loss: str = "cross_entropy",
        dtype: Any = "float32",
    ):
        self.in_channels = check_count("in_channels", in_channels)
        self.hidden = check_count("hidden", hidden)
        self.ways = check_count("ways", ways)
        self.image_size = check_count("image_size", image_size)
        self.norm, self.eps = bool(norm), float(eps)
        self.pools, side, backbone = [], self.image_size, []
        for blk in range(4):
            c = self.in_channels if blk == 0 else self.hidden
            backbone.append((f"conv{blk}", (self.hidden, c, 3, 3)))
            if self.norm:
                backbone += [(f"gamma{blk}", (self.hidden,)), (f"beta{blk}", (self.hidden,))]
            else:
                backbone.append((f"bias{blk}", (self.hidden,)))
            self.pools.append(side >= 2)
            side = side // 2 if side >= 2 else side
        self.n_features = self.hidden * side * side
        self._layout = {
            "backbone": backbone,
            "head": [("w_head", (self.n_features, self.ways)), ("b_head", (self.ways,))],
        }
        self._finish(loss, dtype)

    def _init_leaf(self, name: str, shape: tuple[int, ...], rng: np.random.Generator) -> Any:
        if name.startswith(("b", "beta")):
            return np.zeros(shape)
        if name.startswith("gamma"):
            return np.ones(shape)
        if name.startswith("conv"):
            return rng.standard_normal(shape) * math.sqrt(2.0 / math.prod(shape[1:]))
        return rng.standard_normal(shape) * math.sqrt(1.0 / shape[0])

    @staticmethod
    def _channel(v: Any) -> Any:
        """``(C,)`` → ``(C, 1, 1)``; ``(T, C)`` → ``(T, 1, C, 1, 1)`` (broadcast over N, H, W)."""
        s = _shape(v)
        return bnp.reshape(v, s[:-1] + ((1,) if len(s) == 2 else ()) + (s[-1], 1, 1))

    def feature_map(self, theta_backbone: Any, x: Any) -> Any:
        """Block-4 feature map before its pooling, ``(T, N, hidden, h, w)``.

        The input of the convolutional co-learner of CML (:class:`ConvCoLearner`).
        """
        s = self.image_size
        self._check_x(x, theta_backbone, 5, f"(T, N, {self.in_channels}, {s}, {s})")
        sx = _shape(x)
        if sx[2:] != (self.in_channels, s, s):
            raise ValueError(f"x must have shape (T, N, {self.in_channels}, {s}, {s}), got {sx}")
        p = self._unpack(theta_backbone, "backbone")
        h = x
        for blk in range(4):
            h = bnp.conv2d(h, p[f"conv{blk}"], padding=1)
            if self.norm:
                h = _task_norm(h, self._channel(p[f"gamma{blk}"]),
                               self._channel(p[f"beta{blk}"]), self.eps)
            else:
                h = bnp.add(h, self._channel(p[f"bias{blk}"]))
            if self.pools[blk] and blk < 3:  # max-pool then ReLU: max(·, 0) commutes with
                h = bnp.max_pool2d(h, 2)  # the block max, on a quarter of the pixels
            h = bnp.maximum(h, 0.0)
        return h

    def features(self, theta_backbone: Any, x: Any) -> Any:
        """Flattened block-4 features ``(T, N, n_features)`` for ``x (T, N, C, H, W)``."""
        h = self.feature_map(theta_backbone, x)
        if self.pools[3]:
            h = bnp.max_pool2d(h, 2)
        return bnp.reshape(h, _shape(x)[:2] + (self.n_features,))

    def head(self, theta_head: Any, feats: Any) -> Any:
        """Logits ``feats W + b`` → ``(T, N, ways)``."""
        self._check_x(feats, theta_head, 3, f"(T, N, {self.n_features})")
        p = self._unpack(theta_head, "head")
        return self._linear(p["w_head"], p["b_head"], feats)


class ConvCoLearner(Model):
    """The co-learner of cooperative meta-learning (Shin, Han & Kim, 2024) for conv models.

    On the block-4 feature map of :class:`Conv4` before pooling, ``(T, N, C, h, w)``:
    3×3 convolution → per-task normalization → ReLU, 3×3 convolution → normalization →
    ReLU → 2×2 max-pool (while the map is at least 2×2), then a linear layer to ``ways``
    logits. Use it as ``CML(base, ConvCoLearner.for_model(conv4))``; CML feeds it
    :meth:`Conv4.feature_map` (``input = "feature_map"``).

    Parameters
    ----------
    channels, side
        Channels and side of the feature map it reads.
    hidden, ways
        Channels of its convolutions and number of classes.
    eps, loss, dtype
        As for :class:`Conv4`.
    """

    activation = "relu"
    input = "feature_map"

    def __init__(self, channels: int, side: int, hidden: int = 64, ways: int = 5,
                 eps: float = 1e-5, loss: str = "cross_entropy", dtype: Any = "float32"):
        self.channels, self.side = check_count("channels", channels), check_count("side", side)
        self.hidden, self.ways = check_count("hidden", hidden), check_count("ways", ways)
        self.eps, self.pool = float(eps), self.side >= 2
        out_side = self.side // 2 if self.pool else self.side
        self.n_features = self.hidden * out_side * out_side
        self._layout = {
            "backbone": [("conv_a", (self.hidden, self.channels, 3, 3)),
                         ("gamma_a", (self.hidden,)), ("beta_a", (self.hidden,)),
                         ("conv_b", (self.hidden, self.hidden, 3, 3)),
                         ("gamma_b", (self.hidden,)), ("beta_b", (self.hidden,))],
            "head": [("w_head", (self.n_features, self.ways)), ("b_head", (self.ways,))],
        }
        self._finish(loss, dtype)

    @classmethod
    def for_model(cls, model: Conv4, hidden: int | None = None) -> ConvCoLearner:
        """The co-learner that reads ``model``'s block-4 feature map."""
        side = model.image_size
        for pool in model.pools[:3]:
            side = side // 2 if pool else side
        return cls(model.hidden, side, hidden or model.hidden, model.ways, model.eps,
                   model.loss_name, model.dtype)

    _init_leaf = Conv4._init_leaf
    _channel = staticmethod(Conv4._channel)

    def features(self, theta_backbone: Any, x: Any) -> Any:
        """The two conv blocks on a feature map ``x (T, N, channels, side, side)``."""
        self._check_x(x, theta_backbone, 5, f"(T, N, {self.channels}, {self.side}, "
                                            f"{self.side})")
        p = self._unpack(theta_backbone, "backbone")
        h = x
        for blk in ("a", "b"):
            h = bnp.conv2d(h, p[f"conv_{blk}"], padding=1)
            h = _task_norm(h, self._channel(p[f"gamma_{blk}"]),
                           self._channel(p[f"beta_{blk}"]), self.eps)
            h = bnp.maximum(h, 0.0)
        if self.pool:
            h = bnp.max_pool2d(h, 2)
        return bnp.reshape(h, _shape(x)[:2] + (self.n_features,))

    def head(self, theta_head: Any, feats: Any) -> Any:
        """Logits ``feats W + b`` → ``(T, N, ways)``."""
        p = self._unpack(theta_head, "head")
        return self._linear(p["w_head"], p["b_head"], feats)


def _task_norm(h: Any, gamma: Any, beta: Any, eps: float) -> Any:
    """Normalization with each task's statistics (over images and pixels), scale and shift."""
    return bnp.add(standardize(h, (1, 3, 4), eps, gamma), beta)
