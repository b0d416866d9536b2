"""Verification tools: check a hypergradient method on your own problem, and hypothesis
strategies generating bilevel problems whose hypergradients are known.

::

    from bilevel.testing import check_hypergrad, check_oracles
    check_oracles(problem, w, lam)                       # derivative oracles
    check_hypergrad(problem, lam, w0, dynamics=GradientDescent(0.1, 50),
                    method=Implicit(CG()), reference=Reverse())

    from bilevel.testing import quadratic_problems      # needs hypothesis
    @given(quadratic_problems(n=(2, 5), condition_number=10))
    def test_mine(gen): ...

The strategies (``quadratic_problems``, ``ridge_problems``, ``gradient_flow_problems``,
``imaml_tasks``, ``mlp_problems``) and ``register_profiles`` import hypothesis when first
used; ``check_hypergrad``, ``check_oracles``, ``finite_difference_hypergrad``, the ridge
problem (``ridge_problem``) and its closed form (``ridge_hypergrads``) do not need it.

Modules: :mod:`~bilevel.testing.check` (``check_hypergrad``, ``check_oracles``),
:mod:`~bilevel.testing.finite_differences`, :mod:`~bilevel.testing.closed_forms`,
:mod:`~bilevel.testing.ridge`, :mod:`~bilevel.testing.objectives`,
:mod:`~bilevel.testing.generated` (``GeneratedProblem``), the strategies
(:mod:`~bilevel.testing.strategies`: :mod:`~bilevel.testing.linear_problems`,
:mod:`~bilevel.testing.proximal_problems`, :mod:`~bilevel.testing.network_problems`, drawing
helpers in :mod:`~bilevel.testing.draws`) and :mod:`~bilevel.testing.profiles`.
"""

from __future__ import annotations

from typing import Any

from .check import HypergradCheck, check_hypergrad, check_oracles
from .closed_forms import ridge_hypergrads
from .finite_differences import finite_difference_hypergrad
from .generated import GeneratedProblem
from .ridge import ridge_objectives, ridge_oracles, ridge_problem

__all__ = [
    "GeneratedProblem",
    "HypergradCheck",
    "check_hypergrad",
    "check_oracles",
    "finite_difference_hypergrad",
    "gradient_flow_problems",
    "imaml_tasks",
    "mlp_problems",
    "quadratic_problems",
    "register_profiles",
    "ridge_hypergrads",
    "ridge_objectives",
    "ridge_oracles",
    "ridge_problem",
    "ridge_problems",
]

_LAZY = {
    "gradient_flow_problems": "strategies",
    "imaml_tasks": "strategies",
    "mlp_problems": "strategies",
    "quadratic_problems": "strategies",
    "ridge_problems": "strategies",
    "register_profiles": "profiles",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'bilevel.testing' has no attribute {name!r}")
    import importlib

    try:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
    except ImportError as err:
        raise ImportError(
            f"bilevel.testing.{name} needs hypothesis (pip install hypothesis): {err}"
        ) from err
    return getattr(module, name)


def __dir__() -> list[str]:
    return sorted(__all__)
