"""First-order hypergradient (FOMAML's approximation of the unrolled derivative).

Replacing every inner-step Jacobian ``A_k = ∂w_{k+1}/∂w_k`` of the unrolled map by ``I``
and every ``B_k = ∂w_{k+1}/∂λ`` by 0 leaves::

    ∇F(λ) ≈ ∇_λ f(w_K, λ) + Cᵀ ∇_w f(w_K, λ),      C = ∂init/∂λ

the first-order MAML meta-gradient (Finn et al., 2017) when ``w_0 = init(λ) = θ``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..dynamics import Dynamics, run
from ..problem import BilevelProblem
from ..registry import register
from ..validation import Validated
from .base import HypergradResult, HypergradState, Method

__all__ = ["FirstOrder"]


@register("method")
@dataclass(frozen=True, repr=False)
class FirstOrder(Validated, Method):
    """First-order approximation ``∇_λ f(w_K) + Cᵀ∇_w f(w_K)`` (FOMAML).

    Runs the inner dynamics without recording anything and differentiates only the outer
    objective and the init map at the last iterate: every Hessian term of the unrolled
    derivative is dropped. Biased (it ignores how ``w_K`` moves with λ through the inner
    steps), cheap and frugal.

    Memory O(n + m); time K inner gradients, one outer gradient and one init VJP.

    References
    ----------
    C. Finn, P. Abbeel, S. Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of
    Deep Networks", ICML 2017 (§5.2, first-order approximation).
    """

    name = "first-order"

    def compute(
        self,
        problem: BilevelProblem,
        lam: Any,
        w0: Any,
        dynamics: Dynamics,
        state: HypergradState | None,
    ) -> HypergradResult:
        w = dynamics.weights(run(problem, dynamics, w0, lam))
        value, gw, gl = problem.outer_value_and_grads(w, lam)
        grad = gl + problem.init_vjp(lam, gw) if problem.init is not None else gl
        return HypergradResult(grad=grad, w=w, value=value, success=True, message="ok")
