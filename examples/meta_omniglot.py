"""Omniglot 5-way 1-shot (MAML protocol) on held-out alphabets.

Reads Omniglot from local archives or folders (no download), splits the alphabets into
train/val/test, meta-trains one or more algorithms with the Conv4 network and reports
5-way accuracy with a 95% interval on tasks from the held-out test alphabets, next to
the random-initialization baseline adapted the same way.

    python examples/meta_omniglot.py                     # MAML, 150 meta-iterations: ~7 min
    python examples/meta_omniglot.py PATH --steps 2000 --algorithms maml fomaml \
        --checkpoint runs/omniglot     # about 1.5 h per algorithm; rerun to resume
    python examples/meta_omniglot.py PATH --quick        # seconds (small net, few steps)

The default run (Conv4 with 64 channels, meta-batches of 32 tasks, 150 meta-iterations,
about 2.5 s each on two CPU cores; 7 minutes in all) takes MAML to 74.0 ± 1.0 % accuracy
on 600 tasks of the held-out alphabets of the two background archives, against
29.4 ± 0.8 % for the random initialization adapted the same way (chance: 20 %). The
published 98.7 % needs the full background set and tens of thousands of meta-iterations
(``--steps``).

Without a PATH the script reads the folder named by the environment variable
``BILEVEL_OMNIGLOT``, else ``../shared/data/omniglot`` next to the repository (the two
background archives of the shared data folder), when present. When no data is found it
says so and exits with status 2 (the example tests then skip).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np

from bilevel import HypergradWarning
from bilevel.meta.algorithms import ANIL, IMAML, MAML, MemoryReduced, Reptile
from bilevel.meta.cli import results_table
from bilevel.meta.models import Conv4
from bilevel.meta.train import evaluate, train
from bilevel.optim import Adam
from bilevel.outer import Checkpointing, Monitoring, UsageError

MAKERS = {
    "maml": lambda m, k: MAML(m, 0.4, k),
    "fomaml": lambda m, k: MAML(m, 0.4, k, first_order=True),
    "anil": lambda m, k: ANIL(m, 0.4, max(k, 5)),
    "reptile": lambda m, k: Reptile(m, 0.1, max(k, 5)),
    "imaml": lambda m, k: IMAML(m, reg=2.0, inner_lr=0.1, steps=max(k, 5), damping=1.0),
    "memory_reduced": lambda m, k: MemoryReduced(m, 0.4, max(k, 5), damping=0.1),
}


def default_path() -> str | None:
    """``$BILEVEL_OMNIGLOT``, else ``../shared/data/omniglot`` beside the repository."""
    env = os.environ.get("BILEVEL_OMNIGLOT")
    if env:
        return env
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    shared = os.path.join(os.path.dirname(repo), "shared", "data", "omniglot")
    return shared if os.path.isdir(shared) else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("path", nargs="?", default=default_path(),
                   help="Omniglot zip archive(s) or extracted folder (default: "
                        "$BILEVEL_OMNIGLOT or ../shared/data/omniglot)")
    p.add_argument("--algorithms", nargs="+", choices=sorted(MAKERS), default=["maml"])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--inner-steps", type=int, default=1)
    p.add_argument("--meta-batch", type=int, default=32)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--ways", type=int, default=5)
    p.add_argument("--shot", type=int, default=1)
    p.add_argument("--eval-tasks", type=int, default=600)
    p.add_argument("--checkpoint", default=None, metavar="DIR",
                   help="checkpoint each algorithm's training into DIR/<algorithm>.npz and "
                        "resume from it when rerun (a changed configuration is refused)")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.hidden, args.meta_batch, args.eval_tasks = 3, 8, 4, 20
    from bilevel.meta.tasks import Omniglot

    try:
        if args.path is None:
            raise FileNotFoundError("no path given, BILEVEL_OMNIGLOT unset and no "
                                    "../shared/data/omniglot")
        kw = dict(ways=args.ways, n_shot=args.shot, n_query=5, split_by="alphabet")
        train_tasks = Omniglot(args.path, split="train", **kw)
        test_tasks = Omniglot(args.path, split="test", **kw)
    except FileNotFoundError as err:
        print(f"Omniglot not available ({err}); pass the path of images_background.zip / "
              "images_evaluation.zip or of their extracted folders", file=sys.stderr)
        return 2
    warnings.simplefilter("ignore", HypergradWarning)
    model = Conv4(hidden=args.hidden, ways=args.ways)
    theta0 = model.init(np.random.default_rng(123))
    if args.checkpoint:
        os.makedirs(args.checkpoint, exist_ok=True)
    try:
        rows = [row for name in args.algorithms
                for row in run_algorithm(name, args, model, theta0, train_tasks, test_tasks)]
    except UsageError as err:  # a checkpoint of another configuration
        print(f"error: {err}\nwith this script: give another --checkpoint DIR, or delete "
              f"the file in {args.checkpoint}, to start afresh", file=sys.stderr)
        return 2
    print(f"Omniglot {args.ways}-way {args.shot}-shot, held-out alphabets, "
          f"{args.steps} meta-iterations")
    print(results_table(rows))
    return 0


def run_algorithm(name, args, model, theta0, train_tasks, test_tasks):
    """Meta-train ``name`` (resumable with ``--checkpoint``) and evaluate it and the random
    initialization on held-out tasks: two rows of the results table."""
    alg = MAKERS[name](model, args.inner_steps)
    t0 = time.perf_counter()
    ckpt = (Checkpointing(os.path.join(args.checkpoint, f"{name}.npz"), every=25)
            if args.checkpoint else Checkpointing())
    res = train(alg, train_tasks, steps=args.steps, meta_batch=args.meta_batch,
                optimizer=Adam(1e-3), checkpointing=ckpt,
                monitoring=Monitoring(progress=False if args.quick else None))
    secs = time.perf_counter() - t0
    ev = dict(seed=7, batch=args.meta_batch)
    return [(f"{name} ({secs:.0f}s)", evaluate(alg, res.theta, test_tasks, args.eval_tasks, **ev)),
            ("  random init, same adapt.", evaluate(alg, theta0, test_tasks, args.eval_tasks,
                                                   **ev))]


if __name__ == "__main__":
    sys.exit(main())
