"""L2-regularized logistic regression on breast cancer: penalties learned by hypergradients.

    g(w, λ) = (1/N) Σ log(1 + exp(−s_i (x_iᵀβ + b))) + ½ Σ_j exp(λ_j) β_j²    (train)
    f(w)    = mean logistic loss on the validation split

One shared penalty and one penalty per feature (30), each tuned with Adam, compared with
scikit-learn's LogisticRegressionCV (5-fold CV on train + validation). Also reports which
hypergradient method reaches a common validation loss first (shared penalty).

    python examples/hpo_logistic_breast_cancer.py            # full run
    python examples/hpo_logistic_breast_cancer.py --quick    # smoke test (seconds)
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from sklearn.linear_model import LogisticRegressionCV

from bilevel import CG, Forward, GradientDescent, Reverse, hypergrad
from bilevel.hpo import Adam, MinimizeOptions, minimize, problems
from bilevel.hpo.datasets import breast_cancer, time_to_target
from bilevel.methods.historyless import Historyless
from bilevel.methods.implicit import Implicit
from bilevel.outer import Monitoring

QUIET = Monitoring(progress=False)

def metrics(w: np.ndarray, X: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(mean log-loss, accuracy) of the linear model w = (β, b)."""
    z = X @ w[:-1] + w[-1]
    s = 2.0 * y - 1.0
    return float(np.mean(np.logaddexp(0.0, -s * z))), float(np.mean((z > 0) == (y == 1)))


def main(quick: bool = False, seed: int = 0) -> dict:
    d = breast_cancer(seed)
    n = d["X"].shape[1]
    L = 0.25 * np.linalg.eigvalsh(d["X"].T @ d["X"] / len(d["y"])).max()
    bounds = (-12.0, 1.0)
    lr_inner = 1.0 / (L + np.exp(bounds[1]))
    steps, K, eval_steps = (4, 10, 50) if quick else (100, 50, 4000)
    inner = GradientDescent(lr_inner, K)
    w0 = np.zeros(n + 1)

    def evaluate(prob, lam):
        w = hypergrad(prob, lam, w0, dynamics=GradientDescent(lr_inner, eval_steps)).w
        return metrics(w, d["Xv"], d["yv"]) + metrics(w, d["Xt"], d["yt"])

    shared = problems.logistic(d["X"], d["y"], d["Xv"], d["yv"])
    per = problems.logistic(d["X"], d["y"], d["Xv"], d["yv"], per_feature=True)
    methods = {
        "implicit-cg": Implicit(CG(tol=1e-8), inner_tol=None),
        "historyless": Historyless(),
        "reverse": Reverse(),
        "forward": Forward(),
    }
    runs = {}
    options = MinimizeOptions(bounds=bounds, on_failure="ignore")
    for name, method in methods.items():
        runs[name] = minimize(shared, np.array([-3.0]), w0, dynamics=inner, method=method,
                              optimizer=Adam(lr=0.1), steps=steps, monitoring=QUIET,
                              options=options)
    per_run = minimize(per, np.full(n, -3.0), w0, dynamics=inner,
                       method=Implicit(CG(tol=1e-8), inner_tol=None),
                       optimizer=Adam(lr=0.1), steps=steps, monitoring=QUIET, options=options)

    t0 = time.perf_counter()
    Xtv, ytv = np.vstack([d["X"], d["Xv"]]), np.concatenate([d["y"], d["yv"]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # sklearn ≥ 1.8 parameter renames
        cv = LogisticRegressionCV(Cs=4 if quick else 20, cv=3 if quick else 5, max_iter=5000,
                                  scoring="neg_log_loss").fit(Xtv, ytv)
    cv_time = time.perf_counter() - t0
    cv_w = np.concatenate([cv.coef_[0], cv.intercept_])
    cv_row = metrics(cv_w, d["Xv"], d["yv"]) + metrics(cv_w, d["Xt"], d["yt"])

    target = max(float(r.history["value"].min()) for r in runs.values()) + 1e-4
    print(f"breast cancer logistic regression: n_train={len(d['y'])}, features={n}, K={K}, "
          f"outer steps={steps}")
    head = (f"{'':26s} {'val loss':>8s} {'val acc':>7s} {'test loss':>9s} {'test acc':>8s} "
            f"{'time s':>7s} {'#hg':>4s} {'to target s':>11s} {'(#)':>4s}")
    print(head)

    def row(name, vals, extra=""):
        print(f"{name:26s} {vals[0]:8.4f} {vals[1]:7.3f} {vals[2]:9.4f} {vals[3]:8.3f} {extra}")

    table = {"initial": evaluate(shared, np.array([-3.0])), "logregcv": cv_row}
    row("initial λ = −3", table["initial"])
    row("LogisticRegressionCV", cv_row, f"{cv_time:7.2f}")
    for name, r in runs.items():
        tt, nt = time_to_target(r.history, target)
        table[name] = evaluate(shared, r.best_lam) + (r.time, r.n_hypergrad, tt, nt)
        row(f"shared, {name}", table[name], f"{r.time:7.2f} {r.n_hypergrad:4d} {tt:11.2f} {nt:4d}")
    table["per-feature"] = evaluate(per, per_run.best_lam) + (per_run.time, per_run.n_hypergrad)
    row("per-feature, implicit-cg", table["per-feature"],
        f"{per_run.time:7.2f} {per_run.n_hypergrad:4d}")
    fastest = min((m for m in runs if np.isfinite(table[m][6])), key=lambda m: table[m][6],
                  default=None)
    print(f"common target validation loss {target:.5f}; fastest: {fastest}")
    rho = float(np.exp(runs["implicit-cg"].best_lam[0]))
    print(f"learned shared penalty exp(λ) = {rho:.4g}  (sklearn C = 1/(N ρ) = "
          f"{1 / (len(d['y']) * rho):.4g}; LogisticRegressionCV chose C = {cv.C_[0]:.4g})")
    return table


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few outer steps (smoke test)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(quick=args.quick, seed=args.seed)
