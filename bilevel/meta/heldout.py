"""Evaluation of meta-parameters on held-out tasks, with 95% confidence intervals.

:func:`evaluate` adapts each held-out task on its support set (``algorithm.adapt``) and
scores the query set; :func:`held_out_episodes` draws the tasks once, reproducibly from a
seed, so that every evaluation of a run sees the same tasks.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..validation import integer
from .algorithms import MetaAlgorithm

__all__ = ["evaluate", "held_out_episodes"]


def _ci95(x: np.ndarray) -> float:
    """Half-width of the 95% normal confidence interval of the mean of ``x``."""
    x = x[np.isfinite(x)]
    if x.size < 2:
        return float("nan")
    return float(1.96 * x.std(ddof=1) / math.sqrt(x.size))


def evaluate(
    algorithm: MetaAlgorithm,
    params: Any,
    sampler: Any,
    n_tasks: int = 100,
    *,
    seed: Any = 0,
    batch: int = 25,
    episodes: list | None = None,
) -> dict[str, float]:
    """Post-adaptation query loss and accuracy on held-out tasks, with 95% intervals.

    Each task is adapted on its support set by ``algorithm.adapt`` and scored on its query
    set. Returns ``loss``, ``loss_ci``, ``accuracy``, ``accuracy_ci`` (NaN accuracy for
    models without one) and ``n_tasks``. Tasks come from ``sampler`` with the generator
    ``default_rng(seed)`` in batches of ``batch`` (memory O(batch)), or from ``episodes``.
    """
    if episodes is None:
        integer(1)("n_tasks", n_tasks)
        episodes = held_out_episodes(sampler, n_tasks, seed=seed, batch=batch)
    losses, accs = [], []
    for ep in episodes:
        out = algorithm.evaluate(params, ep)
        losses.append(out["loss"])
        accs.append(out.get("accuracy", np.full_like(out["loss"], np.nan)))
    loss, acc = np.concatenate(losses), np.concatenate(accs)
    return {
        "loss": float(np.mean(loss)),
        "loss_ci": _ci95(loss),
        "accuracy": float(np.mean(acc)) if np.all(np.isfinite(acc)) else float("nan"),
        "accuracy_ci": _ci95(acc) if np.all(np.isfinite(acc)) else float("nan"),
        "n_tasks": int(loss.size),
    }


def held_out_episodes(sampler: Any, n_tasks: int, *, seed: Any = 0, batch: int = 25) -> list:
    """``n_tasks`` tasks from ``sampler`` as a list of episodes of at most ``batch`` tasks."""
    rng = np.random.default_rng(seed)
    out, left = [], int(n_tasks)
    while left > 0:
        out.append(sampler.sample(min(batch, left), rng))
        left -= min(batch, left)
    return out
