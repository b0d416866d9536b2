"""Memory-reduced meta-learning (Yang, Ma & Yu, AAAI 2025): implicit at a tape-free head.

ANIL-type split with ``λ = θ_backbone`` and ``w`` = head. The inner loop runs gradient
descent on the head from a fixed initialization ``θ_head`` on support features computed
once with the backbone as a constant (the ``inner_grad`` oracle of the problem — no tape
through the backbone); :class:`bilevel.Implicit` at the last iterate ``y_N`` then gives::

    v = [∇²_yy g(x, y_N) + δI]⁻¹ ∇_y f(x, y_N),     ∇Φ(x) = ∇_x f − ∇²_xy g · v

with one mixed VJP through the backbone.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, MISSING, dataclass
from functools import partial
from typing import Any

from ...dynamics import GradientDescent
from ...linalg import CG
from ...methods import Implicit
from ...registry import register
from ...validation import Validated, integer, nonnegative, one_of, option, positive
from .base import Specified, head_model
from .objectives import cache_features, cached_head_grad, head_loss, penalized, with_backbone
from .specification import Part, Specification

__all__ = ["MemoryReduced"]


@register("algorithm")
@dataclass(frozen=True)
class MemoryReduced(Validated, Specified):
    """Memory-reduced meta-learning: implicit differentiation of a head-only inner loop.

    The head initialization is not meta-learned (as in the released code): the head
    entries of the meta-gradient are structurally 0.

    Parameters
    ----------
    model
        A model with ``split["backbone"]``, ``split["head"]``, ``features`` and ``head``.
    inner_lr, steps
        Head gradient descent (default 20 steps of 0.02; the paper: 20 steps of 0.1 on a
        cross-entropy head). An MSE head is stiffer (``λ_max ≈ 2‖F‖²/N`` for features
        ``F``): 0.1 diverges on the sinusoid MLP, 0.02 trains (held-out MSE 3.91 against
        4.05 at random initialization after 300 iterations, tanh 1-20-20-1).
    solver
        Default ``CG.fixed(20)``: exactly 20 CG iterations, no damping, the result
        accepted (the released code disables CG's stopping test). The CE head Hessian is
        singular along row-constant logit shifts, so a tolerance is in general never met.
    damping
        ``δ ≥ 0`` (the CE head Hessian is singular along row-constant logit shifts).
    head_reg
        ``ρ ≥ 0``: adds ``(ρ/2)‖y‖²`` to the inner objective, making the head problem
        strongly convex (0 reproduces the paper).
    on_unconverged : {"keep", "drop"}
        A tolerance-based solve that stops at its cap: ``"keep"`` (default: accept it,
        report its residual) or ``"drop"`` (leave the task out of the meta-gradient).
    method
        Overrides ``Implicit(solver, damping, inner_tol=None,
        on_unconverged=on_unconverged)``.

    Notes
    -----
    Memory O(p + q) vectors + one backbone graph, independent of ``steps``; time ``steps``
    head gradients + 1 backbone forward + J head HVPs + 1 backbone double-backward.
    """

    name = "memory-reduced"
    model: Any = option(MISSING, check=head_model, repr=False)
    inner_lr: float = option(0.02, check=positive)
    steps: int = option(20, check=integer(1))
    solver: Any = None
    damping: float = option(0.0, check=nonnegative)
    head_reg: float = option(0.0, check=nonnegative)
    _: KW_ONLY
    on_unconverged: str = option("keep", check=one_of(("keep", "drop")))
    method: Any = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self._complete(solver=CG.fixed(20))
        self._complete(method=Implicit(self.solver, self.damping, inner_tol=None,
                                       on_unconverged=self.on_unconverged))

    def specification(self) -> Specification:
        """Ridge head loss on cached features from ``θ_head``; ``λ = θ_backbone``."""
        model = self.model
        return Specification(
            inner=penalized(partial(head_loss, model, None, "support"), self.head_reg,
                            proximal=False),
            outer=partial(head_loss, model, None, "query"),
            dynamics=GradientDescent(self.inner_lr, self.steps),
            method=self.method,
            n_params=int(model.n_params),
            init=None,
            start=Part(model.split["head"]),
            lam=Part(model.split["backbone"]),
            adapted=partial(with_backbone, model, None),
            prepare=partial(cache_features, model),
            oracles={"inner_grad": partial(cached_head_grad, model, self.head_reg)},
        )
