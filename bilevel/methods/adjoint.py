"""Adjoint method for gradient-flow inner problems (A-MAML; ALGORITHMS §2.6, V3, V4, V9).

The inner problem is the ODE ``du/dt = −∇_w g(u, λ)``, ``u(0) = w_0`` on ``[0, T]``,
integrated by :class:`bilevel.GradientFlow` with ``K`` steps of ``h = T/K`` of its
Runge–Kutta scheme. With the adjoint ``a(t) = ∂f(u_T)/∂u(t)``::

    a(T) = ∇_w f(u_T, λ),     da/dt = H(u(t), λ) a(t)     (integrated from T back to 0)
    ∇F   = ∇_λ f − ∫_0^T M(u(t), λ)ᵀ a(t) dt + Cᵀ a(0)

(``C = ∂w_0/∂λ`` when the problem has an ``init`` map, e.g. A-MAML's ``u(0) = θ``). A
proximal term ``(r/2)‖w − θ‖²`` put into ``g`` gives A-MAML's field ``−∇L̂ − r(u − θ)``;
its ``r∫a dt`` term then comes out of the ``−∫Mᵀa`` integral automatically.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

from ..api import HypergradResult, HypergradState, HypergradWarning, Method, norm_per_problem
from ..backend import namespace
from ..checkpoint import default_checkpoints, reverse_sweep
from ..dynamics import Dynamics, GradientFlow, run
from ..problem import BilevelProblem, NonFiniteError

__all__ = ["Adjoint"]

TRAJECTORIES = ("store", "checkpoint", "reconstruct")


def _max(x: Any) -> float:
    xp = namespace(x)
    return float(xp.max(xp.reshape(xp.asarray(x), (-1,))))


class _ReconstructionFailed(Exception):
    def __init__(self, step: int, cause: str):
        super().__init__(cause)
        self.step = step
        self.cause = cause


class Adjoint(Method):
    """Adjoint sensitivity of a gradient flow, discrete or continuous, with a memory policy.

    Parameters
    ----------
    trajectory : {"store", "checkpoint", "reconstruct"}
        How the backward pass gets the forward states ``u_k``:

        * ``"store"``: keep all ``K + 1`` states. Memory O(K·n), no recomputation.
        * ``"checkpoint"``: binomial checkpointing (:func:`bilevel.checkpoint.reverse_sweep`)
          with ``checkpoints`` snapshots (default ``⌈log₂K⌉ + 1``). Memory O(c·n); each
          step is recomputed at most ``r`` times with ``C(c + r, c) ≥ K + 1``.
        * ``"reconstruct"``: keep only ``u_K`` and integrate ``u`` backward with the same
          scheme (step ``−h``) jointly with the adjoint. Memory O(n). Gradient flow
          contracts forward, so the backward integration expands errors like
          ``e^{λ_max(H)·T}``; the round-trip error ``‖ũ_0 − w_0‖ / max(‖w_0‖, ‖u_K‖)`` of
          the reconstructed start is reported as ``reconstruction_error``, with a
          :class:`HypergradWarning` above ``reconstruct_warn`` and ``success=False`` above
          ``reconstruct_tol``.
    discrete : bool
        ``True`` (default): the exact discrete adjoint of the scheme — the exact gradient
        of the discretized flow, via ``GradientFlow.step_vjp`` (one VJP of the vector
        field per stage). For Euler this is reverse mode through gradient descent with
        ``lr = h`` (V3). ``False``: the continuous adjoint (optimize-then-discretize, as in
        A-MAML), ``K`` backward steps of the adjoint ODE using the forward states
        ``u_k``:

        * Euler forward: explicit Euler backward with ``H`` at the later state::

              a_k = a_{k+1} − h H(u_{k+1}) a_{k+1},   ∇F −= h M(u_{k+1})ᵀ a_{k+1}

          which differs from the exact discrete gradient by O(h).
        * Heun / RK4 forward: Heun's (trapezoidal predictor–corrector) backward step::

              ã   = a_{k+1} − h H(u_{k+1}) a_{k+1}
              a_k = a_{k+1} − (h/2) (H(u_{k+1}) a_{k+1} + H(u_k) ã)
              ∇F −= (h/2) (M(u_{k+1})ᵀ a_{k+1} + M(u_k)ᵀ ã)

          O(h²) from the exact answer.
    checkpoints : int, optional
        Snapshots for ``trajectory="checkpoint"``.
    reconstruct_warn, reconstruct_tol : float
        Thresholds on ``reconstruction_error`` (see ``trajectory``).

    Notes
    -----
    Memory: O(K·n) stored, O(c·n) checkpointed, O(n) reconstructed (plus one trace of
    ``∇_w g`` at a time). Time with an ``s``-stage scheme: ``s·K`` gradients forward; the
    discrete backward ``s·K`` HVPs (VJPs of the field) plus ``s − 1`` gradients per step
    to rebuild the stages; the continuous backward ``K`` (Euler) or ``2K`` (Heun-type)
    HVPs; ``"checkpoint"`` adds the recomputed steps, ``"reconstruct"`` ``s·K``
    gradients for the backward integration of ``u``.

    References
    ----------
    Li et al., "Meta-learning with adjoint methods", AISTATS 2023 (A-MAML).
    Chen et al., "Neural ordinary differential equations", NeurIPS 2018.
    """

    name = "adjoint"

    def __init__(
        self,
        trajectory: str = "checkpoint",
        discrete: bool = True,
        *,
        checkpoints: int | None = None,
        reconstruct_warn: float = 1e-8,
        reconstruct_tol: float = 1e-4,
    ):
        if trajectory not in TRAJECTORIES:
            raise ValueError(
                f"trajectory must be one of {TRAJECTORIES}, got {trajectory!r}"
            )
        if not isinstance(discrete, bool):
            raise TypeError(f"discrete must be True or False, got {discrete!r}")
        if checkpoints is not None:
            if trajectory != "checkpoint":
                raise ValueError(
                    f"checkpoints={checkpoints!r} applies to trajectory='checkpoint' only, "
                    f"not {trajectory!r}"
                )
            if isinstance(checkpoints, bool) or not isinstance(checkpoints, int) or (
                checkpoints < 1
            ):
                raise ValueError(
                    f"checkpoints must be a positive integer or None, got {checkpoints!r}"
                )
        for nm, val in (("reconstruct_warn", reconstruct_warn),
                        ("reconstruct_tol", reconstruct_tol)):
            if not (isinstance(val, (int, float)) and val > 0):
                raise ValueError(f"{nm} must be a positive number, got {val!r}")
        self.trajectory = trajectory
        self.discrete = discrete
        self.checkpoints = checkpoints
        self.reconstruct_warn = float(reconstruct_warn)
        self.reconstruct_tol = float(reconstruct_tol)

    def __repr__(self) -> str:
        args = [f"trajectory={self.trajectory!r}", f"discrete={self.discrete}"]
        if self.checkpoints is not None:
            args.append(f"checkpoints={self.checkpoints}")
        return f"Adjoint({', '.join(args)})"

    def check_dynamics(self, inner: Dynamics) -> None:
        if not isinstance(inner, GradientFlow):
            raise TypeError(
                f"Adjoint needs GradientFlow inner dynamics (the ODE dw/dt = −∇_w g), got "
                f"{type(inner).__name__}; use inner=GradientFlow(horizon, steps, scheme='rk4'), "
                "or Reverse() for discrete dynamics"
            )

    # ------------------------------------------------------------------ backward steps
    def _continuous_step(
        self, problem: BilevelProblem, inner: GradientFlow, lam: Any, k: int,
        u_k: Any, u_next: Any, acc: dict,
    ) -> None:
        """One backward step of the adjoint ODE from t_{k+1} to t_k (see class docstring)."""
        h = inner.h
        data = inner.data(problem, k)
        cached = acc.get("lin_next")
        if cached is not None and cached[0] == k + 1 and inner.batches is None:
            lin_next = cached[1]
        else:
            lin_next = problem.linearize(u_next, lam, data=data)
        a = acc["a"]
        hu1, mu1 = lin_next.vjp(a)
        if inner.scheme.order == 1:
            acc["a"] = a - h * hu1
            acc["h"] = acc["h"] - h * mu1
            acc["lin_next"] = None
            return
        a_pred = a - h * hu1
        lin_k = problem.linearize(u_k, lam, data=data)
        hu0, mu0 = lin_k.vjp(a_pred)
        acc["a"] = a - (0.5 * h) * (hu1 + hu0)
        acc["h"] = acc["h"] - (0.5 * h) * (mu1 + mu0)
        acc["lin_next"] = (k, lin_k)

    def _backward(self, problem, inner, lam, acc):
        """``backward(state_k, k)`` for a reverse sweep; remembers ``u_{k+1}``."""

        def backward(st: tuple, k: int) -> None:
            try:
                if self.discrete:
                    (a,), b = inner.step_vjp(problem, st, lam, k, (acc["a"],))
                    acc["a"] = a
                    acc["h"] = acc["h"] + b
                else:
                    self._continuous_step(problem, inner, lam, k, st[0], acc["u_next"], acc)
                    acc["u_next"] = st[0]
            except NonFiniteError as err:
                err.step = k
                raise

        return backward

    # ------------------------------------------------------------------ compute
    def compute(
        self,
        problem: BilevelProblem,
        lam: Any,
        w0: Any,
        inner: Dynamics,
        state: HypergradState | None,
    ) -> HypergradResult:
        self.check_dynamics(inner)
        K = inner.steps
        acc: dict[str, Any] = {}

        def on_final(st: tuple) -> None:
            value, gw, gl = problem.outer_value_and_grads(st[0], lam)
            acc.update(w=st[0], value=value, a=gw, h=gl, u_next=st[0], lin_next=None)

        def advance(st: tuple, k: int) -> tuple:
            try:
                return inner.step(problem, st, lam, k)
            except NonFiniteError as err:
                err.step = k
                raise

        backward = self._backward(problem, inner, lam, acc)
        extra: dict[str, Any] = {}
        problems: list[str] = []
        if self.trajectory == "reconstruct":
            extra, failure = self._reconstruct(problem, inner, lam, w0, on_final, backward, acc)
            if failure is not None:
                return failure
            err = extra["reconstruction_error"]
            if err > self.reconstruct_tol:
                problems.append(
                    f"backward reconstruction of the trajectory lost accuracy: round-trip "
                    f"error ‖ũ_0 − w_0‖/max(‖w_0‖, ‖u_K‖) = {err:.3e} > reconstruct_tol="
                    f"{self.reconstruct_tol:g} (gradient flow contracts forward, so the "
                    "backward integration amplifies errors like e^(λ_max(H)·T)); use "
                    "trajectory='checkpoint', a shorter horizon, or more steps"
                )
            elif err > self.reconstruct_warn:
                warnings.warn(
                    f"{self!r}: backward reconstruction round-trip error {err:.3e} > "
                    f"reconstruct_warn={self.reconstruct_warn:g}; the hypergradient may be "
                    "inaccurate (trajectory='checkpoint' avoids this)",
                    HypergradWarning,
                    stacklevel=3,
                )
        else:
            c = None
            if self.trajectory == "checkpoint":
                c = self.checkpoints if self.checkpoints is not None else default_checkpoints(K)
            stats = reverse_sweep(
                advance, backward, inner.init(w0), K, checkpoints=c, on_final=on_final
            )
            extra = dict(
                steps_recomputed=stats.steps_recomputed,
                max_states_held=stats.max_states_held,
            )
        grad = acc["h"]
        if problem.init is not None:
            grad = grad + problem.init_vjp(lam, acc["a"])
        return HypergradResult(
            grad=grad,
            w=acc["w"],
            value=acc["value"],
            success=not problems,
            message="; ".join(problems) if problems else "ok",
            adjoint_initial=acc["a"],
            trajectory=self.trajectory,
            discrete=self.discrete,
            scheme=inner.scheme.name,
            **extra,
        )

    def _reconstruct(self, problem, inner, lam, w0, on_final, backward, acc):
        """Forward pass keeping only ``u_K``, then ``u`` and ``a`` integrated back together."""
        from ..ode import rk_step

        xp = namespace(lam, w0)
        s = run(problem, inner, w0, lam)
        on_final(s)
        u = s[0]
        u_K_norm = norm_per_problem(u)
        try:
            for k in range(inner.steps - 1, -1, -1):
                try:
                    u_prev = rk_step(inner.field(problem, lam, k), u, -inner.h, inner.scheme)
                    if not bool(xp.all(xp.isfinite(u_prev))):
                        raise _ReconstructionFailed(k, "non-finite state")
                    backward((u_prev,), k)
                except NonFiniteError as err:
                    raise _ReconstructionFailed(k, f"non-finite {err.what}") from err
                u = u_prev
        except _ReconstructionFailed as fail:
            message = (
                f"backward reconstruction of the trajectory diverged at step {fail.step} "
                f"({fail.cause}): gradient flow contracts forward, so integrating it backward "
                "amplifies errors like e^(λ_max(H)·T); use trajectory='checkpoint' "
                "(O(log K) states) or 'store'"
            )
            return {}, HypergradResult(
                grad=xp.full(tuple(lam.shape), math.nan, dtype=lam.dtype),
                w=acc["w"],
                value=acc["value"],
                success=False,
                message=message,
                reconstruction_error=math.inf,
                nonfinite_step=fail.step,
                trajectory=self.trajectory,
                discrete=self.discrete,
                scheme=inner.scheme.name,
            )
        scale = xp.maximum(norm_per_problem(w0), u_K_norm)
        diff = norm_per_problem(u - w0)
        tiny = float(xp.finfo(w0.dtype).tiny)
        err = _max(diff / xp.maximum(scale, xp.full_like(scale, tiny)))
        return {"reconstruction_error": err}, None
