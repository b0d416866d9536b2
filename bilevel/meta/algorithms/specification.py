"""A meta-learning algorithm as a specification of the hypergradient core.

A :class:`Specification` says everything the core needs to differentiate one meta-batch:
the inner objective ``g`` (support loss), the outer objective ``f`` (query loss), the init
map ``w₀ = init(λ)``, the inner dynamics, the hypergradient method, and how the
meta-parameters ``θ`` map to the per-task ``λ_i`` and back. From it,
:func:`batched_problem` builds one batched :class:`bilevel.BilevelProblem` over the
meta-batch: task ``i`` has inner parameters ``w_i`` (row ``i`` of ``(T, n_w)``) and its own
copy ``λ_i`` of ``λ(θ)`` (row ``i`` of ``(T, m)``), and the meta-gradient of the task-mean
loss is the mean of the per-task hypergradients pulled back to ``θ``::

    ∇_θ (1/T) Σ_i L_i(φ_i(θ)) = λ'(θ)ᵀ (1/T) Σ_i ∇_{λ_i} L_i(φ_i(λ_i)) |_{λ_i = λ(θ)}

:func:`append_parameters` is the one transformation of specifications: it appends
parameters ``ψ`` to ``θ`` and to λ that the given specification never sees (cooperative
meta-learning adds its co-learner this way).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from ...api import Method
from ...backend import device, namespace
from ...dynamics import Dynamics, run
from ...problem import BilevelProblem
from ..tasks import Episode
from .objectives import fast_oracles, identity, inner_weights

__all__ = ["Appended", "Part", "Specification", "append_parameters", "batched_problem",
           "check_params", "tile", "unroll"]


def tile(x: Any, T: int) -> Any:
    """``x`` of shape ``(m,)`` repeated into ``(T, m)`` (a fresh array, one copy per task)."""
    xp = namespace(x)
    return xp.zeros((T, 1), dtype=x.dtype, device=device(x)) + x[None, :]


@dataclass(frozen=True)
class Part:
    """The map ``θ ↦ θ[part]`` (all of ``θ`` when ``part`` is ``None``) and its pullback."""

    part: slice | None = None

    def __call__(self, params: Any) -> Any:
        return params if self.part is None else params[self.part]

    def pullback(self, grad: Any, params: Any) -> Any:
        """``∇_θ`` from ``∇_{θ[part]}``: zero outside ``part``."""
        if self.part is None:
            return grad
        out = namespace(params).zeros_like(params)
        out[self.part] = grad
        return out


@dataclass(frozen=True)
class Appended:
    """``(θ, ψ) ↦ (base(θ), ψ)`` with ``θ`` the first ``n`` entries, and its pullback."""

    base: Any
    n: int

    def __call__(self, params: Any) -> Any:
        head = self.base(params[: self.n])
        return namespace(head).concat([head, params[self.n:]], axis=0)

    def pullback(self, grad: Any, params: Any) -> Any:
        m = int(grad.shape[0]) - (int(params.shape[0]) - self.n)
        head = self.base.pullback(grad[:m], params[: self.n])
        return namespace(head).concat([head, grad[m:]], axis=0)


@dataclass(frozen=True)
class Specification:
    """What the core needs for one meta-batch (all functions batched over tasks).

    Attributes
    ----------
    inner, outer : callable
        ``g(w, λ, data)`` and ``f(w, λ, data)``, each ``(T,)``.
    dynamics : Dynamics
        The inner solver (:mod:`bilevel.dynamics`).
    method : Method
        The hypergradient method (:mod:`bilevel.methods`).
    n_params : int
        Length of the meta-parameter vector ``θ``.
    init : callable or None
        ``w₀ = init(λ)`` (default ``w₀ = λ``); ``None`` when ``w₀`` does not depend on λ.
    start : callable or None
        ``θ ↦`` the per-task ``w₀`` row when ``init`` is ``None``.
    lam : Part or Appended
        ``θ ↦ λ`` row (default all of ``θ``), with ``pullback(∇_λ, θ) -> ∇_θ``.
    adapted : callable
        ``(w, λ) ↦`` full model parameters ``(T, n)`` (default ``w``).
    prepare : callable or None
        ``(λ, data) ↦ data``: per-batch precomputation (cached support features).
    oracles : mapping or None
        User oracles of the problem (:class:`bilevel.BilevelProblem`).
    fast_oracles : bool
        When ``oracles`` is None and the objectives are a built-in model's losses that
        :mod:`bilevel.meta.model_oracles` covers, use its analytic oracles (backpropagation
        and the R-operator, no tracing; equal to autograd's to rounding, not bitwise).
        Default ``True``; ``False`` traces the objectives with autograd (the reference).
    """

    inner: Callable[..., Any]
    outer: Callable[..., Any]
    dynamics: Dynamics
    method: Method
    n_params: int
    init: Callable[..., Any] | None = identity
    start: Callable[..., Any] | None = None
    lam: Any = Part()
    adapted: Callable[..., Any] = inner_weights
    prepare: Callable[..., Any] | None = None
    oracles: Mapping[str, Callable[..., Any]] | None = None
    fast_oracles: bool = True

    def problem_oracles(self) -> dict[str, Callable[..., Any]] | None:
        """The ``oracles=`` of the batched problem: the user's, else the analytic ones."""
        if self.oracles:
            return dict(self.oracles)
        return fast_oracles(self.inner, self.outer) if self.fast_oracles else None


def check_params(params: Any, n: int) -> None:
    shape = tuple(getattr(params, "shape", ()))
    if shape != (n,):
        raise ValueError(f"params must be a flat vector of shape ({n},), got shape {shape}")


def batched_problem(spec: Specification, params: Any, data: Episode,
                    name: str | None = None) -> tuple[BilevelProblem, Any, Any]:
    """The batched bilevel problem of a meta-batch: ``(problem, λ, w₀)``.

    ``λ`` is ``λ(θ)`` tiled over the ``T`` tasks of ``data``; ``w₀`` is ``None`` when the
    problem has an init map (the core evaluates ``init(λ)``).
    """
    check_params(params, spec.n_params)
    T = data.n_tasks
    lam = tile(spec.lam(params), T)
    if spec.prepare is not None:
        data = spec.prepare(lam, data)
    problem = BilevelProblem(spec.inner, spec.outer, data=data, init=spec.init,
                             oracles=spec.problem_oracles(), name=name)
    w0 = None if spec.init is not None else tile(spec.start(params), T)
    return problem, lam, w0


def unroll(spec: Specification, problem: BilevelProblem, lam: Any, w0: Any) -> Any:
    """The last inner iterate ``w_K`` of the dynamics from ``w₀`` (``init(λ)`` if ``None``).

    Raises :class:`bilevel.problem.NonFiniteError` when an iterate is not finite.
    """
    w0 = problem.initial_point(lam) if w0 is None else w0
    return spec.dynamics.weights(run(problem, spec.dynamics, w0, lam))


# ------------------------------------------------------------- appended parameters
LAM_POSITION = {"inner": 1, "outer": 1, "init": 0, "adapted": 1, "prepare": 0}


@dataclass(frozen=True)
class OnBase:
    """``fn`` with its λ argument (at ``position``) cut to the first ``m = m' − p`` columns."""

    fn: Callable[..., Any]
    p: int
    position: int = 1

    def __call__(self, *args: Any) -> Any:
        args_ = list(args)
        lam = args_[self.position]
        args_[self.position] = lam[:, : int(lam.shape[1]) - self.p]
        return self.fn(*args_)


@dataclass(frozen=True)
class OnFirst:
    """``fn(θ[:n])``: a map of the first ``n`` meta-parameters."""

    fn: Callable[..., Any]
    n: int

    def __call__(self, params: Any) -> Any:
        return self.fn(params[: self.n])


def append_parameters(spec: Specification, p: int) -> Specification:
    """``spec`` over ``(θ, ψ)`` and ``(λ, ψ)``, with ``p`` parameters ``ψ`` it never sees.

    Every function of ``spec`` receives its own part of λ (and of ``θ``); ``ψ`` passes
    through to λ unchanged and its meta-gradient is the λ-gradient of its columns (zero
    until an objective uses them, see :mod:`bilevel.meta.algorithms.cml`).
    """
    cut = {name: OnBase(getattr(spec, name), p, pos) for name, pos in LAM_POSITION.items()
           if getattr(spec, name) is not None}
    oracles = ({key: OnBase(fn, p) for key, fn in spec.oracles.items()}
               if spec.oracles else spec.oracles)
    start = OnFirst(spec.start, spec.n_params) if spec.start is not None else None
    return replace(spec, **cut, oracles=oracles, start=start, n_params=spec.n_params + p,
                   lam=Appended(spec.lam, spec.n_params))
