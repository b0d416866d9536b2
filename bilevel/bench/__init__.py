"""Benchmark suite behind ``bilevel bench`` and ``bilevel demo``.

Subcommand modules: :mod:`~bilevel.bench.memory` (peak memory against inner steps K),
:mod:`~bilevel.bench.accuracy` (error against HVP count), :mod:`~bilevel.bench.speed`
(hypergradient time over inner-solve time, HVP over gradient time, primitive overhead),
:mod:`~bilevel.bench.meta` (time and memory per meta-iteration); output writing is in
:mod:`~bilevel.bench.report`. :func:`method_suite` is the list of method configurations
that the demo and the speed benchmark compare.
"""

from __future__ import annotations

from typing import Any

__all__ = ["method_suite"]


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
    from .. import methods as m
    from ..checkpoint import default_checkpoints
    from ..dynamics import GradientDescent, GradientFlow
    from ..linalg import CG, Direct, Neumann

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

    suite: dict[str, tuple[Any, Any]] = {
        "Reverse": (gd(), m.Reverse()),
        "Reverse(checkpoints)": (gd(), m.Reverse(checkpoints=default_checkpoints(steps))),
        f"Reverse(truncate={trunc})": (gd(), m.Reverse(truncate=trunc)),
    }
    if forward:
        suite["Forward"] = (gd(), m.Forward())
    suite["Implicit(CG)"] = (gd(), m.Implicit(CG(tol=1e-10), inner_tol=None))
    suite["Implicit(Neumann)"] = (gd(), m.Implicit(Neumann(alpha=lr, maxiter=100),
                                                   inner_tol=None))
    if direct:
        suite["Implicit(Direct)"] = (gd(), m.Implicit(Direct(), inner_tol=None))
    suite["Historyless"] = (gd(), m.Historyless())
    suite["Adjoint(store)"] = (flow(), m.Adjoint("store"))
    suite["Adjoint(checkpoint)"] = (flow(), m.Adjoint("checkpoint"))
    suite["Adjoint(continuous)"] = (flow(), m.Adjoint("store", discrete=False))
    suite["Adjoint(reconstruct)"] = (flow(), m.Adjoint("reconstruct"))
    return suite
