"""Meta-learning algorithms as configurations of the core (DESIGN principle 8).

Each algorithm builds one *batched* :class:`bilevel.BilevelProblem` over the meta-batch
(ALGORITHMS §1.4): task ``i`` has inner parameters ``w_i`` (row ``i`` of a ``(T, n_w)``
array) and its own copy ``λ_i`` of the meta-parameters (row ``i`` of ``(T, n_λ)``), the
inner objective is the support loss ``L̂_i`` and the outer objective the query loss ``L_i``.
:func:`bilevel.hypergrad` with the algorithm's inner dynamics and hypergradient method then
returns the per-task hypergradients ``∇_{λ_i} L_i``, and the meta-gradient of the
task-averaged loss is their mean (V14)::

    ∇_θ (1/T) Σ_i L_i(φ_i(θ)) = (1/T) Σ_i ∇_{λ_i} L_i(φ_i(λ_i)) |_{λ_i = θ}

=================  ==================================  ====================  ==============
algorithm          inner problem (w, λ)                dynamics              method
=================  ==================================  ====================  ==============
MAML               w = all weights, w₀ = θ             GradientDescent       Reverse()
MAML(first_order)  same; dw_K/dθ replaced by I         GradientDescent       (first order)
ANIL               w = head, λ = θ, w₀ = θ_head         GradientDescent       Reverse()
Reptile            w = all weights, w₀ = θ             GradientDescent       (none)
IMAML              L̂(w) + (reg/2)‖w − θ‖², w₀ = θ      GradientDescent       Implicit(CG)
AMAML              L̂(w) + (r/2)‖w − θ‖², w₀ = θ        GradientFlow          Adjoint()
MemoryReduced      w = head on fixed features, λ=θ_bb  GradientDescent       Implicit(CG)
CML(base)          base's, λ = (λ_base, ψ)             base's                base's
=================  ==================================  ====================  ==============

Every algorithm takes ``method=`` to override the hypergradient method (e.g. MAML with
``Reverse(checkpoints=4)``, iMAML with ``Historyless()``). The meta-parameter vector
``params`` is the model's ``θ`` (``(n,)``), with CML's co-learner parameters ``ψ`` appended.

The model follows the protocol of :mod:`bilevel.meta.models`: ``init(rng, backend)``,
``apply(theta, x)`` for ``theta`` of shape ``(T, n)`` and ``x`` of shape ``(T, N, ...)``,
``split`` (``"backbone"``/``"head"`` slices of ``θ``), ``features``, ``head``, ``n_params``,
``loss(pred, y) -> (T,)`` and ``accuracy(pred, y) -> (T,)``.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

import numpy as np
from autograd.core import make_vjp

import bilevel.numpy as bnp

from ..api import HypergradResult, hypergrad
from ..backend import namespace, to_numpy
from ..dynamics import Dynamics, GradientDescent, GradientFlow, run
from ..linalg import CG
from ..methods import Reverse
from ..problem import BilevelProblem, NonFiniteError

__all__ = [
    "AMAML",
    "ANIL",
    "CML",
    "IMAML",
    "MAML",
    "MemoryReduced",
    "MetaAlgorithm",
    "Pretrain",
    "Reptile",
]


@dataclass
class TaskData:
    """What the objectives of a meta-batch see: support/query sets (task axis first).

    ``features_support`` holds support features computed with the backbone as a constant
    (:class:`MemoryReduced` only).
    """

    x_support: Any
    y_support: Any
    x_query: Any = None
    y_query: Any = None
    features_support: Any = None


def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not (
        value > 0 and np.isfinite(value)
    ):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _nonneg(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not (
        value >= 0 and np.isfinite(value)
    ):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _steps(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"steps must be an integer >= 1, got {value!r}")
    return int(value)


def _tile(x: Any, T: int) -> Any:
    """``x`` of shape ``(m,)`` repeated into ``(T, m)`` (a fresh array, one copy per task)."""
    xp = namespace(x)
    return xp.zeros((T, 1), dtype=x.dtype) + x[None, :]


def _sqnorm(x: Any) -> Any:
    """Per-task squared norm ``‖x_i‖²`` of a ``(T, n)`` array: shape ``(T,)``."""
    return bnp.sum(x * x, axis=-1)


def _check_params(params: Any, n: int, name: str = "params") -> None:
    shape = tuple(getattr(params, "shape", ()))
    if shape != (n,):
        raise ValueError(f"{name} must be a flat vector of shape ({n},), got shape {shape}")


def _split(model: Any, part: str) -> slice:
    split = getattr(model, "split", None)
    if not isinstance(split, dict) or part not in split:
        raise ValueError(
            f"this algorithm needs a model with a {part!r} entry in model.split (a dict "
            f"name -> slice of θ); {type(model).__name__} has split={split!r}"
        )
    return split[part]


def _assemble(model: Any, parts: dict[str, Any]) -> Any:
    """Full ``(T, n)`` parameters from per-part ``(T, n_part)`` arrays in slice order."""
    order = sorted(parts, key=lambda k: _split(model, k).start or 0)
    return bnp.concatenate([parts[k] for k in order], axis=1)


def _mean_tasks(x: Any, mask: Any = None) -> Any:
    """Mean over the task axis, over the tasks where ``mask`` is true when given.

    Failed tasks enter through ``where`` (not a multiplication by 0), so a non-finite
    gradient of a dropped task does not reach the mean. An all-false mask gives the plain
    mean (the caller sees ``success_fraction = 0`` and skips the update).
    """
    xp = namespace(x)
    if mask is None:
        return xp.mean(x, axis=0)
    mask = xp.asarray(mask)
    count = int(xp.sum(xp.astype(mask, xp.int64)))
    if count == 0 or count == int(x.shape[0]):
        return xp.mean(x, axis=0)
    keep = xp.reshape(mask, (-1,) + (1,) * (len(x.shape) - 1))
    return xp.sum(xp.where(keep, x, xp.zeros_like(x)), axis=0) / count


def _task_success(res: HypergradResult) -> np.ndarray | None:
    """Per-task success flags ``(T,)`` (NumPy bool) of a batched result, when reported."""
    mask = res.get("problem_success")
    if mask is None or len(getattr(mask, "shape", ())) != 1:
        return None
    return to_numpy(mask).astype(bool)


def _summary(res: HypergradResult) -> dict[str, Any]:
    """Scalar diagnostics of a batched hypergradient result for the training history."""
    info = {
        "loss": float(np.mean(to_numpy(res.value))) if res.get("w") is not None else np.nan,
        "success": bool(res.success),
        "message": str(res.message),
        "n_grad": int(res.get("n_grad", 0)),
        "n_hvp": int(res.get("n_hvp", 0)),
        "n_jvp": int(res.get("n_jvp", 0)),
        "method": str(res.get("method", "")),
    }
    mask = _task_success(res)
    info["task_success"] = mask
    if mask is not None:
        info["success_fraction"] = float(np.mean(mask))
    else:
        info["success_fraction"] = 1.0 if info["success"] else 0.0
    if res.get("inner_residual") is not None:
        info["inner_residual"] = float(np.max(to_numpy(res.inner_residual)))
    for key in ("linear_iterations", "linear_residual"):
        if res.get(key) is not None:
            info[key] = float(np.max(to_numpy(res[key])))
    return info


class MetaAlgorithm(abc.ABC):
    """Base class: a meta-learning algorithm over a model.

    Subclasses configure the inner problem (:meth:`inner_objective`, :meth:`outer_objective`,
    the map λ ↔ θ) and the core does the rest. Public methods:

    * ``init(rng, backend)`` → initial meta-parameters;
    * ``meta_gradient(params, episode, drop_failed=True)`` → ``(grad, info)``: the
      meta-gradient (shape of ``params``) and diagnostics: ``loss`` (mean post-adaptation
      meta-objective), ``success`` (every task passed its diagnostics), ``message``,
      ``task_success`` (per-task flags ``(T,)`` where the method reports them, else
      ``None``), ``success_fraction`` (fraction of tasks that passed) and work counts.
      with ``drop_failed`` the meta-gradient averages only the tasks that passed;
    * ``adapt(params, x_support, y_support)`` → adapted model parameters ``(T, n)``;
    * ``evaluate(params, episode)`` → per-task post-adaptation query ``loss`` and
      ``accuracy`` (NumPy arrays of shape ``(T,)``).
    """

    name = "meta"

    def __init__(self, model: Any):
        for attr in ("init", "apply", "loss", "n_params"):
            if not hasattr(model, attr):
                raise TypeError(
                    f"model must follow the bilevel.meta model protocol (init, apply, loss, "
                    f"n_params, ...); {type(model).__name__} has no {attr!r}"
                )
        self.model = model

    # ------------------------------------------------------------- parameters
    @property
    def n_params(self) -> int:
        """Length of the meta-parameter vector."""
        return int(self.model.n_params)

    def init(self, rng: np.random.Generator, backend: str | None = None) -> Any:
        """Initial meta-parameters (the model's initialization)."""
        return self.model.init(rng, backend)

    def model_params(self, params: Any) -> Any:
        """The model's ``θ`` inside the meta-parameters (identity except for CML)."""
        return params

    # ------------------------------------------------------------- interface
    @abc.abstractmethod
    def meta_gradient(self, params: Any, episode: Any,
                      drop_failed: bool = True) -> tuple[Any, dict[str, Any]]:
        """Meta-gradient of the mean query loss over the episode's tasks, and diagnostics."""

    @abc.abstractmethod
    def adapt(self, params: Any, x_support: Any, y_support: Any) -> Any:
        """Task-adapted model parameters ``(T, n)`` from the support sets (test time)."""

    def evaluate(self, params: Any, episode: Any) -> dict[str, np.ndarray]:
        """Post-adaptation query loss and accuracy per task (NumPy arrays ``(T,)``).

        Adapts on the support set with :meth:`adapt` and evaluates the model on the query
        set. ``accuracy`` is present for classification models (``model.loss_name ==
        "cross_entropy"``) only.
        """
        theta_t = self.adapt(params, episode.x_support, episode.y_support)
        pred = self.model.apply(theta_t, episode.x_query)
        out = {"loss": to_numpy(self.model.loss(pred, episode.y_query)).astype(float)}
        if getattr(self.model, "loss_name", None) == "cross_entropy":
            out["accuracy"] = to_numpy(self.model.accuracy(pred, episode.y_query)).astype(float)
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class _Configured(MetaAlgorithm):
    """An algorithm defined by a batched bilevel problem, inner dynamics and a method."""

    first_order = False

    def __init__(self, model: Any, dynamics: Dynamics, method: Any):
        super().__init__(model)
        self.dynamics = dynamics
        self.method = method

    # -- the configuration (overridden by subclasses) ---------------------------------
    def lam_of(self, params: Any, T: int) -> Any:
        """Per-task hyperparameters λ ``(T, m)`` from the meta-parameters (default: θ)."""
        return _tile(params, T)

    def grad_of(self, grad_lam: Any, params: Any) -> Any:
        """Meta-gradient (shape of ``params``) from the task-mean λ-gradient ``(m,)``."""
        return grad_lam

    def w0_of(self, params: Any, T: int) -> Any:
        """Starting point when the problem has no init map (default: none)."""
        return None

    def init_map(self, lam: Any) -> Any:
        """w₀ = init(λ) (default: w₀ = λ, MAML's initialization)."""
        return lam

    has_init = True

    def inner_objective(self, w: Any, lam: Any, data: TaskData) -> Any:
        """Support loss ``L̂_i(w_i)`` per task, shape ``(T,)``."""
        return self.model.loss(self.model.apply(self.adapted(w, lam), data.x_support),
                               data.y_support)

    def outer_objective(self, w: Any, lam: Any, data: TaskData) -> Any:
        """Query loss ``L_i(w_i)`` per task, shape ``(T,)``."""
        return self.model.loss(self.model.apply(self.adapted(w, lam), data.x_query),
                               data.y_query)

    def adapted(self, w: Any, lam: Any) -> Any:
        """Full model parameters ``(T, n)`` after adaptation from ``(w, λ)``."""
        return w

    def task_data(self, lam: Any, x_support: Any, y_support: Any, x_query: Any = None,
                  y_query: Any = None) -> TaskData:
        return TaskData(x_support, y_support, x_query, y_query)

    def oracles(self) -> dict[str, Any] | None:
        return None

    # -- assembled ---------------------------------------------------------------------
    def problem(self, params: Any, x_support: Any, y_support: Any, x_query: Any = None,
                y_query: Any = None) -> tuple[BilevelProblem, Any, Any]:
        """The batched bilevel problem of a meta-batch: ``(problem, λ, w₀)``."""
        _check_params(params, self.n_params)
        T = int(x_support.shape[0])
        lam = self.lam_of(params, T)
        data = self.task_data(lam, x_support, y_support, x_query, y_query)
        problem = BilevelProblem(
            self.inner_objective,
            self.outer_objective,
            data=data,
            init=self.init_map if self.has_init else None,
            oracles=self.oracles(),
            name=type(self).__name__,
        )
        return problem, lam, self.w0_of(params, T)

    def _first_order(self, problem: BilevelProblem, lam: Any, w0: Any) -> HypergradResult:
        """First-order approximation: ``dw_K/dλ ≈ ∂w₀/∂λ`` (FOMAML: ``g = ∇_w f(w_K)``).

        Returns ``∇_λ f + Cᵀ∇_w f(w_K)`` with ``C = ∂init/∂λ`` — the exact gradient of
        the unrolled map with every inner-step Jacobian ``A_k = I − αH`` replaced by ``I``
        and ``B_k`` by 0 (ALGORITHMS §2.9). Memory O(n); time K gradients + 1.
        """
        counts = problem.counts.snapshot()
        try:
            w0 = problem.initial_point(lam) if w0 is None else w0
            w = self.dynamics.weights(run(problem, self.dynamics, w0, lam))
            value, gw, gl = problem.outer_value_and_grads(w, lam)
        except NonFiniteError as err:
            xp = namespace(lam)
            return HypergradResult(
                grad=xp.full(tuple(lam.shape), float("nan"), dtype=lam.dtype), w=None,
                value=float("nan"), success=False,
                message=f"non-finite {err.what} at inner step {getattr(err, 'step', None)}",
            )
        grad = gl + problem.init_vjp(lam, gw) if self.has_init else gl
        after = problem.counts.snapshot()
        return HypergradResult(
            grad=grad, w=w, value=value, success=True, message="ok", method="first-order",
            n_grad=(after["grad"] - counts["grad"]) + (after["outer_grad"] - counts["outer_grad"]),
            n_hvp=0, n_jvp=0,
        )

    def hypergradient(self, params: Any, episode: Any) -> HypergradResult:
        """The batched :class:`bilevel.HypergradResult` of a meta-batch (per-task λ-grads)."""
        problem, lam, w0 = self.problem(params, episode.x_support, episode.y_support,
                                        episode.x_query, episode.y_query)
        if self.first_order:
            return self._first_order(problem, lam, w0)
        return hypergrad(problem, lam, w0, dynamics=self.dynamics, method=self.method)

    def meta_gradient(self, params: Any, episode: Any,
                      drop_failed: bool = True) -> tuple[Any, dict[str, Any]]:
        """Meta-gradient ``(1/T) Σ_i ∇_{λ_i} f_i`` mapped to the meta-parameters, and info.

        When the method reports per-task diagnostics (``problem_success`` of
        :class:`bilevel.Implicit`) and ``drop_failed`` is true, the mean runs over the
        tasks that passed only, ``(1/|S|) Σ_{i∈S} ∇_{λ_i} f_i``; ``info["task_success"]``
        says which.
        """
        res = self.hypergradient(params, episode)
        info = _summary(res)
        mask = info["task_success"] if drop_failed else None
        return self.grad_of(_mean_tasks(res.grad, mask), params), info

    def adapt(self, params: Any, x_support: Any, y_support: Any) -> Any:
        """Test-time adaptation: the inner dynamics on the inner objective, ``(T, n)``."""
        problem, lam, w0 = self.problem(params, x_support, y_support)
        w0 = problem.initial_point(lam) if w0 is None else w0
        w = self.dynamics.weights(run(problem, self.dynamics, w0, lam))
        return self.adapted(w, lam)


class MAML(_Configured):
    """Model-agnostic meta-learning (Finn, Abbeel & Levine, ICML 2017).

    ``φ_i = w_K`` from ``w₀ = θ`` by ``steps`` gradient steps of size ``inner_lr`` on the
    support loss; the meta-gradient ``(1/T) Σ_i A_0ᵀ⋯A_{K−1}ᵀ ∇L_i(φ_i)`` with
    ``A_k = I − α∇²L̂_i(w_k)`` comes from ``Reverse()`` (ALGORITHMS §1.4, §2.1).

    Parameters
    ----------
    model
        A model of :mod:`bilevel.meta.models`.
    inner_lr, steps
        Inner step size α and number of inner steps K.
    first_order : bool
        FOMAML: ``dφ_i/dθ ≈ I``, i.e. the meta-gradient is ``(1/T) Σ_i ∇L_i(φ_i)`` — the
        result of reverse mode with every inner Hessian dropped (ALGORITHMS §2.9).
    method
        Hypergradient method (default ``Reverse()``; e.g. ``Reverse(checkpoints=c)`` for
        O(c·n) memory, ``Forward()``).

    Notes
    -----
    Memory: O(K·n) per task with ``Reverse()`` (iterates, no tapes), O(n) first-order.
    Time: K gradients + K HVPs per task (K gradients + 1 first-order).
    """

    name = "maml"

    def __init__(self, model: Any, inner_lr: float = 0.01, steps: int = 1, *,
                 first_order: bool = False, method: Any = None):
        super().__init__(model, GradientDescent(_positive("inner_lr", inner_lr), _steps(steps)),
                         Reverse() if method is None else method)
        self.inner_lr, self.steps, self.first_order = float(inner_lr), int(steps), first_order

    def __repr__(self) -> str:
        tail = "first_order=True" if self.first_order else f"method={self.method!r}"
        return f"MAML(inner_lr={self.inner_lr}, steps={self.steps}, {tail})"


class ANIL(_Configured):
    """Almost No Inner Loop (Raghu et al., ICLR 2020): adapt only the head.

    ``w`` = head weights with ``w₀ = θ_head``; ``λ = θ`` (backbone and head initialization);
    the support loss ``L̂_i(head(w, features(θ_bb, x)))`` depends on the backbone through
    the features, so reverse mode returns ``Cᵀa₀`` for the head and ``Σ_k B_kᵀa_{k+1}``
    for the backbone (ALGORITHMS §1.4).

    Parameters
    ----------
    model
        A model with ``split["backbone"]``, ``split["head"]``, ``features`` and ``head``.
    inner_lr, steps, first_order, method
        As in :class:`MAML`.

    Notes
    -----
    Memory O(K·n_head) iterates with ``Reverse()``; each step's HVP re-traces the backbone
    forward (time K backbone forwards + K mixed VJPs through the backbone).
    """

    name = "anil"

    def __init__(self, model: Any, inner_lr: float = 0.1, steps: int = 5, *,
                 first_order: bool = False, method: Any = None):
        self._bb, self._head = _split(model, "backbone"), _split(model, "head")
        super().__init__(model, GradientDescent(_positive("inner_lr", inner_lr), _steps(steps)),
                         Reverse() if method is None else method)
        self.inner_lr, self.steps, self.first_order = float(inner_lr), int(steps), first_order

    def __repr__(self) -> str:
        return f"ANIL(inner_lr={self.inner_lr}, steps={self.steps}, method={self.method!r})"

    def init_map(self, lam: Any) -> Any:
        return lam[:, self._head]

    def adapted(self, w: Any, lam: Any) -> Any:
        return _assemble(self.model, {"backbone": lam[:, self._bb], "head": w})

    def _head_loss(self, w: Any, lam: Any, x: Any, y: Any) -> Any:
        feats = self.model.features(lam[:, self._bb], x)
        return self.model.loss(self.model.head(w, feats), y)

    def inner_objective(self, w: Any, lam: Any, data: TaskData) -> Any:
        return self._head_loss(w, lam, data.x_support, data.y_support)

    def outer_objective(self, w: Any, lam: Any, data: TaskData) -> Any:
        return self._head_loss(w, lam, data.x_query, data.y_query)


class IMAML(_Configured):
    """Implicit MAML (Rajeswaran, Finn, Kakade & Levine, NeurIPS 2019; ALGORITHMS §2.5).

    Inner problem ``G_i(w, θ) = L̂_i(w) + (reg/2)‖w − θ‖²`` from ``w₀ = θ``; outer
    objective the plain query loss. ``Implicit`` gives
    ``g_i = (I + H_i/reg)⁻¹ ∇L_i(φ_i)`` with ``H_i = ∇²L̂_i(φ_i)`` (the proximal term
    makes ``M = −reg·I``).

    Parameters
    ----------
    model
        A model of :mod:`bilevel.meta.models`.
    reg : float
        Proximal strength (the paper's λ; 2.0 on Omniglot).
    inner_lr, steps
        Gradient descent on ``G_i`` (the paper: 16 steps on 5-way Omniglot).
    solver
        Linear solver of :mod:`bilevel.linalg` (default ``CG(tol=1e-6, maxiter=50)``;
        the paper uses 5 CG steps).
    damping
        ``δ ≥ 0`` added to ``H_i + reg·I`` in the solve (non-convex networks can make it
        indefinite; the released code effectively damps with ``cg_damping = 1``).
    method
        Overrides ``Implicit(solver, damping, inner_tol=None)``, e.g. ``Historyless()``. The inner
        stationarity test is off by default: a few inner steps are the algorithm, not an
        error (the residual is still reported as ``info["inner_residual"]``).

    Notes
    -----
    Memory O(n) per task, independent of ``steps``; time ``steps`` gradients + J HVPs + 1
    mixed VJP. Test-time adaptation runs the same proximal inner problem.
    """

    name = "imaml"

    def __init__(self, model: Any, reg: float = 2.0, inner_lr: float = 0.01, steps: int = 20,
                 solver: Any = None, damping: float | None = None, *,
                 inner_tol: float | None = 10.0, method: Any = None):
        from ..methods import Implicit

        self.reg = _positive("reg", reg)
        damping = self.reg + 20.0 if damping is None else _nonneg("damping", damping)
        if inner_tol is not None:
            inner_tol = _positive("inner_tol", inner_tol)
        solver = CG(tol=1e-6, maxiter=50) if solver is None else solver
        if method is None:
            method = Implicit(solver, damping, inner_tol=inner_tol)
        super().__init__(model, GradientDescent(_positive("inner_lr", inner_lr), _steps(steps)),
                         method)
        self.inner_lr, self.steps, self.solver = float(inner_lr), int(steps), solver
        self.damping, self.inner_tol = damping, inner_tol

    def __repr__(self) -> str:
        return (f"IMAML(reg={self.reg}, inner_lr={self.inner_lr}, steps={self.steps}, "
                f"damping={self.damping}, inner_tol={self.inner_tol}, method={self.method!r})")

    def inner_objective(self, w: Any, lam: Any, data: TaskData) -> Any:
        return super().inner_objective(w, lam, data) + 0.5 * self.reg * _sqnorm(w - lam)


class AMAML(_Configured):
    """Adjoint MAML (Li, Wang, Narayan, Kirby & Zhe, AISTATS 2023; ALGORITHMS §2.6).

    Inner dynamics: gradient flow ``du/dt = −∇L̂_i(u) − r(u − θ)``, ``u(0) = θ`` on
    ``[0, horizon]`` with ``steps`` steps of ``scheme``; meta-objective
    ``J_i = L_i(u(T)) + (r/2)‖u(T) − θ‖²`` (the released code's form, V9; ``r = 0`` is the
    pure A-MAML of the abstract). ``Adjoint()`` integrates the adjoint ODE backwards.

    Parameters
    ----------
    model
        A model of :mod:`bilevel.meta.models`.
    horizon, steps, scheme
        Integration time T, number of steps K and Runge–Kutta scheme.
    reg : float
        Proximal strength ``r ≥ 0``.
    method
        Default ``Adjoint()``; ``Reverse()`` gives the exact discrete derivative.

    Notes
    -----
    Memory O(K·n) per task with stored trajectories (no autodiff graph); time
    ``stages·K`` gradients forward + K HVPs backward.
    """

    name = "amaml"

    def __init__(self, model: Any, horizon: float = 0.1, steps: int = 10, scheme: str = "rk4",
                 reg: float = 0.0, *, method: Any = None):
        if method is None:
            from ..methods import Adjoint

            method = Adjoint()
        self.reg = _nonneg("reg", reg)
        super().__init__(model, GradientFlow(_positive("horizon", horizon), _steps(steps), scheme),
                         method)
        self.horizon, self.steps, self.scheme = float(horizon), int(steps), scheme

    def __repr__(self) -> str:
        return (f"AMAML(horizon={self.horizon}, steps={self.steps}, scheme={self.scheme!r}, "
                f"reg={self.reg}, method={self.method!r})")

    def inner_objective(self, w: Any, lam: Any, data: TaskData) -> Any:
        loss = super().inner_objective(w, lam, data)
        return loss + 0.5 * self.reg * _sqnorm(w - lam) if self.reg else loss

    def outer_objective(self, w: Any, lam: Any, data: TaskData) -> Any:
        loss = super().outer_objective(w, lam, data)
        return loss + 0.5 * self.reg * _sqnorm(w - lam) if self.reg else loss


class MemoryReduced(_Configured):
    """Memory-reduced meta-learning (Yang, Ma & Yu, AAAI 2025; ALGORITHMS §2.7).

    ANIL-type split with ``λ = θ_backbone`` and ``w`` = head. The inner loop runs gradient
    descent on the head from a fixed initialization ``θ_head`` on support features computed
    once with the backbone as a constant (the ``inner_grad`` oracle of the problem — no
    tape through the backbone); ``Implicit(CG)`` at the last iterate ``y_N`` then gives::

        v = [∇²_yy g(x, y_N) + δI]⁻¹ ∇_y f(x, y_N),     ∇Φ(x) = ∇_x f − ∇²_xy g · v

    with one mixed VJP through the backbone. The head initialization is not meta-learned
    (as in the released code): the head entries of the meta-gradient are structurally 0.

    Parameters
    ----------
    model
        A model with ``split["backbone"]``, ``split["head"]``, ``features`` and ``head``.
    inner_lr, steps
        Head gradient descent (the paper: 20 steps).
    solver
        Default ``CG(tol=1e-8, maxiter=20)`` (the paper: 20 CG iterations, no damping).
    damping
        ``δ ≥ 0`` (the CE head Hessian is singular along row-constant logit shifts).
    head_reg
        ``ρ ≥ 0``: adds ``(ρ/2)‖y‖²`` to the inner objective, making the head problem
        strongly convex (ALGORITHMS §2.7 recommendation; 0 reproduces the paper).
    method
        Overrides ``Implicit(solver, damping, inner_tol=None)``.

    Notes
    -----
    Memory O(p + q) vectors + one backbone graph, independent of ``steps``; time ``steps``
    head gradients + 1 backbone forward + J head HVPs + 1 backbone double-backward.
    """

    name = "memory_reduced"

    def __init__(self, model: Any, inner_lr: float = 0.1, steps: int = 20, solver: Any = None,
                 damping: float = 0.0, head_reg: float = 0.0, *, method: Any = None):
        from ..methods import Implicit

        self._bb, self._head = _split(model, "backbone"), _split(model, "head")
        self.head_reg = _nonneg("head_reg", head_reg)
        solver = CG(tol=1e-8, maxiter=20) if solver is None else solver
        if method is None:
            method = Implicit(solver, _nonneg("damping", damping), inner_tol=None)
        super().__init__(model, GradientDescent(_positive("inner_lr", inner_lr), _steps(steps)),
                         method)
        self.inner_lr, self.steps = float(inner_lr), int(steps)

    has_init = False

    def __repr__(self) -> str:
        return (f"MemoryReduced(inner_lr={self.inner_lr}, steps={self.steps}, "
                f"method={self.method!r})")

    def lam_of(self, params: Any, T: int) -> Any:
        return _tile(params[self._bb], T)

    def w0_of(self, params: Any, T: int) -> Any:
        return _tile(params[self._head], T)

    def grad_of(self, grad_lam: Any, params: Any) -> Any:
        xp = namespace(params)
        head = xp.zeros_like(params[self._head])
        return _assemble_flat(self.model, {"backbone": grad_lam, "head": head})

    def adapted(self, w: Any, lam: Any) -> Any:
        return _assemble(self.model, {"backbone": lam, "head": w})

    def task_data(self, lam: Any, x_support: Any, y_support: Any, x_query: Any = None,
                  y_query: Any = None) -> TaskData:
        feats = self.model.features(lam, x_support)
        return TaskData(x_support, y_support, x_query, y_query, features_support=feats)

    def _head_loss(self, w: Any, lam: Any, x: Any, y: Any) -> Any:
        return self.model.loss(self.model.head(w, self.model.features(lam, x)), y)

    def _ridge(self, loss: Any, w: Any) -> Any:
        return loss + 0.5 * self.head_reg * _sqnorm(w) if self.head_reg else loss

    def inner_objective(self, w: Any, lam: Any, data: TaskData) -> Any:
        return self._ridge(self._head_loss(w, lam, data.x_support, data.y_support), w)

    def outer_objective(self, w: Any, lam: Any, data: TaskData) -> Any:
        return self._head_loss(w, lam, data.x_query, data.y_query)

    def oracles(self) -> dict[str, Any]:
        model = self.model

        def inner_grad(w: Any, lam: Any, data: TaskData) -> Any:
            """∇_y g on the cached support features (the backbone is a constant here)."""
            feats = data.features_support
            vjp, _ = make_vjp(lambda y: bnp.sum(self._ridge(
                model.loss(model.head(y, feats), data.y_support), y)), w)
            xp = namespace(w)
            return vjp(xp.asarray(1.0, dtype=w.dtype))

        return {"inner_grad": inner_grad}


def _assemble_flat(model: Any, parts: dict[str, Any]) -> Any:
    """Flat ``(n,)`` vector from per-part vectors in slice order."""
    xp = namespace(*parts.values())
    order = sorted(parts, key=lambda k: _split(model, k).start or 0)
    return xp.concat([parts[k] for k in order], axis=0)


class CML(_Configured):
    """Cooperative meta-learning (Shin, Han & Kim, UAI 2024; ALGORITHMS §2.8).

    Adds a co-learner ``c_ψ`` on the adapted query features to the outer objective::

        f_i = base f_i + weight · L_i(c_ψ(features(φ_i; x_query)))

    with ``ψ`` appended to the meta-parameters and to λ but absent from the inner problem
    (the inner loop never changes it). Both ``θ`` and ``ψ`` are updated by the outer
    optimizer; at test time the co-learner is dropped (:meth:`adapt` and :meth:`evaluate`
    use only the base algorithm). ``weight = 0`` reduces exactly to the base (V12).

    Parameters
    ----------
    base
        A configured algorithm (:class:`MAML`, :class:`ANIL`, :class:`IMAML`,
        :class:`AMAML`, :class:`MemoryReduced`).
    colearner
        An object with ``init(rng, backend) -> ψ`` (flat), ``n_params`` and
        ``apply(ψ, features) -> predictions`` for ``ψ`` of shape ``(T, p)`` and features
        ``(T, N, ...)`` (a :mod:`bilevel.meta.models` model on feature inputs works).
    weight : float
        γ ≥ 0 (1.0 in the paper's code).

    Notes
    -----
    Memory and time: the base's plus one co-learner forward/backward per query batch.
    """

    name = "cml"

    def __init__(self, base: _Configured, colearner: Any, weight: float = 1.0):
        if not isinstance(base, _Configured):
            raise TypeError(
                "base must be a hypergradient-configured algorithm (MAML, ANIL, IMAML, AMAML, "
                f"MemoryReduced), got {type(base).__name__}"
            )
        for attr in ("init", "apply", "n_params"):
            if not hasattr(colearner, attr):
                raise TypeError(f"colearner must have init, apply and n_params; no {attr!r}")
        super().__init__(base.model, base.dynamics, base.method)
        self._bb = _split(base.model, "backbone")
        self.base, self.colearner, self.weight = base, colearner, _nonneg("weight", weight)
        self.first_order = base.first_order
        self.has_init = base.has_init
        self._n = int(base.model.n_params)

    def __repr__(self) -> str:
        return f"CML({self.base!r}, weight={self.weight})"

    @property
    def n_params(self) -> int:
        return self._n + int(self.colearner.n_params)

    def init(self, rng: np.random.Generator, backend: str | None = None) -> Any:
        theta = self.base.init(rng, backend)
        psi = self.colearner.init(rng, backend)
        return namespace(theta, psi).concat([theta, psi], axis=0)

    def model_params(self, params: Any) -> Any:
        return params[: self._n]

    def _m(self, lam: Any) -> int:
        return int(lam.shape[1]) - int(self.colearner.n_params)

    def lam_of(self, params: Any, T: int) -> Any:
        base = self.base.lam_of(params[: self._n], T)
        return bnp.concatenate([base, _tile(params[self._n:], T)], axis=1)

    def grad_of(self, grad_lam: Any, params: Any) -> Any:
        m = int(grad_lam.shape[0]) - int(self.colearner.n_params)
        base = self.base.grad_of(grad_lam[:m], params[: self._n])
        return namespace(base).concat([base, grad_lam[m:]], axis=0)

    def w0_of(self, params: Any, T: int) -> Any:
        return self.base.w0_of(params[: self._n], T)

    def init_map(self, lam: Any) -> Any:
        return self.base.init_map(lam[:, : self._m(lam)])

    def adapted(self, w: Any, lam: Any) -> Any:
        return self.base.adapted(w, lam[:, : self._m(lam)])

    def task_data(self, lam: Any, *args: Any) -> TaskData:
        return self.base.task_data(lam[:, : self._m(lam)], *args)

    def oracles(self) -> dict[str, Any] | None:
        base = self.base.oracles()
        if not base:
            return base
        return {k: (lambda w, lam, data, fn=fn: fn(w, lam[:, : self._m(lam)], data))
                for k, fn in base.items()}

    def inner_objective(self, w: Any, lam: Any, data: TaskData) -> Any:
        return self.base.inner_objective(w, lam[:, : self._m(lam)], data)

    def outer_objective(self, w: Any, lam: Any, data: TaskData) -> Any:
        m = self._m(lam)
        main = self.base.outer_objective(w, lam[:, :m], data)
        theta = self.base.adapted(w, lam[:, :m])
        feats = self.model.features(theta[:, self._bb], data.x_query)
        co = self.model.loss(self.colearner.apply(lam[:, m:], feats), data.y_query)
        return main + self.weight * co

    def adapt(self, params: Any, x_support: Any, y_support: Any) -> Any:
        """Test-time adaptation of the meta-learner alone (the co-learner is dropped)."""
        return self.base.adapt(params[: self._n], x_support, y_support)

    def evaluate(self, params: Any, episode: Any) -> dict[str, np.ndarray]:
        return self.base.evaluate(params[: self._n], episode)


class Reptile(MetaAlgorithm):
    """Reptile (Nichol, Achiam & Schulman, 2018; ALGORITHMS §2.9).

    ``θ ← θ + ε((1/T) Σ_i φ_i − θ)`` with ``φ_i`` from ``steps`` gradient steps on the
    support loss from ``θ``. :meth:`meta_gradient` returns the Reptile direction
    ``θ − (1/T) Σ_i φ_i``, so ``SGD(lr=ε)`` reproduces the update exactly (Adam gives the
    Adam variant). No hypergradient is computed.

    Notes
    -----
    Memory O(n) per task; time ``steps`` gradients per task.
    """

    name = "reptile"

    def __init__(self, model: Any, inner_lr: float = 0.01, steps: int = 5):
        super().__init__(model)
        self._maml = MAML(model, inner_lr, steps, first_order=True)
        self.inner_lr, self.steps = float(inner_lr), int(steps)

    def __repr__(self) -> str:
        return f"Reptile(inner_lr={self.inner_lr}, steps={self.steps})"

    def meta_gradient(self, params: Any, episode: Any,
                      drop_failed: bool = True) -> tuple[Any, dict[str, Any]]:
        """The Reptile direction ``θ − (1/T) Σ_i φ_i`` and info (no per-task diagnostics)."""
        problem, lam, _ = self._maml.problem(params, episode.x_support, episode.y_support,
                                             episode.x_query, episode.y_query)
        counts = problem.counts.snapshot()
        try:
            w = self._maml.dynamics.weights(run(problem, self._maml.dynamics, lam, lam))
            value = problem.outer_value(w, lam)
        except NonFiniteError as err:
            nan = namespace(params).full(tuple(params.shape), float("nan"), dtype=params.dtype)
            return nan, {"loss": float("nan"), "success": False, "method": "reptile",
                         "task_success": None, "success_fraction": 0.0,
                         "message": f"non-finite {err.what} at inner step "
                                    f"{getattr(err, 'step', None)}: lower inner_lr",
                         "n_grad": problem.counts.grad - counts["grad"], "n_hvp": 0, "n_jvp": 0}
        info = {"loss": float(np.mean(to_numpy(value))), "success": True, "message": "ok",
                "n_grad": problem.counts.grad - counts["grad"], "n_hvp": 0, "n_jvp": 0,
                "method": "reptile", "task_success": None, "success_fraction": 1.0}
        return params - _mean_tasks(w), info

    def adapt(self, params: Any, x_support: Any, y_support: Any) -> Any:
        return self._maml.adapt(params, x_support, y_support)


class Pretrain(MetaAlgorithm):
    """Joint-training baseline: minimize the mean loss over all tasks, without adaptation.

    ``∇_θ (1/T) Σ_i ½(L̂_i(θ) + L_i(θ))`` on support and query sets together (the
    "pretrained" baseline of MAML's sinusoid experiment). Test-time adaptation runs
    ``steps`` gradient steps of ``inner_lr`` on the support loss of the full network (or
    pass any algorithm's :meth:`adapt` to compare under the same procedure).
    """

    name = "pretrain"

    def __init__(self, model: Any, inner_lr: float = 0.01, steps: int = 1):
        super().__init__(model)
        self._maml = MAML(model, inner_lr, steps)
        self.inner_lr, self.steps = float(inner_lr), int(steps)

    def __repr__(self) -> str:
        return f"Pretrain(inner_lr={self.inner_lr}, steps={self.steps})"

    def meta_gradient(self, params: Any, episode: Any,
                      drop_failed: bool = True) -> tuple[Any, dict[str, Any]]:
        """Gradient of the joint loss over the meta-batch and info (no per-task mask)."""
        _check_params(params, self.n_params)
        model, T = self.model, int(episode.x_support.shape[0])

        def joint(theta: Any) -> Any:
            th = bnp.broadcast_to(theta[None, :], (T, theta.shape[0]))
            ls = model.loss(model.apply(th, episode.x_support), episode.y_support)
            lq = model.loss(model.apply(th, episode.x_query), episode.y_query)
            return bnp.mean(0.5 * (ls + lq))

        vjp, value = make_vjp(joint, params)
        xp = namespace(params)
        grad = vjp(xp.asarray(1.0, dtype=params.dtype))
        ok = bool(np.all(np.isfinite(to_numpy(grad))))
        info = {"loss": float(to_numpy(value)), "success": ok, "message": "ok", "n_grad": 1,
                "n_hvp": 0, "n_jvp": 0, "method": "joint", "task_success": None,
                "success_fraction": float(ok)}
        return grad, info

    def adapt(self, params: Any, x_support: Any, y_support: Any) -> Any:
        return self._maml.adapt(params, x_support, y_support)
