"""Reverse sweeps over a K-step trajectory with bounded memory (recomputation schedules).

Reverse-mode differentiation of ``s_{k+1} = advance(s_k, k)`` needs the states
``s_{K−1}, …, s_0`` in reverse order. :func:`reverse_sweep` runs the forward pass from
``s_0`` and calls ``backward(s_k, k)`` for ``k = K−1, …, 0``, either storing every state
(``O(K)`` states, no recomputation) or holding at most ``c + 1`` states and recomputing the
others from snapshots: binomial checkpointing (Griewank 1992, "Achieving logarithmic growth
of temporal and spatial complexity in reverse automatic differentiation"; Griewank & Walther
2000, Algorithm 799 *revolve*).

With ``c`` snapshots each step is advanced at most ``r`` times, where ``r`` is the least
integer with ``C(c + r, c) ≥ K``; the binomial bound ``β(c, r) = C(c + r, c)`` is the
longest trajectory that ``c`` snapshots reverse with ``r`` advances per step, and the schedule
here attains it. States are opaque Python objects (tuples of arrays); the sweep never copies
or inspects them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "SweepStats",
    "binomial_repetitions",
    "checkpoints_for_memory",
    "default_checkpoints",
    "reverse_sweep",
    "sweep_cost",
]

State = Any


@dataclass
class SweepStats:
    """What a reverse sweep cost.

    Attributes
    ----------
    steps_forward
        Steps of the first forward pass: ``K`` (``s_0 → s_K``) with ``on_final``, ``K − 1``
        without (``s_K`` is then never needed).
    steps_recomputed
        Extra ``advance`` calls made to rebuild states from snapshots.
    max_states_held
        Most states referenced by the schedule at once (snapshots plus the working state).
    schedule
        ``"store"`` or ``"binomial(c)"``.
    """

    steps_forward: int
    steps_recomputed: int
    max_states_held: int
    schedule: str


def _beta(s: int, r: int) -> int:
    """``β(s, r) = C(s + r, s)``: the longest trajectory ``s`` snapshots reverse in ``r`` sweeps."""
    if s < 0 or r < 0:
        return 0
    return math.comb(s + r, s)


def binomial_repetitions(K: int, c: int) -> int:
    """Least ``r`` with ``C(c + r, c) ≥ K``: advances per step of binomial checkpointing.

    The total number of ``advance`` calls of :func:`reverse_sweep` with ``c`` checkpoints is
    at most ``r·K`` (at least ``K``, the forward pass).
    """
    if K <= 1:
        return 1
    r = 1
    while _beta(c, r) < K:
        r += 1
    return r


def default_checkpoints(K: int) -> int:
    """``⌈log₂ K⌉ + 1`` checkpoints for a ``K``-step trajectory (``1`` for ``K ≤ 1``).

    Memory: ``c + 1 = O(log K)`` states. Work: at most ``r·K`` steps with
    ``r = binomial_repetitions(K, c) ≤ ⌈log₂ K⌉`` (``r = 4`` for ``K = 1000``, ``r = 6`` for
    ``K = 10⁵``), i.e. ``(r − 1)·K`` recomputed steps on top of the forward pass.
    """
    if isinstance(K, bool) or not isinstance(K, int) or K < 0:
        raise ValueError(f"K must be an integer >= 0, got {K!r}")
    return 1 if K <= 1 else math.ceil(math.log2(K)) + 1


def checkpoints_for_memory(K: int, state_bytes: int, budget_bytes: int) -> int | None:
    """Snapshots for a memory budget: the largest ``c`` with ``(c + 1)·state_bytes ≤ budget``.

    ``None`` (store every state, no recomputation) when the ``K + 1`` states of the sweep
    fit; at least ``1`` (recompute from ``s_0``). With these ``c`` snapshots the binomial
    schedule of :func:`reverse_sweep` advances each step at most ``r`` times, ``r`` the
    least integer with ``C(c + r, c) ≥ K + 1``: the fewest advances any schedule holding
    ``c + 1`` states can take (Griewank & Walther 2000). E.g. a budget of 45 states at
    ``K = 800`` gives ``c = 44``, ``r = 2``: at most one recomputed forward pass.

    Parameters
    ----------
    K
        Steps of the trajectory.
    state_bytes
        Bytes of one state (e.g. ``w.nbytes`` for gradient descent).
    budget_bytes
        Bytes the held states may take.
    """
    if isinstance(K, bool) or not isinstance(K, int) or K < 0:
        raise ValueError(f"K must be an integer >= 0, got {K!r}")
    if not state_bytes > 0 or not budget_bytes > 0:
        raise ValueError(
            f"state_bytes and budget_bytes must be positive, got {state_bytes!r}, "
            f"{budget_bytes!r}"
        )
    held = int(budget_bytes // state_bytes)
    if held >= K + 1:
        return None
    return max(held - 1, 1)


def sweep_cost(K: int, checkpoints: int | None) -> SweepStats:
    """What :func:`reverse_sweep` over ``K`` steps (with ``on_final``) costs, without running
    a step: the schedule replayed on empty states. Cost: ``O(r·K)`` Python operations."""
    return reverse_sweep(lambda s, k: s, lambda s, k: None, None, K,
                         checkpoints=checkpoints, on_final=lambda s: None)


def _split(length: int, free: int) -> int:
    """Offset of the next snapshot in a segment of ``length`` states with ``free`` spare slots.

    Griewank & Walther's optimal rule (revolve, ACM TOMS 26(1), 2000, §3): with
    ``s = free + 1`` snapshots (the segment start included), ``r`` the least integer with
    ``β(s, r) ≥ length`` and ``β(s, r) = C(s + r, s)``::

        m = β(s, r−2)                     if length ≤ β(s, r−1) + β(s−2, r−1)
        m = β(s, r−1)                     if length ≥ β(s, r) − β(s−3, r)
        m = length − β(s−1, r−1) − β(s−2, r−1)   otherwise

    (at least 1). This minimizes the total number of ``advance`` calls; the test suite checks
    it against an exhaustive dynamic program.
    """
    s = free + 1
    r = binomial_repetitions(length, s)
    if length <= _beta(s, r - 1) + _beta(s - 2, r - 1):
        m = _beta(s, r - 2)
    elif length >= _beta(s, r) - _beta(s - 3, r):
        m = _beta(s, r - 1)
    else:
        m = length - _beta(s - 1, r - 1) - _beta(s - 2, r - 1)
    return min(max(m, 1), length - 1)


def reverse_sweep(
    advance: Callable[[State, int], State],
    backward: Callable[[State, int], None],
    s0: State,
    K: int,
    *,
    checkpoints: int | None = None,
    on_final: Callable[[State], None] | None = None,
) -> SweepStats:
    """Run ``s_{k+1} = advance(s_k, k)`` from ``s0`` for ``K`` steps, then reverse it.

    Calls ``on_final(s_K)`` once (before any backward call; ``s_0`` when ``K = 0``), then
    ``backward(s_k, k)`` exactly once for each ``k = K−1, K−2, …, 0`` in that order, with
    the state at the *start* of step ``k``.

    Parameters
    ----------
    advance
        ``(state, k) -> next state``; must be deterministic (recomputed states must equal
        the originals).
    backward
        ``(state_k, k) -> None``: one step of the reverse pass (e.g. a VJP).
    s0
        Initial state.
    K
        Number of steps, ``>= 0``.
    checkpoints
        ``None``: store all states (``"store"``: ``K + 1`` states held, no recomputation).
        An integer ``c >= 1``: at most ``c`` snapshots (``s_0`` included) plus one working
        state, ``c + 1`` states held, with binomial checkpointing; each step is advanced
        at most ``binomial_repetitions(K + 1, c)`` times. ``c = 1`` recomputes from ``s_0``
        every time (``O(K²)`` extra steps); ``c >= K`` is the store schedule.
    on_final
        Optional ``s_K -> None``, e.g. to evaluate the outer objective and seed the
        cotangent.

    Returns
    -------
    SweepStats

    Notes
    -----
    Memory: ``min(K, c) + 1`` states. Work: ``K`` forward steps plus ``steps_recomputed``,
    at most ``(r − 1)·(K + 1)`` with ``r = binomial_repetitions(K + 1, c)``.
    """
    _check_sweep(advance, backward, K, checkpoints)
    # on_final(s_K) is one more reverse step, on the state that has no successor: sweeping
    # the L = K + 1 states s_K, ..., s_0 keeps on_final inside the c + 1 memory bound.
    if on_final is None:
        L, reverse_step = K, backward
    else:

        def reverse_step(state: State, k: int) -> None:
            if k == K:
                on_final(state)
            else:
                backward(state, k)

        L = K + 1
    if L == 0:
        return SweepStats(0, 0, 1, "store")
    if checkpoints is None or checkpoints + 1 >= L:
        return _store(advance, reverse_step, s0, L)
    return _binomial(advance, reverse_step, s0, L, checkpoints)


def _check_sweep(advance: Any, backward: Any, K: Any, checkpoints: Any) -> None:
    """Argument checks of :func:`reverse_sweep`."""
    if not callable(advance) or not callable(backward):
        raise TypeError("advance and backward must be callables: (state, k) -> ...")
    if isinstance(K, bool) or not isinstance(K, int) or K < 0:
        raise ValueError(f"K must be an integer >= 0, got {K!r}")
    if checkpoints is not None and (
        isinstance(checkpoints, bool) or not isinstance(checkpoints, int) or checkpoints < 1
    ):
        raise ValueError(f"checkpoints must be None or an integer >= 1, got {checkpoints!r}")


def _store(advance, backward, s0, L) -> SweepStats:
    """Store ``s_0 … s_{L−1}``, then call ``backward`` on them in reverse."""
    states = [s0]
    for k in range(L - 1):
        states.append(advance(states[k], k))
    for k in range(L - 1, -1, -1):
        backward(states.pop(), k)
    return SweepStats(
        steps_forward=L - 1, steps_recomputed=0, max_states_held=L, schedule="store"
    )


def _binomial(advance, backward, s0, L, c) -> SweepStats:
    """Binomial schedule over states ``s_0 … s_{L−1}`` with at most ``c`` snapshots."""
    snapshots: list[tuple[int, State]] = [(0, s0)]  # a stack, increasing index
    calls = 0
    max_held = 1
    end = L  # backward is still to be called for end-1, ..., 0
    while end > 0:
        start, base = snapshots[-1]
        length = end - start
        free = c - len(snapshots)
        state = base
        if length > 1 and free > 0:  # advance to a new snapshot inside the segment
            m = _split(length, free)
            for k in range(start, start + m):
                state = advance(state, k)
                calls += 1
                max_held = max(max_held, len(snapshots) + 1)
            snapshots.append((start + m, state))
            continue
        # one step left, or no spare slot: walk from the snapshot to end - 1
        for k in range(start, end - 1):
            state = advance(state, k)
            calls += 1
            max_held = max(max_held, len(snapshots) + 1)
        backward(state, end - 1)
        del state
        end -= 1
        if end == start:
            snapshots.pop()
    return SweepStats(
        steps_forward=L - 1,
        steps_recomputed=calls - (L - 1),
        max_states_held=max_held,
        schedule=f"binomial({c})",
    )
