"""ANIL, Almost No Inner Loop (Raghu, Raghu, Bengio & Vinyals, ICLR 2020): adapt the head.

``w`` = head weights with ``w₀ = θ_head``; ``λ = θ`` (backbone and head initialization).
The support loss ``L̂_i(head(w, features(θ_bb, x)))`` depends on the backbone through the
features, so reverse mode returns ``Cᵀa₀`` for the head and ``Σ_k B_kᵀa_{k+1}`` for the
backbone.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass
from functools import partial
from typing import Any

from ...registry import register
from ...validation import integer, option, positive
from .base import head_model
from .maml import InnerSteps
from .objectives import columns, head_loss, with_backbone
from .specification import Specification

__all__ = ["ANIL"]


@register("algorithm")
@dataclass(frozen=True)
class ANIL(InnerSteps):
    """Almost No Inner Loop (Raghu et al., ICLR 2020): adapt only the head.

    Parameters
    ----------
    model
        A model with ``split["backbone"]``, ``split["head"]``, ``features`` and ``head``.
    inner_lr, steps, first_order, method
        As in :class:`~bilevel.meta.algorithms.MAML`.

    Notes
    -----
    Memory O(K·n_head) iterates with ``Reverse()``; each step's HVP re-traces the backbone
    forward (time K backbone forwards + K mixed VJPs through the backbone).
    """

    name = "anil"
    model: Any = option(MISSING, check=head_model, repr=False)
    inner_lr: float = option(0.1, check=positive)
    steps: int = option(5, check=integer(1))

    def specification(self) -> Specification:
        """Head loss on backbone features, ``w₀ = θ_head``, gradient descent, ``method``."""
        model = self.model
        backbone, head = model.split["backbone"], model.split["head"]
        return Specification(
            inner=partial(head_loss, model, backbone, "support"),
            outer=partial(head_loss, model, backbone, "query"),
            dynamics=self.gradient_descent,
            method=self.method,
            n_params=int(model.n_params),
            init=partial(columns, head),
            adapted=partial(with_backbone, model, backbone),
        )
