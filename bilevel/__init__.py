"""bilevel: hypergradients for bilevel optimization on NumPy and CuPy.

Define a problem once — an inner objective g(w, λ) and an outer objective f(w, λ) — and
get ∇F(λ) from interchangeable methods::

    from bilevel import BilevelProblem, GradientDescent, Implicit, CG, hypergrad
    res = hypergrad(BilevelProblem(g, f), lam, w0,
                    dynamics=GradientDescent(lr=0.1, steps=200), method=Implicit(CG()))
    res.grad, res.success, res.message
"""

from .allocator import keep_heap_padding
from .api import (
    HypergradError,
    HypergradResult,
    HypergradState,
    HypergradWarning,
    hypergrad,
    value_and_hypergrad,
)
from .dynamics import (
    LBFGS,
    GradientDescent,
    GradientFlow,
    Momentum,
    Newton,
    Solved,
    minibatch_indices,
)
from .linalg import CG, GMRES, BiCGSTAB, Direct, FixedPoint, Neumann
from .methods import *  # noqa: F403
from .methods import __all__ as _methods_all
from .nonfinite import TracingError
from .problem import BilevelProblem, NonFiniteError

__version__ = "0.1.0"

__all__ = [
    "BiCGSTAB",
    "BilevelProblem",
    "CG",
    "Direct",
    "FixedPoint",
    "GMRES",
    "GradientDescent",
    "GradientFlow",
    "HypergradError",
    "HypergradResult",
    "HypergradState",
    "HypergradWarning",
    "LBFGS",
    "Momentum",
    "Neumann",
    "Newton",
    "NonFiniteError",
    "Solved",
    "TracingError",
    "hypergrad",
    "keep_heap_padding",
    "minibatch_indices",
    "value_and_hypergrad",
    *_methods_all,
]
