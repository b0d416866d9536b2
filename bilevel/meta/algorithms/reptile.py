"""Reptile (Nichol, Achiam & Schulman, 2018): the first-order direction ``θ − mean_i φ_i``.

``θ ← θ + ε((1/T) Σ_i φ_i − θ)`` with ``φ_i`` from ``steps`` gradient steps on the support
loss from ``θ``. The meta-gradient is the Reptile direction ``θ − (1/T) Σ_i φ_i``, so
``SGD(lr=ε)`` reproduces the update exactly (Adam gives the Adam variant). No
hypergradient is computed.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass
from typing import Any

from ...api import HypergradResult, failure_result
from ...problem import NonFiniteError
from ...registry import register
from ...validation import Validated, integer, option, positive
from .base import CHUNKS, MetaAlgorithm, meta_model, micro_batches
from .maml import MAML
from .specification import unroll
from .step import MetaStep, join_results, mean_tasks

__all__ = ["Reptile"]


@register("algorithm")
@dataclass(frozen=True)
class Reptile(Validated, MetaAlgorithm):
    """Reptile: the direction ``θ − (1/T) Σ_i φ_i`` of first-order MAML's adaptation.

    Notes
    -----
    Memory O(n) per task; time ``steps`` gradients per task.
    """

    name = "reptile"
    model: Any = option(MISSING, check=meta_model, repr=False)
    inner_lr: float = option(0.01, check=positive)
    steps: int = option(5, check=integer(1))

    @property
    def maml(self) -> MAML:
        """First-order MAML with the same inner loop (its adaptation is Reptile's)."""
        return MAML(self.model, self.inner_lr, self.steps, first_order=True)

    def meta_gradient(self, params: Any, episode: Any, drop_failed: bool = True,
                      chunks: int | str | None = CHUNKS) -> tuple[Any, MetaStep]:
        """The Reptile direction ``θ − (1/T) Σ_i φ_i`` and its step (no per-task flags).

        ``chunks`` tasks are adapted at a time (``None``: all at once); the task sum runs
        in task order, so the direction does not depend on ``chunks``.
        """
        results, sizes = [], []
        for part in micro_batches(episode, chunks):
            results.append(self._adapted(params, part))
            sizes.append(part.n_tasks)
        res = join_results(results, sizes)
        grad = (params - mean_tasks(res.w) if res.success and res.get("w") is not None
                else res.grad[0])
        res.update(method="reptile", grad=grad)
        return grad, MetaStep.of(res, grad)

    def _adapted(self, params: Any, episode: Any) -> HypergradResult:
        """The adapted ``φ_i`` of a micro-batch as a result (``w``, ``value``, counts)."""
        maml = self.maml
        spec = maml.specification()
        problem, lam, w0 = maml.problem(params, episode.x_support, episode.y_support,
                                        episode.x_query, episode.y_query)
        before = problem.counts.grad
        try:
            w = unroll(spec, problem, lam, w0)
            res = HypergradResult(w=w, value=problem.outer_value(w, lam), success=True,
                                  message="ok")
        except NonFiniteError as err:
            res = failure_result(lam, f"non-finite {err.what} at inner step "
                                      f"{getattr(err, 'step', None)}: lower inner_lr")
        res.update(n_grad=problem.counts.grad - before)
        return res

    def adapt(self, params: Any, x_support: Any, y_support: Any) -> Any:
        """``steps`` gradient steps on the support loss from ``θ`` (as first-order MAML)."""
        return self.maml.adapt(params, x_support, y_support)

