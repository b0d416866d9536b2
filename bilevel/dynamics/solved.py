"""``Solved()``: the starting point is already the inner solution; no step is run.

For implicit differentiation at a solution computed elsewhere (scikit-learn,
``scipy.optimize.minimize``, the user's own solver)::

    hypergrad(problem, lam, w_star, dynamics=Solved(), method=Implicit())

:class:`bilevel.methods.Implicit` then checks the optimality residual ``‖F(w*, λ)‖`` at the
given point (``inner_tol``, relative to the residual at ``w = 0``) and reports it as
``inner_residual``: a poor solution gives ``success=False``, never a silent wrong
hypergradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..problem import BilevelProblem
from ..registry import register
from .base import Dynamics, State

__all__ = ["Solved"]


@register("dynamics", "solution", "given")
@dataclass(frozen=True, repr=False)
class Solved(Dynamics):
    """No inner steps: ``w0`` is taken to be the inner solution ``w*(λ)``.

    Runs zero steps (``steps = 0``), so the last iterate is ``w0`` itself. There is no step
    map to differentiate: unrolled methods (``Reverse``, ``Forward``) refuse it up front;
    use it with :class:`~bilevel.methods.Implicit` (or ``FirstOrder``).

    Notes
    -----
    Cost and memory: none. ``Implicit`` tests the optimality residual at ``w0`` against
    ``inner_tol·max(1, ‖F(0, λ)‖)`` (one extra evaluation of ``F`` at ``w = 0``).
    """

    name: ClassVar[str] = "solved"
    steps: ClassVar[int] = 0
    not_differentiated: ClassVar[str | None] = (
        "Solved() runs no inner steps, so there is no step map to differentiate: use "
        "Implicit (implicit differentiation at the given solution) or FirstOrder; for an "
        "unrolled derivative pass a dynamics such as GradientDescent"
    )

    def step(self, problem: BilevelProblem, state: State, lam: Any, k: int) -> State:
        raise NotImplementedError(self.not_differentiated)
