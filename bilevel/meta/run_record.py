"""What a meta-training run writes and checks on resume: its checkpoint and its fingerprint.

A checkpoint (:func:`save_checkpoint`, in the outer-loop format of
:mod:`bilevel.outer.checkpoint`) holds the parameters, the optimizer state, the generator
state, the iteration, the history and the evaluations; the fingerprint
(:func:`fingerprint`) is the run's configuration, field by field, stored beside them so
that a resume with another configuration is refused.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..outer import describe, read_run
from ..outer.checkpoint import save_checkpoint as _save_tree
from ..outer.fingerprint import public_fields
from .algorithms import MetaAlgorithm

__all__ = ["EVAL_KEYS", "HISTORY_KEYS", "empty", "fingerprint", "load_checkpoint",
           "save_checkpoint"]

HISTORY_KEYS = ("iteration", "loss", "time", "peak_memory", "success", "success_fraction",
                "applied", "n_grad", "n_hvp")
EVAL_KEYS = ("iteration", "loss", "loss_ci", "accuracy", "accuracy_ci")


def empty(keys: tuple[str, ...]) -> dict[str, list]:
    """An empty history: one list per key."""
    return {k: [] for k in keys}


# ------------------------------------------------------------------ checkpoints
def save_checkpoint(path: str | os.PathLike, *, params: Any, opt_state: dict[str, Any],
                    rng: np.random.Generator, iteration: int, history: dict, evaluations: dict,
                    config: dict[str, Any]) -> None:
    """Write a meta-training checkpoint atomically, in the outer-loop format
    (:mod:`bilevel.outer.checkpoint`): parameters, optimizer state, generator state,
    iteration, history, evaluations and the run configuration."""
    _save_tree(path, {"step": int(iteration), "params": params, "optimizer_state": opt_state,
                      "rng": rng.bit_generator.state, "history": history, "config": config,
                      "extra": {"evaluations": evaluations}})


def load_checkpoint(path: str | os.PathLike, backend: str = "numpy") -> dict[str, Any]:
    """Read a meta-training checkpoint (this version's format or the earlier one).

    Returns a dict with ``params``, ``opt_state`` (arrays on ``backend``), ``rng_state``,
    ``iteration``, ``history``, ``evaluations`` and ``config``.
    """
    ck = read_run(path, backend)
    return {"params": ck["params"], "opt_state": ck["optimizer_state"], "rng_state": ck["rng"],
            "iteration": int(ck["step"]), "history": ck["history"],
            "evaluations": ck["extra"].get("evaluations", empty(EVAL_KEYS)),
            "config": ck["config"]}


def fingerprint(algorithm: MetaAlgorithm, sampler: Any, optimizer: Any, seed: int,
                meta_batch: int, theta0: Any = None, parts: int | None = None) -> dict[str, Any]:
    """What determines a meta-training run, field by field (stored in its checkpoint; a
    resume is refused when a field differs): the algorithm's ``repr`` and its options, the
    model, the task sampler, the outer optimizer, the seed, the meta-batch, θ0
    (``"init"`` for the algorithm's seeded initialization) and the number of parts of a
    split meta-batch (``None``: unsplit). Cost: one hash of every array these hold
    (:func:`bilevel.outer.describe`)."""
    options = {k: v for k, v in public_fields(algorithm).items() if k != "model"}
    return {"algorithm": repr(algorithm), "algorithm_options": describe(options),
            "model": describe(getattr(algorithm, "model", None)), "tasks": describe(sampler),
            "optimizer": describe(optimizer), "seed": int(seed), "meta_batch": meta_batch,
            "theta0": "init" if theta0 is None else describe(theta0),
            "parts": None if parts is None else int(parts)}
