"""``bilevel meta-train`` and ``bilevel meta-eval``: meta-learning from the command line.

``meta-train`` trains one algorithm on sinusoid regression or Omniglot (``omniglot:PATH``),
writes ``<out>/config.json``, ``<out>/checkpoint.npz`` (resumable), ``<out>/history.json``
and ``<out>/curve.png``, and prints a results table. ``meta-eval`` reloads a run folder,
evaluates the meta-parameters on held-out tasks next to the random-initialization and
joint-training ("pretrained") baselines adapted the same way, and prints the table.

Every error a user can fix is a :class:`bilevel.outer.UsageError` worded in flags
(``--inner-lr must be > 0, got -1``), raised before anything is written; ``bilevel`` prints
it as one line with exit status 2. A run folder is resumed (with ``--resume``, or without it
when the run matches) only under the flags it was started with (those of
``--out``/``config.json`` that determine the run): a changed ``--activation``, ``--hidden``,
``--algorithm`` ... is refused, naming the flags, unless ``--no-resume`` is given.
``--inner-lr`` and ``--inner-steps`` default to the algorithm's own (:func:`inner_defaults`);
``--backend`` picks NumPy or CuPy; ``--quick`` is a smoke run of seconds. ``--workers N``
(a local Dask cluster) or ``--scheduler ADDRESS`` (an existing one) computes the
meta-gradients on workers, each meta-batch split in ``--parts`` parts
(:mod:`bilevel.meta.distributed`; see :doc:`/distributed`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..backend import module as backend_module
from ..optim import get_optimizer
from ..outer import (
    Checkpointing,
    CheckpointWarning,
    Monitoring,
    ResumeError,
    UsageError,
    atomic_write,
    resumable,
)
from ..outer.executor import Local, Runner, open_executor
from ..outer.usage import Parser, at_least, check_flags, output_folder
from ..registry import lookup, spelling
from .algorithms import (
    AMAML,
    ANIL,
    CML,
    IMAML,
    MAML,
    MemoryReduced,
    MetaAlgorithm,
    Pretrain,
    Reptile,
)
from .cli_args import _FLAGS, _NOT_RUN, _apply_quick, _flag, _parser
from .curves import plot_curve, results_table
from .distributed import split_parts
from .presets import FAMILIES, apply_preset, family_sampler
from .train import Evaluation, evaluate, fingerprint, load_checkpoint, train

__all__ = ["build", "inner_defaults", "meta_eval_main", "meta_train_main", "plot_curve",
           "results_table"]

def _omniglot_path(spec: str) -> str:
    """The PATH of ``--tasks omniglot:PATH``, checked to exist."""
    path = spec.split(":", 1)[1]
    if not path:
        raise UsageError("--tasks omniglot:PATH needs the path of the Omniglot archives")
    if not os.path.exists(os.path.expanduser(path)):
        raise UsageError(f"--tasks {spec!r}: {path!r} does not exist (pass the folder or zip "
                         "archive of the Omniglot images; nothing is downloaded)")
    return path


def _sampler(spec: str, args: argparse.Namespace, split: str) -> Any:
    from .tasks import Omniglot, Sinusoid

    if spec == "sinusoid":
        return Sinusoid(n_shot=args.n_shot, n_query=args.n_query, backend=_backend(args))
    if spec in FAMILIES:
        return family_sampler(spec, args.n_shot, args.n_query, split, backend=_backend(args))
    if spec.startswith("omniglot:"):
        return Omniglot(_omniglot_path(spec), ways=args.ways, n_shot=args.n_shot,
                        n_query=args.n_query, split=split, split_by="alphabet",
                        backend=_backend(args))
    raise UsageError(f"--tasks must be 'sinusoid', {', '.join(map(repr, FAMILIES))} or "
                     f"'omniglot:PATH', got {spec!r}")


def _regression(spec: str) -> bool:
    """True for the regression task families (sinusoids, A-MAML's synthetic functions)."""
    return spec == "sinusoid" or spec in FAMILIES


def _backend(args: argparse.Namespace) -> str:
    """``--backend`` (``numpy`` for a run folder saved before the flag existed)."""
    return getattr(args, "backend", None) or "numpy"


def inner_defaults(algorithm: str) -> tuple[float, int]:
    """``(inner_lr, inner_steps)`` of ``--algorithm`` when the flags are not given.

    They are the defaults of the algorithm's class (MAML 0.01 × 1 step, iMAML 0.01 × 20,
    ANIL 0.1 × 5, Reptile 0.01 × 5, MemoryReduced 0.02 × 20, Pretrain 0.01 × 1; A-MAML
    integrates its default horizon 0.1 in 20 steps: 0.005 × 20). CML takes its
    ``--cml-base``'s.
    """
    cls = lookup("algorithm", algorithm)
    fields = {f.name: f.default for f in dataclasses.fields(cls)}
    steps = int(fields["steps"])
    lr = fields["inner_lr"] if "inner_lr" in fields else float(fields["horizon"]) / steps
    return float(lr), steps


def _complete_inner(args: argparse.Namespace) -> None:
    """Fill ``--inner-lr`` / ``--inner-steps`` left unset with :func:`inner_defaults`."""
    if args.inner_lr is not None and args.inner_steps is not None:
        return
    name = args.cml_base if spelling(args.algorithm) == "cml" else args.algorithm
    if spelling(name) == "cml":
        return  # build() refuses --cml-base cml
    lr, k = inner_defaults(name)
    args.inner_lr = lr if args.inner_lr is None else args.inner_lr
    args.inner_steps = k if args.inner_steps is None else args.inner_steps


def _model(spec: str, args: argparse.Namespace) -> Any:
    from .models import MLP, Conv4

    if _regression(spec):
        width = 1 if spec == "sinusoid" else len(FAMILIES[spec].input_bounds)
        return MLP((width, args.hidden, args.hidden, 1), activation=args.activation,
                   init_std=getattr(args, "init_std", None))
    return Conv4(hidden=args.hidden, ways=args.ways, dtype="float32")


def build(args: argparse.Namespace) -> tuple[MetaAlgorithm, Any]:
    """The algorithm and the model described by parsed ``meta-train`` arguments.

    With ``args.preset`` the preset's options (:mod:`bilevel.meta.presets`) are first set
    on ``args`` where an option still has its default.
    """
    if getattr(args, "preset", None):
        apply_preset(args, vars(_parser("bilevel meta-train").parse_args([])))
    _complete_inner(args)
    model = _model(args.tasks, args)
    lr, k = args.inner_lr, args.inner_steps
    makers = {  # keyed by registry.spelling(name)
        "maml": lambda: MAML(model, lr, k),
        "fomaml": lambda: MAML(model, lr, k, first_order=True),
        "anil": lambda: ANIL(model, lr, k),
        "reptile": lambda: Reptile(model, lr, k),
        "imaml": lambda: IMAML(model, inner_lr=lr, steps=k, damping=args.damping,
                               **({} if args.reg is None else {"reg": args.reg})),
        "amaml": lambda: AMAML(model, horizon=lr * k, steps=k, scheme=args.scheme,
                               reg=0.0 if args.reg is None else args.reg),
        "memoryreduced": lambda: MemoryReduced(model, lr, k, damping=args.damping or 0.0,
                                                head_reg=args.head_reg),
        "pretrain": lambda: Pretrain(model, lr, k),
    }
    if spelling(args.algorithm) == "cml":
        if spelling(args.cml_base) not in makers:
            raise UsageError(f"--cml-base must name another algorithm, got {args.cml_base!r}")
        from .models import MLP

        regression = _regression(args.tasks)
        n_feat = args.hidden if regression else model.n_features
        out = 1 if regression else args.ways
        loss = "mse" if regression else "cross_entropy"
        colearner = MLP((n_feat, args.hidden, out), activation="relu", loss=loss,
                        dtype=model.dtype)
        return CML(makers[spelling(args.cml_base)](), colearner, weight=args.cml_weight), model
    return makers[spelling(args.algorithm)](), model


def _built(args: argparse.Namespace, split: str = "train") -> tuple[MetaAlgorithm, Any, Any]:
    """``(algorithm, model, sampler)`` of checked flags; a ValueError or TypeError raised
    while constructing them (an option's own check) becomes a :class:`UsageError`."""
    try:
        algorithm, model = build(args)
        return algorithm, model, _sampler(args.tasks, args, split)
    except UsageError:
        raise
    except (ValueError, TypeError) as err:
        raise UsageError(f"invalid settings for --algorithm {args.algorithm} "
                         f"--tasks {args.tasks}: {err}") from err


def _saved_flags(out: str) -> dict | None:
    """The flags of the run in ``out`` (its ``config.json``), or None when unreadable."""
    try:
        with open(os.path.join(out, "config.json")) as fh:
            saved = json.load(fh)
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) else None


def _check_resume(args: argparse.Namespace, algorithm: Any, sampler: Any, optimizer: Any,
                  checkpointing: Checkpointing) -> None:
    """Refuse to resume the run in ``--out`` under other flags, before anything is written."""
    if not checkpointing.resume or not os.path.exists(checkpointing.path):
        return
    saved, now = _saved_flags(args.out), vars(args)
    if saved is not None:
        changed = [k for k in now if k not in _NOT_RUN and k in saved and saved[k] != now[k]]
        if changed:
            was = " ".join(_flag(k, saved[k]) for k in changed)
            raise UsageError(
                f"--out {args.out!r} holds a run started with {was}; this one has "
                f"{' '.join(_flag(k, now[k]) for k in changed)}: pass the same flags to "
                "resume it, --no-resume to start afresh (overwriting it), or another --out"
            )
    try:
        with warnings.catch_warnings():  # a fallback to checkpoint.npz.prev: train() says so
            warnings.simplefilter("ignore", CheckpointWarning)
            resumable(checkpointing, fingerprint(algorithm, sampler, optimizer, args.seed,
                                                 args.meta_batch, parts=args.parts),
                      getattr(sampler, "backend", None) or "numpy")
    except ResumeError as err:
        raise UsageError(err.for_cli()) from err


def _executor(args: argparse.Namespace) -> Any:
    """What ``--workers`` / ``--scheduler`` ask for (``None``: this process)."""
    if args.workers is not None:
        return Local(args.workers)
    return args.scheduler


def _resolve_parts(args: argparse.Namespace, runner: Runner) -> None:
    """``--parts`` (default with ``--workers``/``--scheduler``: one per worker, at most
    ``--meta-batch``), recorded in ``config.json``: a resume needs the same number."""
    try:
        args.parts = split_parts(_executor(args), args.parts, runner.workers, args.meta_batch)
    except ValueError as err:
        raise UsageError(f"--parts must be at most --meta-batch {args.meta_batch}, "
                         f"got {args.parts}") from err


def _write_json(path: str, obj: Any) -> None:
    with atomic_write(path, "w") as fh:
        json.dump(obj, fh, indent=1)


def _monitoring(args: argparse.Namespace, memory_every: int = 0) -> Monitoring:
    """Progress bar unless ``--no-progress`` (and only on a terminal); the exact memory
    meter every ``memory_every`` iterations."""
    return Monitoring(progress=False if args.no_progress else None, memory="peak",
                      memory_every=memory_every)


def meta_train_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``bilevel meta-train``; returns the exit status."""
    parser = _parser("bilevel meta-train")
    args = parser.parse_args(argv)
    _apply_quick(args, vars(parser.parse_args([])))
    check_flags(args, _FLAGS)
    backend_module(_backend(args))  # BackendError with the install hint before any work
    output_folder(args.out)
    algorithm, _, sampler = _built(args)
    eval_sampler = _built(args, "val")[2] if args.tasks != "sinusoid" else None
    optimizer = get_optimizer(args.optimizer, args.lr)
    checkpointing = Checkpointing(os.path.join(args.out, "checkpoint.npz"),
                                  every=args.checkpoint_every, resume=not args.no_resume)
    with open_executor(_executor(args)) as runner:
        _resolve_parts(args, runner)
        _check_resume(args, algorithm, sampler, optimizer, checkpointing)
        _write_json(os.path.join(args.out, "config.json"), vars(args))
        result = train(
            algorithm, sampler, steps=args.steps, meta_batch=args.meta_batch,
            optimizer=optimizer, seed=args.seed,
            evaluation=Evaluation(args.eval_every, args.eval_tasks, eval_sampler),
            checkpointing=checkpointing,
            monitoring=_monitoring(args, memory_every=args.memory_every),
            executor=None if args.parts is None else runner, parts=args.parts,
        )
    with atomic_write(os.path.join(args.out, "history.json"), "w") as fh:
        json.dump({"history": result.history, "evaluations": result.evaluations}, fh)
    png = plot_curve(result.history, result.evaluations, os.path.join(args.out, "curve.png"),
                     title=repr(algorithm))
    ev = result.evaluations
    if ev.get("iteration"):
        last = {k: ev[k][-1] for k in ("loss", "loss_ci", "accuracy", "accuracy_ci")}
        last["n_tasks"] = args.eval_tasks
        print(results_table([(args.algorithm, last)]))
    print(f"checkpoint: {os.path.join(args.out, 'checkpoint.npz')}\nlearning curve: {png}")
    return 0


def _run_folder(run: str) -> tuple[argparse.Namespace, str]:
    """The saved flags of a meta-train folder and its checkpoint path, checked."""
    saved = _saved_flags(run)
    if saved is None:
        raise UsageError(f"{run!r} has no readable config.json; run bilevel meta-train --out "
                         f"{run} first")
    ckpt = os.path.join(run, "checkpoint.npz")
    if not os.path.exists(ckpt):
        raise UsageError(f"{run!r} has no checkpoint.npz yet: let bilevel meta-train --out "
                         f"{run} save one (every --checkpoint-every iterations), then rerun")
    defaults = vars(_parser("bilevel meta-train").parse_args([]))
    return argparse.Namespace(**{**defaults, **saved}), ckpt


def meta_eval_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``bilevel meta-eval``; returns the exit status."""
    p = Parser(prog="bilevel meta-eval",
               description="evaluate a meta-train run on held-out tasks")
    p.add_argument("run", help="output folder of bilevel meta-train")
    p.add_argument("--tasks-per-eval", type=int, default=600)
    p.add_argument("--split", default="test", help="Omniglot split to evaluate on")
    p.add_argument("--pretrain-steps", type=int, default=0,
                   help="also train the joint-training baseline for this many iterations")
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--backend", choices=("numpy", "cupy"), default=None,
                   help="array backend (default: the run's --backend)")
    ev_args = p.parse_args(argv)
    if not os.path.isdir(ev_args.run):
        p.error(f"RUN {ev_args.run!r} is not a folder; pass the --out folder of bilevel "
                "meta-train")
    check_flags(ev_args, {"tasks_per_eval": at_least(1), "pretrain_steps": at_least(0)})
    args, ckpt = _run_folder(ev_args.run)
    if ev_args.backend is not None:
        args.backend = ev_args.backend
    backend = _backend(args)
    backend_module(backend)  # BackendError with the install hint before any work
    algorithm, model, sampler = _built(args, ev_args.split)
    params = load_checkpoint(ckpt, backend)["params"]
    expected = algorithm.init(np.random.default_rng(0), backend)
    if np.shape(params) != np.shape(expected):
        raise UsageError(f"{ckpt!r} holds {np.size(params)} parameters but the flags in "
                         f"{ev_args.run}/config.json describe a model of {np.size(expected)}: "
                         "the folder mixes two runs; rerun bilevel meta-train --no-resume")
    base = algorithm.base if isinstance(algorithm, CML) else algorithm
    kw = dict(seed=ev_args.seed, batch=args.meta_batch)
    n = ev_args.tasks_per_eval
    rows = [(args.algorithm, evaluate(algorithm, params, sampler, n, **kw)),
            ("random init", evaluate(base, model.init(np.random.default_rng(args.seed), backend),
                                     sampler, n, **kw))]
    if ev_args.pretrain_steps:
        pre = train(Pretrain(model), _sampler(args.tasks, args, "train"),
                    steps=ev_args.pretrain_steps, meta_batch=args.meta_batch,
                    optimizer=get_optimizer(args.optimizer, args.lr), seed=args.seed,
                    monitoring=Monitoring(progress=False))
        rows.append(("pretrained (joint)", evaluate(base, pre.theta, sampler, n, **kw)))
    print(results_table(rows))
    hist = os.path.join(ev_args.run, "history.json")
    if os.path.exists(hist):
        with open(hist) as fh:
            h = json.load(fh)
        print("learning curve:", plot_curve(h["history"], h["evaluations"],
                                            os.path.join(ev_args.run, "curve.png"),
                                            title=repr(algorithm)))
    return 0
