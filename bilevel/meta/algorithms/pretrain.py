"""Joint training, the "pretrained" baseline: one network fitted to all tasks at once."""

from __future__ import annotations

from dataclasses import MISSING, dataclass
from typing import Any

import numpy as np
from autograd.core import make_vjp

import bilevel.numpy as bnp

from ...backend import namespace, to_numpy
from ...registry import register
from ...validation import Validated, integer, option, positive
from .base import CHUNKS, MetaAlgorithm, meta_model, micro_batches
from .maml import MAML
from .specification import check_params, tile
from .step import MetaStep, mean_tasks

__all__ = ["Pretrain"]


def task_losses(model: Any, episode: Any, theta_t: Any) -> Any:
    """``½(L̂_i(θ_i) + L_i(θ_i))`` per task ``(T,)``: the loss over support and query sets."""
    ls = model.loss(model.apply(theta_t, episode.x_support), episode.y_support)
    lq = model.loss(model.apply(theta_t, episode.x_query), episode.y_query)
    return 0.5 * (ls + lq)


def joint_loss(model: Any, episode: Any, theta: Any) -> Any:
    """``(1/T) Σ_i ½(L̂_i(θ) + L_i(θ))``: the mean loss over support and query sets."""
    T = int(episode.x_support.shape[0])
    th = bnp.broadcast_to(theta[None, :], (T, theta.shape[0]))
    return bnp.mean(task_losses(model, episode, th))


@register("algorithm")
@dataclass(frozen=True)
class Pretrain(Validated, MetaAlgorithm):
    """Joint-training baseline: minimize the mean loss over all tasks, without adaptation.

    ``∇_θ (1/T) Σ_i ½(L̂_i(θ) + L_i(θ))`` on support and query sets together (the
    "pretrained" baseline of MAML's sinusoid experiment). Test-time adaptation runs
    ``steps`` gradient steps of ``inner_lr`` on the support loss of the full network (or
    pass any algorithm's :meth:`adapt` to compare under the same procedure).
    """

    name = "pretrain"
    model: Any = option(MISSING, check=meta_model, repr=False)
    inner_lr: float = option(0.01, check=positive)
    steps: int = option(1, check=integer(1))

    def meta_gradient(self, params: Any, episode: Any, drop_failed: bool = True,
                      chunks: int | str | None = CHUNKS) -> tuple[Any, MetaStep]:
        """Gradient of the joint loss over the meta-batch and its step (no per-task flags).

        The per-task gradients ``∇_θ ½(L̂_i + L_i)`` of ``chunks`` tasks at a time
        (``None``: all at once) are summed in task order, so the gradient does not depend
        on ``chunks``.
        """
        check_params(params, self.n_params)
        xp = namespace(params)
        grads, values = [], []
        for part in micro_batches(episode, chunks):
            theta_t = tile(params, part.n_tasks)
            vjp, value = make_vjp(lambda th, part=part: task_losses(self.model, part, th),
                                  theta_t)
            grads.append(vjp(xp.ones(tuple(value.shape), dtype=params.dtype,
                                 device=getattr(params, "device", None))))
            values.append(value)
        grad = mean_tasks(xp.concat(grads, axis=0))
        loss = mean_tasks(xp.concat(values, axis=0))
        ok = bool(np.all(np.isfinite(to_numpy(grad))))
        return grad, MetaStep(grad=grad, loss=float(to_numpy(loss)), success=ok,
                              n_grad=1, method="joint")

    def adapt(self, params: Any, x_support: Any, y_support: Any) -> Any:
        """``steps`` gradient steps of ``inner_lr`` on the support loss (as MAML)."""
        return MAML(self.model, self.inner_lr, self.steps).adapt(params, x_support, y_support)
