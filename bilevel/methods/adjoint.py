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

import functools
import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from ..api import HypergradResult, HypergradState, HypergradWarning, Method, norm_per_problem
from ..backend import namespace, to_numpy
from ..checkpoint import default_checkpoints, reverse_sweep
from ..dynamics import Dynamics, GradientFlow
from ..ode import Tableau, rk_step
from ..problem import BilevelProblem, NonFiniteError

__all__ = ["Adjoint", "lanczos_max_eigenvalue", "real_stability_bound"]

TRAJECTORIES = ("store", "checkpoint", "reconstruct")


def _max(x: Any) -> float:
    xp = namespace(x)
    return float(xp.max(xp.reshape(xp.asarray(x), (-1,))))


def _dot(x: Any, y: Any) -> Any:
    """⟨x, y⟩ over all axes, or per problem (over the non-batch axes) for ``(B, ...)``."""
    if type(x) is np.ndarray and type(y) is np.ndarray:  # fast path, once per step
        if x.ndim <= 1:
            return np.vdot(x, y)
        return np.einsum("ij,ij->i", x.reshape(len(x), -1), y.reshape(len(y), -1))
    xp = namespace(x, y)
    if len(x.shape) <= 1:
        return xp.sum(x * y)
    return xp.sum(x * y, axis=tuple(range(1, len(x.shape))))


def _col(s: Any, x: Any) -> Any:
    """Per-problem scalars ``s`` shaped to broadcast against ``x``."""
    if len(x.shape) <= 1:
        return s
    return namespace(s).reshape(s, (-1,) + (1,) * (len(x.shape) - 1))


def _host(x: Any) -> np.ndarray:
    return np.asarray(to_numpy(x), dtype=float).reshape(-1)


@functools.cache
def real_stability_bound(scheme: Tableau) -> float:
    """Largest ``x`` with ``|R(−y)| ≤ 1`` for all ``y ∈ [0, x]``: the step condition ``h·λ ≤ x``.

    ``R(z) = 1 + Σ_j z^j bᵀA^{j−1}1`` is the stability polynomial of the explicit scheme;
    a step on ``du/dt = −λu`` multiplies ``u`` by ``R(−hλ)``. Euler and Heun give 2, RK4
    ≈ 2.7853. Cost: a scan of ``R`` on a grid of ``[0, 10]`` and a bisection.
    """
    A = np.zeros((scheme.stages, scheme.stages))
    for i, row in enumerate(scheme.a):
        A[i, : len(row)] = row
    b = np.asarray(scheme.b)
    coef, v = [1.0], np.ones(scheme.stages)
    for _ in range(scheme.stages):
        coef.append(float(b @ v))
        v = A @ v
    poly = np.polynomial.Polynomial(coef)

    def stable(x: float) -> bool:
        return abs(poly(-x)) <= 1.0 + 1e-12

    grid = np.linspace(0.0, 10.0, 10001)[1:]
    bad = np.flatnonzero(np.abs(poly(-grid)) > 1.0 + 1e-12)
    if bad.size == 0:
        return 10.0
    lo = 0.0 if bad[0] == 0 else float(grid[bad[0] - 1])
    hi = float(grid[bad[0]])
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if stable(mid) else (lo, mid)
    return lo


def lanczos_max_eigenvalue(hvp: Callable[[Any], Any], v0: Any, iters: int) -> np.ndarray:
    """Largest Ritz value of ``H`` after ``iters`` Lanczos steps from ``v0`` (per problem).

    Ritz values lie in ``[λ_min(H), λ_max(H)]``, so the result is a lower bound on
    ``λ_max`` that is usually sharp for a separated top eigenvalue. Memory: three vectors
    (no reorthogonalization); cost: ``iters`` HVPs. Returns a NumPy array of shape ``()``
    or ``(B,)``.
    """
    xp = namespace(v0)
    v = v0 / _col(norm_per_problem(v0), v0)
    v_prev = xp.zeros_like(v)
    beta = xp.zeros_like(norm_per_problem(v))
    alphas, betas = [], []
    for j in range(iters):
        w = hvp(v)
        alpha = _dot(w, v)
        w = w - _col(alpha, w) * v - _col(beta, w) * v_prev
        beta_next = norm_per_problem(w)
        # breakdown: an invariant Krylov space; the remaining rows decouple (β = 0)
        ok = beta_next > 1e-12 * (xp.abs(alpha) + beta + 1e-300)
        beta_next = xp.where(ok, beta_next, xp.zeros_like(beta_next))
        safe = xp.where(ok, beta_next, xp.ones_like(beta_next))
        alphas.append(alpha)
        if j + 1 < iters:
            betas.append(beta_next)
        v_prev, v = v, w / _col(safe, w)
        v = xp.where(_col(ok, v), v, xp.zeros_like(v))
        beta = beta_next
    a = np.stack([np.atleast_1d(_host(x)) for x in alphas], axis=-1)  # (B, m)
    b = (np.stack([np.atleast_1d(_host(x)) for x in betas], axis=-1) if betas
         else np.zeros((a.shape[0], 0)))
    T = np.zeros(a.shape + (a.shape[-1],))
    idx = np.arange(a.shape[-1])
    T[:, idx, idx] = a
    T[:, idx[:-1], idx[1:]] = b
    T[:, idx[1:], idx[:-1]] = b
    top = np.linalg.eigvalsh(T)[:, -1]
    return top.reshape(()) if len(v0.shape) <= 1 else top


def _steps_needed(K: int, stiffness: float, bound: float) -> int:
    """Steps ``K'`` with ``(T/K')·λ ≤ bound`` given ``stiffness = (T/K)·λ``."""
    return max(K + 1, math.ceil(K * stiffness / bound - 1e-9))


class _Stability:
    """Running step-condition diagnostics.

    Forward: the secant curvature ``q_k = ⟨∇g(u_{k+1}) − ∇g(u_k), Δu⟩/‖Δu‖²`` of each
    step, a Rayleigh quotient of the averaged Hessian along the step, so ``h·q_k`` is a
    lower bound on ``h·λ_max`` there; it is compared with the scheme's real stability
    bound. Backward (continuous adjoint): the Rayleigh quotient ``⟨a, Ha⟩/‖a‖²`` of each
    HVP the step already computes, against the bound 2 of explicit Euler/Heun. An
    unstable mode grows until it dominates ``Δu`` or ``a``, so both tests fire as soon as
    the error they cause is visible; a Lanczos estimate at ``u_K`` catches it earlier.
    Cost per step: three inner products (forward) or two per HVP (backward). NumPy arrays
    are judged on the host at once; other backends keep running maxima on the device (no
    synchronization per step) and are read once at the end.
    """

    def __init__(self, h: float):
        self.h = h
        self.next_k = 0
        self.prev: tuple[Any, Any, Any] | None = None
        # kind -> [largest h·q, first violating step (None) or device arrays of both]
        self.state: dict[str, list[Any]] = {"forward": [-math.inf, None],
                                             "backward": [-math.inf, None]}
        self.top: np.ndarray | None = None
        self.eps: dict[Any, float] = {}

    def _record(self, kind: str, num: Any, den: Any, valid: Any, k: int, bound: float) -> None:
        """``s = h·num/den`` per problem where ``valid``; a non-finite ``s`` counts as > bound."""
        entry = self.state[kind]
        if isinstance(num, np.generic):  # one unbatched problem: plain floats
            m = self.h * float(num) / float(den) if valid else -math.inf
            if math.isnan(m):
                m = math.inf
        elif type(num) is np.ndarray:
            s = self.h * num / np.where(valid, den, 1.0)
            m = float(np.max(np.where(valid, s, -math.inf)))
            if math.isnan(m):
                m = math.inf
        if isinstance(num, (np.generic, np.ndarray)):
            if m > bound and entry[1] is None:
                entry[1] = k
            entry[0] = max(entry[0], m) if math.isfinite(m) else entry[0]
            return
        xp = namespace(num)
        s = self.h * num / xp.where(valid, den, xp.ones_like(den))
        if not isinstance(entry[1], list):
            entry[1] = [xp.full_like(s, -math.inf), xp.full_like(s, -1.0)]
        best, first = entry[1]
        finite = xp.isfinite(s)
        bad = (first < 0) & valid & ((s > bound) | ~finite)
        entry[1] = [xp.maximum(best, xp.where(valid & finite, s, best)),
                    xp.where(bad, xp.full_like(first, float(k)), first)]

    def forward(self, k: int, u: Any, grad: Any, bound: float) -> None:
        """Record ``(u_k, ∇g(u_k))`` of the first forward pass; test the step ``k−1 → k``."""
        if k != self.next_k:  # a recomputation during checkpointing
            return
        self.next_k = k + 1
        un2 = _dot(u, u)
        if self.prev is not None:
            u0, g0, un2_prev = self.prev
            du = u - u0
            dn2 = _dot(du, du)
            eps = self.eps.get(u.dtype)
            if eps is None:
                eps = self.eps[u.dtype] = float(namespace(u).finfo(u.dtype).eps)
            # ‖Δu‖ above √eps·max(‖u_k‖, ‖u_{k+1}‖): q is not rounding noise
            resolved = dn2 > eps * ((un2 > un2_prev) * (un2 - un2_prev) + un2_prev)
            valid = resolved | (dn2 != dn2) | (dn2 == math.inf)
            self._record("forward", _dot(grad - g0, du), dn2, valid, k - 1, bound)
        self.prev = (u, grad, un2)

    def backward(self, k: int, a: Any, ha: Any) -> None:
        """Rayleigh quotient ``h⟨a, Ha⟩/‖a‖²`` of a continuous-adjoint HVP at step ``k``."""
        an2 = _dot(a, a)
        valid = (an2 > 0) | (an2 != an2)
        self._record("backward", _dot(a, ha), an2, valid, k, 2.0)

    def worst(self, kind: str) -> tuple[float, int | None]:
        """``(largest h·q, first violating step or None)`` over the batch."""
        best, first = self.state[kind]
        if not isinstance(first, list):
            return best, first
        b, f = _host(first[0]), _host(first[1])
        bad = f[f >= 0]
        return float(b.max()), (int(bad.min()) if bad.size else None)


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
    stiffness_iters : int
        Lanczos steps (HVPs) for the estimate of ``h·λ_max(H(u_K))`` checked against the
        continuous adjoint's step condition (``discrete=False`` only; 0 turns it off).

    Notes
    -----
    Step conditions. A scheme step on ``du/dt = −λu`` multiplies by its stability
    polynomial ``R(−hλ)``: the flow diverges where ``h·λ_max(H)`` exceeds the real
    stability bound of the scheme (2 for Euler and Heun, ≈ 2.785 for RK4, see
    :func:`real_stability_bound`), and the explicit Euler/Heun backward step of the
    continuous adjoint where ``h·λ_max > 2`` — so an RK4 forward pass with
    ``2 < h·λ_max < 2.785`` is stable while its continuous adjoint blows up. Each forward
    step's secant curvature and each continuous-adjoint HVP's Rayleigh quotient (both
    free, lower bounds on ``λ_max``) and, for ``discrete=False``, ``stiffness_iters``
    Lanczos steps at ``u_K`` are compared with these bounds; a violation gives
    ``success=False`` (``HypergradError`` under ``strict``) with the first offending step
    in ``unstable_step`` and the largest ``h·λ`` seen in ``step_stiffness``.

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
        stiffness_iters: int = 8,
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
        if isinstance(stiffness_iters, bool) or not isinstance(stiffness_iters, int) or (
            stiffness_iters < 0
        ):
            raise ValueError(
                f"stiffness_iters must be a non-negative integer, got {stiffness_iters!r}"
            )
        self.stiffness_iters = stiffness_iters
        self.trajectory = trajectory
        self.discrete = discrete
        self.checkpoints = checkpoints
        self.reconstruct_warn = float(reconstruct_warn)
        self.reconstruct_tol = float(reconstruct_tol)

    def __repr__(self) -> str:
        args = [f"trajectory={self.trajectory!r}", f"discrete={self.discrete}"]
        if self.checkpoints is not None:
            args.append(f"checkpoints={self.checkpoints}")
        if self.stiffness_iters != 8:
            args.append(f"stiffness_iters={self.stiffness_iters}")
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
        mon: _Stability = acc["stability"]
        if k == inner.steps - 1 and self.stiffness_iters > 0:
            xp = namespace(a)
            rng = np.random.default_rng(0)
            r = xp.asarray(rng.standard_normal(tuple(a.shape)), dtype=a.dtype)
            an = norm_per_problem(a)
            v0 = a / _col(xp.where(an > 0, an, xp.ones_like(an)), a) + r / _col(
                norm_per_problem(r), r
            )
            mon.top = lanczos_max_eigenvalue(lin_next.hvp, v0, self.stiffness_iters)
        hu1, mu1 = lin_next.vjp(a)
        mon.backward(k, a, hu1)
        if inner.scheme.order == 1:
            acc["a"] = a - h * hu1
            acc["h"] = acc["h"] - h * mu1
            acc["lin_next"] = None
            return
        a_pred = a - h * hu1
        lin_k = problem.linearize(u_k, lam, data=data)
        hu0, mu0 = lin_k.vjp(a_pred)
        mon.backward(k, a_pred, hu0)
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
        mon = _Stability(inner.h)
        bound = real_stability_bound(inner.scheme)
        acc: dict[str, Any] = {"stability": mon, "phase": "forward"}

        def on_final(st: tuple) -> None:
            try:
                value, gw, gl = problem.outer_value_and_grads(st[0], lam)
            except NonFiniteError as err:
                err.step = K  # f at u_K
                raise
            acc["phase"] = "backward"
            acc.update(w=st[0], value=value, a=gw, h=gl, u_next=st[0], lin_next=None)

        def advance(st: tuple, k: int) -> tuple:
            field = inner.field(problem, lam, k)
            first: list[Any] = []

            def recorded(u: Any) -> Any:
                out = field(u)
                if not first:
                    first.append(out)
                return out

            try:
                u_next = rk_step(recorded, st[0], inner.h, inner.scheme)
            except NonFiniteError as err:
                err.step = k
                raise
            mon.forward(k, st[0], -first[0], bound)
            return (u_next,)

        backward = self._backward(problem, inner, lam, acc)
        extra: dict[str, Any] = {}
        problems: list[str] = []
        try:
            if self.trajectory == "reconstruct":
                extra, failure = self._reconstruct(
                    problem, inner, lam, w0, advance, on_final, backward, acc
                )
            else:
                c = None
                if self.trajectory == "checkpoint":
                    c = self.checkpoints if self.checkpoints is not None else (
                        default_checkpoints(K)
                    )
                stats = reverse_sweep(
                    advance, backward, inner.init(w0), K, checkpoints=c, on_final=on_final
                )
                extra = dict(
                    steps_recomputed=stats.steps_recomputed,
                    max_states_held=stats.max_states_held,
                )
                failure = None
        except NonFiniteError as err:
            if acc["phase"] != "forward" and mon.worst("forward")[1] is None:
                raise
            return self._diverged(err, inner, lam, bound, mon)
        extra.update(self._stability_report(inner, bound, mon, problems))
        if failure is not None:
            failure.update(extra)
            failure.message = "; ".join([failure.message, *problems])
            return failure
        if self.trajectory == "reconstruct":
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

    def _stability_report(
        self, inner: GradientFlow, bound: float, mon: _Stability, problems: list[str]
    ) -> dict:
        """Compare the recorded curvatures with the step conditions; append failures."""
        h, K, name = inner.h, inner.steps, inner.scheme.name
        fwd, fwd_k = mon.worst("forward")
        report: dict[str, Any] = {"forward_stability_bound": bound}
        stiff = [fwd]
        if fwd_k is not None:
            problems.append(
                f"forward integration unstable at step {fwd_k}: h·λ_max(H) ≥ {fwd:.4g} "
                f"exceeds {bound:.4g}, the real stability bound of {name} (h = T/K = {h:.4g}), "
                f"so the discretized flow diverges instead of contracting; use "
                f"K ≥ {_steps_needed(K, fwd, bound)} steps for this horizon"
            )
        if not self.discrete:
            bwd, bwd_k = mon.worst("backward")
            top = -math.inf if mon.top is None else float(np.max(mon.top)) * h
            stiff += [bwd, top]
            report["backward_stability_bound"] = 2.0
            if top > 2.0 and bwd_k is None:
                bwd_k = inner.steps - 1
            worst = max(bwd, top)
            step_name = "Euler" if inner.scheme.order == 1 else "Heun"
            if bwd_k is not None:
                problems.append(
                    f"continuous adjoint unstable from step {bwd_k}: h·λ_max(H) ≥ {worst:.4g} "
                    f"exceeds 2, the stability bound of the explicit {step_name} backward "
                    f"step (h = T/K = {h:.4g}), so the adjoint grows instead of decaying and "
                    "the hypergradient is wrong; use discrete=True (exact for any stable "
                    f"forward pass) or K ≥ {_steps_needed(K, worst, 2.0)} steps"
                )
            if bwd_k is not None:
                fwd_k = bwd_k if fwd_k is None else min(fwd_k, bwd_k)
        report["step_stiffness"] = max(stiff)
        report["unstable_step"] = fwd_k
        return report

    def _diverged(
        self, err: NonFiniteError, inner: GradientFlow, lam: Any, bound: float, mon: _Stability
    ) -> HypergradResult:
        """Result for a forward integration that produced non-finite values."""
        xp = namespace(lam)
        fwd, fwd_k = mon.worst("forward")
        seen = ""
        if math.isfinite(fwd):
            seen = (
                f"; the largest h·λ_max(H) seen was {fwd:.4g} against the real stability "
                f"bound {bound:.4g} of {inner.scheme.name} (h = T/K = {inner.h:.4g})"
            )
        if fwd_k is not None:
            seen += (
                f", exceeded from step {fwd_k}: use "
                f"K ≥ {_steps_needed(inner.steps, fwd, bound)} steps for this horizon"
            )
        step = getattr(err, "step", None)
        return HypergradResult(
            grad=xp.full(tuple(lam.shape), math.nan, dtype=lam.dtype),
            w=None,
            value=math.nan,
            success=False,
            message=(
                f"forward integration diverged: non-finite {err.what} at inner step {step}"
                f"{seen}"
            ),
            nonfinite_step=step,
            unstable_step=step if fwd_k is None else fwd_k,
            step_stiffness=fwd,
            forward_stability_bound=bound,
            inner_residual=math.nan,
            trajectory=self.trajectory,
            discrete=self.discrete,
            scheme=inner.scheme.name,
        )

    def _reconstruct(self, problem, inner, lam, w0, advance, on_final, backward, acc):
        """Forward pass keeping only ``u_K``, then ``u`` and ``a`` integrated back together."""
        xp = namespace(lam, w0)
        s = inner.init(w0)
        for k in range(inner.steps):
            s = advance(s, k)
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
