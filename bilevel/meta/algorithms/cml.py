"""Cooperative meta-learning (Shin, Han & Kim, UAI 2024) as a transformation of a spec.

:func:`cooperative` takes any specification and adds a co-learner ``c_ψ`` on the adapted
query features to its outer objective::

    f_i = base f_i + γ · L_i(c_ψ(features(φ_i; x_query)))

with ``ψ`` appended to the meta-parameters and to λ but absent from the inner problem
(:func:`~bilevel.meta.algorithms.specification.append_parameters`: the inner loop never
changes it). ``γ = 0`` reduces exactly to the base.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, dataclass, replace
from typing import Any

import numpy as np

from ...backend import namespace
from ...registry import register
from ...validation import Validated, nonnegative, option
from .base import Specified, specified, split_part
from .specification import Specification, append_parameters

__all__ = ["CML", "cooperative"]


@dataclass(frozen=True)
class CoLearnerTerm:
    """``f(w, λ, data) + γ · L(c_ψ(features(adapted(w, λ)_bb, x_query)), y_query)``.

    ``ψ`` is the last ``colearner.n_params`` columns of λ.
    """

    outer: Callable[..., Any]
    adapted: Callable[..., Any]
    model: Any
    colearner: Any
    weight: float

    def __call__(self, w: Any, lam: Any, data: Any) -> Any:
        m = int(lam.shape[1]) - int(self.colearner.n_params)
        main = self.outer(w, lam, data)
        theta = self.adapted(w, lam)
        reads = getattr(self.colearner, "input", "features")  # or "feature_map" (conv)
        feats = getattr(self.model, reads)(theta[:, self.model.split["backbone"]],
                                           data.x_query)
        co = self.model.loss(self.colearner.apply(lam[:, m:], feats), data.y_query)
        return main + self.weight * co


def cooperative(spec: Specification, model: Any, colearner: Any,
                weight: float) -> Specification:
    """``spec`` with the co-learner term in its outer objective and ``ψ`` appended.

    Memory and time: the base's plus one co-learner forward/backward per query batch.
    """
    spec = append_parameters(spec, int(colearner.n_params))
    return replace(spec, outer=CoLearnerTerm(spec.outer, spec.adapted, model, colearner,
                                             weight))


def colearner_model(name: str, value: Any) -> Any:
    """Check: an object with ``init``, ``apply`` and ``n_params``."""
    for attr in ("init", "apply", "n_params"):
        if not hasattr(value, attr):
            raise TypeError(f"{name} must have init, apply and n_params; no {attr!r}")
    return value


def _backbone_model(name: str, value: Any) -> Any:
    specified(name, value)
    split_part(value.model, "backbone")
    return value


@register("algorithm")
@dataclass(frozen=True)
class CML(Validated, Specified):
    """Cooperative meta-learning over a base algorithm: :func:`cooperative` of its spec.

    Both ``θ`` and ``ψ`` are updated by the outer optimizer; at test time the co-learner
    is dropped (:meth:`adapt` and :meth:`evaluate` see ``θ`` only).

    Parameters
    ----------
    base
        A configured algorithm (:class:`~bilevel.meta.algorithms.MAML`, ``ANIL``,
        ``IMAML``, ``AMAML``, ``MemoryReduced``).
    colearner
        An object with ``init(rng, backend) -> ψ`` (flat), ``n_params`` and
        ``apply(ψ, features) -> predictions`` for ``ψ`` of shape ``(T, p)`` and features
        ``(T, N, ...)`` (a :mod:`bilevel.meta.models` model on feature inputs works).
        A co-learner with ``input = "feature_map"`` reads the model's
        ``feature_map`` instead of its pooled ``features``: the paper's convolutional
        co-learner on a :class:`~bilevel.meta.models.Conv4` is
        ``ConvCoLearner.for_model(model)``.
    weight : float
        γ ≥ 0 (1.0 in the paper's code).
    """

    name = "cml"
    base: Any = option(MISSING, check=_backbone_model)
    colearner: Any = option(MISSING, check=colearner_model, repr=False)
    weight: float = option(1.0, check=nonnegative)

    @property
    def model(self) -> Any:
        """The base algorithm's model."""
        return self.base.model

    def specification(self) -> Specification:
        """The base's specification with the co-learner term (:func:`cooperative`)."""
        return cooperative(self.base.specification(), self.model, self.colearner,
                           self.weight)

    def init(self, rng: np.random.Generator, backend: str | None = None) -> Any:
        """``(θ, ψ)``: the base's initialization, then the co-learner's."""
        theta = self.base.init(rng, backend)
        psi = self.colearner.init(rng, backend)
        return namespace(theta, psi).concat([theta, psi], axis=0)
