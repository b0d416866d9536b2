"""Adjoint MAML (Li, Wang, Narayan, Kirby & Zhe, AISTATS 2023).

Inner dynamics: gradient flow ``du/dt = −∇L̂_i(u) − r(u − θ)``, ``u(0) = θ`` on
``[0, horizon]``; meta-objective ``J_i = L_i(u(T)) + (r/2)‖u(T) − θ‖²`` (the released
code's form; ``r = 0`` is the pure A-MAML of the abstract). By default the meta-gradient
is the paper's continuous adjoint (:meth:`bilevel.Adjoint.paper`): RK4 forward on a stored
grid, the adjoint ODE integrated backwards by explicit Euler with the Hessian at the later
state. ``method=Adjoint()`` gives the exact derivative of the discretized flow instead.
The paper's loss is ``0.5·MSE``: its step sizes are twice the library's for the same
dynamics (the library's MSE has no ½), so the default ``h = T/K = 0.005`` is the paper's
0.01.

The explicit Euler adjoint step is stable only while ``h·λ_max(H) ≤ 2``, a narrower bound
than the RK4 forward pass's 2.785, and the continuous adjoint does not see the
discretization: meta-training with it sharpens the network until that bound fails on
some tasks, whose adjoint then grows instead of decaying (their meta-gradients were
measured 10 to 60 times off the exact one). :class:`bilevel.Adjoint` flags those tasks;
``on_unstable`` says what happens to them.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, MISSING, dataclass, replace
from functools import partial
from typing import Any

import numpy as np

from ...api import HypergradResult
from ...backend import is_array, namespace, to_numpy
from ...dynamics import GradientFlow
from ...methods import Adjoint
from ...registry import register
from ...validation import Validated, integer, nonnegative, one_of, option, positive
from ..tasks import Episode
from .base import Specified, meta_model
from .objectives import penalized, weights_loss
from .specification import Specification

__all__ = ["AMAML"]

COUNTS = ("n_grad", "n_hvp", "n_jvp")


def task_subset(episode: Episode, index: np.ndarray) -> Episode:
    """The tasks ``index`` of ``episode`` (copies); info arrays with a task axis are cut."""
    T = episode.n_tasks
    arrays = (None if a is None else a[index] for a in
              (episode.x_support, episode.y_support, episode.x_query, episode.y_query))
    info = {k: v[index] if is_array(v) and len(v.shape) and int(v.shape[0]) == T else v
            for k, v in episode.info.items()}
    return Episode(*arrays, info)


def splice(res: HypergradResult, exact: HypergradResult, index: np.ndarray,
           ok: np.ndarray) -> HypergradResult:
    """``res`` with the gradients and flags of the tasks ``index`` taken from ``exact``.

    ``ok`` are the per-task flags of ``res``. Adds ``adjoint_fallback`` (per task: the
    exact discrete adjoint replaced the continuous one) and the work of the second pass
    to the counts.
    """
    out = HypergradResult(res)
    xp = namespace(res.grad)
    grad = xp.asarray(res.grad, copy=True)
    grad[xp.asarray(index)] = exact.grad
    ok = ok.copy()
    redone = np.zeros(ok.shape, dtype=bool)
    redone[index] = True
    flags = exact.get("problem_success")
    ok[index] = (to_numpy(flags).astype(bool) if flags is not None
                 else bool(exact.get("success", False)))
    out.update(grad=grad, problem_success=ok, adjoint_fallback=redone,
               success=bool(ok.all()),
               **{k: int(res.get(k, 0)) + int(exact.get(k, 0)) for k in COUNTS})
    note = (f"{index.size} of {ok.size} tasks used the exact discrete adjoint: the "
            "continuous adjoint failed its backward step condition (h·λ_max(H) > 2)")
    out["message"] = note if out["success"] else f"{exact.get('message')}; {note}"
    return out


def task_flags(res: HypergradResult, T: int) -> np.ndarray:
    """Per-task success flags ``(T,)``: ``problem_success``, else ``success`` for all."""
    flags = res.get("problem_success")
    if flags is None:
        return np.full(T, bool(res.get("success", True)))
    return to_numpy(flags).astype(bool)


@register("algorithm", "A-MAML")
@dataclass(frozen=True)
class AMAML(Validated, Specified):
    """Adjoint MAML: :class:`bilevel.Adjoint` on a proximal gradient flow.

    Parameters
    ----------
    model
        A model of :mod:`bilevel.meta.models`.
    horizon, steps, scheme
        Integration time T, number of steps K and Runge–Kutta scheme (default T = 0.1,
        K = 20, RK4: ``h = 0.005``, the paper's step 0.01 on its ``0.5·MSE``).
    reg : float
        Proximal strength ``r ≥ 0``.
    on_unstable : {"discrete", "drop"}
        Tasks whose continuous adjoint fails its backward step condition (reported by
        :class:`bilevel.Adjoint` in ``problem_success``): ``"discrete"`` (default)
        recomputes their meta-gradient with the exact discrete adjoint ``Adjoint()`` of the
        same forward pass (reported per task as ``adjoint_fallback``; a task whose forward
        pass is unstable stays failed); ``"drop"`` leaves them out of the meta-gradient
        (the paper's estimator alone). Ignored for a discrete ``method``.
    method
        Default ``Adjoint.paper()`` = ``Adjoint("store", discrete=False,
        backward="euler")``, the paper's continuous adjoint. ``Adjoint()`` (discrete adjoint
        with checkpointing) or ``Reverse()`` give the exact derivative of the RK4 flow.

    Notes
    -----
    Memory O(K·n) per task for the stored trajectory (no autodiff graph); time
    ``stages·K`` gradients forward + K HVPs backward (Euler). The exact discrete adjoint
    costs about ``stages`` times more backward work (4 with RK4) plus recomputation; with
    ``on_unstable="discrete"`` it is paid only for the tasks that need it.
    """

    name = "amaml"
    model: Any = option(MISSING, check=meta_model, repr=False)
    horizon: float = option(0.1, check=positive)
    steps: int = option(20, check=integer(1))
    scheme: str = "rk4"
    reg: float = option(0.0, check=nonnegative)
    _: KW_ONLY
    on_unstable: str = option("discrete", check=one_of(("discrete", "drop")))
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

    def _hypergradient(self, spec: Specification, params: Any, episode: Any) -> HypergradResult:
        """The specification's hypergradient; with ``on_unstable="discrete"`` the tasks
        whose continuous adjoint failed get the exact discrete adjoint."""
        res = super()._hypergradient(spec, params, episode)
        continuous = getattr(spec.method, "discrete", True) is False
        if self.on_unstable != "discrete" or not continuous or res.get("w") is None:
            return res  # a discrete method, or a forward pass that diverged
        ok = task_flags(res, episode.n_tasks)
        failed = np.flatnonzero(~ok)
        if failed.size == 0:
            return res
        exact = super()._hypergradient(replace(spec, method=Adjoint()), params,
                                       task_subset(episode, failed))
        return splice(res, exact, failed, ok)
