"""Tests for bilevel.recompute: exact reverse order, memory bound, optimal recomputation."""

import importlib
import math
import sys
import tracemalloc
from functools import lru_cache

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bilevel.recompute import (
    SweepStats,
    binomial_repetitions,
    checkpoints_for_memory,
    default_checkpoints,
    reverse_sweep,
    sweep_cost,
)


class Recorder:
    """Integer-valued states (s_k = (k, 3k + 1)); records calls and live states."""

    def __init__(self):
        self.advances = 0
        self.calls = []
        self.final = None

    def advance(self, s, k):
        assert s[0] == k, "advance called with the wrong state"
        self.advances += 1
        return (k + 1, 3 * (k + 1) + 1)

    def backward(self, s, k):
        self.calls.append((k, s))

    def on_final(self, s):
        assert not self.calls, "on_final must come before any backward call"
        self.final = s


def run(K, c, with_final=True):
    rec = Recorder()
    stats = reverse_sweep(rec.advance, rec.backward, (0, 1), K, checkpoints=c,
                          on_final=rec.on_final if with_final else None)
    return rec, stats


@lru_cache(None)
def optimal_advances(length, snaps):
    """Exhaustive minimum of advance calls to reverse ``length`` states with ``snaps`` slots."""
    if length == 1:
        return 0
    if snaps == 1:
        return length * (length - 1) // 2
    return min(m + optimal_advances(length - m, snaps - 1) + optimal_advances(m, snaps)
               for m in range(1, length))


@given(K=st.integers(0, 60), c=st.integers(1, 9), with_final=st.booleans())
def test_backward_sequence_equals_store_schedule(K, c, with_final):
    ref, ref_stats = run(K, None, with_final)
    rec, stats = run(K, c, with_final)
    expected = [(k, (k, 3 * k + 1)) for k in range(K - 1, -1, -1)]
    assert ref.calls == expected
    assert rec.calls == expected
    if with_final:
        assert rec.final == ref.final == (K, 3 * K + 1)
    assert isinstance(stats, SweepStats)
    assert stats.steps_forward + stats.steps_recomputed == rec.advances
    assert ref_stats.steps_recomputed == 0 and ref_stats.schedule == "store"
    assert stats.max_states_held <= c + 1
    assert ref_stats.max_states_held == K + 1 if with_final else max(K, 1)


@pytest.mark.parametrize("L", range(2, 40))
@pytest.mark.parametrize("c", [1, 2, 3, 5])
def test_recomputation_is_optimal(L, c):
    """The revolve split attains the minimum of an exhaustive dynamic program."""
    rec, stats = run(L - 1, c)
    if c + 1 >= L:
        assert stats.steps_recomputed == 0
    else:
        assert rec.advances == optimal_advances(L, c)
        assert rec.advances <= binomial_repetitions(L, c) * (L - 1)


@pytest.mark.parametrize("K", [7, 16, 100, 257, 1000])
def test_recomputation_bound_with_log_checkpoints(K):
    c = default_checkpoints(K)
    assert c >= math.log2(K)
    _, stats = run(K, c)
    assert stats.steps_recomputed <= K * math.ceil(math.log2(K)) + K
    assert stats.steps_recomputed <= (binomial_repetitions(K + 1, c) - 1) * (K + 1)
    assert stats.max_states_held <= c + 1
    assert stats.schedule == f"binomial({c})"


def test_single_snapshot_recomputes_quadratically():
    K = 10
    _, stats = run(K, 1)
    # reverse K + 1 states from s_0 alone: Σ_{j=1}^{K} j advances
    assert stats.steps_forward + stats.steps_recomputed == K * (K + 1) // 2
    assert stats.max_states_held == 2


def test_binomial_repetitions_and_default_checkpoints():
    assert binomial_repetitions(1, 3) == 1
    assert binomial_repetitions(math.comb(5 + 3, 5), 5) == 3
    assert binomial_repetitions(math.comb(5 + 3, 5) + 1, 5) == 4
    assert default_checkpoints(0) == default_checkpoints(1) == 1
    assert default_checkpoints(1024) == 11
    with pytest.raises(ValueError, match="K must be an integer"):
        default_checkpoints(-1)


def _peak_bytes(K, c, size=100_000):
    tracemalloc.start()
    tracemalloc.reset_peak()

    def advance(s, k):
        return (s[0] + 1.0,)

    total = []
    reverse_sweep(advance, lambda s, k: total.append(float(s[0][0])), (np.zeros(size),), K,
                  checkpoints=c, on_final=lambda s: None)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert total == [float(k) for k in range(K - 1, -1, -1)]
    return peak


def test_memory_store_grows_checkpointed_stays_bounded():
    state_bytes = 100_000 * 8
    store_small, store_large = _peak_bytes(8, None), _peak_bytes(32, None)
    assert store_large - store_small > 20 * state_bytes  # grows with K (24 more states)
    c = 3
    ck_small, ck_large = _peak_bytes(8, c), _peak_bytes(32, c)
    assert ck_large <= (c + 2) * state_bytes + 200_000  # c + 1 states (+ one being made)
    assert ck_large - ck_small < state_bytes


def test_errors():
    with pytest.raises(ValueError, match="K must be an integer >= 0"):
        reverse_sweep(lambda s, k: s, lambda s, k: None, 0, -1)
    with pytest.raises(ValueError, match="checkpoints must be None or an integer >= 1"):
        reverse_sweep(lambda s, k: s, lambda s, k: None, 0, 5, checkpoints=0)
    with pytest.raises(TypeError, match="advance and backward must be callables"):
        reverse_sweep(None, lambda s, k: None, 0, 5)


def test_old_module_name_warns_and_reexports():
    sys.modules.pop("bilevel.checkpoint", None)
    with pytest.warns(DeprecationWarning, match="bilevel.recompute"):
        old = importlib.import_module("bilevel.checkpoint")
    assert old.reverse_sweep is reverse_sweep and old.SweepStats is SweepStats


def test_checkpoints_for_memory_and_sweep_cost():
    # 45 states of 1 unit fit in the budget: c = 44 snapshots, each step advanced at most
    # twice (C(46, 2) = 1035 >= 801), the optimum for that memory (a DP check above)
    c = checkpoints_for_memory(800, 1, 45)
    assert c == 44 and binomial_repetitions(801, c) == 2
    stats = sweep_cost(800, c)
    assert stats.max_states_held <= c + 1
    assert stats.steps_forward + stats.steps_recomputed <= 2 * 801
    small = sweep_cost(60, checkpoints_for_memory(60, 1, 12))  # optimal (exhaustive DP)
    assert small.steps_forward + small.steps_recomputed == optimal_advances(61, 11)
    assert checkpoints_for_memory(10, 8, 8 * 11) is None  # every state fits: store
    assert checkpoints_for_memory(10, 8, 1) == 1  # at least one snapshot
    assert sweep_cost(10, None).steps_recomputed == 0
    with pytest.raises(ValueError, match="positive"):
        checkpoints_for_memory(10, 0, 1)
    with pytest.raises(ValueError, match="K must be"):
        checkpoints_for_memory(-1, 8, 8)
