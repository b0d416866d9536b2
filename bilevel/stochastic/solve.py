"""The stochastic outer loop: :func:`solve` runs a stochastic method on the shared driver.

For ``t = 0 .. steps−1`` the driver (:func:`bilevel.outer.drive`) calls the method's
``direction`` (which draws its mini-batches from the run's one generator and updates ``w``,
``v`` and any memory), then applies ``λ ← λ − β_t D_λ``. Every ``eval_every`` steps the
iterates are checked for NaN/inf (one host read) and, when an ``evaluate`` function is
given, ``evaluate(λ, w)`` is recorded outside the timed step. The checkpoint holds λ, the
method's state, the generator, the history and the evaluations, so a resumed run is
bit-identical to an uninterrupted one; a checkpoint written under another problem, method,
seed or start is refused (:func:`fingerprint`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..api import HypergradResult
from ..backend import is_array, name_of
from ..nonfinite import all_finite
from ..outer import Checkpointing, LoopState, Monitoring, Step, describe, drive, restore
from ..validation import integer
from .base import StochasticMethod
from .problem import StochasticProblem

__all__ = ["StochasticResult", "fingerprint", "solve"]

HISTORY_KEYS = ("step", "n_samples", "lr_outer", "time", "peak_memory")
EVALUATION_KEYS = ("step", "value", "samples", "time")


class StochasticResult(HypergradResult):
    """Result of :func:`solve` (a dict with attribute access).

    Attributes
    ----------
    lam, w, v : array
        Final hyperparameters, inner variable and linear-system variable (``v ≈ −H⁻¹∇_w f``).
    history : dict of numpy arrays
        Per outer step: ``step``, ``n_samples`` (per-sample oracle evaluations of the step),
        ``lr_outer`` (β_t), ``time`` (seconds of the step), ``peak_memory``.
    evaluations : dict of numpy arrays
        At step 0 and every ``eval_every`` steps: ``step`` (outer steps done), ``value``
        (``evaluate(λ, w)``), ``samples`` and ``time`` (cumulative, evaluations excluded).
    steps : int
        Outer steps done. ``n_samples``, ``time``: totals.
    success : bool
        False when the iterates became non-finite. ``message`` says why the loop stopped.
    state : dict
        The method's carried state (``w``, ``v``, memory tables).
    """


def fingerprint(problem: StochasticProblem, method: StochasticMethod, lam0: Any, w0: Any,
                seed: int, eval_every: int, evaluate: Callable | None) -> dict[str, Any]:
    """What determines a :func:`solve` run, field by field (stored in its checkpoint): the
    problem's objectives and data, the method and its options, λ0, w0, the seed, the
    evaluation period and function. Cost: one hash of the data (:func:`bilevel.outer.describe`).
    """
    spec = {"inner": problem.inner, "outer": problem.outer, "inner_data": problem.inner_data,
            "outer_data": problem.outer_data}
    return {"problem": problem.name, "problem_definition": describe(spec),
            "method": repr(method), "method_options": describe(method),
            "lam0": describe(lam0), "w0": describe(w0), "seed": int(seed),
            "eval_every": int(eval_every), "evaluate": describe(evaluate)}


def _check(problem: Any, method: Any, lam0: Any, w0: Any) -> None:
    if not isinstance(problem, StochasticProblem):
        raise TypeError(f"problem must be a StochasticProblem, got {type(problem).__name__} "
                        "(see bilevel.stochastic.families for factories)")
    if not isinstance(method, StochasticMethod):
        raise TypeError(f"method must be a stochastic method such as SOBA() or SABA(), got "
                        f"{type(method).__name__}")
    for name, x in (("lam0", lam0), ("w0", w0)):
        if not is_array(x) or getattr(x.dtype, "kind", "f") != "f" or len(x.shape) != 1:
            raise TypeError(f"{name} must be a 1-D floating array, got "
                            f"{type(x).__name__} {getattr(x, 'shape', '')}")
        if not all_finite(x):
            raise ValueError(f"{name} contains NaN or inf: pass a finite starting point")
    problem.full.check_inputs(w0, lam0, "w0", "lam0")


class _Steps:
    """The step function and the evaluation record handed to the driver."""

    def __init__(self, problem: StochasticProblem, method: StochasticMethod, steps: int,
                 eval_every: int, evaluate: Callable | None):
        self.problem, self.method, self.steps = problem, method, steps
        self.eval_every, self.evaluate = eval_every, evaluate
        self.failed = False

    def due(self, done: int) -> bool:
        return done % self.eval_every == 0 or done == self.steps

    def __call__(self, state: LoopState) -> Step:
        t = state.step
        before = self.problem.work.samples
        direction, state.extra["method"] = self.method.direction(
            self.problem, state.params, state.extra["method"], t, state.rng)
        row = {"n_samples": self.problem.work.samples - before,
               "lr_outer": self.method.optimizer().schedule(t)}
        if self.due(t + 1) and not (all_finite(direction) and all_finite(state.extra["method"]["w"])
                                    and all_finite(state.extra["method"]["v"])):
            self.failed = True
            return Step(None, row, stop=f"stopped at outer step {t}: non-finite iterates (lower "
                        "the step sizes lr_inner / lr_outer)", failed=True)
        return Step(direction, row)

    def record(self, state: LoopState, out: Step | None = None) -> None:
        """Append an evaluation when one is due (also at the start)."""
        done = state.step
        ev = state.extra["evaluations"]
        if not self.due(done) or (ev["step"] and ev["step"][-1] == done):
            return
        value = float("nan") if self.evaluate is None else float(
            self.evaluate(state.params, state.extra["method"]["w"]))
        ev["step"].append(done)
        ev["value"].append(value)
        ev["samples"].append(int(sum(state.history["n_samples"])))
        ev["time"].append(float(sum(state.history["time"])))


def solve(
    problem: StochasticProblem,
    method: StochasticMethod,
    lam0: Any,
    w0: Any,
    *,
    steps: int = 1000,
    seed: int = 0,
    evaluate: Callable[[Any, Any], float] | None = None,
    eval_every: int = 100,
    checkpointing: Checkpointing | None = None,
    monitoring: Monitoring | None = None,
    callback: Callable[[LoopState, Step], bool | None] | None = None,
) -> StochasticResult:
    """Minimize ``F(λ) = f(w*(λ), λ)`` with a stochastic bilevel method.

    Parameters
    ----------
    problem : StochasticProblem
        Objectives as means over samples, and the data sets.
    method : StochasticMethod
        :class:`~bilevel.stochastic.SOBA`, :class:`~bilevel.stochastic.SABA`,
        :class:`~bilevel.stochastic.AmIGO`, :class:`~bilevel.stochastic.StocBiO`.
    lam0, w0 : array
        Starting hyperparameters and inner variable (1-D, same backend).
    steps : int
        Total outer steps (a resumed run continues up to this count).
    seed : int
        Seed of the run's :class:`numpy.random.Generator` (all batch draws).
    evaluate : callable, optional
        ``evaluate(λ, w) -> float`` recorded at the start and every ``eval_every`` steps,
        untimed (e.g. the exact value function ``F(λ)`` of a benchmark family).
    eval_every : int
        Period of evaluations and of the finiteness check.
    checkpointing, monitoring
        As in :func:`bilevel.hpo.minimize` (:class:`bilevel.outer.Checkpointing`,
        :class:`bilevel.outer.Monitoring`).
    callback : callable, optional
        ``callback(state, step) -> bool`` after each step (True stops).

    Returns
    -------
    StochasticResult

    Notes
    -----
    Cost: ``steps`` calls of ``method.direction`` (see each method for its oracle count),
    one host read per ``eval_every`` steps, and the evaluations. Memory: the method's state
    plus λ.

    Examples
    --------
    >>> from bilevel.stochastic import SABA, families, solve
    >>> fam = families.quadratic(n_inner=256, n_outer=256, dim_inner=5, dim_outer=3, seed=0)
    >>> res = solve(fam.problem, SABA(lr_inner=0.5, lr_outer=0.5, batch_size=32), fam.lam0,
    ...             fam.w0, steps=400, evaluate=fam.value, eval_every=400)
    >>> bool(fam.suboptimality(res.lam) < 1e-3)
    True
    """
    _check(problem, method, lam0, w0)
    steps = integer(1)("steps", steps)
    eval_every = integer(1)("eval_every", eval_every)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, got {type(callback).__name__}")
    checkpointing = checkpointing or Checkpointing()
    backend = name_of(lam0, w0)
    config = fingerprint(problem, method, lam0, w0, seed, eval_every, evaluate)
    optimizer = method.optimizer()
    state = LoopState(params=lam0, optimizer_state=optimizer.init(lam0),
                      rng=np.random.default_rng(seed),
                      history={k: [] for k in HISTORY_KEYS},
                      extra={"method": method.init(problem, w0, lam0),
                             "evaluations": {k: [] for k in EVALUATION_KEYS}})
    state = restore(state, checkpointing, config, backend)
    run = _Steps(problem, method, steps, eval_every, evaluate)
    run.record(state)
    # A diverging run is reported once, by the result (success=False and its message), not
    # by NumPy's overflow warnings at every step before the next finiteness check.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        stop = drive(run, state, optimizer, steps=steps, config=config,
                     checkpointing=checkpointing, monitoring=monitoring, backend=backend,
                     record=run.record, callback=callback, desc=method.name)
    return _result(state, run, stop, steps)


def _result(state: LoopState, run: _Steps, stop: str | None, steps: int) -> StochasticResult:
    hist = {k: np.asarray(v, dtype=float if k in ("lr_outer", "time", "peak_memory") else int)
            for k, v in state.history.items()}
    evals = {k: np.asarray(v, dtype=float if k in ("value", "time") else int)
             for k, v in state.extra["evaluations"].items()}
    ms = state.extra["method"]
    if not run.failed and not (all_finite(state.params) and all_finite(ms["w"])):
        run.failed = True
        stop = f"{stop or 'done'}; the final iterates are not finite (lower the step sizes)"
    return StochasticResult(
        lam=state.params, w=ms["w"], v=ms["v"], history=hist, evaluations=evals,
        steps=len(hist["step"]), n_samples=int(hist["n_samples"].sum()),
        time=float(hist["time"].sum()), success=not run.failed,
        message=f"done {steps} outer steps" if stop is None else stop, state=ms,
        method=repr(run.method),
    )
