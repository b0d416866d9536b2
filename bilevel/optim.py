"""Outer optimizers as pure ``(init, update)`` pairs (the optax shape).

An optimizer holds only its hyperparameters. ``state = opt.init(params)`` builds the state
and ``updates, state = opt.update(grads, state, params)`` returns the additive update
(``params + updates`` is the next iterate) and the new state. States are dicts of arrays
and integers so that :mod:`bilevel.meta.train` can write them to a checkpoint and restore
them exactly.

>>> import numpy as np
>>> opt = Adam(lr=0.1)
>>> theta = np.ones(3)
>>> state = opt.init(theta)
>>> updates, state = opt.update(2 * theta, state, theta)
>>> np.allclose(theta + updates, 0.9)
True
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

from .backend import namespace
from .registry import lookup, names, register
from .validation import Validated, number, option, positive

__all__ = ["SGD", "Adam", "Optimizer", "get_optimizer", "optimizer_names"]


def _check_grads(grads: Any, params: Any) -> None:
    if tuple(grads.shape) != tuple(params.shape):
        raise ValueError(
            f"grads must have the shape of params {tuple(params.shape)}, got {tuple(grads.shape)}"
        )


class Optimizer(abc.ABC):
    """Base class: an outer optimizer as a pure ``(init, update)`` pair."""

    @abc.abstractmethod
    def init(self, params: Any) -> dict[str, Any]:
        """Initial optimizer state for ``params``."""

    @abc.abstractmethod
    def update(self, grads: Any, state: dict[str, Any], params: Any) -> tuple[Any, dict]:
        """``(updates, new_state)``; the next parameters are ``params + updates``."""


_decay = number(0.0, maximum=1.0, below=True)  # a rate in [0, 1)


@register("optimizer")
@dataclass(frozen=True)
class SGD(Validated, Optimizer):
    """Stochastic gradient descent with optional heavy-ball momentum.

    ``v ← μ v + g``,  ``Δθ = −η v`` (``μ = 0``: ``Δθ = −η g``). With the Reptile
    "gradient" ``θ − mean φ_i`` and ``μ = 0`` this is Reptile's ``θ ← θ + ε(mean φ_i − θ)``.

    Parameters
    ----------
    lr : float
        Step size η > 0.
    momentum : float
        μ in [0, 1).

    Notes
    -----
    Memory: one vector of the size of ``params`` when ``momentum > 0``, none otherwise.
    """

    name = "sgd"
    lr: float = option(1e-2, check=positive)
    momentum: float = option(0.0, check=_decay)

    def init(self, params: Any) -> dict[str, Any]:
        return {"count": 0, "velocity": 0 * params}

    def update(self, grads: Any, state: dict[str, Any], params: Any) -> tuple[Any, dict]:
        _check_grads(grads, params)
        v = self.momentum * state["velocity"] + grads if self.momentum else grads
        new = {"count": int(state["count"]) + 1, "velocity": v if self.momentum else 0 * grads}
        return -self.lr * v, new


@register("optimizer")
@dataclass(frozen=True)
class Adam(Validated, Optimizer):
    """Adam (Kingma & Ba, 2015) with bias correction.

    ``m ← β₁m + (1−β₁)g``, ``v ← β₂v + (1−β₂)g²``, ``t ← t + 1``,
    ``Δθ = −η · m̂ / (√v̂ + ε)`` with ``m̂ = m/(1−β₁ᵗ)``, ``v̂ = v/(1−β₂ᵗ)``.

    Parameters
    ----------
    lr : float
        Step size η (the MAML papers use 1e-3).
    b1, b2 : float
        Moment decay rates in [0, 1).
    eps : float
        ε > 0 (iMAML's released code uses 1e-3).

    Notes
    -----
    Memory: two vectors of the size of ``params``.
    """

    name = "adam"
    lr: float = option(1e-3, check=positive)
    b1: float = option(0.9, check=_decay)
    b2: float = option(0.999, check=_decay)
    eps: float = option(1e-8, check=positive)

    def init(self, params: Any) -> dict[str, Any]:
        return {"count": 0, "mu": 0 * params, "nu": 0 * params}

    def update(self, grads: Any, state: dict[str, Any], params: Any) -> tuple[Any, dict]:
        _check_grads(grads, params)
        xp = namespace(grads, params)
        t = int(state["count"]) + 1
        mu = self.b1 * state["mu"] + (1.0 - self.b1) * grads
        nu = self.b2 * state["nu"] + (1.0 - self.b2) * grads * grads
        mhat = mu / (1.0 - self.b1**t)
        vhat = nu / (1.0 - self.b2**t)
        updates = -self.lr * mhat / (xp.sqrt(vhat) + self.eps)
        return updates, {"count": t, "mu": mu, "nu": nu}


def get_optimizer(name: str, lr: float, **kwargs: Any) -> Optimizer:
    """Optimizer by its registered name (``"adam"``, ``"sgd"``: :func:`optimizer_names`)."""
    return lookup("optimizer", name)(lr=lr, **kwargs)


def optimizer_names() -> list[str]:
    """The registered optimizer names."""
    return names("optimizer")
