"""Hypergradients in threads: autograd's trace counter is per thread once bilevel is imported
(``bilevel.numpy.threads``), so a nested trace in one thread never takes the number of a
trace in another."""

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from autograd import grad, tracer

import bilevel  # noqa: F401  (installs the per-thread counter)
from bilevel import CG, GradientDescent, Implicit, Reverse, hypergrad
from bilevel.hpo import problems


def test_trace_counter_is_per_thread():
    # autograd leaves its counter raised when an exception leaves a trace (no try/finally),
    # so this thread's count is relative to where earlier tests left it
    base = tracer.trace_stack.top
    seen = []

    def f(x):
        worker = threading.Thread(target=lambda: seen.append(tracer.trace_stack.top))
        worker.start()
        worker.join()
        seen.append(tracer.trace_stack.top)
        return x * x

    assert grad(f)(3.0) == 6.0
    assert seen == [-1, base + 1]  # the other thread sees no trace; this one its own


def test_second_order_hypergradients_in_threads_equal_sequential():
    """Reverse (HVPs in its backward pass) and Implicit (HVPs in CG), many calls at once."""
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((30, 4)), rng.standard_normal(30)
    prob = problems.logistic(X[:20], (y[:20] > 0).astype(int), X[20:], (y[20:] > 0).astype(int),
                             per_feature=True)
    lams = [rng.standard_normal(4) for _ in range(16)]
    calls = [(lam, method) for lam in lams for method in (Reverse(), Implicit(CG(tol=1e-12)))]

    def one(call):
        lam, method = call
        return hypergrad(prob, lam, np.zeros(5), dynamics=GradientDescent(0.5, 30),
                         method=method, on_failure="ignore").grad

    sequential = [one(c) for c in calls]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(one, calls))
    for a, b in zip(sequential, threaded, strict=True):
        np.testing.assert_array_equal(a, b)
