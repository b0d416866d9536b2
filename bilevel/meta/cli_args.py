"""The command line of ``bilevel meta-train``: its flags, their checks and ``--quick``.

:func:`_parser` builds the argument parser (every flag with its default and help),
:data:`_FLAGS` the check of each numeric flag (messages name the flag), :data:`QUICK` what
``--quick`` sets and :data:`_NOT_RUN` the flags a resumed run may change.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..outer.usage import Parser, at_least, positive
from ..registry import names, spelling
from .presets import FAMILIES, PRESETS

__all__ = ["ALGORITHMS", "QUICK"]

DESCRIPTION = "Meta-train one algorithm on sinusoids, synthetic families or Omniglot."


ALGORITHMS = tuple(names("algorithm"))
"""Choices of ``--algorithm``: the algorithms :mod:`bilevel.meta` registers (any spelling that
:func:`bilevel.registry.spelling` maps to one of them is accepted: ``A-MAML``,
``memory_reduced``); :func:`bilevel.meta.cli.build` holds the command line's
hyperparameters of each."""


def _algorithm_names() -> tuple[str, ...]:
    """The ``--algorithm`` choices (see :data:`ALGORITHMS`)."""
    return ALGORITHMS


def _algorithm(text: str) -> str:
    """argparse type of ``--algorithm``: the choice ``text`` names, in any spelling."""
    for name in _algorithm_names():
        if spelling(name) == spelling(text):
            return name
    raise argparse.ArgumentTypeError(
        f"unknown algorithm {text!r}; choose one of: {', '.join(_algorithm_names())}"
    )


def _parser(prog: str) -> argparse.ArgumentParser:
    p = Parser(prog=prog, description=DESCRIPTION)
    choices = _algorithm_names()
    p.add_argument("--algorithm", type=_algorithm, default="maml",
                   metavar="{" + ",".join(choices) + "}",
                   help="meta-learning algorithm (any spelling: A-MAML, memory-reduced)")
    p.add_argument("--preset", choices=tuple(PRESETS), default=None,
                   help="a paper's protocol (bilevel.meta.presets); explicit options win")
    p.add_argument("--tasks", default="sinusoid",
                   help="'sinusoid', A-MAML's synthetic families ("
                        + ", ".join(FAMILIES) + ") or 'omniglot:PATH'")
    p.add_argument("--ways", type=int, default=5, help="classes per task (Omniglot)")
    p.add_argument("--n-shot", type=int, default=10, help="support examples per class/task")
    p.add_argument("--n-query", type=int, default=10, help="query examples per class/task")
    p.add_argument("--hidden", type=int, default=40, help="MLP width or Conv4 channels")
    p.add_argument(
        "--activation", choices=("relu", "tanh"), default="tanh",
        help="MLP activation for sinusoids (default tanh: smooth, so second-order methods see "
        "curvature; the MAML paper's relu makes iMAML's 20-step inner loop diverge at lr 0.01)",
    )
    p.add_argument("--inner-lr", type=float, default=None,
                   help="inner step size (default: the algorithm's, see docs/cli.rst)")
    p.add_argument("--inner-steps", type=int, default=None,
                   help="inner steps (default: the algorithm's: MAML 1, iMAML 20, ...)")
    p.add_argument("--reg", type=float, default=None,
                   help="iMAML λ (default 2) / A-MAML r (default 0)")
    p.add_argument("--scheme", default="rk4",
                   help="A-MAML integrator; horizon = inner-lr × inner-steps")
    p.add_argument("--damping", type=float, default=None,
                   help="CG damping δ (iMAML: default 1; MemoryReduced: default 0)")
    p.add_argument("--head-reg", type=float, default=0.0, help="MemoryReduced head ridge")
    p.add_argument("--cml-base", type=_algorithm, default="maml",
                   help="algorithm whose meta-objective CML augments (not cml)")
    p.add_argument("--cml-weight", type=float, default=1.0)
    p.add_argument("--steps", type=int, default=1000, help="meta-iterations")
    p.add_argument("--meta-batch", type=int, default=25)
    p.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    p.add_argument("--lr", type=float, default=1e-3, help="outer step size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--eval-tasks", type=int, default=100)
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--memory-every", type=int, default=0)
    p.add_argument("--out", default="meta-run", help="output folder")
    p.add_argument("--backend", choices=("numpy", "cupy"), default="numpy",
                   help="array backend (cupy needs an NVIDIA GPU)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run of seconds: " + " ".join(
                       _flag(k, v) for k, v in QUICK.items()) + " (explicit options win)")
    resume = p.add_mutually_exclusive_group()
    resume.add_argument("--resume", action="store_true",
                        help="continue the run in --out (also done without the flag when the "
                        "run's flags and fingerprint match; a mismatch is refused)")
    resume.add_argument("--no-resume", action="store_true",
                        help="start afresh, overwriting the run in --out")
    p.add_argument("--no-progress", action="store_true")
    cluster = p.add_mutually_exclusive_group()
    cluster.add_argument("--workers", type=int, default=None, metavar="N",
                         help="meta-gradients on a local Dask cluster of N worker processes "
                         "(needs pip install \"bilevel[distributed]\")")
    cluster.add_argument("--scheduler", default=None, metavar="ADDRESS",
                         help="meta-gradients on the Dask cluster of this scheduler "
                         "(tcp://host:8786)")
    p.add_argument("--parts", type=int, default=None, metavar="P",
                   help="split each meta-batch in P parts drawn from their own seeds (default "
                   "with --workers/--scheduler: one per worker); the run depends on P, not on "
                   "where the parts run (docs/distributed.rst)")
    return p


QUICK = {"steps": 20, "meta_batch": 4, "eval_every": 10, "eval_tasks": 10,
         "checkpoint_every": 10}
"""What ``--quick`` sets (where the option still has its default)."""


def _apply_quick(args: argparse.Namespace, defaults: dict[str, Any]) -> None:
    if args.quick:
        for key, value in QUICK.items():
            if getattr(args, key) == defaults[key]:
                setattr(args, key, value)


_FLAGS = {  # dest -> check of the parsed value (messages name the flag)
    "ways": at_least(1), "n_shot": at_least(1), "n_query": at_least(1), "hidden": at_least(1),
    "inner_lr": positive, "inner_steps": at_least(1), "reg": at_least(0),
    "damping": at_least(0), "head_reg": at_least(0), "cml_weight": at_least(0),
    "steps": at_least(1), "meta_batch": at_least(1), "lr": positive, "eval_every": at_least(0),
    "eval_tasks": at_least(1), "checkpoint_every": at_least(1), "memory_every": at_least(0),
    "workers": at_least(1), "parts": at_least(1),
}
_NOT_RUN = ("out", "resume", "no_resume", "no_progress", "steps", "eval_every", "eval_tasks",
            "checkpoint_every", "memory_every", "quick", "workers", "scheduler")
"""Flags that may change between a run and its resume (they do not change the iterates)."""


def _flag(dest: str, value: Any) -> str:
    name = "--" + dest.replace("_", "-")
    return name if value is True else f"{name} {value}"
