"""Data hyper-cleaning on digits with 50% of the training labels corrupted.

    g(W, λ) = (1/N) Σ_i σ(λ_i) CE(x_iᵀW, ỹ_i) + (c/2)‖W‖²     (noisy training labels)
    f(W)    = CE on the clean validation split

One weight per training example (Franceschi et al. 2017; Ji et al. 2021) is learned by
hypergradient descent (Adam), warm-starting the inner classifier across outer steps.
Compared with uniform weights (train on every noisy label) and with the oracle that
keeps only the clean examples; reports how well the weights separate corrupted from clean
examples and which method reaches a common validation loss first. Forward mode is left
out: it needs one tangent column per example (m = N).

    python examples/hpo_hypercleaning_digits.py            # full run
    python examples/hpo_hypercleaning_digits.py --quick    # smoke test (seconds)
"""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.metrics import roc_auc_score

from bilevel import CG, GradientDescent, Reverse, hypergrad
from bilevel.hpo import Adam, MinimizeOptions, minimize, problems
from bilevel.hpo.datasets import digits_corrupted, time_to_target
from bilevel.methods.historyless import Historyless
from bilevel.methods.implicit import Implicit
from bilevel.outer import Monitoring

QUIET = Monitoring(progress=False)

def main(quick: bool = False, seed: int = 0) -> dict:
    d = digits_corrupted(seed)
    N, p = d["X"].shape
    C = 10
    l2 = 1e-3
    prob = problems.hyper_cleaning(d["X"], d["y"], d["Xv"], d["yv"], n_classes=C, l2=l2)
    Xb = np.hstack([d["X"], np.ones((N, 1))])
    L = 0.5 * np.linalg.eigvalsh(Xb.T @ Xb / N).max() + l2
    lr_inner = 1.0 / L
    steps, K, eval_steps = (3, 5, 30) if quick else (150, 20, 1500)
    inner = GradientDescent(lr_inner, K)
    w0 = np.zeros((p + 1) * C)
    lam0 = np.zeros(N)

    def evaluate(lam: np.ndarray) -> tuple[float, float, float]:
        w = hypergrad(prob, lam, w0, dynamics=GradientDescent(lr_inner, eval_steps)).w
        Wm = w.reshape(p + 1, C)

        def scores(X):
            return np.hstack([X, np.ones((len(X), 1))]) @ Wm

        sv = scores(d["Xv"])
        sv = sv - sv.max(1, keepdims=True)
        logp = sv - np.log(np.exp(sv).sum(1, keepdims=True))
        val_loss = float(-logp[np.arange(len(d["yv"])), d["yv"]].mean())
        val_acc = float(np.mean(sv.argmax(1) == d["yv"]))
        test_acc = float(np.mean(scores(d["Xt"]).argmax(1) == d["yt"]))
        return val_loss, val_acc, test_acc

    methods = {
        "implicit-cg": Implicit(CG(tol=1e-6, maxiter=50), inner_tol=None),
        "historyless": Historyless(),
        "reverse": Reverse(),
    }
    runs = {}
    for name, method in methods.items():
        runs[name] = minimize(prob, lam0, w0, dynamics=inner, method=method,
                              optimizer=Adam(lr=0.3), steps=steps, monitoring=QUIET,
                              options=MinimizeOptions(on_failure="ignore"))

    big = 10.0  # σ(10) ≈ 1: weight one; σ(−10) ≈ 0: example dropped
    table = {
        "uniform": evaluate(np.full(N, big)),
        "oracle clean-only": evaluate(np.where(d["corrupt"], -big, big)),
    }
    target = max(float(r.history["value"].min()) for r in runs.values()) + 1e-4
    print(f"digits hyper-cleaning: n_train={N} ({d['corrupt'].mean():.0%} corrupted), "
          f"n_val={len(d['yv'])}, n_test={len(d['yt'])}, K={K}, outer steps={steps}")
    print(f"{'':20s} {'val loss':>8s} {'val acc':>7s} {'test acc':>8s} {'σ clean':>7s} "
          f"{'σ corr.':>7s} {'AUC':>5s} {'time s':>7s} {'#hg':>4s} {'to target s':>11s} "
          f"{'(#)':>4s}")
    for name, vals in table.items():
        print(f"{name:20s} {vals[0]:8.4f} {vals[1]:7.3f} {vals[2]:8.3f}")
    for name, r in runs.items():
        weights = 1.0 / (1.0 + np.exp(-r.best_lam))
        auc = roc_auc_score(d["corrupt"], -weights)
        tt, nt = time_to_target(r.history, target)
        vals = evaluate(r.best_lam)
        table[name] = vals + (float(weights[~d["corrupt"]].mean()),
                              float(weights[d["corrupt"]].mean()), float(auc), r.time,
                              r.n_hypergrad, tt, nt)
        t = table[name]
        print(f"{name:20s} {t[0]:8.4f} {t[1]:7.3f} {t[2]:8.3f} {t[3]:7.3f} {t[4]:7.3f} "
              f"{t[5]:5.3f} {t[6]:7.2f} {t[7]:4d} {t[8]:11.2f} {t[9]:4d}")
    fastest = min((m for m in runs if np.isfinite(table[m][8])), key=lambda m: table[m][8],
                  default=None)
    print(f"common target validation loss {target:.5f}; fastest: {fastest}")
    return table


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few outer steps (smoke test)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(quick=args.quick, seed=args.seed)
