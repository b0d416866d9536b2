"""The outer loop of hyperparameter optimization: :func:`minimize`.

Each outer step computes a hypergradient with :func:`bilevel.hypergrad`, warm-started
through one :class:`bilevel.HypergradState` (the inner iterate ``w`` when the problem has no
``init`` map, and the auxiliary vector ``v`` of the implicit and historyless methods), and
applies one step of an outer optimizer (``(init, update)`` pair, e.g. Adam) to the
unconstrained variable ``u`` with ``λ = T(u)``.
"""

from __future__ import annotations

import math
import os
import sys
import time
import tracemalloc
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from ..api import HypergradResult, HypergradState, Method, hypergrad
from ..backend import is_array, name_of, namespace
from ..dynamics import Dynamics
from ..optim import SGD, Adam, Optimizer
from ..problem import BilevelProblem
from .checkpoint import load_checkpoint, save_checkpoint
from .transforms import Identity, Transform, get_transform

__all__ = ["SGD", "Adam", "HPOResult", "minimize"]

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
    history : dict of numpy arrays
        Per outer step: ``step``, ``value`` (F(λ_t) at the last inner iterate),
        ``grad_norm`` (‖∇_λ F‖), ``inner_residual`` (‖∇_w g‖), ``time`` (seconds),
        ``peak_memory`` (bytes; see ``memory`` of :func:`minimize`; NaN when not
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


def _as_lam(lam0: Any) -> Any:
    if not is_array(lam0):
        try:
            lam0 = np.asarray(lam0, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise TypeError(f"lam0 must be an array of floats, got {type(lam0).__name__}") from err
    if getattr(lam0.dtype, "kind", "f") != "f":
        raise TypeError(f"lam0 must have a floating dtype, got {lam0.dtype}")
    return lam0


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_bounds(bounds: Any, transform: Transform) -> tuple[float, float] | None:
    if bounds is None:
        return None
    if not isinstance(transform, Identity):
        raise ValueError(
            "bounds projects λ onto [low, high] and needs transform=None; with a transform use "
            "transform=Bounded(low, high) instead"
        )
    try:
        low, high = (float(b) for b in bounds)
    except (TypeError, ValueError) as err:
        raise ValueError(f"bounds must be a pair (low, high) of floats, got {bounds!r}") from err
    if not low < high:
        raise ValueError(f"bounds must satisfy low < high, got {bounds!r}")
    return low, high


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


class _Memory:
    """Peak memory of one outer step: tracemalloc, process peak RSS, or the CuPy pool size."""

    def __init__(self, mode: str | None, backend: str):
        if mode not in (None, "auto", "tracemalloc", "rss", "pool"):
            raise ValueError(
                f"memory must be None, 'auto', 'tracemalloc', 'rss' or 'pool', got {mode!r}"
            )
        if mode == "auto":
            mode = "pool" if backend == "cupy" else "rss"
        self.mode = mode
        self._started = False
        self._base = 0

    def __enter__(self) -> _Memory:
        if self.mode == "tracemalloc" and not tracemalloc.is_tracing():
            tracemalloc.start()
            self._started = True
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._started:
            tracemalloc.stop()

    def begin(self) -> None:
        if self.mode == "tracemalloc":
            tracemalloc.reset_peak()
            self._base = tracemalloc.get_traced_memory()[0]

    def peak(self) -> float:
        if self.mode == "tracemalloc":
            return float(tracemalloc.get_traced_memory()[1] - self._base)
        if self.mode == "rss":
            import resource

            kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            return float(kib * (1 if sys.platform == "darwin" else 1024))
        if self.mode == "pool":
            import cupy

            return float(cupy.get_default_memory_pool().total_bytes())
        return float("nan")


def _progress_bar(progress: bool | None, total: int, initial: int) -> Any:
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="hpo", unit="step", leave=False)


def minimize(
    problem: BilevelProblem,
    lam0: Any,
    w0: Any = None,
    *,
    inner: Dynamics | Callable[[int, np.random.Generator], Dynamics],
    method: Method | None = None,
    optimizer: Optimizer | None = None,
    steps: int = 100,
    transform: str | Transform | None = None,
    bounds: tuple[float, float] | None = None,
    callback: Callable[[dict], bool | None] | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 1,
    resume: bool = True,
    target: float | None = None,
    warm_start: bool = True,
    strict: bool = False,
    seed: int = 0,
    memory: str | None = "auto",
    progress: bool | None = None,
) -> HPOResult:
    """Minimize the outer objective ``F(λ) = f(w_K(λ), λ)`` by hypergradient steps.

    For ``t = 0 .. steps−1``::

        λ_t = T(u_t)
        F_t, ∇_λF_t = hypergrad(problem, λ_t, w_0 or w_K of step t−1, inner, method)
        Δu, s = optimizer.update(T'(u_t) ⊙ ∇_λF_t, s, u_t);   u_{t+1} = u_t + Δu

    Parameters
    ----------
    problem : BilevelProblem
        E.g. from :mod:`bilevel.hpo.problems`.
    lam0 : array
        Starting hyperparameters λ_0 (in the range of the transform).
    w0 : array, optional
        Inner starting point of the first outer step (later steps start from the previous
        final iterate when ``warm_start`` and the problem has no ``init`` map).
    inner : Dynamics or callable
        Inner dynamics, or ``(t, rng) -> Dynamics`` to draw new ones per outer step (e.g.
        fresh minibatch seeds from ``rng``, whose state is checkpointed).
    method : Method, optional
        Hypergradient method (default :class:`bilevel.Reverse`).
    optimizer : Optimizer, optional
        Outer optimizer with ``init``/``update`` (default ``Adam(lr=0.1)``).
    steps : int
        Total outer steps (a resumed run continues up to this count).
    transform : {None, "exp", "sigmoid"} or Transform
        Reparameterization λ = T(u) (see :mod:`bilevel.hpo.transforms`).
    bounds : (low, high), optional
        Project λ onto ``[low, high]`` after each step (only with ``transform=None``).
    callback : callable, optional
        ``callback(info) -> bool``, called after each step with a dict holding ``step``,
        ``lam`` (evaluated λ_t), ``value``, ``grad``, ``result`` (the HypergradResult),
        ``history``; returning True stops the loop.
    checkpoint : path, optional
        ``.npz`` file written atomically every ``checkpoint_every`` steps and at the end:
        u, optimizer state, HypergradState (w, v, t), step count, history, RNG state and
        the best λ. With ``resume=True`` an existing file is loaded first and the run
        continues from it, reproducing an uninterrupted run exactly.
    checkpoint_every : int
        Steps between checkpoint writes.
    resume : bool
        Continue from ``checkpoint`` when it exists (default).
    target : float, optional
        Stop as soon as F(λ_t) ≤ target (λ_t is then the answer).
    warm_start : bool
        Carry one HypergradState across outer steps (default).
    strict : bool
        Passed to :func:`bilevel.hypergrad`: raise on failed diagnostics.
    seed : int
        Seed of the generator handed to a callable ``inner``.
    memory : {"auto", "rss", "tracemalloc", "pool", None}
        Peak memory recorded per step: ``"tracemalloc"``, the step's peak of traced
        allocations above its start (exact, but slows small-array NumPy code about 3×);
        ``"rss"``, the process's peak resident set so far (free); ``"pool"``, the bytes
        held by CuPy's memory pool; ``None``, not measured. ``"auto"``: ``"pool"`` on
        CuPy, ``"rss"`` otherwise.
    progress : bool, optional
        tqdm progress bar; default: only when stderr is a terminal.

    Returns
    -------
    HPOResult
        Final and best λ, history and diagnostics.

    Notes
    -----
    Cost: ``steps`` hypergradients plus one optimizer update each. Memory: that of the
    method, plus the warm-start state (one ``w``, one ``v``) and the optimizer state (two
    copies of λ for Adam). A non-finite hypergradient stops the loop without updating λ
    (``success=False``, message names the step).

    Examples
    --------
    >>> import numpy as np
    >>> from bilevel import GradientDescent
    >>> from bilevel.hpo import minimize, problems
    >>> rng = np.random.default_rng(0)
    >>> X, y = rng.standard_normal((40, 3)), rng.standard_normal(40)
    >>> prob = problems.ridge(X[:20], y[:20], X[20:], y[20:])
    >>> res = minimize(prob, np.zeros(3), np.zeros(3), inner=GradientDescent(0.5, 20),
    ...                steps=5, progress=False)
    >>> bool(res.history["value"][-1] < res.history["value"][0])
    True
    """
    if not isinstance(problem, BilevelProblem):
        raise TypeError(
            f"problem must be a BilevelProblem, got {type(problem).__name__} (see "
            "bilevel.hpo.problems for factories)"
        )
    if not (isinstance(inner, Dynamics) or callable(inner)):
        raise TypeError(
            "inner must be a Dynamics object such as GradientDescent(lr, steps), or a "
            f"callable (t, rng) -> Dynamics; got {type(inner).__name__}"
        )
    optimizer = Adam(lr=0.1) if optimizer is None else optimizer
    if not all(callable(getattr(optimizer, m, None)) for m in ("init", "update")):
        raise TypeError(
            f"optimizer must have init(params) and update(grads, state, params), got "
            f"{type(optimizer).__name__}"
        )
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, got {type(callback).__name__}")
    steps = _positive_int("steps", steps)
    checkpoint_every = _positive_int("checkpoint_every", checkpoint_every)
    lam0 = _as_lam(lam0)
    T = get_transform(transform)
    box = _check_bounds(bounds, T)
    backend = name_of(lam0)
    xp = namespace(lam0)

    u = T.inverse(lam0)
    opt_state = optimizer.init(u)
    hstate = HypergradState() if warm_start else None
    history: dict[str, list] = {k: [] for k in HISTORY_KEYS}
    rng = np.random.default_rng(seed)
    best: dict[str, Any] = {"value": math.inf, "lam": lam0}
    start = 0
    settings = {
        "lam_shape": list(lam0.shape),
        "problem": problem.name,
        "method": repr(method),
        "optimizer": repr(optimizer),
        "transform": repr(T),
    }
    if checkpoint is not None and resume and os.path.exists(checkpoint):
        ck = load_checkpoint(checkpoint, backend=backend)
        if ck["settings"]["lam_shape"] != settings["lam_shape"]:
            raise ValueError(
                f"checkpoint {os.fspath(checkpoint)!r} holds λ of shape "
                f"{tuple(ck['settings']['lam_shape'])} but lam0 has shape {tuple(lam0.shape)}; "
                "pass resume=False or another checkpoint path"
            )
        changed = [k for k in settings if k != "lam_shape" and ck["settings"][k] != settings[k]]
        if changed:
            warnings.warn(
                f"resuming from {os.fspath(checkpoint)!r} with different "
                + ", ".join(f"{k} ({ck['settings'][k]} -> {settings[k]})" for k in changed)
                + "; the run will not match an uninterrupted one",
                UserWarning,
                stacklevel=2,
            )
        u, opt_state, history, start = ck["u"], ck["optimizer_state"], ck["history"], ck["t"]
        best = ck["best"]
        rng.bit_generator.state = ck["rng"]
        if warm_start:
            hs = ck["hypergrad_state"]
            hstate = HypergradState(w=hs["w"], v=hs["v"], t=hs["t"], extra=hs["extra"])

    def save(t_next: int) -> None:
        hs = None
        if hstate is not None:
            hs = {"w": hstate.w, "v": hstate.v, "t": hstate.t, "extra": hstate.extra}
        save_checkpoint(
            checkpoint,
            {
                "t": t_next,
                "u": u,
                "optimizer_state": opt_state,
                "hypergrad_state": hs,
                "history": history,
                "rng": rng.bit_generator.state,
                "best": best,
                "settings": settings,
            },
        )

    message = f"done {steps} outer steps"
    success = True
    last = None
    bar = _progress_bar(progress, steps, start)
    try:
        with _Memory(memory, backend) as mem:
            for t in range(start, steps):
                lam = T.forward(u)
                dyn = inner if isinstance(inner, Dynamics) else inner(t, rng)
                if not isinstance(dyn, Dynamics):
                    raise TypeError(
                        f"inner(t, rng) must return a Dynamics object, got {type(dyn).__name__}"
                    )
                mem.begin()
                t0 = time.perf_counter()
                res = hypergrad(problem, lam, w0, dynamics=dyn, method=method, state=hstate,
                                strict=strict)
                grad_ok = bool(xp.all(xp.isfinite(res.grad)))
                value = _scalar(res.value)
                if grad_ok:
                    updates, opt_state = optimizer.update(T.vjp(u, res.grad), opt_state, u)
                    u_next = u + updates
                    if box is not None:
                        u_next = xp.clip(u_next, box[0], box[1])
                elapsed = time.perf_counter() - t0
                last = res
                row = {
                    "step": t,
                    "value": value,
                    "grad_norm": _norm(res.grad) if grad_ok else float("nan"),
                    "inner_residual": _scalar(res.get("inner_residual")),
                    "time": elapsed,
                    "peak_memory": mem.peak(),
                    "n_grad": int(res.n_grad),
                    "n_hvp": int(res.n_hvp),
                    "n_jvp": int(res.n_jvp),
                    "success": bool(res.success),
                }
                for k in HISTORY_KEYS:
                    history[k].append(row[k])
                if value < best["value"]:
                    best = {"value": value, "lam": lam}
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(F=f"{value:.4g}", grad=f"{row['grad_norm']:.2e}")
                if not grad_ok:
                    success = False
                    message = f"stopped at outer step {t}: {res.message}"
                    break
                stop_target = target is not None and value <= target
                if not stop_target:
                    u = u_next
                stop_cb = False
                if callback is not None:
                    info = {"step": t, "lam": lam, "value": value, "grad": res.grad,
                            "result": res, "history": history}
                    stop_cb = bool(callback(info))
                done = t + 1
                if checkpoint is not None and (done % checkpoint_every == 0 or done == steps
                                               or stop_target or stop_cb):
                    save(done)
                if stop_target:
                    message = f"reached target {target:g} at outer step {t} (F = {value:.6g})"
                    break
                if stop_cb:
                    message = f"stopped by the callback after outer step {t}"
                    break
    finally:
        if bar is not None:
            bar.close()
    if last is not None and not last.success and success:
        success = False
        message = f"{message}; the last hypergradient failed its diagnostics: {last.message}"
    hist = {
        k: np.asarray(v, dtype=bool if k == "success" else (int if k.startswith("n_") or
                      k == "step" else float))
        for k, v in history.items()
    }
    return HPOResult(
        lam=T.forward(u),
        u=u,
        value=hist["value"][-1] if len(hist["value"]) else float("nan"),
        best_lam=best["lam"],
        best_value=best["value"],
        history=hist,
        steps=len(hist["step"]),
        n_hypergrad=len(hist["step"]),
        n_grad=int(hist["n_grad"].sum()),
        n_hvp=int(hist["n_hvp"].sum()),
        n_jvp=int(hist["n_jvp"].sum()),
        time=float(hist["time"].sum()),
        success=success,
        message=message,
        state=hstate,
        optimizer_state=opt_state,
    )
