"""Quiet failures: a diverging inner loop gives one HypergradWarning and no raw NumPy
RuntimeWarning; progress bars are drawn only on a terminal, by one function."""

import io
import warnings

import autograd.numpy as anp
import numpy as np
import pytest

from bilevel import (
    CG,
    BilevelProblem,
    Forward,
    GradientDescent,
    HypergradWarning,
    Implicit,
    Reverse,
    hypergrad,
)
from bilevel.outer.driver import progress_bar, shows_progress


@pytest.mark.parametrize("method", [Implicit(CG()), Reverse(), Forward()], ids=repr)
def test_diverging_inner_loop_warns_once(method):
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((50, 5)), rng.standard_normal(50)

    def g(w, lam):
        return 0.5 * anp.sum((X @ w - y) ** 2) + 0.5 * anp.sum(anp.exp(lam) * w ** 2)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = hypergrad(BilevelProblem(g, g), np.zeros(5), np.zeros(5),
                        dynamics=GradientDescent(lr=1.0, steps=300), method=method)
    assert not res.success and "non-finite" in res.message
    kinds = [w.category for w in caught]
    assert kinds == [HypergradWarning], [str(w.message)[:80] for w in caught]


class Pipe(io.StringIO):
    def isatty(self):
        return False


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bars_follow_the_terminal(monkeypatch):
    monkeypatch.setattr("sys.stderr", Pipe())
    assert not shows_progress(None) and not shows_progress(True)
    assert list(progress_bar(range(3), desc="x", progress=True)) == [0, 1, 2]
    import sys

    assert sys.stderr.getvalue() == ""           # redirected: not one bar frame
    monkeypatch.setattr("sys.stderr", Terminal())
    assert shows_progress(None) and shows_progress(True) and not shows_progress(False)
