"""Hypothesis strategies generating bilevel problems with known hypergradients.

Each strategy draws sizes, a condition number and a random seed, builds the matrices in
NumPy float64, computes the reference answers there (:mod:`bilevel.testing.closed_forms`)
and returns a :class:`~bilevel.testing.generated.GeneratedProblem` whose arrays live on
the requested backend and dtype. Sizes are given as an ``int`` or an inclusive range
``(low, high)``; ``batch=B`` adds a leading axis of B independent problems.

=============================  =============================  ==============================
strategy                       problem                        references
=============================  =============================  ==============================
``quadratic_problems``         quadratic g, quadratic f (V2)  exact, unrolled (GD)
``ridge_problems``             per-feature ridge (V7)         exact, unrolled (GD)
``gradient_flow_problems``     proximal quadratic, w0 = θ     exact (T→∞), unrolled (RK
                               (V4, V9)                       scheme), flow (matrix exp.)
``imaml_tasks``                proximal quadratic task, w0=θ  exact (iMAML), unrolled (GD)
                               (V8)
``mlp_problems``               tanh network, weight decay     unrolled (finite differences)
=============================  =============================  ==============================
"""

from __future__ import annotations

from .linear_problems import quadratic_problems, ridge_problems
from .network_problems import mlp_problems
from .proximal_problems import gradient_flow_problems, imaml_tasks

__all__ = [
    "gradient_flow_problems",
    "imaml_tasks",
    "mlp_problems",
    "quadratic_problems",
    "ridge_problems",
]
