"""The result of one meta-step: :class:`MetaStep`, and the task average it reports.

A meta-step turns the per-task hypergradients ``∇_{λ_i} L_i`` of a meta-batch into one
meta-gradient ``(1/|S|) Σ_{i∈S} ∇_{λ_i} L_i`` over the tasks ``S`` that passed their
diagnostics (all tasks when the method reports none), with the diagnostics an outer loop
reads: loss, success, per-task success, work counts.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from ...api import HypergradResult
from ...backend import is_array, namespace, to_numpy

__all__ = ["MetaStep", "join_results", "mean_tasks", "sum_tasks"]


def sum_tasks(x: Any) -> Any:
    """``Σ_i x_i`` over the task axis, added one task at a time in task order.

    ``((x_0 + x_1) + x_2) + …``: the same order whatever the batch or micro-batch sizes
    behind ``x``, so meta-gradients from micro-batches equal the one-batch result bit for
    bit. ``T − 1`` additions of one task's size (no ``(T, …)`` temporary).
    """
    total = x[0, ...]
    for i in range(1, int(x.shape[0])):
        total = total + x[i, ...]
    return total


def mean_tasks(x: Any, mask: Any = None) -> Any:
    """Mean over the task axis, over the tasks where ``mask`` is true when given.

    The sum runs in task order (:func:`sum_tasks`). Failed tasks enter through ``where``
    (not a multiplication by 0), so a non-finite gradient of a dropped task does not reach
    the mean. An all-false mask gives the plain mean (the caller sees
    ``success_fraction = 0`` and skips the update).
    """
    xp = namespace(x)
    T = int(x.shape[0])
    if mask is None:
        return sum_tasks(x) / T
    mask = xp.asarray(mask, device=getattr(x, "device", None))
    count = int(xp.sum(xp.astype(mask, xp.int64)))
    if count == 0 or count == T:
        return sum_tasks(x) / T
    keep = xp.reshape(mask, (-1,) + (1,) * (len(x.shape) - 1))
    return sum_tasks(xp.where(keep, x, xp.zeros_like(x))) / count


def _rows(value: Any, n: int) -> bool:
    """``value`` is an array of ``n`` per-task rows."""
    return is_array(value) and len(value.shape) > 0 and int(value.shape[0]) == n


def _fill(value: Any, like: Any, n: int) -> Any:
    """``value`` as ``n`` rows shaped like ``like``'s: itself, or NaN (False) rows."""
    if _rows(value, n):
        return value
    xp = namespace(like)
    shape = (n,) + tuple(like.shape[1:])
    device = getattr(like, "device", None)
    if like.dtype == xp.bool:
        return xp.zeros(shape, dtype=xp.bool, device=device)
    return xp.full(shape, float("nan"), dtype=like.dtype, device=device)


def _join(key: str, values: list[Any], sizes: list[int]) -> Any:
    pairs = list(zip(values, sizes, strict=True))
    rows = [v for v, n in pairs if _rows(v, n)]
    if rows:  # per-task entries; a failed micro-batch's rows are NaN (False)
        return namespace(rows[0]).concat([_fill(v, rows[0], n) for v, n in pairs], axis=0)
    if key == "time":
        return sum(values)
    if all(isinstance(v, (bool, np.bool_)) for v in values):
        return all(values)
    if all(isinstance(v, (int, np.integer)) for v in values):
        return max(values)
    if all(isinstance(v, (int, float, np.number)) for v in values):
        return np.max(np.asarray(values, dtype=float)).item()  # the worst; NaN wins
    return values[0]


def join_results(results: list[HypergradResult], sizes: list[int]) -> HypergradResult:
    """One batched result from the results of consecutive micro-batches of a meta-batch.

    Per-task entries (``grad``, ``w``, ``value``, ``problem_success``, ...) are
    concatenated in task order, with NaN (or False) rows for a micro-batch that failed as
    a whole; times add up; ``success`` holds when every micro-batch succeeded; other
    numbers report the worst micro-batch (so the counts ``n_grad``, ... are those of the
    meta-batch's batched oracles, as in one batch); ``message`` is the first failure's.
    """
    if len(results) == 1:
        return results[0]
    keys = list(dict.fromkeys(k for res in results for k in res))
    joined = HypergradResult({key: _join(key, [res.get(key) for res in results], sizes)
                              for key in keys})
    failed = [res for res in results if not res.get("success", True)]
    if failed:
        joined["message"] = str(failed[0].get("message"))
    return joined


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
        # a diagnostic the method deferred (the unrolled methods' inner_residual costs one
        # more inner gradient) stays deferred until the step is read for it
        worst = {key: _worst(res, key) for key in DIAGNOSTICS if not res.deferred(key)}
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
    def _lazy(self) -> list[str]:
        """Diagnostics the result deferred and nobody has read yet."""
        res = self.result
        if res is None:
            return []
        return [k for k in DIAGNOSTICS if k not in self.diagnostics and res.deferred(k)]

    def _names(self) -> list[str]:
        own = [f.name for f in fields(self) if f.name not in NOT_KEYS]
        return own + list(self.diagnostics) + self._lazy()

    def __getitem__(self, key: str) -> Any:
        if key in self._lazy():
            self.diagnostics[key] = _worst(self.result, key)
        if key in self.diagnostics:
            return self.diagnostics[key]
        if key in self._names():
            return getattr(self, key)
        raise KeyError(key)

    def settled(self) -> MetaStep:
        """This step with its deferred diagnostics computed and without the per-task result
        (what travels between processes: ``O(T·n)`` less)."""
        for key in self._lazy():
            self.diagnostics[key] = _worst(self.result, key)
        return replace(self, result=None)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())
