"""Sinusoid few-shot regression (MAML §5.1): every algorithm against the two baselines.

Trains each algorithm on sinusoid tasks (MLP 1-40-40-1, meta-batch 25, Adam 1e-3 as in the
paper), a joint-training ("pretrained") baseline for the same number of iterations, and
reports the post-adaptation query MSE on 600 held-out tasks next to the random-init and
pretrained baselines adapted with the same inner procedure. ``--memory`` also measures
peak host memory per meta-iteration against the number of inner steps.

    python examples/meta_sinusoid.py --steps 2000 --shots 5 10
    python examples/meta_sinusoid.py --quick          # a few seconds (used by the tests)
    python examples/meta_sinusoid.py --report runs/   # the figures of docs/reproduction.rst

``--report DIR`` regenerates the sinusoid figures of the reproduction report: every
algorithm with its defaults (300 meta-iterations) and MAML's protocol with the ReLU and
the tanh network (3000 meta-iterations, held-out MSE every 750). Runs checkpoint into
``DIR`` and resume when interrupted.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

from bilevel import HypergradWarning
from bilevel.meta import Sinusoid
from bilevel.meta.algorithms import AMAML, ANIL, CML, IMAML, MAML, MemoryReduced, Pretrain, Reptile
from bilevel.meta.cli import results_table
from bilevel.meta.models import MLP
from bilevel.meta.train import Evaluation, evaluate, train
from bilevel.optim import Adam
from bilevel.outer import Checkpointing, Monitoring, measure


def algorithms(model, hidden, steps):
    lr = 0.01
    colearner = MLP((hidden, hidden, 1))
    return {
        "MAML": MAML(model, lr, steps),
        "FOMAML": MAML(model, lr, steps, first_order=True),
        "ANIL": ANIL(model, lr, max(steps, 5)),
        "Reptile": Reptile(model, lr, max(steps, 5)),
        "iMAML": IMAML(model, reg=2.0, inner_lr=lr, steps=max(steps, 20)),
        "A-MAML": AMAML(model, horizon=lr * steps, steps=steps, scheme="euler"),
        "MemoryReduced": MemoryReduced(model, lr, max(steps, 5)),
        "CML(MAML)": CML(MAML(model, lr, steps), colearner, 1.0),
    }


def defaults_table(out, quick=False):
    """Every algorithm with its defaults: 300 iterations, tanh 1-20-20-1, Adam 1e-2."""
    sampler = Sinusoid(n_shot=10, n_query=10)
    model = MLP((1, 20, 20, 1), activation="tanh")
    theta0 = model.init(np.random.default_rng([0, 1]))
    algs = {"MAML": MAML(model), "ANIL": ANIL(model), "Reptile": Reptile(model),
            "iMAML": IMAML(model), "A-MAML": AMAML(model),
            "MemoryReduced": MemoryReduced(model),
            "CML(MAML)": CML(MAML(model), MLP((20, 20, 1), activation="tanh"))}
    steps, tasks = (3, 10) if quick else (300, 600)
    print(f"\nDefaults, sinusoid 10-shot, {steps} iterations, meta-batch 5, Adam 1e-2")
    print(f"{'algorithm':<15}{'held-out MSE':>14}{'random init':>13}{'applied':>9}"
          f"{'tasks kept':>12}")
    for name, alg in algs.items():
        res = train(alg, sampler, steps=steps, meta_batch=5, optimizer=Adam(1e-2),
                    monitoring=Monitoring(progress=False),
                    checkpointing=Checkpointing(f"{out}/defaults-{name}.npz", every=50))
        base = alg.base if isinstance(alg, CML) else alg
        ev = dict(seed=99, batch=100)
        meta = evaluate(alg, res.theta, sampler, tasks, **ev)["loss"]
        rand = evaluate(base, theta0, sampler, tasks, **ev)["loss"]
        print(f"{name:<15}{meta:>14.3f}{rand:>13.3f}{np.mean(res.history['applied']):>9.0%}"
              f"{np.mean(res.history['success_fraction']):>12.0%}")


def relu_against_tanh(out, quick=False):
    """MAML's protocol (1-40-40-1, step 0.01, 10 shots, meta-batch 25, Adam 1e-3)."""
    sampler = Sinusoid(n_shot=10, n_query=10)
    steps, every, tasks = (4, 2, 10) if quick else (3000, 750, 600)
    print(f"\nMAML protocol, held-out MSE on {tasks} tasks")
    for label, model in (("ReLU, std 0.01", MLP(activation="relu", init_std=0.01)),
                         ("ReLU, He", MLP(activation="relu")),
                         ("tanh", MLP(activation="tanh"))):
        res = train(MAML(model), sampler, steps=steps, meta_batch=25, optimizer=Adam(1e-3),
                    monitoring=Monitoring(progress=False),
                    evaluation=Evaluation(every, tasks),
                    checkpointing=Checkpointing(f"{out}/maml-{label[:4]}-{label[-4:]}.npz",
                                                every=every))
        ev = res.evaluations
        pairs = zip(ev["iteration"], ev["loss"], strict=True)
        row = "  ".join(f"{i + 1}: {loss:.3f}" for i, loss in pairs)
        print(f"{label:<16}{row}")


def peak_memory(alg, sampler, theta, meta_batch):
    ep = sampler.sample(meta_batch, np.random.default_rng(0))
    alg.meta_gradient(theta, ep)  # warm caches
    return measure(lambda: alg.meta_gradient(theta, ep), "tracemalloc")[1]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=1000, help="meta-iterations")
    p.add_argument("--shots", type=int, nargs="+", default=[5, 10])
    p.add_argument("--hidden", type=int, default=40)
    p.add_argument("--activation", choices=("relu", "tanh"), default="relu")
    p.add_argument("--inner-steps", type=int, default=1)
    p.add_argument("--meta-batch", type=int, default=25)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--eval-tasks", type=int, default=600)
    p.add_argument("--memory", action="store_true", help="peak memory vs inner steps")
    p.add_argument("--quick", action="store_true", help="tiny configuration")
    p.add_argument("--report", metavar="DIR", help="the figures of docs/reproduction.rst")
    args = p.parse_args(argv)
    if args.report:
        defaults_table(args.report, args.quick)
        relu_against_tanh(args.report, args.quick)
        return
    if args.quick:
        args.steps, args.hidden, args.meta_batch, args.eval_tasks = 5, 8, 4, 20
        args.shots = [5]
    warnings.simplefilter("ignore", HypergradWarning)
    # MAML's reference code: truncated-normal weights of std 0.01, zero biases (He
    # initialization makes the ReLU network's inner steps diverge)
    init_std = 0.01 if args.activation == "relu" else None
    model = MLP((1, args.hidden, args.hidden, 1), activation=args.activation,
                init_std=init_std)
    for shot in args.shots:
        sampler = Sinusoid(n_shot=shot, n_query=10)
        kw = dict(steps=args.steps, meta_batch=args.meta_batch, optimizer=Adam(args.lr),
                  monitoring=Monitoring(progress=False))
        pre = train(Pretrain(model), sampler, **kw).theta
        theta0 = model.init(np.random.default_rng(123))
        ev = dict(seed=2024, batch=100)
        rows = []
        for name, alg in algorithms(model, args.hidden, args.inner_steps).items():
            t0 = time.perf_counter()
            res = train(alg, sampler, **kw)
            secs = time.perf_counter() - t0
            base = alg.base if isinstance(alg, CML) else alg
            ok = 100 * np.mean(res.history["success"])
            rows.append((f"{name} ({secs:.0f}s, {ok:.0f}% ok)",
                         evaluate(alg, res.theta, sampler, args.eval_tasks, **ev)))
            rows.append(("  random init, same adapt.",
                         evaluate(base, theta0, sampler, args.eval_tasks, **ev)))
            rows.append(("  pretrained, same adapt.",
                         evaluate(base, pre, sampler, args.eval_tasks, **ev)))
        print(f"\nSinusoid {shot}-shot, {args.steps} meta-iterations, "
              f"MLP 1-{args.hidden}-{args.hidden}-1")
        print(results_table(rows))
    if args.memory:
        sampler = Sinusoid(n_shot=10, n_query=10)
        theta = model.init(np.random.default_rng(0))
        print("\npeak host memory per meta-iteration (KiB) vs inner steps")
        ks = (1, 5, 10, 20, 40) if not args.quick else (1, 4)
        print(f"{'algorithm':<15}" + "".join(f"{k:>10}" for k in ks))
        makers = {
            "MAML": lambda k: MAML(model, 0.01, k),
            "iMAML": lambda k: IMAML(model, 2.0, 0.01, k),
            "A-MAML": lambda k: AMAML(model, 0.01 * k, k, scheme="rk4"),
            "MemoryReduced": lambda k: MemoryReduced(model, 0.01, k, head_reg=0.1),
        }
        for name, make in makers.items():
            mem = [peak_memory(make(k), sampler, theta, args.meta_batch) / 1024 for k in ks]
            print(f"{name:<15}" + "".join(f"{m:>10.0f}" for m in mem))


if __name__ == "__main__":
    main()
