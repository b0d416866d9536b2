"""Reverse-mode unrolling: full, truncated (K-RMD) and checkpointed (ALGORITHMS §2.1–2.2)."""

from __future__ import annotations

from typing import Any

from ..api import HypergradResult, HypergradState, Method
from ..checkpoint import reverse_sweep
from ..dynamics import Dynamics, run
from ..problem import BilevelProblem, NonFiniteError

__all__ = ["Reverse"]


def _is_structural_zero(x: Any) -> bool:
    """True when ``x`` is exactly zero everywhere (what autograd returns for no dependence)."""
    from ..backend import namespace

    xp = namespace(x)
    return bool(xp.all(x == 0))


class Reverse(Method):
    """Reverse-mode differentiation of the unrolled inner dynamics.

    Computes the exact derivative of ``F_K(λ) = f(w_K(λ), λ)``::

        a_K = ∇_w f(w_K),   a_k = A_kᵀ a_{k+1},
        ∇F_K = ∇_λ f + Σ_k B_kᵀ a_{k+1} + Cᵀ a_0

    with one VJP of the step map per step (one HVP for gradient descent). The iterates
    are stored, not autodiff graphs.

    Parameters
    ----------
    truncate : int, optional
        Keep only the last ``T`` steps (K-RMD, Shaban et al. 2019): the first ``K − T``
        steps run without storage and the ``Cᵀa_0`` term is dropped. Biased; equals the
        T-term Neumann series at a fixed point. Raises when λ enters only through
        ``init`` (the truncated sum would be identically zero).
    checkpoints : int, optional
        Hold at most ``c + 1`` states and recompute the rest (binomial checkpointing,
        :mod:`bilevel.checkpoint`): the same gradient to rounding with O(c·n) memory for
        extra step recomputations.

    Notes
    -----
    Memory O(K·n) (O(T·n) truncated, O(c·n) checkpointed); time K gradients + K HVPs.
    """

    name = "reverse"

    def __init__(self, truncate: int | None = None, checkpoints: int | None = None):
        if truncate is not None and (int(truncate) != truncate or truncate < 1):
            raise ValueError(f"truncate must be a positive integer or None, got {truncate!r}")
        if checkpoints is not None and (int(checkpoints) != checkpoints or checkpoints < 1):
            raise ValueError(
                f"checkpoints must be a positive integer or None, got {checkpoints!r}"
            )
        self.truncate = truncate
        self.checkpoints = checkpoints

    def __repr__(self) -> str:
        args = []
        if self.truncate is not None:
            args.append(f"truncate={self.truncate}")
        if self.checkpoints is not None:
            args.append(f"checkpoints={self.checkpoints}")
        return f"Reverse({', '.join(args)})"

    def compute(
        self,
        problem: BilevelProblem,
        lam: Any,
        w0: Any,
        inner: Dynamics,
        state: HypergradState | None,
    ) -> HypergradResult:
        K = inner.steps
        T = K if self.truncate is None else min(self.truncate, K)
        start = K - T
        s = run(problem, inner, w0, lam, stop=start)
        acc: dict[str, Any] = {}

        def advance(st: tuple, j: int) -> tuple:
            try:
                return inner.step(problem, st, lam, start + j)
            except NonFiniteError as err:
                err.step = start + j
                raise

        def on_final(st: tuple) -> None:
            value, gw, gl = problem.outer_value_and_grads(inner.weights(st), lam)
            acc.update(w=inner.weights(st), value=value, h=gl, a=inner.cotangent(gw), mixed=0)

        def backward(st: tuple, j: int) -> None:
            try:
                a, b = inner.step_vjp(problem, st, lam, start + j, acc["a"])
            except NonFiniteError as err:
                err.step = start + j
                raise
            acc["a"] = a
            acc["h"] = acc["h"] + b
            acc["mixed"] = acc["mixed"] + b

        stats = reverse_sweep(advance, backward, s, T, checkpoints=self.checkpoints,
                              on_final=on_final)
        grad = acc["h"]
        truncated = T < K
        if problem.init is not None:
            if truncated:
                if _is_structural_zero(acc["mixed"]):
                    raise ValueError(
                        "Reverse(truncate=...) dropped the whole hypergradient: λ enters only "
                        "through the init map w0 = init(λ) (as in MAML), so the truncated sum "
                        "Σ B_kᵀa_k is identically zero. Use Reverse() or "
                        "Reverse(checkpoints=c) for bounded memory, Implicit(...) on a "
                        "proximal inner problem, or first-order MAML."
                    )
            else:
                grad = grad + problem.init_vjp(lam, acc["a"][0])
        return HypergradResult(
            grad=grad,
            w=acc["w"],
            value=acc["value"],
            success=True,
            message="ok",
            truncated_steps=start,
            steps_recomputed=stats.steps_recomputed,
            max_states_held=stats.max_states_held,
        )
