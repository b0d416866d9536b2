"""Benchmark suite behind ``bilevel bench`` and ``bilevel demo``.

Subcommand modules: :mod:`~bilevel.bench.memory` (peak memory against inner steps K),
:mod:`~bilevel.bench.accuracy` (error against HVP count), :mod:`~bilevel.bench.speed`
(hypergradient time over inner-solve time, HVP over gradient time, primitive overhead),
:mod:`~bilevel.bench.meta` (time and memory per meta-iteration); output writing is in
:mod:`~bilevel.bench.report`, the benchmark problems in :mod:`~bilevel.bench.problems`.
:func:`method_suite` is the list of method configurations that the demo and the speed
benchmark compare; :func:`method_class` finds a method by its registered name, and
:func:`quiet_hypergrad` is the one way the benchmarks call :func:`bilevel.hypergrad`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..api import failure_result, hypergrad
from ..dynamics import GradientDescent, GradientFlow
from ..linalg import CG, Direct, Neumann
from ..problem import NonFiniteError
from ..recompute import default_checkpoints
from ..registry import lookup, names

__all__ = ["method_class", "method_names", "method_suite", "quiet_hypergrad"]


def method_names() -> list[str]:
    """Names of the hypergradient methods: ``registry.names("method")``."""
    return names("method")


def method_class(name: str) -> type:
    """The hypergradient method class registered as ``name`` (any spelling)."""
    return lookup("method", name)


def quiet_hypergrad(problem: Any, lam: Any, w0: Any, dynamics: Any, method: Any) -> Any:
    """:func:`bilevel.hypergrad` with ``on_failure="ignore"``: failures stay in the result
    (``success``, ``message``), floating-point overflow of a diverging method is silent, and
    a :class:`~bilevel.NonFiniteError` becomes a NaN failure result."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        try:
            return hypergrad(problem, lam, w0, dynamics=dynamics, method=method,
                             on_failure="ignore")
        except (NonFiniteError, FloatingPointError) as err:
            return failure_result(lam, f"non-finite: {err}", n_hvp=0, n_grad=0)


def method_suite(
    steps: int,
    lr: float,
    *,
    horizon: float | None = None,
    flow_steps: int | None = None,
    scheme: str = "heun",
    truncate: int | None = None,
    direct: bool = True,
    forward: bool = True,
) -> dict[str, tuple[Any, Any]]:
    """Every hypergradient method, configured for one problem: ``label -> (inner, method)``.

    Parameters
    ----------
    steps, lr
        Gradient descent ``w_{k+1} = w_k − lr ∇_w g`` for ``steps`` steps (Reverse, Forward,
        Implicit, Historyless). ``lr < 2/L`` is the caller's responsibility.
    horizon, flow_steps, scheme
        Gradient flow ``dw/dt = −∇_w g`` on ``[0, horizon]`` with ``flow_steps`` steps of
        ``scheme`` (the Adjoint variants); default ``horizon = lr·steps``, ``flow_steps =
        steps``.
    truncate
        Steps kept by truncated reverse mode (default ``steps // 10``, at least 1).
    direct
        Include ``Implicit(Direct())`` (dense Hessian: small ``n`` only).
    forward
        Include ``Forward()`` (cost ∝ m per step: few hyperparameters only).

    Returns
    -------
    dict
        Labels ``Reverse``, ``Reverse(checkpoints)`` (⌈log₂K⌉ + 1 snapshots),
        ``Reverse(truncate=T)``, ``Forward``, ``Implicit(CG)``, ``Implicit(Neumann)``,
        ``Implicit(Direct)``, ``Historyless``, ``Adjoint(store)``, ``Adjoint(checkpoint)``,
        ``Adjoint(continuous)``, ``Adjoint(reconstruct)``.
    """

    steps = int(steps)
    if steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    horizon = lr * steps if horizon is None else float(horizon)
    flow_steps = steps if flow_steps is None else int(flow_steps)
    trunc = max(1, steps // 10) if truncate is None else int(truncate)

    def gd() -> Any:
        return GradientDescent(lr, steps)

    def flow() -> Any:
        return GradientFlow(horizon, flow_steps, scheme=scheme)

    reverse, implicit = method_class("reverse"), method_class("implicit")
    adjoint = method_class("adjoint")
    suite: dict[str, tuple[Any, Any]] = {
        "Reverse": (gd(), reverse()),
        "Reverse(checkpoints)": (gd(), reverse(checkpoints=default_checkpoints(steps))),
        f"Reverse(truncate={trunc})": (gd(), reverse(truncate=trunc)),
    }
    if forward:
        suite["Forward"] = (gd(), method_class("forward")())
    suite["Implicit(CG)"] = (gd(), implicit(CG(tol=1e-10), inner_tol=None))
    suite["Implicit(Neumann)"] = (gd(), implicit(Neumann(alpha=lr, maxiter=100),
                                                 inner_tol=None))
    if direct:
        suite["Implicit(Direct)"] = (gd(), implicit(Direct(), inner_tol=None))
    suite["Historyless"] = (gd(), method_class("historyless")())
    suite["Adjoint(store)"] = (flow(), adjoint("store"))
    suite["Adjoint(checkpoint)"] = (flow(), adjoint("checkpoint"))
    suite["Adjoint(continuous)"] = (flow(), adjoint("store", discrete=False))
    suite["Adjoint(reconstruct)"] = (flow(), adjoint("reconstruct"))
    return suite
