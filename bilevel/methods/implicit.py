"""Approximate implicit differentiation (AID, HOAG, iMAML; ALGORITHMS §2.4–2.5).

The implicit function theorem at a stationary inner point ``∇_w g(w*, λ) = 0`` gives::

    ∇F(λ) = ∇_λ f − Mᵀ v,      (H + δI) v = ∇_w f,      H = ∇²_ww g,  M = ∇²_wλ g

all at ``(w*, λ)``. :class:`Implicit` runs the inner dynamics without recording anything,
replaces ``w*`` by the last iterate ``w_K`` and solves the linear system with any solver of
:mod:`bilevel.linalg` through Hessian-vector products at one traced point.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any

from ..api import HypergradResult, HypergradState, Method, norm_per_problem
from ..backend import namespace
from ..dynamics import Dynamics, run
from ..linalg import CG
from ..problem import BilevelProblem

__all__ = ["Implicit"]


def _max(x: Any) -> float:
    """Largest entry of a per-problem array (or the scalar itself) as a Python float."""
    xp = namespace(x)
    return float(xp.max(xp.reshape(xp.asarray(x), (-1,))))


def _problem_success(xp: Any, sol: Any, inner_ok: Any, b: Any) -> Any:
    """Per-problem success ``(B,)`` of a batched solve (``None`` for a single problem).

    A problem succeeds when its linear solve converged (a CG breakdown leaves it
    unconverged) and, when tested, its inner residual passed the stationarity test.
    """
    if len(b.shape) != 2:
        return None
    mask = sol.converged_mask
    if mask is None:
        mask = xp.full((b.shape[0],), bool(sol.converged and not sol.breakdown), dtype=xp.bool)
    if inner_ok is not None:
        mask = mask & inner_ok
    return mask


class Implicit(Method):
    """Implicit differentiation at the last inner iterate (AID; iMAML on a proximal ``g``).

    Computes::

        w_K = inner dynamics from w_0 (nothing stored)
        v   ≈ (H(w_K, λ) + δI)⁻¹ ∇_w f(w_K, λ)          (solver, warm-started from state.v)
        ∇F  ≈ ∇_λ f(w_K, λ) − M(w_K, λ)ᵀ v

    The gradient map of ``g`` is traced once at ``w_K`` (``problem.linearize``); each solver
    iteration is then one reverse pass over that trace. When the problem has an ``init``
    map the result does not include ``Cᵀ·``: the IFT derivative of ``w*`` does not depend
    on where the inner solver started (for iMAML, θ enters through the proximal term of
    ``g`` instead).

    Parameters
    ----------
    solver : callable, optional
        A solver object of :mod:`bilevel.linalg`: ``CG(tol, atol, maxiter)`` (default
        ``CG()``, needs ``H + δI ≻ 0``), ``Neumann(alpha, maxiter)``,
        ``FixedPoint(alpha, maxiter, tol)`` (both need ``α·λ_max(H + δI) < 2``) or
        ``Direct()`` (small ``n``). Any callable ``solver(matvec, b, x0, damping) ->
        SolveResult`` works.
    damping : float
        ``δ ≥ 0``: solve ``(H + δI) v = ∇_w f`` (regularizes singular or slightly
        indefinite Hessians; biases the result by ``O(δ)``).
    inner_tol : float or None
        Stationarity test of the inner solve: the implicit formula holds only when
        ``‖∇_w g(w_K, λ)‖ ≤ inner_tol · max(1, ‖∇_w g(w_0, λ)‖)`` (per problem; an absolute
        test for small initial gradients, a relative one for large). When it fails the
        result has ``success=False`` (a :class:`HypergradWarning`, or a
        :class:`HypergradError` under ``strict=True``). ``None`` skips the test and the
        extra gradient at ``w_0``.
    tol_schedule : callable, optional
        HOAG-style decreasing tolerances: ``t ↦ τ_t`` with ``t = state.t`` (the number of
        previous calls with this :class:`HypergradState`; 0 without a state), e.g.
        ``lambda t: 0.1 * 0.9 ** t`` (FAR-HO's default). Sets the solver's relative ``tol``
        and the inner tolerance to ``τ_t``. Needs a solver with a ``tol`` (CG, FixedPoint).
    warm_start : bool
        Start the solver from ``state.v`` when a state with a ``v`` of the right shape is
        passed (the inner iterate ``w`` is warm-started by :func:`bilevel.hypergrad` itself
        when the problem has no ``init``).

    Notes
    -----
    Result keys besides the common ones: ``v`` (the solution, stored back into the state),
    ``linear_solve`` (the :class:`bilevel.linalg.SolveResult`), ``linear_residual``
    (``‖(H + δI)v − ∇_w f‖`` per problem, as the solver measured it), ``linear_iterations``,
    ``inner_residual`` (``‖∇_w g(w_K)‖`` per problem), ``inner_converged``, ``tol`` and
    ``problem_success``: for a batched problem a boolean array ``(B,)``, true where that
    problem's linear solve converged (no CG breakdown) and its inner residual passed the
    ``inner_tol`` test, so that a caller can keep the problems that passed (meta-learning
    drops the failing tasks of a meta-batch); ``None`` for a single problem, whose status
    is ``success``.

    Memory O(n + m): the solver's work vectors (4 for CG, 3 for Neumann/FixedPoint) and
    one trace of ``∇_w g`` — independent of K. Time: K inner steps + 1 gradient (2 with the
    inner test) + J HVPs (solver iterations) + 1 mixed VJP + 1 outer gradient.

    References
    ----------
    Pedregosa, "Hyperparameter optimization with approximate gradient", ICML 2016 (HOAG).
    Rajeswaran et al., "Meta-learning with implicit gradients", NeurIPS 2019 (iMAML).
    Grazzi et al., "On the iteration complexity of hypergradient computation", ICML 2020.
    """

    name = "implicit"

    def __init__(
        self,
        solver: Callable | None = None,
        damping: float = 0.0,
        *,
        inner_tol: float | None = 1e-6,
        tol_schedule: Callable[[int], float] | None = None,
        warm_start: bool = True,
    ):
        solver = CG() if solver is None else solver
        if not callable(solver):
            raise TypeError(
                "solver must be a linear solver object such as CG(), Neumann(alpha, maxiter), "
                f"FixedPoint(alpha, maxiter, tol) or Direct(); got {type(solver).__name__}"
            )
        if not (isinstance(damping, (int, float)) and damping >= 0 and damping == damping):
            raise ValueError(f"damping must be a number >= 0, got {damping!r}")
        if inner_tol is not None and not (isinstance(inner_tol, (int, float)) and inner_tol > 0):
            raise ValueError(f"inner_tol must be a positive number or None, got {inner_tol!r}")
        if tol_schedule is not None:
            if not callable(tol_schedule):
                raise TypeError(
                    f"tol_schedule must be a callable t -> tolerance, got "
                    f"{type(tol_schedule).__name__}"
                )
            if not hasattr(solver, "tol"):
                raise ValueError(
                    f"tol_schedule needs a solver with a relative tolerance 'tol' (CG, "
                    f"FixedPoint); {solver!r} has none"
                )
        self.solver = solver
        self.damping = float(damping)
        self.inner_tol = inner_tol
        self.tol_schedule = tol_schedule
        self.warm_start = bool(warm_start)

    def __repr__(self) -> str:
        args = [repr(self.solver)]
        if self.damping:
            args.append(f"damping={self.damping!r}")
        if self.tol_schedule is not None:
            args.append("tol_schedule=...")
        return f"Implicit({', '.join(args)})"

    def _solver_and_tol(self, state: HypergradState | None) -> tuple[Callable, float | None]:
        if self.tol_schedule is None:
            return self.solver, self.inner_tol
        t = 0 if state is None else state.t
        tol = float(self.tol_schedule(t))
        if not tol > 0:
            raise ValueError(f"tol_schedule({t}) must be a positive tolerance, got {tol!r}")
        if dataclasses.is_dataclass(self.solver):  # the frozen solvers of bilevel.linalg
            return dataclasses.replace(self.solver, tol=tol), tol
        solver = copy.copy(self.solver)
        solver.tol = tol
        return solver, tol

    def compute(
        self,
        problem: BilevelProblem,
        lam: Any,
        w0: Any,
        inner: Dynamics,
        state: HypergradState | None,
    ) -> HypergradResult:
        xp = namespace(lam, w0)
        solver, inner_tol = self._solver_and_tol(state)
        g0_norm = None
        if inner_tol is not None:
            g0_norm = norm_per_problem(problem.inner_grad(w0, lam))
        w = inner.weights(run(problem, inner, w0, lam))
        value, b, grad_lam = problem.outer_value_and_grads(w, lam)
        lin = problem.linearize(w, lam)
        inner_residual = norm_per_problem(lin.grad)

        x0 = None
        if self.warm_start and state is not None and state.v is not None:
            if tuple(getattr(state.v, "shape", ())) == tuple(b.shape):
                x0 = state.v
        sol = solver(lin.hvp, b, x0, damping=self.damping)
        v = sol.x
        grad = grad_lam - lin.mixed_vjp(v)

        problems = []
        inner_converged = True
        inner_ok = None
        if inner_tol is not None:
            threshold = inner_tol * xp.maximum(g0_norm, xp.ones_like(g0_norm))
            inner_ok = inner_residual <= threshold
            inner_converged = bool(xp.all(inner_ok))
            if not inner_converged:
                problems.append(
                    f"inner solve not converged: ‖∇_w g(w_K)‖ = {_max(inner_residual):.3e} > "
                    f"{_max(threshold):.3e} (inner_tol={inner_tol:g}·max(1, ‖∇_w g(w_0)‖)); "
                    "the implicit formula assumes a stationary inner point, so the "
                    "hypergradient is biased. Raise the inner steps or step size, or "
                    "warm-start w with a HypergradState"
                )
        if not sol.converged or sol.breakdown:
            problems.append(f"linear solve failed: {sol.message}")
        problem_success = _problem_success(xp, sol, inner_ok, b)
        if problem_success is not None and problems:
            n_ok = int(xp.sum(xp.astype(problem_success, xp.int64)))
            problems.append(f"{n_ok} of {problem_success.shape[0]} problems passed")
        return HypergradResult(
            grad=grad,
            w=w,
            value=value,
            success=not problems,
            message="; ".join(problems) if problems else "ok",
            v=v,
            linear_solve=sol,
            linear_residual=sol.residual_norm,
            linear_iterations=sol.iterations,
            inner_residual=inner_residual,
            inner_converged=inner_converged,
            problem_success=problem_success,
            warm_started=x0 is not None,
            tol=getattr(solver, "tol", None),
        )
