"""Inner dynamics: the inner solver as a pure ``(init, step)`` pair on flat vectors.

Every hypergradient method drives the same step map ``s_{k+1} = Φ_k(s_k, λ)``: reverse
mode calls :meth:`Dynamics.step_vjp` (one VJP of Φ_k per step), forward mode
:meth:`Dynamics.step_jvp`, the adjoint method the ODE form of :class:`GradientFlow`, and
the implicit and historyless methods only :meth:`Dynamics.step`. A state is a tuple of
arrays whose first entry is ``w`` (``(n,)`` or ``(B, n)``); momentum adds the velocity.

A new dynamics needs only ``init`` and ``step``: the base class derives ``step_vjp`` and
``step_jvp`` with autograd, differentiating ``step`` through the problem's oracles (the
derivative of ``∇_w g`` is taken with ``inner_hvp``/``inner_mixed_vjp``/``inner_grad_jvp``,
user-supplied ones included, and counted as such). Dynamics are frozen dataclasses whose
arguments are checked once at construction, registered under the kind ``"dynamics"``, and
pickle with the standard library.

Stochastic inner objectives: ``batches(k)`` returns the data of step ``k``. It must be a
deterministic function of ``k`` (use :func:`minibatch_indices`), so that the backward
pass sees exactly the batches of the forward pass.
"""

from .base import Dynamics, State, run
from .descent import GradientDescent, Momentum
from .flow import GradientFlow
from .lbfgs import LBFGS
from .newton import Newton
from .newton_cg import NewtonCG
from .schedules import MinibatchIndices, PerStep, StepSize, minibatch_indices, step_size
from .solved import Solved
from .watch import StabilityWatch

__all__ = [
    "Dynamics",
    "GradientDescent",
    "GradientFlow",
    "LBFGS",
    "MinibatchIndices",
    "Momentum",
    "Newton",
    "NewtonCG",
    "PerStep",
    "Solved",
    "StabilityWatch",
    "State",
    "StepSize",
    "minibatch_indices",
    "run",
    "step_size",
]
