"""The base class of inner dynamics, its autograd-derived step products, and ``run``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields, is_dataclass
from typing import Any, ClassVar

from autograd.builtins import tuple as traced_tuple
from autograd.core import make_vjp
from autograd.differential_operators import make_jvp

from ..nonfinite import at_step, deferred_checks
from ..ode import Tableau
from ..problem import BilevelProblem
from ..validation import integer

__all__ = ["Dynamics", "State", "run"]

State = tuple


def _shown(value: Any) -> str:
    if isinstance(value, Tableau):
        return repr(value.name)
    if callable(value) and not is_dataclass(value):
        return "schedule"
    return repr(value)


class Dynamics:
    """Base class of inner dynamics: ``steps`` applications of a step map ``Φ_k``.

    Subclasses implement :meth:`init` (when the state is more than ``(w,)``) and
    :meth:`step`; :meth:`step_vjp` and :meth:`step_jvp` are derived from :meth:`step` by
    autograd. A subclass may override them with hand-written rules where these are faster.

    Notes
    -----
    The derived products replay the step: the VJP computes ∇_w g in the forward pass and
    takes one HVP per ``inner_grad`` (a trace of ``(w, λ) ↦ ∇_w g`` and a reverse pass);
    the JVP computes ∇_w g and then ``inner_grad_jvp`` (which computes it again with the
    tangent). A hand rule saves the gradients its Jacobians do not need: all of them for
    gradient descent and momentum, the last stage's for a Runge–Kutta step. Measured on a
    tanh MLP (n = 1377, K = 25) the hand rules are 1.2–1.5× faster, so
    :class:`GradientDescent`, :class:`Momentum` and :class:`GradientFlow` keep them (tested
    equal to the derived products to rounding).
    """

    name: ClassVar[str] = "dynamics"
    steps: int
    batches: Callable[[int], Any] | None = None

    def __repr__(self) -> str:
        if not is_dataclass(self):
            return object.__repr__(self)
        shown = [f"{f.name}={_shown(getattr(self, f.name))}" for f in fields(self) if f.repr]
        return f"{type(self).__name__}({', '.join(shown)})"

    @staticmethod
    def _check_steps(steps: Any) -> int:
        """``steps`` as an int ≥ 1 (for subclasses that are not validated dataclasses)."""
        return integer(1)("steps", steps)

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

    def step(self, problem: BilevelProblem, state: State, lam: Any, k: int) -> State:
        """The next state ``s_{k+1} = Φ_k(s_k, λ)``."""
        raise NotImplementedError(f"{type(self).__name__} must implement step")

    #: Bound on ``α_k·λ_max(H)`` beyond which a step expands (see :meth:`step_curvature`).
    stability_bound: ClassVar[float] = float("inf")

    #: Why :meth:`step_vjp`/:meth:`step_jvp` are unavailable (``None``: they are). Methods
    #: that differentiate every step (``Reverse``, ``Forward``) refuse such dynamics up front.
    not_differentiated: ClassVar[str | None] = None

    def step_curvature(self, cot: State, cot_prev: State, k: int) -> tuple[Any, Any] | None:
        """``(num, den)`` with ``α_k·⟨u, Hu⟩/‖u‖² = num/den`` per problem, read from a backward
        step ``cot_prev = (∂Φ_k/∂s)ᵀ cot``; ``None`` (the default) when the dynamics has no
        such test. Compared with :attr:`stability_bound` by
        :class:`~bilevel.dynamics.watch.StabilityWatch`."""
        return None

    def instability_message(self, step: int, stiffness: float) -> str:
        """What to say when step ``step`` had ``α_k·ρ_k = stiffness`` beyond the bound."""
        return (
            f"unrolled {type(self).__name__} is unstable from inner step {step}: the step "
            f"size times the curvature, {stiffness:.4g}, exceeds {self.stability_bound:g}; "
            "lower the step size"
        )

    def _traced_step(self, problem: BilevelProblem, k: int) -> Callable:
        """``(s, λ) ↦ Φ_k(s, λ)`` on one argument pair, for autograd's operators."""

        def phi(state_lam: tuple[State, Any]) -> Any:
            state, lam = state_lam
            s = tuple(state[i] for i in range(len(state)))
            return traced_tuple(self.step(problem, s, lam, k))

        return phi

    def step_vjp(
        self, problem: BilevelProblem, state: State, lam: Any, k: int, cot: State
    ) -> tuple[State, Any]:
        """(∂Φ_k/∂s)ᵀ cot and (∂Φ_k/∂λ)ᵀ cot by reverse-mode autograd through :meth:`step`.

        Cost: one step plus, for every ``inner_grad`` the step takes, one HVP (the VJP of
        ``∇_w g`` is ``(H u, Mᵀu)`` from the problem's oracles). Memory: one trace of a step.
        """
        vjp = make_vjp(self._traced_step(problem, k), (tuple(state), lam))[0]
        cot_state, cot_lam = vjp(tuple(cot))
        return tuple(cot_state), cot_lam

    def step_jvp(
        self, problem: BilevelProblem, state: State, lam: Any, k: int, tan: State, tan_lam: Any
    ) -> tuple[State, State]:
        """Next state and its tangent ``(∂Φ_k/∂s) tan + (∂Φ_k/∂λ) tan_lam`` (forward mode).

        Cost: one step plus one JVP ``H z + M e`` per ``inner_grad`` the step takes.
        """
        nxt, t = make_jvp(self._traced_step(problem, k))((tuple(state), lam))(
            (tuple(tan), tan_lam)
        )
        return tuple(nxt), tuple(t)


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
    gradient raises :class:`bilevel.nonfinite.NonFiniteError` with ``err.step = k``; on a
    device the steps' checks are read once, after the loop (:class:`deferred_checks`).
    Memory: O(size of one state); nothing is recorded unless ``on_step`` keeps it.
    """
    stop = dynamics.steps if stop is None else stop
    s = dynamics.init(w0) if state is None else state
    with deferred_checks():
        for k in range(start, stop):
            if on_step is not None:
                on_step(k, s)
            with at_step(k):
                s = dynamics.step(problem, s, lam, k)
    return s
