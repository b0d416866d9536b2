"""The base class of the meta-learning models: one flat parameter vector, a task axis.

See :mod:`bilevel.meta.models` for the conventions; the concrete models are
:class:`~bilevel.meta.models.MLP`, :class:`~bilevel.meta.models.QuadraticModel` and the
convolutional ones of :mod:`bilevel.meta.conv_models`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

import bilevel.numpy as bnp
from bilevel import backend as _backend

from .tasks.base import check_rng

__all__ = ["ACTIVATIONS", "LOSSES", "Model", "truncated_normal"]

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
