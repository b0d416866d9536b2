"""The result of one meta-step: :class:`MetaStep`, and the task average it reports.

A meta-step turns the per-task hypergradients ``∇_{λ_i} L_i`` of a meta-batch into one
meta-gradient ``(1/|S|) Σ_{i∈S} ∇_{λ_i} L_i`` over the tasks ``S`` that passed their
diagnostics (all tasks when the method reports none), with the diagnostics an outer loop
reads: loss, success, per-task success, work counts.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from ...api import HypergradResult
from ...backend import namespace, to_numpy

__all__ = ["MetaStep", "mean_tasks"]


def mean_tasks(x: Any, mask: Any = None) -> Any:
    """Mean over the task axis, over the tasks where ``mask`` is true when given.

    Failed tasks enter through ``where`` (not a multiplication by 0), so a non-finite
    gradient of a dropped task does not reach the mean. An all-false mask gives the plain
    mean (the caller sees ``success_fraction = 0`` and skips the update).
    """
    xp = namespace(x)
    if mask is None:
        return xp.mean(x, axis=0)
    mask = xp.asarray(mask)
    count = int(xp.sum(xp.astype(mask, xp.int64)))
    if count == 0 or count == int(x.shape[0]):
        return xp.mean(x, axis=0)
    keep = xp.reshape(mask, (-1,) + (1,) * (len(x.shape) - 1))
    return xp.sum(xp.where(keep, x, xp.zeros_like(x)), axis=0) / count


def _task_success(res: HypergradResult) -> np.ndarray | None:
    """Per-task success flags ``(T,)`` (NumPy bool) of a batched result, when reported."""
    mask = res.get("problem_success")
    if mask is None or len(getattr(mask, "shape", ())) != 1:
        return None
    return to_numpy(mask).astype(bool)


def _worst(res: HypergradResult, key: str) -> float | None:
    value = res.get(key)
    return None if value is None else float(np.max(to_numpy(value)))


DIAGNOSTICS = ("inner_residual", "linear_iterations", "linear_residual")
NOT_KEYS = ("diagnostics", "result")


@dataclass(frozen=True, eq=False)
class MetaStep(Mapping):
    """One meta-step: the meta-gradient and its diagnostics.

    Read as attributes (``step.loss``) or as a read-only mapping (``step["loss"]``,
    ``step.get("inner_residual")``, ``dict(step)``); the entries of ``diagnostics`` are
    keys of the mapping too.

    Attributes
    ----------
    grad : array
        The meta-gradient, shape of the meta-parameters.
    loss : float
        Mean post-adaptation meta-objective over the tasks (NaN after a failure).
    success : bool
        Every task passed its diagnostics.
    message : str
        What happened, in words.
    task_success : numpy.ndarray or None
        Per-task flags ``(T,)`` where the method reports them (``problem_success`` of
        :class:`bilevel.Implicit`), else ``None``.
    success_fraction : float
        Fraction of the tasks that passed (``success`` as 0/1 without per-task flags).
    n_grad, n_hvp, n_jvp : int
        Gradients, Hessian/mixed vector products and Jacobian-vector products spent.
    method : str
        The hypergradient method (``repr``), or what replaced it (``"reptile"``, ``"joint"``).
    diagnostics : dict
        Method diagnostics reduced to the worst task: ``inner_residual``,
        ``linear_iterations``, ``linear_residual`` where reported.
    result : HypergradResult or None
        The batched result behind the step (per-task λ-gradients in ``result.grad``).
    """

    grad: Any
    loss: float
    success: bool
    message: str = "ok"
    task_success: np.ndarray | None = None
    success_fraction: float | None = None
    n_grad: int = 0
    n_hvp: int = 0
    n_jvp: int = 0
    method: str = ""
    diagnostics: dict[str, float] = field(default_factory=dict)
    result: HypergradResult | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.success_fraction is None:
            fraction = (float(np.mean(self.task_success)) if self.task_success is not None
                        else float(bool(self.success)))
            object.__setattr__(self, "success_fraction", fraction)

    @classmethod
    def of(cls, res: HypergradResult, grad: Any = None) -> MetaStep:
        """The meta-step of a batched :class:`bilevel.HypergradResult` (and meta-gradient).

        ``loss`` is the task mean of ``res.value``, ``task_success`` the result's
        ``problem_success``, the diagnostics its worst task's.
        """
        mask = _task_success(res)
        worst = {key: _worst(res, key) for key in DIAGNOSTICS}
        return cls(
            grad=grad,
            loss=float(np.mean(to_numpy(res.value))) if res.get("w") is not None else np.nan,
            success=bool(res.success),
            message=str(res.message),
            task_success=mask,
            n_grad=int(res.get("n_grad", 0)),
            n_hvp=int(res.get("n_hvp", 0)),
            n_jvp=int(res.get("n_jvp", 0)),
            method=str(res.get("method", "")),
            diagnostics={k: v for k, v in worst.items() if v is not None},
            result=res,
        )

    # -- read-only mapping over the fields and the diagnostics --------------------------
    def _names(self) -> list[str]:
        own = [f.name for f in fields(self) if f.name not in NOT_KEYS]
        return own + list(self.diagnostics)

    def __getitem__(self, key: str) -> Any:
        if key in self.diagnostics:
            return self.diagnostics[key]
        if key in self._names():
            return getattr(self, key)
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())
