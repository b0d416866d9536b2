"""The outer loop of hyperparameter optimization: :func:`minimize`.

Each outer step computes a hypergradient with :func:`bilevel.hypergrad`, warm-started
through one :class:`bilevel.HypergradState` (the inner iterate ``w`` when the problem has no
``init`` map, and the auxiliary vector ``v`` of the implicit and historyless methods), and
the shared outer-loop driver (:func:`bilevel.outer.drive`) applies one step of an outer
optimizer (``(init, update)`` pair, e.g. Adam) to the unconstrained variable ``u`` with
``λ = T(u)``, records the history, and writes the checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..api import ON_FAILURE, HypergradResult, HypergradState, Method, failure_result, hypergrad
from ..backend import is_array, name_of, namespace
from ..dynamics import Dynamics
from ..nonfinite import all_finite
from ..optim import SGD, Adam, Optimizer
from ..outer import (
    Checkpointing,
    LoopState,
    Monitoring,
    Step,
    describe,
    drive,
    legacy_keywords,
    restore,
)
from ..outer.options import flag
from ..problem import BilevelProblem, NonFiniteError
from ..validation import Validated, number, one_of, option, optional
from .transforms import Identity, Transform, get_transform

__all__ = ["SGD", "Adam", "HPOResult", "MinimizeOptions", "fingerprint", "minimize"]

HISTORY_KEYS = (
    "step",
    "value",
    "grad_norm",
    "inner_residual",
    "time",
    "peak_memory",
    "n_grad",
    "n_hvp",
    "n_jvp",
    "success",
)

_LEGACY = {
    "inner": ("dynamics", ""),
    "bounds": ("options", "bounds"),
    "target": ("options", "target"),
    "warm_start": ("options", "warm_start"),
    "strict": ("options", "strict"),
    "checkpoint": ("checkpointing", "path"),
    "checkpoint_every": ("checkpointing", "every"),
    "resume": ("checkpointing", "resume"),
    "progress": ("monitoring", "progress"),
    "memory": ("monitoring", "memory"),
}


class HPOResult(HypergradResult):
    """Result of :func:`minimize` (a dict with attribute access).

    Attributes
    ----------
    lam : array
        Final hyperparameters λ = T(u).
    u : array
        Final unconstrained variable of the outer optimizer.
    value : float
        Outer objective F(λ_t) at the last evaluated λ.
    best_lam, best_value
        The evaluated λ with the lowest outer value, and that value.
    x, fun, jac
        scipy's names (:class:`scipy.optimize.OptimizeResult`) for the answer: the best
        evaluated λ (``best_lam``), its outer value F(x) (``best_value``) and its
        hypergradient ∇F(x) (NaN when none was computed). ``x`` is an evaluated point, so
        ``fun`` and ``jac`` belong to it; ``lam`` is the optimizer's last iterate, one
        update past the last evaluation.
    nit, nfev
        scipy's names for the outer steps done (``steps``) and the hypergradients computed
        (``n_hypergrad``); each hypergradient evaluates F once.
    history : dict of numpy arrays
        Per outer step: ``step``, ``value`` (F(λ_t) at the last inner iterate),
        ``grad_norm`` (‖∇_λ F‖), ``inner_residual`` (‖∇_w g‖), ``time`` (seconds),
        ``peak_memory`` (bytes; see :class:`bilevel.outer.Monitoring`; NaN when not
        measured), ``n_grad``, ``n_hvp``, ``n_jvp``, ``success``.
    steps : int
        Outer steps done (including those before a resume).
    n_hypergrad, n_grad, n_hvp, n_jvp : int
        Totals over the history.
    time : float
        Total seconds over the history.
    success : bool
        False when the loop stopped on a non-finite hypergradient, or when the last
        hypergradient's diagnostics failed.
    message : str
        Why the loop stopped.
    state : HypergradState
        The warm-start state (pass it on to continue elsewhere).
    optimizer_state : dict
        The outer optimizer's state.
    """


def _pair(name: str, value: Any) -> tuple[float, float]:
    try:
        low, high = (float(b) for b in value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a pair (low, high) of floats, got {value!r}") from err
    if not low < high:
        raise ValueError(f"{name} must satisfy low < high, got {value!r}")
    return low, high


@dataclass(frozen=True)
class MinimizeOptions(Validated):
    """Options of :func:`minimize` beyond the problem, the solvers and the step count.

    Parameters
    ----------
    bounds : (low, high), optional
        Project λ onto ``[low, high]`` after each step (only with ``transform=None``).
    target : float, optional
        Stop as soon as F(λ_t) ≤ target (λ_t is then the answer).
    warm_start : bool
        Carry one HypergradState across outer steps (default).
    strict : bool
        Passed to :func:`bilevel.hypergrad`: raise on failed diagnostics (same as
        ``on_failure="raise"``).
    on_failure : {"warn", "raise", "ignore"}
        Passed to :func:`bilevel.hypergrad`: what a failed diagnostic does besides
        ``success=False`` in the step's result and history.
    """

    bounds: tuple[float, float] | None = option(None, check=optional(_pair))
    target: float | None = option(None, check=optional(number()))
    warm_start: bool = option(True, check=flag)
    strict: bool = option(False, check=flag)
    on_failure: str = option("warn", check=one_of(ON_FAILURE))


def _as_lam(lam0: Any) -> Any:
    if not is_array(lam0):
        try:
            lam0 = np.asarray(lam0, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise TypeError(f"lam0 must be an array of floats, got {type(lam0).__name__}") from err
    if getattr(lam0.dtype, "kind", "f") != "f":
        raise TypeError(f"lam0 must have a floating dtype, got {lam0.dtype}")
    if not all_finite(lam0):
        raise ValueError("lam0 contains NaN or inf: pass finite starting hyperparameters")
    return lam0


def _scalar(x: Any) -> float:
    """A per-problem value or norm as one float (the mean over a batch axis)."""
    if x is None:
        return float("nan")
    if is_array(x):
        xp = namespace(x)
        return float(xp.mean(xp.astype(xp.reshape(x, (-1,)), xp.float64)))
    return float(x)


def _norm(x: Any) -> float:
    xp = namespace(x)
    return float(xp.sqrt(xp.sum(x * x)))


def _check(problem: Any, dynamics: Any, optimizer: Any, callback: Any) -> None:
    if not isinstance(problem, BilevelProblem):
        raise TypeError(
            f"problem must be a BilevelProblem, got {type(problem).__name__} (see "
            "bilevel.hpo.problems for factories)"
        )
    if not (isinstance(dynamics, Dynamics) or callable(dynamics)):
        raise TypeError(
            "dynamics must be a Dynamics object such as GradientDescent(lr, steps), or a "
            f"callable (t, rng) -> Dynamics; got {type(dynamics).__name__}"
        )
    if not all(callable(getattr(optimizer, m, None)) for m in ("init", "update")):
        raise TypeError(
            f"optimizer must have init(params) and update(grads, state, params), got "
            f"{type(optimizer).__name__}"
        )
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, got {type(callback).__name__}")


def _box(options: MinimizeOptions, transform: Transform) -> Callable[[Any], Any] | None:
    if options.bounds is None:
        return None
    if not isinstance(transform, Identity):
        raise ValueError(
            "bounds projects λ onto [low, high] and needs transform=None; with a transform use "
            "transform=Bounded(low, high) instead"
        )
    low, high = options.bounds
    return lambda u: namespace(u).clip(u, low, high)


class _HypergradStep:
    """One outer step of :func:`minimize`: λ_t = T(u_t), ∇_u F = T'(u_t) ⊙ ∇_λ F(λ_t)."""

    def __init__(self, problem: BilevelProblem, w0: Any, dynamics: Any, method: Any,
                 transform: Transform, options: MinimizeOptions):
        self.problem, self.w0, self.dynamics, self.method = problem, w0, dynamics, method
        self.T, self.options = transform, options
        self.hstate: HypergradState | None = None
        self.last: HypergradResult | None = None
        self.failed = False

    def resume(self, state: LoopState) -> None:
        """Rebuild the warm-start state from the loop's (possibly restored) extra state."""
        hs = state.extra.get("hypergrad_state")
        if self.options.warm_start:
            self.hstate = HypergradState(**hs) if hs else HypergradState()

    def dynamics_at(self, t: int, rng: np.random.Generator) -> Dynamics:
        if isinstance(self.dynamics, Dynamics):
            return self.dynamics
        dyn = self.dynamics(t, rng)
        if not isinstance(dyn, Dynamics):
            raise TypeError(
                f"dynamics(t, rng) must return a Dynamics object, got {type(dyn).__name__}"
            )
        return dyn

    def hypergrad(self, lam: Any, t: int, rng: np.random.Generator) -> HypergradResult:
        """The hypergradient at λ_t; a :class:`NonFiniteError` raised inside it (NaN in the
        objectives or data) becomes a failed result, unless failures must raise."""
        try:
            return hypergrad(self.problem, lam, self.w0, dynamics=self.dynamics_at(t, rng),
                             method=self.method, state=self.hstate, strict=self.options.strict,
                             on_failure=self.options.on_failure)
        except NonFiniteError as err:
            if self.options.strict or self.options.on_failure == "raise":
                raise
            return failure_result(lam, f"non-finite value: {err}", n_grad=0, n_hvp=0, n_jvp=0)

    def __call__(self, state: LoopState) -> Step:
        t, u = state.step, state.params
        lam = self.T.forward(u)
        res = self.hypergrad(lam, t, state.rng)
        self.last = res
        xp = namespace(lam)
        grad_ok = bool(xp.all(xp.isfinite(res.grad)))
        value = _scalar(res.value)
        hs = self.hstate
        state.extra["hypergrad_state"] = None if hs is None else {
            "w": hs.w, "v": hs.v, "t": hs.t, "extra": hs.extra}
        if value < state.extra["best"]["value"]:
            state.extra["best"] = {"value": value, "lam": lam, "grad": res.grad}
        row = {"value": value, "grad_norm": _norm(res.grad) if grad_ok else float("nan"),
               "inner_residual": _scalar(res.get("inner_residual")), "n_grad": int(res.n_grad),
               "n_hvp": int(res.n_hvp), "n_jvp": int(res.n_jvp), "success": bool(res.success)}
        postfix = {"F": f"{value:.4g}", "grad": f"{row['grad_norm']:.2e}"}
        info = {"step": t, "lam": lam, "value": value, "grad": res.grad, "result": res}
        if not grad_ok:
            self.failed = True
            return Step(None, row, stop=f"stopped at outer step {t}: {res.message}",
                        failed=True, postfix=postfix)
        target = self.options.target
        if target is not None and value <= target:
            return Step(None, row, info=info, postfix=postfix,
                        stop=f"reached target {target:g} at outer step {t} (F = {value:.6g})")
        return Step(self.T.vjp(u, res.grad), row, info=info, postfix=postfix)


def fingerprint(problem: BilevelProblem, lam0: Any, w0: Any, dynamics: Any, method: Any,
                optimizer: Any, transform: Transform, seed: int,
                options: MinimizeOptions) -> dict[str, Any]:
    """What determines a :func:`minimize` run, field by field (stored in its checkpoint; a
    resume is refused when a field differs): the problem (its name, objectives, data and
    init map), λ0, w0, the dynamics, the method, the optimizer, the transform, the seed and
    the options. Cost: one hash of every array these hold (:func:`bilevel.outer.describe`).
    """
    spec = {"name": problem.name, "inner": problem.inner, "outer": problem.outer,
            "data": problem.data, "init": problem.init}
    return {"lam_shape": list(lam0.shape), "problem": problem.name, "method": repr(method),
            "optimizer": repr(optimizer), "transform": repr(transform),
            "problem_definition": describe(spec), "lam0": describe(lam0), "w0": describe(w0),
            "dynamics": describe(dynamics), "method_options": describe(method),
            "optimizer_options": describe(optimizer), "seed": int(seed),
            "options": describe(options)}


def _history_arrays(history: dict[str, list]) -> dict[str, np.ndarray]:
    def dtype(key: str) -> type:
        if key == "success":
            return bool
        return int if key.startswith("n_") or key == "step" else float

    return {k: np.asarray(v, dtype=dtype(k)) for k, v in history.items()}


def _result(state: LoopState, step: _HypergradStep, stop: str | None, steps: int) -> HPOResult:
    message = f"done {steps} outer steps" if stop is None else stop
    success = not step.failed
    if step.last is not None and not step.last.success and success:
        success = False
        message = f"{message}; the last hypergradient failed its diagnostics: {step.last.message}"
    hist = _history_arrays(state.history)
    best = state.extra["best"]
    best_lam = best["lam"]
    jac = best.get("grad")
    if jac is None:  # no successful step, or a checkpoint written before ``jac`` existed
        jac = namespace(best_lam).full(best_lam.shape, float("nan"))
    return HPOResult(
        lam=step.T.forward(state.params), u=state.params,
        value=hist["value"][-1] if len(hist["value"]) else float("nan"),
        best_lam=best_lam, best_value=best["value"], history=hist,
        x=best_lam, fun=best["value"], jac=jac, nit=len(hist["step"]), nfev=len(hist["step"]),
        steps=len(hist["step"]), n_hypergrad=len(hist["step"]),
        n_grad=int(hist["n_grad"].sum()), n_hvp=int(hist["n_hvp"].sum()),
        n_jvp=int(hist["n_jvp"].sum()), time=float(hist["time"].sum()),
        success=success, message=message, state=step.hstate,
        optimizer_state=state.optimizer_state,
    )


def minimize(
    problem: BilevelProblem,
    lam0: Any,
    w0: Any = None,
    *,
    dynamics: Dynamics | Callable[[int, np.random.Generator], Dynamics] | None = None,
    method: Method | None = None,
    optimizer: Optimizer | None = None,
    steps: int = 100,
    transform: str | Transform | None = None,
    callback: Callable[[dict], bool | None] | None = None,
    seed: int = 0,
    options: MinimizeOptions | None = None,
    checkpointing: Checkpointing | None = None,
    monitoring: Monitoring | None = None,
    **legacy: Any,
) -> HPOResult:
    """Minimize the outer objective ``F(λ) = f(w_K(λ), λ)`` by hypergradient steps.

    For ``t = 0 .. steps−1``::

        λ_t = T(u_t)
        F_t, ∇_λF_t = hypergrad(problem, λ_t, w_0 or w_K of step t−1, dynamics, method)
        Δu, s = optimizer.update(T'(u_t) ⊙ ∇_λF_t, s, u_t);   u_{t+1} = u_t + Δu

    Parameters
    ----------
    problem : BilevelProblem
        E.g. from :mod:`bilevel.hpo.problems`.
    lam0 : array
        Starting hyperparameters λ_0 (in the range of the transform).
    w0 : array, optional
        Inner starting point of the first outer step (later steps start from the previous
        final iterate when ``options.warm_start`` and the problem has no ``init`` map).
    dynamics : Dynamics or callable
        Inner solver, or ``(t, rng) -> Dynamics`` to draw new ones per outer step (e.g.
        fresh minibatch seeds from ``rng``, whose state is checkpointed). (Its old keyword
        ``inner=`` still works with a ``DeprecationWarning``.)
    method : Method, optional
        Hypergradient method (default :class:`bilevel.Reverse`).
    optimizer : Optimizer, optional
        Outer optimizer with ``init``/``update`` (default ``Adam(lr=0.1)``).
    steps : int
        Total outer steps (a resumed run continues up to this count).
    transform : {None, "exp", "sigmoid"} or Transform
        Reparameterization λ = T(u) (see :mod:`bilevel.hpo.transforms`).
    callback : callable, optional
        ``callback(info) -> bool``, called after each step with a dict holding ``step``,
        ``lam`` (evaluated λ_t), ``value``, ``grad``, ``result`` (the HypergradResult),
        ``history``; returning True stops the loop.
    seed : int
        Seed of the generator handed to a callable ``dynamics``.
    options : MinimizeOptions, optional
        ``bounds``, ``target``, ``warm_start``, ``strict``, ``on_failure``.
    checkpointing : Checkpointing, optional
        Checkpoint file (u, optimizer state, HypergradState, step count, history, RNG
        state, best λ), its frequency and resume (:class:`bilevel.outer.Checkpointing`):
        a resumed run reproduces an uninterrupted run exactly. An existing checkpoint is
        resumed only when ``resume`` is set (the default) and everything that determines
        the run matches (:func:`fingerprint`: problem, λ0, w0, dynamics, method,
        optimizer, transform, seed, options); otherwise it is refused with a
        :class:`bilevel.outer.ResumeError` naming the fields that differ, before anything
        is written, and never returns another run's best λ.
    monitoring : Monitoring, optional
        Progress bar (default: only when stderr is a terminal) and the ``peak_memory``
        meter (default ``"auto"``: process peak RSS on NumPy, the memory pool on CuPy).
    **legacy
        The keywords of earlier versions (``inner``, ``bounds``, ``target``,
        ``warm_start``, ``strict``, ``checkpoint``, ``checkpoint_every``, ``resume``,
        ``progress``, ``memory``) still work, with a ``DeprecationWarning`` showing the
        new spelling.

    Returns
    -------
    HPOResult
        Final and best λ, history and diagnostics.

    Notes
    -----
    Cost: ``steps`` hypergradients plus one optimizer update each. Memory: that of the
    method, plus the warm-start state (one ``w``, one ``v``) and the optimizer state (two
    copies of λ for Adam). A non-finite hypergradient, or a NaN/inf raised while computing
    it (:class:`bilevel.NonFiniteError`), stops the loop without updating λ
    (``success=False``, the message names the step; the checkpoint keeps the last good
    step), unless ``options.on_failure="raise"`` or ``strict``, which raise.

    Examples
    --------
    >>> import numpy as np
    >>> from bilevel import GradientDescent
    >>> from bilevel.hpo import minimize, problems
    >>> from bilevel.outer import Monitoring
    >>> rng = np.random.default_rng(0)
    >>> X, y = rng.standard_normal((40, 3)), rng.standard_normal(40)
    >>> prob = problems.ridge(X[:20], y[:20], X[20:], y[20:])
    >>> res = minimize(prob, np.zeros(3), np.zeros(3), dynamics=GradientDescent(0.5, 20),
    ...                steps=5, monitoring=Monitoring(progress=False))
    >>> bool(res.history["value"][-1] < res.history["value"][0])
    True
    """
    args = legacy_keywords("minimize", legacy, _LEGACY, {
        "dynamics": dynamics, "options": options or MinimizeOptions(),
        "checkpointing": checkpointing or Checkpointing(),
        "monitoring": monitoring or Monitoring()})
    optimizer = Adam(lr=0.1) if optimizer is None else optimizer
    _check(problem, args["dynamics"], optimizer, callback)
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    lam0 = _as_lam(lam0)
    T = get_transform(transform)
    project = _box(args["options"], T)
    step = _HypergradStep(problem, w0, args["dynamics"], method, T, args["options"])
    u = T.inverse(lam0)
    config = fingerprint(problem, lam0, w0, args["dynamics"], method, optimizer, T, seed,
                         args["options"])
    state = LoopState(params=u, optimizer_state=optimizer.init(u),
                      rng=np.random.default_rng(seed),
                      history={k: [] for k in HISTORY_KEYS},
                      extra={"hypergrad_state": None, "best": {"value": math.inf, "lam": lam0}})
    state = restore(state, args["checkpointing"], config, name_of(lam0))
    step.resume(state)

    def user_callback(st: LoopState, out: Step) -> bool:
        return bool(callback({**out.info, "history": st.history}))

    stop = drive(step, state, optimizer, steps=steps, config=config,
                 checkpointing=args["checkpointing"], monitoring=args["monitoring"],
                 backend=name_of(lam0), project=project,
                 callback=None if callback is None else user_callback, desc="hpo")
    return _result(state, step, stop, steps)
