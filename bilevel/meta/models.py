"""Models for meta-learning as pure functions of one flat parameter vector.

Every model evaluates a whole meta-batch in one vectorized call: inputs carry a leading
task axis ``x (T, N, ...)``, and parameters are either shared, ``theta (n,)``, or per
task, ``theta (T, n)`` (the adapted weights of each task); the output is ``(T, N, out)``.
The flat vector is the concatenation ``[backbone, head]``; ``model.split`` names the two
slices, so ``model.apply(theta, x) == model.head(theta[..., split["head"]],
model.features(theta[..., split["backbone"]], x))`` (used by ANIL-type methods).
Parameters are unpacked by slicing and reshaping (views, no copy). All arithmetic is
:mod:`bilevel.numpy`, so models run on NumPy and CuPy and differentiate to any order.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

import bilevel.numpy as bnp
from bilevel import backend as _backend

from .tasks.base import check_count, check_rng

__all__ = ["Model", "MLP", "Conv4", "ConvCoLearner", "QuadraticModel", "LOSSES"]

LOSSES = ("mse", "cross_entropy")
ACTIVATIONS = ("relu", "tanh")


def truncated_normal(rng: np.random.Generator, shape: tuple[int, ...], std: float) -> Any:
    """``N(0, std²)`` truncated to ``±2·std`` (redrawn outside), as TensorFlow's initializer."""
    out = rng.standard_normal(shape)
    bad = np.abs(out) > 2.0
    while bad.any():
        out[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(out) > 2.0
    return out * std


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(bnp._core.getval(x).shape)


class Model(ABC):
    """Common machinery: the parameter layout, unpacking, losses and accuracy.

    Subclasses fill ``self._layout = {"backbone": [(name, shape), ...], "head": [...]}``
    and define ``features``, ``head`` and ``_init_leaf``.
    """

    loss_name: str
    dtype: np.dtype
    _layout: dict[str, list[tuple[str, tuple[int, ...]]]]

    def _finish(self, loss: str, dtype: Any) -> None:
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        self.loss_name = loss
        self.dtype = np.dtype(dtype)
        if self.dtype.kind != "f":
            raise ValueError(f"dtype must be a floating dtype, got {dtype!r}")
        sizes = {g: sum(math.prod(s) for _, s in self._layout[g]) for g in ("backbone", "head")}
        nb = sizes["backbone"]
        self.split = {"backbone": slice(0, nb), "head": slice(nb, nb + sizes["head"])}
        self.n_params = nb + sizes["head"]

    def _unpack(self, theta: Any, group: str) -> dict[str, Any]:
        """Named views ``(..., *shape)`` of the ``group`` part ``theta (..., n_group)``."""
        shape = _shape(theta)
        size = self.split[group].stop - self.split[group].start
        if len(shape) not in (1, 2) or shape[-1] != size:
            raise ValueError(
                f"{type(self).__name__}: {group} parameters must have shape ({size},) or "
                f"(T, {size}), got {shape}"
            )
        lead, out, start = shape[:-1], {}, 0
        for name, s in self._layout[group]:
            k = math.prod(s)
            out[name] = bnp.reshape(
                bnp.getitem(theta, (Ellipsis, slice(start, start + k))), lead + s
            )
            start += k
        return out

    def _part(self, theta: Any, group: str) -> Any:
        shape = _shape(theta)
        if len(shape) not in (1, 2) or shape[-1] != self.n_params:
            raise ValueError(
                f"{type(self).__name__}: theta must have shape ({self.n_params},) or "
                f"(T, {self.n_params}), got {shape}"
            )
        return bnp.getitem(theta, (Ellipsis, self.split[group]))

    @staticmethod
    def _check_x(x: Any, theta: Any, ndim: int, what: str) -> None:
        sx, st = _shape(x), _shape(theta)
        if len(sx) != ndim:
            raise ValueError(f"x must have shape {what}, got {sx}")
        if len(st) == 2 and st[0] != sx[0]:
            raise ValueError(
                f"per-task parameters have {st[0]} tasks but x has {sx[0]} (shape {sx})"
            )

    def init(self, rng: np.random.Generator, backend: str | None = None, dtype: Any = None) -> Any:
        """Random initial parameters ``theta (n,)`` on ``backend`` (default: current).

        Weights are drawn from ``rng`` (see each model for the scheme), biases are 0, and
        normalization scales 1.
        """
        check_rng(rng)
        parts = [
            np.asarray(self._init_leaf(name, shape, rng), dtype=np.float64).reshape(-1)
            for g in ("backbone", "head")
            for name, shape in self._layout[g]
        ]
        flat = np.concatenate(parts) if parts else np.zeros(0)
        return _backend.asarray(flat, backend=backend, dtype=np.dtype(dtype or self.dtype))

    @abstractmethod
    def _init_leaf(self, name: str, shape: tuple[int, ...], rng: np.random.Generator) -> Any:
        """Initial value of the parameter array ``name`` of ``shape``."""

    @abstractmethod
    def features(self, theta_backbone: Any, x: Any) -> Any:
        """Backbone output ``(T, N, n_features)`` for inputs ``x (T, N, ...)``."""

    @abstractmethod
    def head(self, theta_head: Any, feats: Any) -> Any:
        """Predictions ``(T, N, out)`` from features ``(T, N, n_features)``."""

    def apply(self, theta: Any, x: Any) -> Any:
        """Predictions ``(T, N, out)`` for inputs ``x (T, N, ...)``.

        ``theta`` is ``(n,)`` (shared by all tasks) or ``(T, n)`` (one vector per task).
        """
        feats = self.features(self._part(theta, "backbone"), x)
        return self.head(self._part(theta, "head"), feats)

    def loss(self, pred: Any, y: Any) -> Any:
        """Per-task mean loss ``(T,)``.

        ``"mse"``: ``(1/(N·d)) Σ_{n,j} (pred − y)²`` with ``y (T, N, d)``;
        ``"cross_entropy"``: ``(1/N) Σ_n −log softmax(pred_n)[y_n]`` with int ``y (T, N)``.
        """
        sp, sy = _shape(pred), tuple(getattr(bnp._core.getval(y), "shape", ()))
        if self.loss_name == "mse":
            if sp != sy:
                raise ValueError(f"mse loss needs y with the shape of pred {sp}, got {sy}")
            return bnp.mean(bnp.square(bnp.subtract(pred, y)), axis=(1, 2))
        if sy != sp[:-1]:
            raise ValueError(
                f"cross_entropy needs int labels y of shape {sp[:-1]} (pred {sp}), got {sy}"
            )
        return bnp.mean(bnp.softmax_cross_entropy(pred, y, reduction="none"), axis=1)

    def accuracy(self, pred: Any, y: Any) -> Any:
        """Per-task fraction of correct argmax predictions ``(T,)`` (not differentiable)."""
        p, labels = bnp._core.getval(pred), bnp._core.getval(y)
        if tuple(labels.shape) != tuple(p.shape[:-1]):
            raise ValueError(
                f"accuracy needs int labels of shape {tuple(p.shape[:-1])}, got {labels.shape}"
            )
        xp = _backend.module(_backend.name_of(p, labels))
        return xp.mean((xp.argmax(p, axis=-1) == labels).astype(p.dtype), axis=1)

    def _linear(self, w: Any, b: Any, h: Any) -> Any:
        """``h W + b``: ``h (T, N, i)``, ``W (i, o)`` or ``(T, i, o)``, ``b (o,)`` or ``(T, o)``."""
        sb = _shape(b)
        bias = bnp.reshape(b, sb[:-1] + (1, sb[-1])) if len(sb) == 2 else b
        return bnp.add(bnp.matmul(h, w), bias)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_params={self.n_params}, loss={self.loss_name!r})"


class MLP(Model):
    """Fully connected network ``sizes[0] → … → sizes[-1]`` (MAML sinusoid: 1-40-40-1).

    ``h_{l+1} = act(h_l W_l + b_l)`` for the hidden layers (the backbone), then the linear
    head ``h_L W_L + b_L``. Weights ``N(0, gain/fan_in)`` with gain 2 for ReLU (He) and 1
    for tanh. Cost ``O(T·N·Σ sizes[l]·sizes[l+1])`` per call.

    Parameters
    ----------
    sizes
        Layer widths, input first (at least two entries).
    activation
        ``"relu"`` or ``"tanh"``.
    loss
        ``"mse"`` (regression) or ``"cross_entropy"`` (classification).
    dtype
        Default dtype of :meth:`init`.
    init_std
        ``None`` (default): the fan-in scaling above. A number: every weight from a normal
        of that standard deviation truncated at two deviations, as MAML's reference code
        (``0.01`` for the sinusoid network). With ReLU and MAML's protocol (inner step
        0.01, 10 shots, meta-batch 25, Adam 1e-3) the held-out MSE after 750
        meta-iterations was 6.76 with He initialization and 3.28 with 0.01, 1.23 after
        3000 (tanh with the fan-in scaling: 1.21 and 0.57; seed 0, 600 tasks).
    """

    def __init__(
        self,
        sizes: tuple[int, ...] = (1, 40, 40, 1),
        activation: str = "relu",
        loss: str = "mse",
        dtype: Any = "float64",
        init_std: float | None = None,
    ):
        sizes = tuple(sizes)
        if init_std is not None and not (isinstance(init_std, (int, float)) and init_std > 0):
            raise ValueError(f"init_std must be None or a positive number, got {init_std!r}")
        self.init_std = None if init_std is None else float(init_std)
        if len(sizes) < 2:
            raise ValueError(f"sizes must list at least input and output widths, got {sizes}")
        self.sizes = tuple(check_count(f"sizes[{i}]", s) for i, s in enumerate(sizes))
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.activation = activation
        hidden = list(zip(self.sizes[:-2], self.sizes[1:-1], strict=True))
        self._layout = {
            "backbone": [
                item
                for li, (i, o) in enumerate(hidden)
                for item in ((f"w{li}", (i, o)), (f"b{li}", (o,)))
            ],
            "head": [("w_head", self.sizes[-2:]), ("b_head", (self.sizes[-1],))],
        }
        self._finish(loss, dtype)

    def _init_leaf(self, name: str, shape: tuple[int, ...], rng: np.random.Generator) -> Any:
        if name.startswith("b"):
            return np.zeros(shape)
        if self.init_std is not None:
            return truncated_normal(rng, shape, self.init_std)
        gain = 2.0 if self.activation == "relu" else 1.0
        return rng.standard_normal(shape) * math.sqrt(gain / shape[0])

    def _act(self, h: Any) -> Any:
        if self.activation == "relu":
            return bnp.maximum(h, 0.0)
        return bnp.tanh(h)

    def features(self, theta_backbone: Any, x: Any) -> Any:
        """Last hidden layer ``(T, N, sizes[-2])`` for ``x (T, N, sizes[0])``."""
        self._check_x(x, theta_backbone, 3, f"(T, N, {self.sizes[0]})")
        p = self._unpack(theta_backbone, "backbone")
        h = x
        for li in range(len(self.sizes) - 2):
            h = self._act(self._linear(p[f"w{li}"], p[f"b{li}"], h))
        return h

    def head(self, theta_head: Any, feats: Any) -> Any:
        """Linear read-out ``feats W + b`` → ``(T, N, sizes[-1])``."""
        self._check_x(feats, theta_head, 3, f"(T, N, {self.sizes[-2]})")
        p = self._unpack(theta_head, "head")
        return self._linear(p["w_head"], p["b_head"], feats)


class Conv4(Model):
    """The four-block convolutional network of MAML / Vinyals et al. (2016).

    Each block: 3×3 convolution (padding 1, ``hidden`` channels) → normalization with the
    batch statistics of each task (mean and variance over that task's images and pixels,
    no running statistics; learned scale ``γ`` and shift ``β``) → ReLU → 2×2 max-pool.
    The pool is applied while the feature map is at least 2×2, so images smaller than 16
    pixels still work (8×8 → 4, 2, 1, 1). The flattened features feed the linear head
    with ``ways`` outputs. Convolutions have no bias when normalized (the mean subtraction
    would cancel it). Init: He normal for convolutions, ``N(0, 1/fan_in)`` for the head.

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
            h = bnp.maximum(h, 0.0)
            if self.pools[blk] and blk < 3:
                h = bnp.max_pool2d(h, 2)
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
    mu = bnp.mean(h, axis=(1, 3, 4), keepdims=True)
    var = bnp.var(h, axis=(1, 3, 4), keepdims=True)
    h = bnp.divide(bnp.subtract(h, mu), bnp.sqrt(bnp.add(var, eps)))
    return bnp.add(bnp.multiply(h, gamma), beta)


class QuadraticModel(Model):
    """Identity model of :class:`bilevel.meta.tasks.QuadraticTasks`.

    The parameters are the task solution ``φ ∈ R^dim`` itself (all in the head; the
    backbone is empty and ``features`` is the identity). With the episode's
    ``x = R`` ``(T, dim, dim)`` and ``y = R a`` ``(T, dim, 1)``, ``apply(φ, x) = R φ`` and
    :meth:`loss` ``= ½ Σ (Rφ − Ra)² = ½(φ − a)ᵀP(φ − a)`` exactly (``P = RᵀR``), so
    support and query losses are ``L̂_i`` and ``L_i``. ``init`` draws ``N(0, 1)``.
    Cost ``O(T·dim²)`` per call.
    """

    def __init__(self, dim: int = 5, dtype: Any = "float64"):
        self.dim = check_count("dim", dim)
        self._layout = {"backbone": [], "head": [("phi", (self.dim,))]}
        self._finish("mse", dtype)

    def _init_leaf(self, name: str, shape: tuple[int, ...], rng: np.random.Generator) -> Any:
        return rng.standard_normal(shape)

    def features(self, theta_backbone: Any, x: Any) -> Any:
        """The inputs ``x (T, S, dim)`` unchanged (the backbone has no parameters)."""
        self._check_x(x, theta_backbone, 3, f"(T, S, {self.dim})")
        return x

    def head(self, theta_head: Any, feats: Any) -> Any:
        """``R φ`` as ``(T, S, 1)`` for ``R (T, S, dim)`` and ``φ (dim,)`` or ``(T, dim)``."""
        self._check_x(feats, theta_head, 3, f"(T, S, {self.dim})")
        phi = self._unpack(theta_head, "head")["phi"]
        return bnp.matmul(feats, bnp.expand_dims(phi, -1))

    def loss(self, pred: Any, y: Any) -> Any:
        """``½ Σ_{s} (pred − y)²`` per task ``(T,)``: the task quadratic at ``φ``."""
        sp, sy = _shape(pred), tuple(getattr(bnp._core.getval(y), "shape", ()))
        if sp != sy:
            raise ValueError(f"quadratic loss needs y with the shape of pred {sp}, got {sy}")
        return bnp.multiply(0.5, bnp.sum(bnp.square(bnp.subtract(pred, y)), axis=(1, 2)))
