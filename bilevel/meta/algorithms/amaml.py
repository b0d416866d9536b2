"""Adjoint MAML (Li, Wang, Narayan, Kirby & Zhe, AISTATS 2023).

Inner dynamics: gradient flow ``du/dt = −∇L̂_i(u) − r(u − θ)``, ``u(0) = θ`` on
``[0, horizon]``; meta-objective ``J_i = L_i(u(T)) + (r/2)‖u(T) − θ‖²`` (the released
code's form; ``r = 0`` is the pure A-MAML of the abstract). :class:`bilevel.Adjoint`
integrates the adjoint ODE backwards.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, MISSING, dataclass
from functools import partial
from typing import Any

from ...dynamics import GradientFlow
from ...methods import Adjoint
from ...registry import register
from ...validation import Validated, integer, nonnegative, option, positive
from .base import Specified, meta_model
from .objectives import penalized, weights_loss
from .specification import Specification

__all__ = ["AMAML"]


@register("algorithm", "A-MAML")
@dataclass(frozen=True)
class AMAML(Validated, Specified):
    """Adjoint MAML: :class:`bilevel.Adjoint` on a proximal gradient flow.

    Parameters
    ----------
    model
        A model of :mod:`bilevel.meta.models`.
    horizon, steps, scheme
        Integration time T, number of steps K and Runge–Kutta scheme.
    reg : float
        Proximal strength ``r ≥ 0``.
    method
        Default ``Adjoint()``; ``Reverse()`` gives the exact discrete derivative.

    Notes
    -----
    Memory O(K·n) per task with stored trajectories (no autodiff graph); time
    ``stages·K`` gradients forward + K HVPs backward.
    """

    name = "amaml"
    model: Any = option(MISSING, check=meta_model, repr=False)
    horizon: float = option(0.1, check=positive)
    steps: int = option(10, check=integer(1))
    scheme: str = "rk4"
    reg: float = option(0.0, check=nonnegative)
    _: KW_ONLY
    method: Any = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self._complete(method=Adjoint())

    def specification(self) -> Specification:
        """Proximal support loss, ``u(0) = θ``, gradient flow, proximal query loss."""
        return Specification(
            inner=penalized(partial(weights_loss, self.model, "support"), self.reg),
            outer=penalized(partial(weights_loss, self.model, "query"), self.reg),
            dynamics=GradientFlow(self.horizon, self.steps, self.scheme),
            method=self.method,
            n_params=int(self.model.n_params),
        )
