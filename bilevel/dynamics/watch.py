"""A free stability test of unrolled dynamics, read from the reverse sweep.

Gradient descent ``w ← w − α∇g`` contracts only while ``α·λ_max(H) < 2`` (heavy-ball
momentum: ``α·λ_max(H) < 2(1 + β)``). Beyond that bound the derivative of the unrolled
map, ``Π_k (I − α_k H_k)``, grows like ``|1 − α·λ_max|^K``: the hypergradient of
:class:`~bilevel.Reverse` is then meaningless even when the iterates stay put (an inner
problem started at its minimizer). Each backward step computes ``A_kᵀa = a − α_k H a``,
so the Rayleigh quotient ``α_k⟨a, Ha⟩/‖a‖² = ⟨a, a − A_kᵀa⟩/‖a‖² ≤ α_k·λ_max(H_k)`` comes
for two inner products; an unstable mode grows until it dominates ``a``, so the quotient
exceeds the bound as soon as the error it causes is visible.

A step beyond the bound is a failure only when it matters: the steps beyond the bound must
amplify the cotangent by more than :data:`GROWTH_LIMIT` in all. One overshooting step of a
one-step MAML (``|1 − α·λ_max|`` of 2 or 3) is the exact derivative of a map that did not
diverge; ten steps at ``|1 − α·λ| = 1.5`` multiply errors by 57 and fail.
"""

from __future__ import annotations

import math
from typing import Any

from ..backend import namespace, unbox
from ..batch import dot_per_problem, to_host

__all__ = ["GROWTH_LIMIT", "StabilityWatch"]

#: Largest amplification of the backward cotangent, over the steps beyond the stability
#: bound, that still counts as stable.
GROWTH_LIMIT = 10.0


class StabilityWatch:
    """Running largest ``α_k·ρ_k`` of a reverse sweep and the first step beyond the bound.

    ``dynamics.step_curvature(cot, cot_prev, k)`` gives ``(num, den)`` with
    ``α_k·ρ_k = num/den`` per problem (``None``: the dynamics has no such test) and
    ``dynamics.stability_bound`` the bound. Statistics stay on the array's device (no
    synchronization per step) and are read once by :meth:`report`. Cost per step: the
    two inner products of ``step_curvature`` and a few elementwise operations.
    """

    def __init__(self, dynamics: Any) -> None:
        self.dynamics = dynamics
        self.largest: Any = None  # per problem: max_k α_k·ρ_k
        self.first: Any = None  # per problem: first step beyond the bound, −1 if none
        self.log_growth: Any = 0.0  # per problem: Σ log(‖A_kᵀa‖/‖a‖) over steps beyond it
        self._carried: tuple[tuple, Any] | None = None  # (cot_prev, ‖cot_prev‖²) of the last step

    def record(self, k: int, cot: tuple, cot_prev: tuple) -> None:
        """Take the backward step ``k``: ``cot_prev = A_kᵀ cot`` (boxes are read through).

        Steps arrive in decreasing order (a reverse sweep), so the last step recorded beyond
        the bound is the first one. A NaN quotient counts as beyond the bound.
        """
        pair = self.dynamics.step_curvature(
            tuple(unbox(c) for c in cot), tuple(unbox(c) for c in cot_prev), k
        )
        if pair is None:
            return
        num, den = pair
        xp = namespace(num)
        s = num / xp.where(den > 0, den, 1.0)  # ‖a‖² = 0 means a = 0 and num = 0
        beyond = ~(s <= self.dynamics.stability_bound * (1.0 + 1e-9))
        before = self._squared_norm(cot)
        after = sum(dot_per_problem(unbox(c), unbox(c)) for c in cot_prev)
        self._carried = (tuple(cot_prev), after)
        ratio = after / xp.where(before > 0, before, 1.0)
        grow = xp.where(beyond, 0.5 * xp.log(xp.where(ratio > 1.0, ratio, 1.0)), 0.0)
        grow = xp.where(xp.isnan(s), xp.inf, grow)  # a NaN quotient is a failure
        self.log_growth = self.log_growth + grow
        if self.largest is None:
            self.largest, self.first = s, xp.where(beyond, float(k), xp.full_like(s, -1.0))
            return
        # fmax (NaN ignored), in Array-API functions
        self.largest = xp.where(xp.isnan(s) | (self.largest >= s), self.largest, s)
        self.first = xp.where(beyond, float(k), self.first)

    def _squared_norm(self, cot: tuple) -> Any:
        """``‖cot‖²`` per problem: the previous step's ``‖cot_prev‖²`` when ``cot`` is that
        step's ``cot_prev`` (the reverse sweep hands it on), else two passes."""
        carried = self._carried
        if carried is not None and len(carried[0]) == len(cot) and all(
                c is p for c, p in zip(cot, carried[0], strict=True)):
            return carried[1]
        return sum(dot_per_problem(unbox(c), unbox(c)) for c in cot)

    def report(self) -> tuple[dict[str, Any], str | None]:
        """``(diagnostics, problem)``: ``step_stiffness`` (largest ``α_k·ρ_k``),
        ``stability_bound``, ``unstable_step`` (first step beyond it, or ``None``),
        ``problem_success`` (per problem, for a batch), and a
        sentence naming the step size when the bound was exceeded (else ``None``).
        One host read."""
        if self.largest is None:
            return {}, None
        xp = namespace(self.largest)
        largest, first, growth = to_host(xp.stack(
            [self.largest, self.first, self.log_growth + 0.0 * self.largest])).reshape(3, -1)
        first = first.copy()
        first[~(growth > math.log(GROWTH_LIMIT))] = -1.0  # beyond the bound, but harmless
        worst = float(largest.max())
        bad = first[first >= 0]
        step = int(bad.min()) if bad.size else None
        bound = self.dynamics.stability_bound
        diag = {"step_stiffness": worst, "stability_bound": bound, "unstable_step": step}
        if len(getattr(self.first, "shape", ())) == 1:  # a batch: per-problem flags
            diag["problem_success"] = first < 0
        if step is None:
            return diag, None
        return diag, self.dynamics.instability_message(step, worst)
