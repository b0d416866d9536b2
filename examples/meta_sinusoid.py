"""Sinusoid few-shot regression (MAML §5.1): every algorithm against the two baselines.

Trains each algorithm on sinusoid tasks (MLP 1-40-40-1, meta-batch 25, Adam 1e-3 as in the
paper), a joint-training ("pretrained") baseline for the same number of iterations, and
reports the post-adaptation query MSE on 600 held-out tasks next to the random-init and
pretrained baselines adapted with the same inner procedure. ``--memory`` also measures
peak host memory per meta-iteration against the number of inner steps.

    python examples/meta_sinusoid.py --steps 2000 --shots 5 10
    python examples/meta_sinusoid.py --quick          # a few seconds (used by the tests)
    python examples/meta_sinusoid.py --report runs/report --rst docs/reproduction_tables

``--report DIR`` regenerates the figures of the reproduction report (docs/reproduction.rst):
every algorithm with its defaults on sinusoids (300 meta-iterations), MAML's protocol with
the ReLU and the tanh network (3000 meta-iterations, held-out MSE every 750), A-MAML's
synthetic families with its fine-tuning test protocol, and Omniglot 5-way 1-shot with every
algorithm at one small budget (``$BILEVEL_OMNIGLOT`` or ../shared/data/omniglot). Runs
checkpoint into ``DIR`` and resume when interrupted; ``--parts`` runs some of them;
``--rst DIR`` writes the tables of every part run so far (``DIR/<part>.inc``).
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np

from bilevel import HypergradWarning
from bilevel.meta import Sinusoid
from bilevel.meta.algorithms import AMAML, ANIL, CML, IMAML, MAML, MemoryReduced, Pretrain, Reptile
from bilevel.meta.cli import results_table
from bilevel.meta.finetune import finetune_curve
from bilevel.meta.models import MLP
from bilevel.meta.tasks import Alpine2D, CosMixture
from bilevel.meta.train import Evaluation, evaluate, train
from bilevel.optim import Adam
from bilevel.outer import Checkpointing, Monitoring, measure

OMNIGLOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..",
                        "shared", "data", "omniglot")


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


# ------------------------------------------------------------------ the reproduction report
def rst_table(header, rows):
    """An RST list-table."""
    lines = [".. list-table::", "   :header-rows: 1", ""]
    for row in [header, *rows]:
        lines.append(f"   * - {row[0]}")
        lines += [f"     - {cell}" for cell in row[1:]]
    return "\n".join(lines) + "\n"


def checkpointed(out, name, every):
    return Checkpointing(f"{out}/{name}.npz", every=every)


def fallback_share(alg, theta, sampler, tasks=100):
    """Fraction of held-out tasks whose continuous adjoint needs the exact one (A-MAML)."""
    ep = sampler.sample(tasks, np.random.default_rng(5))
    flags = alg.hypergradient(theta, ep).get("adjoint_fallback")
    return 0.0 if flags is None else float(np.mean(flags))


def defaults_table(out, quick=False):
    """Every algorithm with its defaults: 300 iterations, tanh 1-20-20-1, Adam 1e-2."""
    sampler = Sinusoid(n_shot=10, n_query=10)
    model = MLP((1, 20, 20, 1), activation="tanh")
    theta0 = model.init(np.random.default_rng([0, 1]))
    algs = {"``MAML`` (1 step of 0.01)": MAML(model),
            "``ANIL`` (5 head steps of 0.1)": ANIL(model),
            "``Reptile`` (5 steps of 0.01)": Reptile(model),
            "``IMAML`` (λ = 2, 20 steps of 0.01, ``CG.fixed(5)``, δ = 1)": IMAML(model),
            "``MemoryReduced`` (20 head steps of 0.02, ``CG.fixed(20)``)":
                MemoryReduced(model),
            "``CML`` over ``MAML`` (MLP co-learner, weight 1)":
                CML(MAML(model), MLP((20, 20, 1), activation="tanh")),
            "``AMAML`` (T = 0.1, K = 20, RK4, ``Adjoint.paper()``)": AMAML(model)}
    steps, tasks = (3, 10) if quick else (300, 600)
    rows = []
    for name, alg in algs.items():
        res = train(alg, sampler, steps=steps, meta_batch=5, optimizer=Adam(1e-2),
                    monitoring=Monitoring(progress=False),
                    checkpointing=checkpointed(out, f"defaults-{type(alg).__name__}", 50))
        base = alg.base if isinstance(alg, CML) else alg
        ev = dict(seed=99, batch=100)
        meta = evaluate(alg, res.theta, sampler, tasks, **ev)
        rand = evaluate(base, theta0, sampler, tasks, **ev)["loss"]
        extra = (f" (exact adjoint on {fallback_share(alg, res.theta, sampler):.0%} of the "
                 "tasks at the end)" if isinstance(alg, AMAML) else "")
        rows.append([name, f"{meta['loss']:.2f} ± {meta['loss_ci']:.2f}", f"{rand:.2f}",
                     f"{np.mean(res.history['applied']):.0%}",
                     f"{np.mean(res.history['success_fraction']):.0%}{extra}"])
        print(rows[-1], flush=True)
    header = ["algorithm (defaults)", "held-out MSE", "random init", "updates applied",
              "tasks kept"]
    return (f"{steps} meta-iterations, meta-batch 5, Adam 1e-2, held-out MSE on {tasks} "
            "tasks (95 % half-width):\n\n" + rst_table(header, rows))


RELU_NETWORKS = {  # checkpoint name: (label, network)
    "relu-uniform": ("ReLU, PyTorch's initialization (the MLP's ReLU default; "
                     "``--preset maml-sinusoid``)",
                     lambda: MLP(activation="relu", initialization="uniform")),
    "relu-std001": ("ReLU, truncated normal std 0.01, zero biases (MAML's TensorFlow code)",
                    lambda: MLP(activation="relu", init_std=0.01)),
    "tanh": ("tanh, fan-in initialization (the command line's default network)",
             lambda: MLP(activation="tanh")),
}


def relu_against_tanh(out, quick=False):
    """MAML's protocol (1-40-40-1, step 0.01, 10 shots, meta-batch 25, Adam 1e-3)."""
    sampler = Sinusoid(n_shot=10, n_query=10)
    steps, every, tasks = (4, 2, 10) if quick else (3000, 750, 600)
    rows = []
    for key, (label, make) in RELU_NETWORKS.items():
        model = make()
        res = train(MAML(model), sampler, steps=steps, meta_batch=25, optimizer=Adam(1e-3),
                    monitoring=Monitoring(progress=False),
                    evaluation=Evaluation(every, tasks),
                    checkpointing=checkpointed(out, f"maml-{key}", every))
        ev = res.evaluations
        cells = [f"{loss:.2f}" for loss in ev["loss"]]
        cells[-1] += f" ± {ev['loss_ci'][-1]:.2f}"
        ten = evaluate(MAML(model, 0.01, 10), res.theta, sampler, tasks, seed=[0, 2], batch=100)
        rows.append([label, *cells, f"{ten['loss']:.2f} ± {ten['loss_ci']:.2f}"])
        print(rows[-1], flush=True)
    header = ["network", *(str(i + 1) for i in res.evaluations["iteration"]),
              f"{steps}, 10 test steps"]
    return (f"Held-out MSE on {tasks} tasks after the meta-iterations in the header and one "
            "inner step (95 % half-width at the last), and after 10 inner steps at test time "
            "(MAML's test protocol), seed 0:\n\n" + rst_table(header, rows))


def amaml_families(out, quick=False):
    """A-MAML's families and test protocol at a reduced budget (A-MAML, MAML, random init)."""
    steps, K, points, epochs = (2, 2, 5, (0, 2)) if quick else (500, 20, 30, (0, 10, 100))
    rows = []
    for family in (Alpine2D, CosMixture):
        tasks, test = family(), family(split="test")
        model = MLP((tasks.dim, 32, 32, 1), activation="tanh")
        theta0 = model.init(np.random.default_rng([0, 1]))
        algs = {"A-MAML": AMAML(model, horizon=0.005 * K, steps=K, reg=2.0),
                "MAML": MAML(model, 0.005, K)}
        ep = test.test_episode(np.random.default_rng(3), points=points)
        for name, alg in algs.items():
            res = train(alg, tasks, steps=steps, meta_batch=5, optimizer=Adam(1e-3),
                        monitoring=Monitoring(progress=False),
                        checkpointing=checkpointed(out, f"{family.__name__}-{name}", 100))
            curve = finetune_curve(model, res.theta, ep, epochs)
            rows.append([family.__name__, name, *(f"{r:.3f}" for r in curve["rmse"])])
            print(rows[-1], flush=True)
        curve = finetune_curve(model, theta0, ep, epochs)
        rows.append([family.__name__, "random init", *(f"{r:.3f}" for r in curve["rmse"])])
    header = ["family", "meta-training", *(f"{e} epochs" for e in epochs)]
    return (f"{steps} meta-iterations of 5 tasks (Adam 1e-3), K = {K} steps of 0.005 "
            "(A-MAML: RK4, proximal r = 2; MAML: gradient descent), tanh 32-32 network; "
            "RMSE (standardized targets) on the 100 test functions, each fine-tuned on 100 "
            "support points with Adam 1e-3 and weight decay 1e-6, on a "
            f"{points}-point grid per axis:\n\n" + rst_table(header, rows))


def omniglot_makers(model):
    """The algorithms of iMAML's Omniglot table (its Table 2)."""
    from bilevel.dynamics import NewtonCG

    return {"MAML": lambda: MAML(model, 0.4, 1),
            "first-order MAML": lambda: MAML(model, 0.4, 1, first_order=True),
            "Reptile": lambda: Reptile(model, 0.1, 5),
            "iMAML-GD": lambda: IMAML(model, reg=2.0, inner_lr=0.1, steps=5, damping=1.0),
            "iMAML-HF": lambda: IMAML(model, reg=2.0, damping=1.0, dynamics=NewtonCG(2))}


PUBLISHED = {"MAML": "98.7", "first-order MAML": "98.3", "Reptile": "97.68",
             "iMAML-GD": "99.16", "iMAML-HF": "99.50"}


def omniglot_table(out, quick=False):
    """Omniglot 5-way 1-shot on held-out alphabets, every algorithm at one small budget."""
    from bilevel.meta.models import Conv4
    from bilevel.meta.tasks import Omniglot

    path = os.environ.get("BILEVEL_OMNIGLOT", OMNIGLOT)
    if not os.path.exists(path):
        return f"Not run: no Omniglot archives at {path} (set ``BILEVEL_OMNIGLOT``).\n"
    hidden, steps, batch, tasks = (4, 2, 2, 4) if quick else (32, 100, 16, 200)
    kw = dict(ways=5, n_shot=1, n_query=5, split_by="alphabet")
    train_tasks = Omniglot(path, split="train", **kw)
    test_tasks = Omniglot(path, split="test", **kw)
    model = Conv4(hidden=hidden, ways=5)
    theta0 = model.init(np.random.default_rng([0, 1]))
    rows = []
    for name, make in omniglot_makers(model).items():
        alg = make()
        t0 = time.perf_counter()
        res = train(alg, train_tasks, steps=steps, meta_batch=batch, optimizer=Adam(1e-3),
                    monitoring=Monitoring(progress=False),
                    checkpointing=checkpointed(out, f"omniglot-{name}", 50))
        secs = time.perf_counter() - t0
        ev = dict(seed=7, batch=batch)
        meta = evaluate(alg, res.theta, test_tasks, tasks, **ev)
        rand = evaluate(alg, theta0, test_tasks, tasks, **ev)
        rows.append([name, f"{100 * meta['accuracy']:.1f} ± {100 * meta['accuracy_ci']:.1f}",
                     f"{100 * rand['accuracy']:.1f}", f"{secs:.0f} s",
                     PUBLISHED.get(name, "—")])
        print(rows[-1], flush=True)
    header = ["algorithm", "accuracy (%)", "random init (%)", "training time", "paper (%)"]
    return (f"Conv4 with {hidden} channels, {steps} meta-iterations of {batch} tasks (Adam "
            f"1e-3), 5 query images per class; accuracy on {tasks} tasks of the held-out "
            "alphabets (95 % half-width; chance is 20 %); the paper column is iMAML's Table 2 "
            "(64 channels, tens of thousands of iterations, the full background set):\n\n"
            + rst_table(header, rows))


REPORT_PARTS = {"defaults": defaults_table, "networks": relu_against_tanh,
                "amaml": amaml_families, "omniglot": omniglot_table}


def report(out, rst=None, quick=False, parts=tuple(REPORT_PARTS)):
    """Run the report's parts (resumable: checkpoints in ``out``); copy every part's table
    run so far into the folder ``rst`` as ``<part>.inc`` (docs/reproduction.rst includes
    them)."""
    os.makedirs(out, exist_ok=True)
    for part in parts:
        text = REPORT_PARTS[part](out, quick)
        with open(os.path.join(out, f"{part}.rst"), "w") as fh:
            fh.write(text)
    if not rst:
        return
    os.makedirs(rst, exist_ok=True)
    for part in REPORT_PARTS:
        name = os.path.join(out, f"{part}.rst")
        if os.path.exists(name):
            with open(name) as src, open(os.path.join(rst, f"{part}.inc"), "w") as dst:
                dst.write(src.read())
            print(f"wrote {os.path.join(rst, part + '.inc')}")


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
    p.add_argument("--rst", metavar="DIR", help="with --report: where to write the tables")
    p.add_argument("--parts", nargs="+", choices=sorted(REPORT_PARTS),
                   default=list(REPORT_PARTS), help="with --report: the parts to run")
    args = p.parse_args(argv)
    if args.report:
        warnings.simplefilter("ignore", HypergradWarning)
        report(args.report, args.rst, args.quick, args.parts)
        return
    if args.quick:
        args.steps, args.hidden, args.meta_batch, args.eval_tasks = 5, 8, 4, 20
        args.shots = [5]
    warnings.simplefilter("ignore", HypergradWarning)
    # the MLP's defaults: PyTorch's uniform initialization with ReLU (random biases spread
    # the first-layer kinks), fan-in with tanh
    model = MLP((1, args.hidden, args.hidden, 1), activation=args.activation)
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
