"""A benchmark problem of the stochastic family: the problem, its start and its optimum.

:class:`Family` bundles a :class:`~bilevel.stochastic.StochasticProblem` with a starting
point, the value function ``F(λ) = f(w*(λ), λ)`` (exact, or from an accurate inner solve)
and the optimal value ``F*``, so that every method's curve is measured in the same relative
suboptimality

.. math:: \\frac{F(λ_t) − F^*}{F(λ_0) − F^*}.

For families without a closed form, :func:`deterministic_value` evaluates ``F`` and ``∇F``
with the library's deterministic machinery (Newton-CG inner solves, implicit
differentiation with CG: :func:`bilevel.hypergrad`), and :func:`reference_optimum` minimizes
it with L-BFGS (SciPy).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..api import hypergrad
from ..backend import namespace, to_backend, to_numpy
from ..dynamics import NewtonCG
from ..linalg import CG
from ..methods import Implicit
from .problem import StochasticProblem

__all__ = ["DeterministicValue", "Family", "reference_optimum"]


@dataclass
class Family:
    """A stochastic benchmark problem with its optimum.

    Attributes
    ----------
    name : str
        ``"quadratic"``, ``"regularization"`` or ``"cleaning"``.
    problem : StochasticProblem
    lam0, w0 : array
        Start.
    value : callable
        ``value(λ, w=None) -> float``: ``F(λ)`` (``w`` is ignored or warm-starts the inner
        solve); pass it as ``evaluate`` to :func:`~bilevel.stochastic.solve`.
    value_star : float
        ``F*`` (exact for the quadratics; the best value found otherwise).
    lam_star : array, optional
        The optimum, when known.
    info : dict
        Sizes and parameters, for tables.
    """

    name: str
    problem: StochasticProblem
    lam0: Any
    w0: Any
    value: Callable[..., float]
    value_star: float
    lam_star: Any = None
    info: dict = field(default_factory=dict)

    @property
    def value0(self) -> float:
        """F(λ0)."""
        return float(self.value(self.lam0, self.w0))

    def relative(self, values: Any, value0: float | None = None) -> np.ndarray:
        """``(F − F*) / (F(λ0) − F*)`` of the given values of F."""
        v0 = self.value0 if value0 is None else value0
        return (np.asarray(values, dtype=float) - self.value_star) / (v0 - self.value_star)

    def suboptimality(self, lam: Any) -> float:
        """Relative suboptimality of λ."""
        return float(self.relative([self.value(lam)])[0])


class DeterministicValue:
    """``F(λ)`` and ``∇F(λ)`` from a Newton-CG inner solve and implicit differentiation.

    The inner solve is warm-started from the last solution (kept in the object, privately:
    :func:`bilevel.outer.describe` of the object, part of a run's fingerprint when it is
    the ``evaluate`` function, does not change as it is called). Cost per call:
    ``newton_steps`` Newton steps of ``cg_iters`` full-batch HVPs each, and
    one CG solve to ``tol``. Memory: O(n) besides the traces.
    """

    def __init__(self, problem: StochasticProblem, w0: Any, newton_steps: int = 8,
                 cg_iters: int = 30, tol: float = 1e-10):
        self._problem, self._w = problem, w0
        self.name = problem.name
        self.dynamics = NewtonCG(steps=newton_steps, cg_iters=cg_iters)
        self.method = Implicit(CG(tol=tol, maxiter=10 * cg_iters))

    def start(self, w: Any) -> None:
        """Start the next inner solve from ``w``."""
        self._w = w

    def value_and_grad(self, lam: Any) -> tuple[float, Any]:
        """(F(λ), ∇F(λ)) at the inner solution reached from the last one."""
        res = hypergrad(self._problem.full, lam, self._w, dynamics=self.dynamics,
                        method=self.method, on_failure="ignore")
        self._w = res.w
        return float(res.value), res.grad

    def __call__(self, lam: Any, w: Any = None) -> float:
        """F(λ); the inner solve starts from ``w`` when given (a method's iterate)."""
        if w is not None:
            self._w = w
        return self.value_and_grad(lam)[0]


def reference_optimum(value: DeterministicValue, lam0: Any, maxiter: int = 100,
                      ) -> tuple[Any, float]:
    """(λ*, F*) by L-BFGS on ``F`` from ``lam0`` (SciPy), on the backend of ``lam0``.

    A local minimum when F is not convex (data cleaning). Cost: about ``maxiter``
    evaluations of ``value.value_and_grad``.
    """
    from scipy.optimize import minimize as scipy_minimize

    backend = "cupy" if namespace(lam0).__name__.startswith("cupy") else "numpy"

    def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
        val, grad = value.value_and_grad(to_backend(x.astype(np.float64), backend))
        return val, np.asarray(to_numpy(grad), dtype=np.float64)

    out = scipy_minimize(fun, np.asarray(to_numpy(lam0), dtype=np.float64), jac=True,
                         method="L-BFGS-B", options={"maxiter": maxiter, "gtol": 1e-10})
    return to_backend(out.x, backend), float(out.fun)
