"""Quickstart: one bilevel problem, four hypergradient methods, one answer.

Per-feature ridge regression on synthetic data: the inner problem fits w with penalties
e^λ, the outer objective is the validation error. The hypergradient ∇F(λ) from unrolled
reverse mode, forward mode, implicit differentiation (CG) and the historyless method is
compared with the closed form, then a few steps of gradient descent on λ lower F.

Run: ``python examples/quickstart.py`` (``--quick`` for a smaller, faster run).
"""

import argparse

import numpy as np

from bilevel import CG, Forward, GradientDescent, Historyless, Implicit, Reverse, hypergrad
from bilevel.demo import ridge_exact_hypergrad
from bilevel.hpo import problems


def main(quick: bool = False) -> None:
    rng = np.random.default_rng(0)
    d, n = (5, 40) if quick else (20, 200)
    w_true = rng.standard_normal(d) * (rng.random(d) < 0.5)
    X, Xv = rng.standard_normal((n, d)), rng.standard_normal((n, d))
    y = X @ w_true + 0.5 * rng.standard_normal(n)
    yv = Xv @ w_true + 0.5 * rng.standard_normal(n)
    problem = problems.ridge(X, y, Xv, yv)  # g = ‖Xw − y‖²/2N + ½Σ e^λ_j w_j², f = val. MSE/2
    lam, w0 = np.zeros(d), np.zeros(d)
    inner = GradientDescent(lr=0.3, steps=100 if quick else 300)

    exact = ridge_exact_hypergrad(X, y, Xv, yv, lam)
    for method in (Reverse(), Forward(), Implicit(CG()), Historyless()):
        res = hypergrad(problem, lam, w0, dynamics=inner, method=method)
        err = np.linalg.norm(res.grad - exact) / np.linalg.norm(exact)
        print(f"{method!r:48s} relative error {err:.1e}  HVPs {res.n_hvp:4d}  "
              f"{res.time * 1e3:7.1f} ms  {res.message}")

    for step in range(5 if quick else 20):  # hypergradient descent on λ
        res = hypergrad(problem, lam, w0, dynamics=inner, method=Implicit(CG()))
        lam = lam - 2.0 * res.grad
        if step % 5 == 0:
            print(f"outer step {step:2d}: validation loss {float(res.value):.4f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller problem, fewer steps")
    main(parser.parse_args().quick)
