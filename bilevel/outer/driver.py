"""The outer loop shared by hyperparameter optimization and meta-training.

:func:`drive` repeats, for ``t = start .. steps−1``::

    step_t = step(state)                      # the front end's gradient (and history row)
    Δ, s   = optimizer.update(step_t.grad, s, θ);   θ ← project(θ + Δ)
    history ← row;  record(state, step_t);  checkpoint;  callback(state, step_t)

with one :class:`numpy.random.Generator` in the state, so that a run killed at any point
and resumed from its checkpoint (:func:`restore`) gives bit-identical parameters, optimizer
state and history to an uninterrupted run. The front ends (:func:`bilevel.hpo.minimize`,
:func:`bilevel.meta.train`) supply ``step`` and read the state; the driver owns the
optimizer step, the history, the progress bar, the memory meter and the checkpoint file.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .checkpoint import read_run, save_checkpoint
from .errors import ResumeError
from .memory import measure
from .options import Checkpointing, Monitoring

__all__ = ["LoopState", "ResumeError", "Step", "drive", "restore", "resumable"]


@dataclass
class LoopState:
    """Everything an outer loop carries from one step to the next (and checkpoints).

    Attributes
    ----------
    params : array
        The optimized variable θ.
    optimizer_state : dict
        State of the outer optimizer (arrays and integers).
    rng : numpy.random.Generator
        The run's only source of randomness.
    history : dict of lists
        One list per column; the driver appends one row per step.
    step : int
        Outer steps done.
    extra : dict
        The front end's own state (nested dicts of arrays and scalars), checkpointed.
    """

    params: Any
    optimizer_state: dict
    rng: np.random.Generator
    history: dict[str, list]
    step: int = 0
    extra: dict = field(default_factory=dict)


@dataclass
class Step:
    """One outer step as the front end reports it to the driver.

    Attributes
    ----------
    grad : array or None
        Gradient of the outer objective with respect to ``params``; None: no update.
    row : dict
        This step's history values (the driver adds the index, ``time`` and
        ``peak_memory``).
    stop : str, optional
        Stop after this step, with this message.
    failed : bool
        Stop at once: the row is recorded, but no checkpoint is written and no callback
        runs (the step is redone on resume).
    info : dict
        Front-end data for its callback.
    postfix : dict
        Shown beside the progress bar.
    """

    grad: Any
    row: dict
    stop: str | None = None
    failed: bool = False
    info: dict = field(default_factory=dict)
    postfix: dict = field(default_factory=dict)


def _payload(state: LoopState, config: dict) -> dict:
    return {"step": state.step, "params": state.params,
            "optimizer_state": state.optimizer_state, "rng": state.rng.bit_generator.state,
            "history": state.history, "config": config, "extra": state.extra}


def _differing(old: dict, new: dict) -> list[str]:
    """Fields of ``new`` that ``old`` records with another value (fields that an older
    checkpoint does not record are not compared)."""
    return [k for k in sorted(new) if k in old and old[k] != new[k]]


def _differences(old: dict, new: dict, fields: list[str]) -> str:
    return "; ".join(f"{k}: {old.get(k)!r} in the checkpoint, {new.get(k)!r} now"
                     for k in fields)


def resumable(checkpointing: Checkpointing, config: dict,
              backend: str = "numpy") -> dict | None:
    """The checkpoint (run layout) that a run of ``config`` would resume, or None.

    None when there is no checkpoint path, ``resume`` is off or the file does not exist.
    Nothing is written: call it before writing anything to refuse a mismatch early.

    Raises
    ------
    ResumeError
        When the checkpoint's ``config`` differs from ``config`` (the message lists the
        differing fields and how to start afresh; ``err.fields`` names them). Fields that
        an older checkpoint does not record are not compared.
    CheckpointError
        When the checkpoint and its previous version are unreadable.
    """
    path = checkpointing.path
    if path is None or not checkpointing.resume or not os.path.exists(path):
        return None
    ck = read_run(path, backend)
    fields = _differing(ck["config"], config)
    if fields:
        changed = _differences(ck["config"], config, fields)
        raise ResumeError(
            f"checkpoint {path!r} was written by a different run ({changed}); pass "
            "Checkpointing(path, resume=False) or another path to start afresh",
            cli=f"{path!r} was written by a different run ({changed}); rerun with the same "
                "settings, with --no-resume to start afresh, or with another --out",
            fields=tuple(fields),
        )
    return ck


def restore(state: LoopState, checkpointing: Checkpointing, config: dict,
            backend: str = "numpy") -> LoopState:
    """``state`` continued from the checkpoint :func:`resumable` finds, if any.

    Nothing is written. Columns missing from an older checkpoint's history are filled
    with NaN. Raises as :func:`resumable`.
    """
    ck = resumable(checkpointing, config, backend)
    if ck is None:
        return state
    state.rng.bit_generator.state = ck["rng"]
    history = ck["history"]
    done = len(next(iter(history.values()), []))
    for key in state.history:
        history.setdefault(key, [float("nan")] * done)
    return LoopState(params=ck["params"], optimizer_state=ck["optimizer_state"], rng=state.rng,
                     history=history, step=int(ck["step"]), extra={**state.extra, **ck["extra"]})


def shows_progress(progress: bool | None) -> bool:
    """Whether a progress bar is drawn: never for ``False``; otherwise (``None`` or ``True``)
    only when stderr is a terminal, so redirected output holds no bar frames."""
    return progress is not False and sys.stderr.isatty()


def progress_bar(iterable: Any = None, *, progress: bool | None = None, **kwargs: Any) -> Any:
    """A ``tqdm`` bar over ``iterable`` (or of ``total=...`` steps) that follows the terminal
    (:func:`shows_progress`); a disabled bar still iterates and accepts ``update`` calls.
    Every progress bar of the package is made here."""
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=not shows_progress(progress), **kwargs)


def _progress_bar(progress: bool | None, total: int, initial: int, desc: str) -> Any:
    if not shows_progress(progress):
        return None
    return progress_bar(total=total, initial=initial, desc=desc, unit="step", leave=False,
                        progress=progress)


def _update(state: LoopState, out: Step, optimizer: Any,
            project: Callable[[Any], Any] | None) -> None:
    if out.grad is None:
        return
    updates, state.optimizer_state = optimizer.update(out.grad, state.optimizer_state,
                                                      state.params)
    params = state.params + updates
    state.params = params if project is None else project(params)


def _append(history: dict[str, list], row: dict) -> None:
    for key, column in history.items():
        column.append(row[key])


def drive(
    step: Callable[[LoopState], Step],
    state: LoopState,
    optimizer: Any,
    *,
    steps: int,
    config: dict,
    checkpointing: Checkpointing | None = None,
    monitoring: Monitoring | None = None,
    index: str = "step",
    backend: str = "numpy",
    project: Callable[[Any], Any] | None = None,
    record: Callable[[LoopState, Step], None] | None = None,
    callback: Callable[[LoopState, Step], bool | None] | None = None,
    desc: str = "outer",
) -> str | None:
    """Run outer steps ``state.step .. steps−1``; return why it stopped early, or None.

    Parameters
    ----------
    step : callable
        ``step(state) -> Step``: the front end's gradient for the current ``params``
        (drawing any randomness from ``state.rng``). Timed, and measured by the memory meter
        of ``monitoring`` on the steps it measures.
    state : LoopState
        Start state (after :func:`restore`); updated in place.
    optimizer
        Outer optimizer with ``update(grads, state, params) -> (updates, state)``.
    steps : int
        Total number of outer steps.
    config : dict
        JSON-able settings that a resumed run must share; stored in the checkpoint.
    checkpointing, monitoring
        Checkpoint file and progress bar / memory meter options.
    index : str
        Name of the history column holding the step number.
    backend : str
        Array backend (memory meter).
    project : callable, optional
        Applied to the parameters after each update (e.g. clipping to a box).
    record : callable, optional
        ``record(state, step)``, after the update and before the checkpoint (front-end
        bookkeeping that the checkpoint must include, e.g. evaluations).
    callback : callable, optional
        ``callback(state, step) -> bool`` after the scheduled checkpoint; True stops.

    Returns
    -------
    str or None
        The stop message (from a :class:`Step` or the callback), or None after ``steps``.

    Notes
    -----
    Cost: one ``step`` and one optimizer update per outer step, plus one checkpoint write
    every ``checkpointing.every`` steps (a host copy of θ, the optimizer state and the
    front end's extra state). The checkpoint is also written at the last step and when
    the loop stops early (except after a failed step), so no finished step is lost.
    """
    checkpointing = checkpointing or Checkpointing()
    monitoring = monitoring or Monitoring()
    path = checkpointing.path
    bar = _progress_bar(monitoring.progress, steps, state.step, desc)
    try:
        for t in range(state.step, steps):
            t0 = time.perf_counter()
            out, peak = measure(lambda: step(state), monitoring.meter(t), backend)
            _update(state, out, optimizer, project)
            _append(state.history, {**out.row, index: t, "time": time.perf_counter() - t0,
                                    "peak_memory": peak})
            state.step = t + 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(**out.postfix)
            if out.failed:
                return out.stop
            if record is not None:
                record(state, out)
            saved = path is not None and (state.step % checkpointing.every == 0
                                          or state.step == steps)
            if saved:
                save_checkpoint(path, _payload(state, config))
            stop = out.stop
            if callback is not None and callback(state, out) and stop is None:
                stop = f"stopped by the callback after outer step {t}"
            if stop is not None:
                if path is not None and not saved:
                    save_checkpoint(path, _payload(state, config))
                return stop
    finally:
        if bar is not None:
            bar.close()
    return None
