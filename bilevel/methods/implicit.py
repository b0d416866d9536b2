"""Approximate implicit differentiation (AID, HOAG, iMAML), at any optimality condition.

The implicit function theorem at a stationary inner point ``∇_w g(w*, λ) = 0`` gives::

    ∇F(λ) = ∇_λ f − Mᵀ v,      (H + δI) v = ∇_w f,      H = ∇²_ww g,  M = ∇²_wλ g

all at ``(w*, λ)``; at a general condition ``F(w*, λ) = 0`` (:mod:`bilevel.conditions`)
``H`` becomes ``J = ∂_w F`` (the system is ``(J + δI)ᵀ v = ∇_w f``) and ``M`` becomes
``∂_λ F``. :class:`Implicit` runs the inner dynamics without recording anything (none with
:class:`~bilevel.dynamics.Solved`), replaces ``w*`` by the last iterate ``w_K`` and solves
the linear system with any solver of :mod:`bilevel.linalg` through products at one traced
point (:func:`implicit_vjp`); :func:`implicit_diagnostics` judges the result.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from ..backend import namespace
from ..conditions import Condition, Stationarity
from ..dynamics import Dynamics, Solved, run
from ..linalg import CG, GMRES
from ..nonfinite import deferred_checks
from ..problem import BilevelProblem, NonFiniteError
from ..registry import register
from ..validation import Validated, nonnegative, one_of, option, optional, positive
from .base import (
    HypergradResult,
    HypergradState,
    Method,
    flag,
    largest,
    norm_per_problem,
    outcome,
)

__all__ = ["Implicit", "ImplicitVJP", "default_solver", "implicit_diagnostics", "implicit_vjp"]


class ImplicitVJP(NamedTuple):
    """What :func:`implicit_vjp` returns."""

    grad: Any  # ∇_λ f − Mᵀ v
    value: Any  # f(w, λ)
    v: Any  # the solver's solution of (H + δI) v = ∇_w f
    solve: Any  # its SolveResult
    inner_residual: Any  # ‖F(w, λ)‖ per problem (‖∇_w g‖ by default; from the same trace)


STATIONARITY = Stationarity()


def implicit_vjp(
    problem: BilevelProblem, w: Any, lam: Any, solver: Callable, damping: float = 0.0,
    x0: Any = None, condition: Condition = STATIONARITY,
) -> ImplicitVJP:
    """The IFT hypergradient at ``w``: ``∇_λ f − (∂_λ F)ᵀ v`` with ``(J + δI)ᵀ v = ∇_w f``.

    ``F`` is the ``condition`` (``∇_w g`` by default: ``J = H``, ``∂_λ F = M``). It is
    traced once at ``(w, λ)``; each solver iteration is one reverse pass over that trace
    (an HVP), and ``(∂_λ F)ᵀ v`` one more. ``x0`` warm-starts the solver.
    """
    with deferred_checks():  # the solver's products are checked on the device, read once
        value, b, grad_lam = problem.outer_value_and_grads(w, lam)
        lin = condition.linearize(problem, w, lam)
        sol = solver(lin.transpose_matvec, b, x0, damping=damping)
        grad = grad_lam - lin.mixed_vjp(sol.x)
    return ImplicitVJP(grad, value, sol.x, sol, norm_per_problem(lin.residual))


def implicit_diagnostics(ift: ImplicitVJP, g0_norm: Any, inner_tol: float | None,
                         on_unconverged: str = "drop", *, symbol: str = "∇_w g",
                         given: bool = False) -> dict:
    """``success``, ``message``, ``inner_converged`` and ``problem_success`` of a result.

    A problem passes when its linear solve converged (no CG breakdown) and, with
    ``inner_tol``, ``‖F(w_K)‖ ≤ inner_tol · max(1, ‖F(w_0)‖)`` (``F = ∇_w g`` by default,
    named ``symbol`` in the message; ``given=True``: ``w_K`` is a given solution and
    ``g0_norm`` is ``‖F(0)‖``). With ``on_unconverged="keep"`` an unconverged or
    broken-down linear solve is accepted (its residual is reported); only a non-finite
    solution fails.
    """
    xp = namespace(ift.v)
    sol, problems, inner_ok = ift.solve, [], None
    if on_unconverged == "keep":
        sol = _kept(xp, sol, ift.v)
    if inner_tol is not None:
        threshold = inner_tol * xp.maximum(g0_norm, xp.ones_like(g0_norm))
        inner_ok = ift.inner_residual <= threshold
        if not bool(xp.all(inner_ok)):
            problems.append(_inner_message(ift.inner_residual, threshold, inner_tol, symbol,
                                           given))
    if not sol.converged or sol.breakdown:
        problems.append(f"linear solve failed: {sol.message}")
    per_problem = _problem_success(xp, sol, inner_ok, ift.v)
    if per_problem is not None and problems:
        n_ok = int(xp.sum(xp.astype(per_problem, xp.int64)))
        problems.append(f"{n_ok} of {per_problem.shape[0]} problems passed")
    return dict(outcome(problems), problem_success=per_problem,
                inner_converged=inner_ok is None or bool(xp.all(inner_ok)))


def _inner_message(residual: Any, threshold: Any, inner_tol: float, symbol: str,
                   given: bool) -> str:
    """Why the inner test failed: an unconverged inner solve, or a poor given solution."""
    if given:
        return (
            f"the given solution is not optimal: ‖{symbol}(w)‖ = {largest(residual):.3e} > "
            f"{largest(threshold):.3e} (inner_tol={inner_tol:g}·max(1, ‖{symbol}(0)‖)); the "
            "implicit formula holds only at a solution, so the hypergradient is biased. "
            "Solve the inner problem to a tighter tolerance (or raise inner_tol)"
        )
    return (
        f"inner solve not converged: ‖{symbol}(w_K)‖ = {largest(residual):.3e}"
        f" > {largest(threshold):.3e} (inner_tol={inner_tol:g}·max(1, ‖{symbol}(w_0)‖)); "
        "the implicit formula assumes a stationary inner point, so the "
        "hypergradient is biased. Raise the inner steps or step size, or "
        "warm-start w with a HypergradState"
    )


def _kept(xp: Any, sol: Any, v: Any) -> Any:
    """``sol`` judged by finiteness only (``on_unconverged="keep"``)."""
    finite = xp.all(xp.isfinite(v), axis=-1)
    return dataclasses.replace(
        sol, converged=bool(xp.all(finite)), breakdown=False,
        converged_mask=finite if len(v.shape) == 2 else None,
        message=f"{sol.message} (kept: on_unconverged='keep')",
    )


def _problem_success(xp: Any, sol: Any, inner_ok: Any, v: Any) -> Any:
    """Per-problem success ``(B,)`` of a batched solve (``None`` for a single problem)."""
    if len(v.shape) != 2:
        return None
    mask = sol.converged_mask
    if mask is None:
        mask = xp.full((v.shape[0],), bool(sol.converged and not sol.breakdown), dtype=xp.bool)
    if inner_ok is not None:
        mask = mask & inner_ok
    return mask


def _linear_solver(name: str, value: Any) -> Callable:
    """Check: a linear solver object (any callable ``(matvec, b, x0, damping)``)."""
    if not callable(value):
        raise TypeError(
            f"{name} must be a linear solver object such as CG(), Neumann(alpha, maxiter), "
            f"FixedPoint(alpha, maxiter, tol) or Direct(); got {type(value).__name__}"
        )
    return value


def _condition(name: str, value: Any) -> Condition:
    """Check: an optimality condition of :mod:`bilevel.conditions`."""
    if not isinstance(value, Condition):
        raise TypeError(
            f"{name} must be an optimality condition such as Stationarity(), Root(F), "
            f"FixedPoint(T) or ProximalGradient(...) (bilevel.conditions); got "
            f"{type(value).__name__}"
        )
    return value


def default_solver(condition: Condition) -> Callable:
    """The linear solver for ``condition``'s Jacobian: ``CG()`` when it is symmetric
    positive definite (the stationarity default), ``GMRES()`` otherwise."""
    return CG() if condition.symmetric else GMRES()


def _schedule(name: str, value: Any) -> Any:
    """Check: ``None`` or a callable ``t -> tolerance``."""
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be a callable t -> tolerance, got {type(value).__name__}")
    return value


def _with_tol(solver: Any, tol: float) -> Any:
    """A copy of ``solver`` with relative tolerance ``tol``."""
    if dataclasses.is_dataclass(solver):
        return dataclasses.replace(solver, tol=tol)
    solver = copy.copy(solver)
    solver.tol = tol
    return solver


@register("method")
@dataclass(frozen=True, repr=False)
class Implicit(Validated, Method):
    """Implicit differentiation at the last inner iterate (AID; iMAML on a proximal ``g``).

    Computes::

        w_K = inner dynamics from w_0 (nothing stored)
        v   ≈ (H(w_K, λ) + δI)⁻¹ ∇_w f(w_K, λ)          (solver, warm-started from state.v)
        ∇F  ≈ ∇_λ f(w_K, λ) − M(w_K, λ)ᵀ v

    When the problem has an ``init`` map the result does not include ``Cᵀ·``: the IFT
    derivative of ``w*`` does not depend on where the inner solver started (for iMAML, θ
    enters through the proximal term of ``g`` instead). See :doc:`/methods/implicit`.

    Parameters
    ----------
    solver : callable, optional
        A solver object of :mod:`bilevel.linalg`: ``CG(tol, atol, maxiter)`` (needs
        ``H + δI ≻ 0``), ``Neumann(alpha, maxiter)``, ``FixedPoint(alpha, maxiter, tol)``
        (both need ``α·λ_max(H + δI) < 2``), ``Direct()`` (small ``n``; ``cache=True``
        reuses the factorisation while the matrix stays the same), or for a Jacobian that
        is not symmetric positive definite ``GMRES(...)`` or ``BiCGSTAB(...)``. Any
        callable ``solver(matvec, b, x0, damping) -> SolveResult`` works. Default
        (``None``): chosen by the condition, ``CG()`` for :class:`Stationarity` and
        symmetric roots, ``GMRES()`` otherwise (:func:`default_solver`).
    damping : float
        ``δ ≥ 0``: solve ``(H + δI) v = ∇_w f`` (regularizes singular or slightly
        indefinite Hessians; biases the result by ``O(δ)``).
    inner_tol : float or None
        Stationarity test of the inner solve: the implicit formula holds only when
        ``‖∇_w g(w_K, λ)‖ ≤ inner_tol · max(1, ‖∇_w g(w_0, λ)‖)`` (per problem). When it
        fails the result has ``success=False``. ``None`` skips the test and the extra
        gradient at ``w_0``.
    tol_schedule : callable, optional
        HOAG-style decreasing tolerances: ``t ↦ τ_t`` with ``t = state.t`` (the number of
        previous calls with this :class:`~bilevel.api.HypergradState`; 0 without one),
        e.g. ``lambda t: 0.1 * 0.9 ** t``. Sets the solver's relative ``tol`` and the inner
        tolerance to ``τ_t``. Needs a solver with a ``tol`` (CG, FixedPoint).
    warm_start : bool
        Start the solver from ``state.v`` when a state with a ``v`` of the right shape is
        passed.
    on_unconverged : {"drop", "keep"}
        What an unconverged (or broken-down) linear solve means. ``"drop"`` (default): the
        problem fails (``success=False``; meta-learning drops the task from the meta-batch).
        ``"keep"``: the approximate solution is accepted and its residual reported; only a
        non-finite solution fails. A fixed-budget solver (``CG.fixed(J)``) never reports
        an unconverged solve, so it drops nothing under either policy.
    condition : Condition
        The optimality condition ``F(w*, λ) = 0`` that defines the inner solution
        (:mod:`bilevel.conditions`): :class:`~bilevel.conditions.Stationarity` (default,
        ``F = ∇_w g``), :class:`~bilevel.conditions.Root`,
        :class:`~bilevel.conditions.FixedPoint` or
        :class:`~bilevel.conditions.ProximalGradient` (Lasso, elastic net). The system
        becomes ``(∂_w F + δI)ᵀ v = ∇_w f`` and the result ``∇_λ f − (∂_λ F)ᵀ v``; the
        inner test and ``inner_residual`` use ``‖F‖``.

    With ``dynamics=Solved()`` no inner step runs: ``w0`` is the solution (from
    scikit-learn, ``scipy.optimize.minimize``, ...), and the inner test compares
    ``‖F(w0)‖`` with ``inner_tol·max(1, ‖F(0)‖)``, so a poor solution fails loudly.

    Notes
    -----
    Result keys besides the common ones: ``v`` (stored back into the state),
    ``linear_solve`` (the :class:`bilevel.linalg.SolveResult`), ``linear_residual``,
    ``linear_iterations``, ``inner_residual``, ``inner_converged``, ``tol``,
    ``warm_started`` and ``problem_success``: for a batched problem a boolean array
    ``(B,)``, true where that problem's linear solve converged and its inner residual
    passed the ``inner_tol`` test (meta-learning drops the failing tasks of a meta-batch);
    ``None`` for a single problem.

    Memory O(n + m): the solver's work vectors and one trace of ``∇_w g`` — independent of
    K. Time: K inner steps + 1 gradient (2 with the inner test) + J HVPs (solver
    iterations) + 1 mixed VJP + 1 outer gradient.

    References
    ----------
    Pedregosa, "Hyperparameter optimization with approximate gradient", ICML 2016 (HOAG).
    Rajeswaran et al., "Meta-learning with implicit gradients", NeurIPS 2019 (iMAML).
    Grazzi et al., "On the iteration complexity of hypergradient computation", ICML 2020.
    Blondel et al., "Efficient and modular implicit differentiation", NeurIPS 2022.
    Bertrand et al., "Implicit differentiation of Lasso-type models for hyperparameter
    optimization", ICML 2020.
    """

    solver: Callable | None = option(None, check=_linear_solver)
    damping: float = option(0.0, check=nonnegative)
    inner_tol: float | None = option(1e-6, check=optional(positive), kw_only=True)
    tol_schedule: Callable[[int], float] | None = option(None, check=_schedule, kw_only=True)
    warm_start: bool = option(True, check=flag, kw_only=True)
    on_unconverged: str = option("drop", check=one_of(("drop", "keep")), kw_only=True)
    condition: Condition = option(STATIONARITY, check=_condition, kw_only=True)

    name = "implicit"

    def __post_init__(self) -> None:
        if self.solver is None:
            condition = _condition("condition", self.condition)
            object.__setattr__(self, "solver", default_solver(condition))
        super().__post_init__()
        if self.tol_schedule is not None and not hasattr(self.solver, "tol"):
            raise ValueError(
                f"tol_schedule needs a solver with a relative tolerance 'tol' (CG, "
                f"FixedPoint); {self.solver!r} has none"
            )

    def compute(
        self,
        problem: BilevelProblem,
        lam: Any,
        w0: Any,
        dynamics: Dynamics,
        state: HypergradState | None,
    ) -> HypergradResult:
        solver, inner_tol = self._solver_and_tol(state)
        given = isinstance(dynamics, Solved)
        g0_norm = None if inner_tol is None else self._reference_norm(problem, w0, lam, given)
        w = dynamics.weights(run(problem, dynamics, w0, lam))
        x0 = self._warm_start(state, w)
        ift = implicit_vjp(problem, w, lam, solver, self.damping, x0, self.condition)
        return HypergradResult(
            grad=ift.grad, w=w, value=ift.value, v=ift.v,
            linear_solve=ift.solve,
            linear_residual=ift.solve.residual_norm,
            linear_iterations=ift.solve.iterations,
            inner_residual=ift.inner_residual,
            warm_started=x0 is not None,
            tol=getattr(solver, "tol", None),
            **implicit_diagnostics(ift, g0_norm, inner_tol, self.on_unconverged,
                                   symbol=self.condition.symbol, given=given),
        )

    def __repr__(self) -> str:
        """The constructor call, with ``solver`` shown only when not the condition's choice."""
        shown = super().__repr__()
        chosen = f"solver={default_solver(self.condition)!r}"
        return shown.replace(f"({chosen}, ", "(").replace(f"({chosen})", "()")

    def _reference_norm(self, problem: BilevelProblem, w0: Any, lam: Any, given: bool) -> Any:
        """``‖F(w_0)‖``, or ``‖F(0)‖`` for a given solution (1 where ``F(0)`` is not finite,
        e.g. a logarithm at 0), the scale of the inner test."""
        if not given:
            return norm_per_problem(self.condition.residual(problem, w0, lam))
        xp = namespace(w0)
        ones = xp.ones(tuple(w0.shape[:-1]), dtype=w0.dtype)
        try:
            norm = norm_per_problem(self.condition.residual(problem, 0 * w0, lam))
        except NonFiniteError:
            return ones
        return xp.where(xp.isfinite(norm), norm, ones)

    def _solver_and_tol(self, state: HypergradState | None) -> tuple[Callable, float | None]:
        """The solver and inner tolerance of this call (``tol_schedule`` at ``state.t``)."""
        if self.tol_schedule is None:
            return self.solver, self.inner_tol
        t = 0 if state is None else state.t
        tol = float(self.tol_schedule(t))
        if not tol > 0:
            raise ValueError(f"tol_schedule({t}) must be a positive tolerance, got {tol!r}")
        return _with_tol(self.solver, tol), tol

    def _warm_start(self, state: HypergradState | None, w: Any) -> Any:
        """``state.v`` when warm starts are on and its shape fits, else ``None``."""
        if not self.warm_start or state is None or state.v is None:
            return None
        return state.v if tuple(getattr(state.v, "shape", ())) == tuple(w.shape) else None
