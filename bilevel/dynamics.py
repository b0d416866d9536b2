"""Inner dynamics: the inner solver as a pure ``(init, step)`` pair on flat vectors.

Every hypergradient method drives the same step map ``s_{k+1} = Φ_k(s_k, λ)``
(ALGORITHMS §1.2): reverse mode calls :meth:`step_vjp` (one VJP of Φ_k per step), forward
mode :meth:`step_jvp`, the adjoint method the ODE form of :class:`GradientFlow`, and the
implicit and historyless methods only :meth:`step`. A state is a tuple of arrays whose
first entry is ``w`` (``(n,)`` or ``(B, n)``); momentum adds the velocity.

Stochastic inner objectives: ``batches(k)`` returns the data of step ``k``. It must be a
deterministic function of ``k`` (use :func:`minibatch_indices`), so that the backward
pass sees exactly the batches of the forward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .problem import BilevelProblem

__all__ = [
    "Dynamics",
    "GradientDescent",
    "GradientFlow",
    "Momentum",
    "minibatch_indices",
    "run",
]

State = tuple


def minibatch_indices(n: int, batch_size: int, seed: int) -> Callable[[int], np.ndarray]:
    """Seeded per-step minibatch indices: ``idx(k)`` draws ``batch_size`` of ``range(n)``.

    The draw for step ``k`` depends only on ``(seed, k)``, so replaying step ``k`` in a
    backward pass (or after a checkpoint restart) gives the same batch.
    """
    if not 0 < batch_size <= n:
        raise ValueError(f"batch_size must be in [1, n={n}], got {batch_size}")

    def idx(k: int) -> np.ndarray:
        return np.random.default_rng([seed, k]).choice(n, size=batch_size, replace=False)

    return idx


def _schedule(lr: float | Sequence[float] | Callable[[int], float], steps: int) -> Callable:
    if callable(lr):
        return lr
    if isinstance(lr, (int, float, np.floating)):
        if not lr > 0:
            raise ValueError(f"the step size lr must be positive, got {lr}")
        val = float(lr)
        return lambda k: val
    seq = [float(x) for x in np.asarray(lr, dtype=float).ravel()]
    if len(seq) != steps:
        raise ValueError(f"a per-step lr schedule needs {steps} entries, got {len(seq)}")
    return lambda k: seq[k]


class Dynamics:
    """Base class of inner dynamics: ``steps`` applications of a step map.

    Subclasses implement :meth:`step`, :meth:`step_vjp` and :meth:`step_jvp`.
    """

    steps: int
    batches: Callable[[int], Any] | None = None

    def init(self, w0: Any) -> State:
        """The initial state from the starting point ``w0``."""
        return (w0,)

    @staticmethod
    def weights(state: State) -> Any:
        """The inner parameters ``w`` of a state."""
        return state[0]

    def cotangent(self, a_w: Any) -> State:
        """A state cotangent whose ``w`` part is ``a_w`` (others zero)."""
        return (a_w,) + tuple(0 * a_w for _ in range(len(self.init(a_w)) - 1))

    def data(self, problem: BilevelProblem, k: int) -> Any:
        """Data of step ``k``: ``batches(k)`` if given, else the problem's data."""
        return problem.data if self.batches is None else self.batches(k)

    def _check_steps(self, steps: int) -> int:
        if int(steps) != steps or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        return int(steps)


class GradientDescent(Dynamics):
    """Gradient descent ``w_{k+1} = w_k − α_k ∇_w g(w_k, λ; batch_k)``.

    Parameters
    ----------
    lr : float, sequence of float, or callable
        Step size α, a per-step schedule of length ``steps``, or ``k -> α_k``.
    steps : int
        Number of inner steps K.
    batches : callable, optional
        ``k -> data`` for stochastic inner objectives (see module docstring).

    Notes
    -----
    Jacobians of the step map: A_k = I − α_k H(w_k), B_k = −α_k M(w_k). One VJP of the
    step costs one HVP; one JVP costs one forward-over-reverse product.
    """

    def __init__(self, lr: Any, steps: int, batches: Callable[[int], Any] | None = None):
        self.steps = self._check_steps(steps)
        self.lr = lr
        self._lr = _schedule(lr, self.steps)
        self.batches = batches

    def __repr__(self) -> str:
        lr = self.lr if not callable(self.lr) else "schedule"
        return f"GradientDescent(lr={lr}, steps={self.steps})"

    def lr_at(self, k: int) -> float:
        """The step size α_k of step ``k``."""
        return self._lr(k)

    def step(self, problem: BilevelProblem, state: State, lam: Any, k: int) -> State:
        (w,) = state
        return (w - self.lr_at(k) * problem.inner_grad(w, lam, data=self.data(problem, k)),)

    def step_vjp(
        self, problem: BilevelProblem, state: State, lam: Any, k: int, cot: State
    ) -> tuple[State, Any]:
        """(A_kᵀa, B_kᵀa) = (a − α_k H a, −α_k Mᵀa): one HVP at (w_k, λ)."""
        (w,), (a,) = state, cot
        hu, mu = problem.linearize(w, lam, data=self.data(problem, k)).vjp(a)
        lr = self.lr_at(k)
        return (a - lr * hu,), -lr * mu

    def step_jvp(
        self, problem: BilevelProblem, state: State, lam: Any, k: int, tan: State, tan_lam: Any
    ) -> tuple[State, State]:
        """Next state and tangent ``z − α_k (H z + M e)``: one JVP."""
        (w,), (z,) = state, tan
        gw, t = problem.inner_grad_jvp(w, lam, z, tan_lam, data=self.data(problem, k))
        lr = self.lr_at(k)
        return (w - lr * gw,), (z - lr * t,)


class Momentum(Dynamics):
    """Heavy-ball momentum on the state (w, v): ``v ← βv + ∇g(w)``, ``w ← w − α v``.

    The hypergradient methods differentiate the whole state (ALGORITHMS §1.2): with
    cotangents (ā_w, ā_v) and ``u = ā_v − α ā_w`` the VJP is
    ``(ā_w + H u, β u, Mᵀu)``: one HVP per step. The velocity starts at zero.

    Parameters
    ----------
    lr, steps, batches
        As in :class:`GradientDescent`.
    beta : float
        Momentum coefficient in [0, 1).
    """

    def __init__(
        self, lr: Any, beta: float, steps: int, batches: Callable[[int], Any] | None = None
    ):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta}")
        self.steps = self._check_steps(steps)
        self.lr, self.beta = lr, float(beta)
        self._lr = _schedule(lr, self.steps)
        self.batches = batches

    def __repr__(self) -> str:
        return f"Momentum(lr={self.lr}, beta={self.beta}, steps={self.steps})"

    def lr_at(self, k: int) -> float:
        """The step size α_k of step ``k``."""
        return self._lr(k)

    def init(self, w0: Any) -> State:
        return (w0, 0 * w0)

    def step(self, problem: BilevelProblem, state: State, lam: Any, k: int) -> State:
        w, v = state
        v = self.beta * v + problem.inner_grad(w, lam, data=self.data(problem, k))
        return (w - self.lr_at(k) * v, v)

    def step_vjp(
        self, problem: BilevelProblem, state: State, lam: Any, k: int, cot: State
    ) -> tuple[State, Any]:
        (w, _), (aw, av) = state, cot
        u = av - self.lr_at(k) * aw
        hu, mu = problem.linearize(w, lam, data=self.data(problem, k)).vjp(u)
        return (aw + hu, self.beta * u), mu

    def step_jvp(
        self, problem: BilevelProblem, state: State, lam: Any, k: int, tan: State, tan_lam: Any
    ) -> tuple[State, State]:
        (w, v), (z, zeta) = state, tan
        gw, t = problem.inner_grad_jvp(w, lam, z, tan_lam, data=self.data(problem, k))
        lr = self.lr_at(k)
        v = self.beta * v + gw
        zeta = self.beta * zeta + t
        return (w - lr * v, v), (z - lr * zeta, zeta)


class GradientFlow(Dynamics):
    """Gradient flow ``dw/dt = −∇_w g(w, λ)`` on ``[0, horizon]``, ``steps`` fixed steps.

    The scheme (``"euler"``, ``"heun"``, ``"rk4"``, see :mod:`bilevel.ode`) belongs to the
    dynamics; explicit Euler with ``h = horizon / steps`` is gradient descent with
    ``lr = h``. :meth:`step_vjp` is the exact discrete adjoint of one scheme step (one
    HVP per stage); the continuous adjoint lives in :class:`bilevel.methods.Adjoint`.

    Parameters
    ----------
    horizon : float
        Integration time T.
    steps : int
        Number of steps K; the step is ``h = T / K``.
    scheme : str
        Runge–Kutta scheme name.
    batches : callable, optional
        ``k -> data`` (all stages of step ``k`` use the same batch).
    """

    def __init__(
        self,
        horizon: float,
        steps: int,
        scheme: str = "rk4",
        batches: Callable[[int], Any] | None = None,
    ):
        from .ode import get_scheme

        if not horizon > 0:
            raise ValueError(f"horizon must be positive, got {horizon}")
        self.steps = self._check_steps(steps)
        self.horizon = float(horizon)
        self.h = self.horizon / self.steps
        self.scheme = get_scheme(scheme)
        self.batches = batches

    def __repr__(self) -> str:
        return (
            f"GradientFlow(horizon={self.horizon}, steps={self.steps}, "
            f"scheme={self.scheme.name!r})"
        )

    def field(self, problem: BilevelProblem, lam: Any, k: int) -> Callable[[Any], Any]:
        """The vector field ``u ↦ −∇_w g(u, λ; batch_k)``."""
        data = self.data(problem, k)
        return lambda u: -problem.inner_grad(u, lam, data=data)

    def field_vjp(self, problem: BilevelProblem, lam: Any, k: int) -> Callable:
        """``(u, c) ↦ (−H(u) c, −M(u)ᵀc)``: VJP of the vector field, one HVP."""
        data = self.data(problem, k)

        def vjp(u: Any, c: Any) -> tuple[Any, Any]:
            hu, mu = problem.linearize(u, lam, data=data).vjp(c)
            return -hu, -mu

        return vjp

    def field_jvp(self, problem: BilevelProblem, lam: Any, k: int) -> Callable:
        """``(u, z, e) ↦ (−∇g(u), −(H z + M e))``: JVP of the vector field."""
        data = self.data(problem, k)

        def jvp(u: Any, z: Any, e: Any) -> tuple[Any, Any]:
            gw, t = problem.inner_grad_jvp(u, lam, z, e, data=data)
            return -gw, -t

        return jvp

    def step(self, problem: BilevelProblem, state: State, lam: Any, k: int) -> State:
        from .ode import rk_step

        return (rk_step(self.field(problem, lam, k), state[0], self.h, self.scheme),)

    def step_vjp(
        self, problem: BilevelProblem, state: State, lam: Any, k: int, cot: State
    ) -> tuple[State, Any]:
        from .ode import rk_step_vjp

        a_u, a_lam = rk_step_vjp(
            self.field(problem, lam, k),
            self.field_vjp(problem, lam, k),
            state[0],
            self.h,
            self.scheme,
            cot[0],
        )
        return (a_u,), a_lam

    def step_jvp(
        self, problem: BilevelProblem, state: State, lam: Any, k: int, tan: State, tan_lam: Any
    ) -> tuple[State, State]:
        from .ode import rk_step_jvp

        u, t = rk_step_jvp(
            self.field(problem, lam, k),
            self.field_jvp(problem, lam, k),
            state[0],
            self.h,
            self.scheme,
            tan[0],
            tan_lam,
        )
        return (u,), (t,)


def run(
    problem: BilevelProblem,
    dynamics: Dynamics,
    w0: Any,
    lam: Any,
    *,
    start: int = 0,
    stop: int | None = None,
    state: State | None = None,
    on_step: Callable[[int, State], None] | None = None,
) -> State:
    """Run steps ``start .. stop−1`` of the dynamics from ``state`` (default ``init(w0)``).

    ``on_step(k, state_k)`` is called with the state *before* step ``k``. A non-finite
    gradient raises :class:`bilevel.problem.NonFiniteError` with ``err.step = k``.
    Memory: O(size of one state); nothing is recorded unless ``on_step`` keeps it.
    """
    from .problem import NonFiniteError

    stop = dynamics.steps if stop is None else stop
    s = dynamics.init(w0) if state is None else state
    for k in range(start, stop):
        if on_step is not None:
            on_step(k, s)
        try:
            s = dynamics.step(problem, s, lam, k)
        except NonFiniteError as err:
            err.step = k
            raise
    return s
