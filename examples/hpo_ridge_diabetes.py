"""Per-feature ridge penalties on the diabetes data, learned by hypergradient descent.

    g(w, λ) = (1/2N)‖X w − y‖² + ½ Σ_j exp(λ_j) w_j²      (train split)
    f(w)    = (1/2N_v)‖X_v w − y_v‖²                        (validation split)

Ten penalties, one per feature, are tuned with Adam on ∇F(λ) from four hypergradient
methods (warm-started across outer steps), and compared with scikit-learn's RidgeCV (one
penalty, leave-one-out CV on train + validation). Also reports which method reaches a
common validation loss first.

    python examples/hpo_ridge_diabetes.py            # full run (about a minute)
    python examples/hpo_ridge_diabetes.py --quick    # smoke test (seconds)
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.linear_model import RidgeCV

from bilevel import CG, Forward, GradientDescent, Reverse, hypergrad
from bilevel.hpo import Adam, MinimizeOptions, minimize, problems
from bilevel.hpo.datasets import diabetes, time_to_target
from bilevel.methods.historyless import Historyless
from bilevel.methods.implicit import Implicit
from bilevel.outer import Monitoring

QUIET = Monitoring(progress=False)

def main(quick: bool = False, seed: int = 0) -> dict:
    d = diabetes(seed)
    n = d["X"].shape[1]
    prob = problems.ridge(d["X"], d["y"], d["Xv"], d["yv"])
    L = np.linalg.eigvalsh(d["X"].T @ d["X"] / len(d["y"])).max()
    steps, K, eval_steps = (4, 10, 50) if quick else (150, 50, 3000)
    # bound the penalties so that the inner step 1/(L + ρ_max) stays stable
    bounds = (-10.0, 2.0)
    inner = GradientDescent(1.0 / (L + np.exp(bounds[1])), K)
    methods = {
        "implicit-cg": Implicit(CG(tol=1e-8), inner_tol=None),
        "historyless": Historyless(),
        "reverse": Reverse(),
        "forward": Forward(),
    }
    lam0 = np.full(n, -2.0)
    runs = {}
    for name, method in methods.items():
        runs[name] = minimize(prob, lam0, np.zeros(n), dynamics=inner, method=method,
                              optimizer=Adam(lr=0.1), steps=steps, monitoring=QUIET,
                              options=MinimizeOptions(bounds=bounds, on_failure="ignore"))

    def evaluate(lam: np.ndarray) -> tuple[float, float]:
        w = hypergrad(prob, lam, np.zeros(n), dynamics=GradientDescent(inner.lr, eval_steps)).w
        mse = lambda X, y: float(np.mean((X @ w - y) ** 2)) * d["y_scale"] ** 2  # noqa: E731
        return mse(d["Xv"], d["yv"]), mse(d["Xt"], d["yt"])

    t0 = time.perf_counter()
    Xtv, ytv = np.vstack([d["X"], d["Xv"]]), np.concatenate([d["y"], d["yv"]])
    cv = RidgeCV(alphas=np.logspace(-3, 4, 60), fit_intercept=False).fit(Xtv, ytv)
    cv_time = time.perf_counter() - t0
    cv_val = float(np.mean((cv.predict(d["Xv"]) - d["yv"]) ** 2)) * d["y_scale"] ** 2
    cv_test = float(np.mean((cv.predict(d["Xt"]) - d["yt"]) ** 2)) * d["y_scale"] ** 2
    at0 = evaluate(lam0)

    target = max(float(r.history["value"].min()) for r in runs.values()) + 1e-4
    print(f"diabetes per-feature ridge: n_train={len(d['y'])}, features={n}, K={K}, "
          f"outer steps={steps}")
    print(f"{'':22s} {'val MSE':>9s} {'test MSE':>9s} {'time s':>7s} {'hypergrads':>10s} "
          f"{'to target s':>11s} {'(#)':>4s}")
    print(f"{'initial λ':22s} {at0[0]:9.1f} {at0[1]:9.1f}")
    print(f"{'RidgeCV (LOO, tr+val)':22s} {cv_val:9.1f} {cv_test:9.1f} {cv_time:7.2f}")
    table = {"initial": at0, "ridgecv": (cv_val, cv_test)}
    for name, r in runs.items():
        val, test = evaluate(r.best_lam)
        tt, nt = time_to_target(r.history, target)
        table[name] = (val, test, r.time, r.n_hypergrad, tt, nt)
        print(f"{name:22s} {val:9.1f} {test:9.1f} {r.time:7.2f} {r.n_hypergrad:10d} "
              f"{tt:11.2f} {nt:4d}")
    fastest = min(
        (n_ for n_ in runs if np.isfinite(table[n_][4])), key=lambda n_: table[n_][4],
        default=None,
    )
    print(f"common target validation loss {target:.5f} (standardized units); fastest: {fastest}")
    print("learned penalties exp(λ):", np.round(np.exp(runs["implicit-cg"].best_lam), 4))
    return table


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few outer steps (smoke test)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(quick=args.quick, seed=args.seed)
