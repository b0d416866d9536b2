"""Step conditions of explicit Runge–Kutta schemes on gradient flow, and a cheap monitor.

A step of an explicit scheme on ``du/dt = −λu`` multiplies ``u`` by its stability polynomial
``R(−hλ)``, ``R(z) = 1 + Σ_j z^j bᵀA^{j−1}1``. Gradient flow ``du/dt = −∇g(u)`` contracts
only while ``h·λ_max(H)`` stays below the scheme's *real stability bound*
(:func:`real_stability_bound`: 2 for Euler and Heun, ≈ 2.785 for RK4). The
:class:`StabilityMonitor` compares free lower bounds on ``h·λ_max`` with such bounds along
a forward integration and a backward (adjoint) integration.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from .backend import namespace
from .batch import dot_per_problem, to_host
from .ode import Tableau

__all__ = ["StabilityMonitor", "real_stability_bound", "steps_needed"]


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


def steps_needed(K: int, stiffness: float, bound: float) -> int:
    """Steps ``K'`` with ``(T/K')·λ ≤ bound`` given ``stiffness = (T/K)·λ``."""
    return max(K + 1, math.ceil(K * stiffness / bound - 1e-9))


class StabilityMonitor:
    """Running step-condition diagnostics of a forward and a backward integration.

    Forward: the secant curvature ``q_k = ⟨∇g(u_{k+1}) − ∇g(u_k), Δu⟩/‖Δu‖²`` of each
    step, a Rayleigh quotient of the averaged Hessian along the step, so ``h·q_k`` is a
    lower bound on ``h·λ_max`` there; it is compared with the scheme's real stability
    bound. Backward (continuous adjoint): the Rayleigh quotient ``⟨a, Ha⟩/‖a‖²`` of each
    HVP the step already computes, against the bound 2 of explicit Euler/Heun. An
    unstable mode grows until it dominates ``Δu`` or ``a``, so both tests fire as soon as
    the error they cause is visible; a Lanczos estimate (``top``) catches it earlier.
    Cost per step: three inner products (forward) or two per HVP (backward). NumPy arrays
    are judged on the host at once; other backends keep running maxima on the device (no
    synchronization per step) and are read once at the end.

    Parameters
    ----------
    scheme : Tableau
        The forward scheme (its real stability bound is the forward test).
    h : float
        Step size.
    steps : int
        Number of steps ``K`` (for the advice on how many steps would be stable).
    """

    def __init__(self, scheme: Tableau, h: float, steps: int):
        self.scheme, self.h, self.steps = scheme, h, steps
        self.bound = real_stability_bound(scheme)
        self.next_k = 0  # steps of the first forward pass recorded
        self.prev: tuple[Any, Any, Any] | None = None
        # kind -> [largest h·q, first violating step (None) or device arrays of both]
        self.state: dict[str, list[Any]] = {"forward": [-math.inf, None],
                                             "backward": [-math.inf, None]}
        self.top: np.ndarray | None = None  # Lanczos estimate of λ_max, set by the caller
        self.eps: dict[Any, float] = {}

    def _record(self, kind: str, num: Any, den: Any, valid: Any, k: int, bound: float) -> None:
        """``s = h·num/den`` per problem where ``valid``; a non-finite ``s`` counts as > bound."""
        if isinstance(num, np.generic):
            self._record_host(kind, num, den, valid, k, bound)
            return
        entry = self.state[kind]
        xp = namespace(num)
        s = self.h * num / xp.where(valid, den, xp.ones_like(den))
        if not isinstance(entry[1], list):
            entry[1] = [xp.full_like(s, -math.inf), xp.full_like(s, -1.0)]
        best, first = entry[1]
        finite = xp.isfinite(s)
        bad = (first < 0) & valid & ((s > bound) | ~finite)
        entry[1] = [xp.maximum(best, xp.where(valid & finite, s, best)),
                    xp.where(bad, xp.full_like(first, float(k)), first)]

    def _record_host(self, kind: str, num: Any, den: Any, valid: Any, k: int,
                     bound: float) -> None:
        """:meth:`_record` for NumPy values, judged at once."""
        entry = self.state[kind]
        if isinstance(num, np.generic):  # one unbatched problem: plain floats
            m = self.h * float(num) / float(den) if valid else -math.inf
        else:
            s = self.h * num / np.where(valid, den, 1.0)
            m = float(np.max(np.where(valid, s, -math.inf)))
        if math.isnan(m):
            m = math.inf
        if m > bound and entry[1] is None:
            entry[1] = k
        entry[0] = max(entry[0], m) if math.isfinite(m) else entry[0]

    def forward(self, k: int, u: Any, grad: Any) -> None:
        """Record ``(u_k, ∇g(u_k))`` of the first forward pass; test the step ``k−1 → k``."""
        if k != self.next_k:  # a recomputation during checkpointing
            return
        self.next_k = k + 1
        un2 = dot_per_problem(u, u)
        if self.prev is not None:
            u0, g0, un2_prev = self.prev
            du = u - u0
            dn2 = dot_per_problem(du, du)
            eps = self.eps.get(u.dtype)
            if eps is None:
                eps = self.eps[u.dtype] = float(namespace(u).finfo(u.dtype).eps)
            # ‖Δu‖ above √eps·max(‖u_k‖, ‖u_{k+1}‖): q is not rounding noise
            resolved = dn2 > eps * namespace(u).maximum(un2, un2_prev)
            valid = resolved | (dn2 != dn2) | (dn2 == math.inf)
            self._record("forward", dot_per_problem(grad - g0, du), dn2, valid, k - 1,
                         self.bound)
        self.prev = (u, grad, un2)

    def backward(self, k: int, a: Any, ha: Any) -> None:
        """Rayleigh quotient ``h⟨a, Ha⟩/‖a‖²`` of a continuous-adjoint HVP at step ``k``."""
        an2 = dot_per_problem(a, a)
        valid = (an2 > 0) | (an2 != an2)
        self._record("backward", dot_per_problem(a, ha), an2, valid, k, 2.0)

    def worst(self, kind: str) -> tuple[float, int | None]:
        """``(largest h·q, first violating step or None)`` over the batch."""
        best, first = self.state[kind]
        if not isinstance(first, list):
            return best, first
        b, f = to_host(first[0]), to_host(first[1])
        bad = f[f >= 0]
        return float(b.max()), (int(bad.min()) if bad.size else None)

    def problem_stable(self, continuous: bool) -> Any:
        """Per-problem flags ``(B,)``: no step condition violated (``None`` unbatched).

        The forward test, and with ``continuous`` the backward test and the Lanczos
        estimate ``h·top ≤ 2``.
        """
        kinds = ("forward", "backward") if continuous else ("forward",)
        entries = [self.state[kind][1] for kind in kinds]
        if not all(isinstance(e, list) for e in entries):
            return None
        ok = to_host(entries[0][1]) < 0
        for entry in entries[1:]:
            ok = ok & (to_host(entry[1]) < 0)
        if continuous and self.top is not None and np.ndim(self.top) == 1:
            ok = ok & ~(np.asarray(self.top) * self.h > 2.0)
        return ok

    def report(self, continuous: bool, problems: list[str],
               backward_step: str | None = None) -> dict[str, Any]:
        """Judge the recorded curvatures against the step conditions.

        Appends a sentence per violated condition (forward scheme; with ``continuous``
        also the explicit Euler/Heun backward step, bound 2, and the Lanczos estimate
        ``top``; ``backward_step`` names that step, by default Euler after an Euler
        forward pass and Heun otherwise) to ``problems``; returns ``forward_stability_bound``,
        ``backward_stability_bound`` (continuous only), ``step_stiffness`` (largest
        ``h·λ`` seen) and ``unstable_step`` (first offending step or ``None``).
        """
        h, K, bound = self.h, self.steps, self.bound
        fwd, first = self.worst("forward")
        report: dict[str, Any] = {"forward_stability_bound": bound}
        stiff = [fwd]
        if first is not None:
            problems.append(
                f"forward integration unstable at step {first}: h·λ_max(H) ≥ {fwd:.4g} "
                f"exceeds {bound:.4g}, the real stability bound of {self.scheme.name} "
                f"(h = T/K = {h:.4g}), so the discretized flow diverges instead of "
                f"contracting; use K ≥ {steps_needed(K, fwd, bound)} steps for this horizon"
            )
        if continuous:
            bwd, bwd_k = self.worst("backward")
            top = -math.inf if self.top is None else float(np.max(self.top)) * h
            stiff += [bwd, top]
            report["backward_stability_bound"] = 2.0
            if top > 2.0 and bwd_k is None:
                bwd_k = K - 1
            if bwd_k is not None:
                worst = max(bwd, top)
                step_name = backward_step or ("Euler" if self.scheme.order == 1 else "Heun")
                problems.append(
                    f"continuous adjoint unstable from step {bwd_k}: h·λ_max(H) ≥ "
                    f"{worst:.4g} exceeds 2, the stability bound of the explicit {step_name} "
                    f"backward step (h = T/K = {h:.4g}), so the adjoint grows instead of "
                    "decaying and the hypergradient is wrong; use discrete=True (exact for "
                    f"any stable forward pass) or K ≥ {steps_needed(K, worst, 2.0)} steps"
                )
                first = bwd_k if first is None else min(first, bwd_k)
        report["step_stiffness"] = max(stiff)
        report["unstable_step"] = first
        return report

    def divergence_note(self) -> str:
        """What the forward test saw, for the message of a forward pass that overflowed."""
        fwd, first = self.worst("forward")
        note = ""
        if math.isfinite(fwd):
            note = (
                f"; the largest h·λ_max(H) seen was {fwd:.4g} against the real stability "
                f"bound {self.bound:.4g} of {self.scheme.name} (h = T/K = {self.h:.4g})"
            )
        if first is not None:
            note += (
                f", exceeded from step {first}: use "
                f"K ≥ {steps_needed(self.steps, fwd, self.bound)} steps for this horizon"
            )
        return note
