"""A-MAML's test protocol: fine-tune every weight with Adam and record the RMSE curve.

At meta-test time A-MAML (Li et al., AISTATS 2023, and its released code) starts each
test task from the meta-learned ``θ``, fine-tunes all weights on the task's support set
with Adam (step 1e-3, weight decay 1e-6: ``(wd)·w`` added to the gradient, as
``torch.optim.Adam``) and reports the root-mean-square error on the task's test points
against the number of epochs (one full-batch step per epoch).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..backend import to_numpy
from ..optim import Adam
from .algorithms import MAML

__all__ = ["finetune_curve"]


def finetune_curve(model: Any, theta: Any, episode: Any, epochs: Sequence[int] = (0, 10, 100),
                   lr: float = 1e-3, weight_decay: float = 1e-6) -> dict[str, Any]:
    """RMSE on the query sets after ``e`` epochs of Adam on the support sets, ``e ∈ epochs``.

    Every task of ``episode`` starts from ``theta`` (its own copy, ``(T, n)``); an epoch is
    one step ``w ← w + Adam(∇L̂_i(w) + wd·w)`` on the task's whole support set. Cost
    ``max(epochs)`` batched gradients of the support loss, memory O(T·n).

    Returns
    -------
    dict
        ``epochs`` (sorted list), ``rmse`` (mean over tasks, one per epoch count) and
        ``rmse_per_task`` (NumPy ``(len(epochs), T)``).
    """
    marks = sorted({int(e) for e in epochs})
    if not marks or marks[0] < 0:
        raise ValueError(f"epochs must be non-negative integers, got {epochs!r}")
    problem, lam, _ = MAML(model).problem(theta, episode.x_support, episode.y_support)
    w = lam
    opt = Adam(lr)
    state = opt.init(w)
    rows = []
    for epoch in range(marks[-1] + 1):
        if epoch in marks:
            pred = model.apply(w, episode.x_query)
            rows.append(np.sqrt(to_numpy(model.loss(pred, episode.y_query)).astype(float)))
        if epoch < marks[-1]:
            step, state = opt.update(problem.inner_grad(w, lam) + weight_decay * w, state, w)
            w = w + step
    per_task = np.stack(rows)
    return {"epochs": marks, "rmse": per_task.mean(axis=1), "rmse_per_task": per_task}
