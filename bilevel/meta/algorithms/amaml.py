"""Adjoint MAML (Li, Wang, Narayan, Kirby & Zhe, AISTATS 2023).

Inner dynamics: gradient flow ``du/dt = −∇L̂_i(u) − r(u − θ)``, ``u(0) = θ`` on
``[0, horizon]``; meta-objective ``J_i = L_i(u(T)) + (r/2)‖u(T) − θ‖²`` (the released
code's form; ``r = 0`` is the pure A-MAML of the abstract). By default the meta-gradient
is the paper's continuous adjoint (:meth:`bilevel.Adjoint.paper`): RK4 forward on a stored
grid, the adjoint ODE integrated backwards by explicit Euler with the Hessian at the later
state. ``method=Adjoint()`` gives the exact derivative of the discretized flow instead.
The paper's loss is ``0.5·MSE``: its step sizes are twice the library's for the same
dynamics (the library's MSE has no ½).
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
        Default ``Adjoint.paper()`` = ``Adjoint("store", discrete=False,
        backward="euler")``, the paper's continuous adjoint. ``Adjoint()`` (discrete adjoint
        with checkpointing) or ``Reverse()`` give the exact derivative of the RK4 flow.

    Notes
    -----
    Memory O(K·n) per task for the stored trajectory (no autodiff graph); time
    ``stages·K`` gradients forward + K HVPs backward (Euler). The exact discrete adjoint
    costs about ``stages`` times more backward work (4 with RK4) plus recomputation.
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
        self._complete(method=Adjoint.paper())

    def specification(self) -> Specification:
        """Proximal support loss, ``u(0) = θ``, gradient flow, proximal query loss."""
        return Specification(
            inner=penalized(partial(weights_loss, self.model, "support"), self.reg),
            outer=penalized(partial(weights_loss, self.model, "query"), self.reg),
            dynamics=GradientFlow(self.horizon, self.steps, self.scheme),
            method=self.method,
            n_params=int(self.model.n_params),
        )
