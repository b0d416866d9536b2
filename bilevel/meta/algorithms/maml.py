"""MAML and first-order MAML: gradient steps on all weights from ``w₀ = θ``.

MAML (Finn, Abbeel & Levine, ICML 2017): ``φ_i = w_K`` from ``w₀ = θ`` by ``K`` gradient
steps of size ``α`` on the support loss ``L̂_i``; the meta-gradient
``(1/T) Σ_i A_0ᵀ⋯A_{K−1}ᵀ ∇L_i(φ_i)`` with ``A_k = I − α∇²L̂_i(w_k)`` is reverse mode
through the steps (:class:`bilevel.Reverse`). First-order MAML replaces every ``A_k`` by
``I`` (:class:`bilevel.methods.FirstOrder`): ``(1/T) Σ_i ∇L_i(φ_i)``.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, MISSING, dataclass
from functools import partial
from typing import Any

from ...dynamics import GradientDescent
from ...methods import FirstOrder, Reverse
from ...registry import register
from ...validation import Validated, integer, option, positive
from .base import Specified, meta_model
from .objectives import weights_loss
from .specification import Specification

__all__ = ["FOMAML", "MAML", "InnerSteps"]


@dataclass(frozen=True)
class InnerSteps(Validated, Specified):
    """Options shared by the algorithms that take ``steps`` gradient steps of ``inner_lr``.

    ``first_order=True`` makes the default method :class:`~bilevel.methods.FirstOrder`
    (FOMAML), else :class:`~bilevel.Reverse`; ``method=`` chooses any other.
    """

    model: Any = option(MISSING, check=meta_model, repr=False)
    inner_lr: float = option(0.01, check=positive)
    steps: int = option(1, check=integer(1))
    _: KW_ONLY
    first_order: bool = False
    method: Any = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.first_order and not isinstance(self.method, (FirstOrder, type(None))):
            raise ValueError(
                f"first_order=True is the method FirstOrder(); got method={self.method!r} too"
            )
        self._complete(method=FirstOrder() if self.first_order else Reverse())

    @property
    def gradient_descent(self) -> GradientDescent:
        """The inner dynamics: ``steps`` gradient steps of size ``inner_lr``."""
        return GradientDescent(self.inner_lr, self.steps)


@register("algorithm")
@dataclass(frozen=True)
class MAML(InnerSteps):
    """Model-agnostic meta-learning (Finn, Abbeel & Levine, ICML 2017).

    ``φ_i = w_K`` from ``w₀ = θ`` by ``steps`` gradient steps of size ``inner_lr`` on the
    support loss; the meta-gradient ``(1/T) Σ_i A_0ᵀ⋯A_{K−1}ᵀ ∇L_i(φ_i)`` with
    ``A_k = I − α∇²L̂_i(w_k)`` comes from ``Reverse()`` (see :doc:`/meta`).

    Parameters
    ----------
    model
        A model of :mod:`bilevel.meta.models`.
    inner_lr, steps
        Inner step size α and number of inner steps K.
    first_order : bool
        FOMAML: ``dφ_i/dθ ≈ I``, i.e. the meta-gradient is ``(1/T) Σ_i ∇L_i(φ_i)`` — the
        result of reverse mode with every inner Hessian dropped
        (:class:`bilevel.methods.FirstOrder`).
    method
        Hypergradient method (default ``Reverse()``; e.g. ``Reverse(checkpoints=c)`` for
        O(c·n) memory, ``Forward()``).

    Notes
    -----
    Memory: O(K·n) per task with ``Reverse()`` (iterates, no tapes), O(n) first-order.
    Time: K gradients + K HVPs per task (K gradients + 1 first-order).
    """

    name = "maml"

    def specification(self) -> Specification:
        """Support loss of all weights, ``w₀ = θ``, gradient descent, ``method``."""
        return Specification(
            inner=partial(weights_loss, self.model, "support"),
            outer=partial(weights_loss, self.model, "query"),
            dynamics=self.gradient_descent,
            method=self.method,
            n_params=int(self.model.n_params),
        )


@register("algorithm")
@dataclass(frozen=True)
class FOMAML(MAML):
    """First-order MAML: ``MAML(model, inner_lr, steps, first_order=True)``.

    The meta-gradient ``(1/T) Σ_i ∇L_i(φ_i)`` of :class:`bilevel.methods.FirstOrder`.
    Memory O(n) per task; time K gradients + 1.
    """

    name = "fomaml"
    first_order: bool = option(True, kw_only=True)
