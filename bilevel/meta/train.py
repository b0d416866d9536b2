"""Meta-training: the outer loop, evaluation on held-out tasks, exact checkpoint/resume.

:func:`train` repeats ``episode = sampler.sample(meta_batch, rng)``,
``grad = algorithm.meta_gradient(θ, episode)``, ``θ ← θ + optimizer.update(grad)``, records
a history and writes checkpoints. Randomness comes from one :class:`numpy.random.Generator`
seeded by ``seed`` whose state is checkpointed with the parameters, the optimizer state,
the iteration and the history, so a run killed at any point and resumed gives
bit-identical parameters to an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
import tracemalloc
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..backend import name_of, namespace, to_backend, to_numpy
from ..optim import Adam, Optimizer
from .algorithms import MetaAlgorithm

__all__ = [
    "MetaTrainingError",
    "MetaTrainingWarning",
    "TrainResult",
    "evaluate",
    "load_checkpoint",
    "save_checkpoint",
    "train",
]

HISTORY_KEYS = ("iteration", "loss", "time", "peak_memory", "success", "success_fraction",
                "applied", "n_grad", "n_hvp")
EVAL_KEYS = ("iteration", "loss", "loss_ci", "accuracy", "accuracy_ci")
_FORMAT = "bilevel.meta.checkpoint/1"


class MetaTrainingError(RuntimeError):
    """Meta-training cannot continue (non-finite meta-gradient, mismatched checkpoint)."""


class MetaTrainingWarning(RuntimeWarning):
    """Many meta-gradients fail their diagnostics (issued once per :func:`train` call)."""


@dataclass
class TrainResult:
    """Outcome of :func:`train`.

    Attributes
    ----------
    theta : array
        Final meta-parameters.
    history : dict
        Per iteration (lists of equal length): ``iteration``, ``loss`` (mean meta-objective
        after adaptation), ``time`` (seconds of the iteration), ``peak_memory`` (bytes of
        host memory allocated during the meta-gradient, measured every ``memory_every``
        iterations, NaN otherwise), ``success`` (every task of the meta-batch passed its
        diagnostics), ``success_fraction`` (fraction of tasks that passed), ``applied``
        (the update was made), ``n_grad``, ``n_hvp``.
    evaluations : dict
        Per evaluation: ``iteration``, ``loss``, ``loss_ci``, ``accuracy``,
        ``accuracy_ci`` (95% normal confidence half-widths over the held-out tasks).
    start_iteration : int
        Iteration this call started from (non-zero after a resume).
    """

    theta: Any
    history: dict[str, list] = field(default_factory=dict)
    evaluations: dict[str, list] = field(default_factory=dict)
    start_iteration: int = 0


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
        if int(n_tasks) != n_tasks or n_tasks < 1:
            raise ValueError(f"n_tasks must be a positive integer, got {n_tasks!r}")
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


# ------------------------------------------------------------------ checkpoints
def _state_arrays(opt_state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    arrays, scalars = {}, {}
    for k, v in opt_state.items():
        if hasattr(v, "shape") and len(v.shape) > 0:
            arrays[k] = to_numpy(v)
        else:
            scalars[k] = v.item() if hasattr(v, "item") else v
    return arrays, scalars


def save_checkpoint(path: str | os.PathLike, *, params: Any, opt_state: dict[str, Any],
                    rng: np.random.Generator, iteration: int, history: dict, evaluations: dict,
                    config: dict[str, Any]) -> None:
    """Write a checkpoint atomically: a temporary file in the same folder, then a rename.

    The file is a NumPy ``.npz`` archive (no pickles): ``params``, the optimizer's arrays
    under ``opt/<name>`` and a JSON document with the iteration, the optimizer's scalars,
    the generator state, the history, the evaluations and the run configuration. A crash
    during the write leaves the previous checkpoint intact.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    arrays, scalars = _state_arrays(opt_state)
    meta = {
        "format": _FORMAT,
        "iteration": int(iteration),
        "opt_scalars": scalars,
        "rng": rng.bit_generator.state,
        "history": history,
        "evaluations": evaluations,
        "config": config,
    }
    payload = {"params": to_numpy(params), "meta": np.array(json.dumps(meta))}
    payload.update({f"opt/{k}": v for k, v in arrays.items()})
    fd, tmp = tempfile.mkstemp(prefix=".ckpt-", suffix=".npz", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str | os.PathLike, backend: str = "numpy") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Returns a dict with ``params``, ``opt_state`` (arrays on ``backend``), ``rng_state``,
    ``iteration``, ``history``, ``evaluations`` and ``config``.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path!r}")
    with np.load(path, allow_pickle=False) as z:
        if "meta" not in z.files or "params" not in z.files:
            raise ValueError(f"{path!r} is not a bilevel.meta checkpoint (no params/meta)")
        meta = json.loads(str(z["meta"]))
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{path!r} has format {meta.get('format')!r}, expected {_FORMAT!r}")
        params = to_backend(np.array(z["params"]), backend)
        opt_state = dict(meta["opt_scalars"])
        for k in z.files:
            if k.startswith("opt/"):
                opt_state[k[4:]] = to_backend(np.array(z[k]), backend)
    return {
        "params": params,
        "opt_state": opt_state,
        "rng_state": meta["rng"],
        "iteration": int(meta["iteration"]),
        "history": meta["history"],
        "evaluations": meta["evaluations"],
        "config": meta["config"],
    }


# ------------------------------------------------------------------ training loop
def _measure(fn: Callable[[], Any], measure: bool) -> tuple[Any, float]:
    """``fn()`` and the peak host memory it allocated (tracemalloc), NaN when not measured."""
    if not measure:
        return fn(), float("nan")
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    try:
        out = fn()
        peak = float(tracemalloc.get_traced_memory()[1] - base)
    finally:
        if started:
            tracemalloc.stop()
    return out, peak


def _empty(keys: tuple[str, ...]) -> dict[str, list]:
    return {k: [] for k in keys}


def _check_positive_int(name: str, value: Any, allow_zero: bool = False) -> int:
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or int(value) != value or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def train(
    algorithm: MetaAlgorithm,
    sampler: Any,
    theta0: Any = None,
    steps: int = 1000,
    meta_batch: int = 25,
    optimizer: Optimizer | None = None,
    *,
    seed: int = 0,
    eval_every: int = 0,
    eval_tasks: int = 100,
    eval_sampler: Any = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 100,
    resume: bool = True,
    progress: bool = True,
    memory_every: int = 0,
    callback: Callable[[int, Any, dict], None] | None = None,
    on_failure: str = "drop",
    failure_window: int = 20,
    failure_warn: float = 0.5,
) -> TrainResult:
    """Meta-train ``algorithm`` on tasks from ``sampler``.

    Parameters
    ----------
    algorithm
        A :class:`bilevel.meta.algorithms.MetaAlgorithm`.
    sampler
        Task sampler: ``sample(n_tasks, rng) -> Episode`` and ``backend``.
    theta0
        Initial meta-parameters (default ``algorithm.init(default_rng([seed, 1]), backend)``).
    steps
        Total number of meta-iterations (a resumed run continues up to ``steps``).
    meta_batch
        Tasks per meta-iteration.
    optimizer
        Outer optimizer (default ``Adam(1e-3)``).
    seed
        Seeds the training task stream and the initialization.
    eval_every, eval_tasks, eval_sampler
        Every ``eval_every`` iterations (0: never, except at the end when positive),
        evaluate on ``eval_tasks`` held-out tasks of ``eval_sampler`` (default ``sampler``),
        drawn once from ``default_rng([seed, 2])``.
    checkpoint, checkpoint_every, resume
        Path of the checkpoint file, written atomically every ``checkpoint_every``
        iterations and at the end; with ``resume`` an existing file is loaded and training
        continues from it (its seed, meta-batch, algorithm and optimizer must match).
    progress
        Show a tqdm progress bar with the current meta-loss.
    memory_every
        Measure the peak host memory of the meta-gradient with ``tracemalloc`` every
        ``memory_every`` iterations (0: never). tracemalloc slows Python allocation
        several-fold, hence the option; the measured iterations' ``time`` includes it.
    callback
        ``callback(iteration, params, history)`` after each iteration (and after its
        checkpoint); an exception from it stops training (used to test kill-and-resume).
    on_failure
        What to do when diagnostics report a failure (``info["success"]`` False: a CG
        breakdown, an unconverged solve or inner problem, ...):

        * ``"drop"`` (default): drop the failing tasks. Algorithms whose method reports
          per-task diagnostics (``info["task_success"]``: iMAML, MemoryReduced and CML on
          them, through :class:`bilevel.Implicit`'s ``problem_success``) average the
          meta-gradient over the tasks that passed; the update is skipped only when none
          passed. Algorithms with whole-batch diagnostics skip the update on failure.
        * ``"skip"``: skip the update whenever any task failed.
        * ``"apply"``: apply the mean over all tasks anyway.
        * ``"raise"``: raise :class:`MetaTrainingError`.

        Every iteration records ``success``, ``success_fraction`` and ``applied``.
    failure_window, failure_warn
        Warn (:class:`MetaTrainingWarning`, once per call) when the mean fraction of
        failing tasks over the last ``failure_window`` iterations exceeds ``failure_warn``
        (a sign of a bad configuration: inner step size, damping, ...).

    Returns
    -------
    TrainResult

    Raises
    ------
    MetaTrainingError
        On a non-finite meta-gradient (with the algorithm's diagnostic message) or a
        checkpoint from a different configuration.
    """
    if not isinstance(algorithm, MetaAlgorithm):
        raise TypeError(f"algorithm must be a MetaAlgorithm, got {type(algorithm).__name__}")
    if not hasattr(sampler, "sample"):
        raise TypeError(f"sampler must have sample(n_tasks, rng), got {type(sampler).__name__}")
    steps = _check_positive_int("steps", steps)
    meta_batch = _check_positive_int("meta_batch", meta_batch)
    eval_every = _check_positive_int("eval_every", eval_every, allow_zero=True)
    checkpoint_every = _check_positive_int("checkpoint_every", checkpoint_every)
    memory_every = _check_positive_int("memory_every", memory_every, allow_zero=True)
    optimizer = Adam(1e-3) if optimizer is None else optimizer
    if on_failure not in ("drop", "skip", "apply", "raise"):
        raise ValueError(
            f"on_failure must be 'drop', 'skip', 'apply' or 'raise', got {on_failure!r}"
        )
    failure_window = _check_positive_int("failure_window", failure_window)
    if not (isinstance(failure_warn, (int, float)) and 0 <= failure_warn <= 1):
        raise ValueError(f"failure_warn must be a number in [0, 1], got {failure_warn!r}")
    backend = getattr(sampler, "backend", None) or "numpy"
    config = {"algorithm": repr(algorithm), "optimizer": repr(optimizer), "seed": int(seed),
              "meta_batch": meta_batch}

    rng = np.random.default_rng([int(seed), 0])
    if theta0 is None:
        params = algorithm.init(np.random.default_rng([int(seed), 1]), backend)
    else:
        params = theta0
    opt_state = optimizer.init(params)
    history, evaluations, start = _empty(HISTORY_KEYS), _empty(EVAL_KEYS), 0
    if checkpoint is not None and resume and os.path.exists(checkpoint):
        ck = load_checkpoint(checkpoint, backend=name_of(params))
        if ck["config"] != config:
            raise MetaTrainingError(
                f"checkpoint {os.fspath(checkpoint)!r} was written by a different run: "
                f"{ck['config']} != {config}; pass resume=False or another path"
            )
        params, opt_state = ck["params"], ck["opt_state"]
        rng.bit_generator.state = ck["rng_state"]
        history, evaluations, start = ck["history"], ck["evaluations"], ck["iteration"]
        for key in HISTORY_KEYS:  # checkpoints written before a key existed
            history.setdefault(key, [float("nan")] * len(history["iteration"]))

    eval_episodes = None
    if eval_every:
        eval_episodes = held_out_episodes(eval_sampler or sampler, eval_tasks,
                                          seed=[int(seed), 2], batch=meta_batch)

    from tqdm.auto import tqdm

    drop = on_failure == "drop"
    warned = False
    bar = tqdm(total=steps, initial=start, disable=not progress, desc=type(algorithm).__name__)
    try:
        for it in range(start, steps):
            t0 = time.perf_counter()
            episode = sampler.sample(meta_batch, rng)
            measure = bool(memory_every) and it % memory_every == 0
            (grad, info), peak = _measure(
                lambda p=params, ep=episode: algorithm.meta_gradient(p, ep, drop_failed=drop),
                measure,
            )
            ok = bool(info.get("success", True))
            fraction = float(info.get("success_fraction", 1.0 if ok else 0.0))
            if not ok and on_failure == "raise":
                raise MetaTrainingError(
                    f"meta-gradient diagnostics failed at iteration {it}: {info.get('message')}"
                )
            if on_failure == "apply":
                apply = True
            elif drop and info.get("task_success") is not None:
                apply = fraction > 0
            else:
                apply = ok
            xp = namespace(grad)
            masked = info.get("task_success") is not None
            if (apply or not masked) and not bool(xp.all(xp.isfinite(grad))):
                raise MetaTrainingError(
                    f"non-finite meta-gradient at iteration {it}: {info.get('message')}; lower "
                    "the inner or outer step size, or add damping"
                )
            if apply:
                updates, opt_state = optimizer.update(grad, opt_state, params)
                params = params + updates
            for key, val in (("iteration", it), ("loss", info["loss"]),
                             ("time", time.perf_counter() - t0), ("peak_memory", peak),
                             ("success", ok), ("success_fraction", fraction),
                             ("applied", apply),
                             ("n_grad", int(info.get("n_grad", 0))),
                             ("n_hvp", int(info.get("n_hvp", 0)))):
                history[key].append(val)
            recent = history["success_fraction"][-failure_window:]
            failing = 1.0 - float(np.nanmean(recent)) if recent else 0.0
            if (not warned and len(recent) == failure_window and failing > failure_warn):
                warned = True
                warnings.warn(
                    f"{type(algorithm).__name__}: {100 * failing:.0f}% of the tasks failed "
                    f"their diagnostics over the last {failure_window} meta-iterations "
                    f"(latest: {info.get('message')}); check the inner step size and "
                    "number of steps, the damping, or the solver",
                    MetaTrainingWarning,
                    stacklevel=2,
                )
            done = it + 1
            if eval_every and (done % eval_every == 0 or done == steps):
                ev = evaluate(algorithm, params, None, episodes=eval_episodes)
                for key in EVAL_KEYS:
                    evaluations[key].append(it if key == "iteration" else ev[key])
            if checkpoint is not None and (done % checkpoint_every == 0 or done == steps):
                save_checkpoint(checkpoint, params=params, opt_state=opt_state, rng=rng,
                                iteration=done, history=history, evaluations=evaluations,
                                config=config)
            bar.update(1)
            bar.set_postfix(loss=f"{info['loss']:.4g}")
            if callback is not None:
                callback(it, params, history)
    finally:
        bar.close()
    return TrainResult(theta=params, history=history, evaluations=evaluations,
                       start_iteration=start)
