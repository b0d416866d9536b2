"""The ``bilevel`` command: ``demo``, ``bench {memory,accuracy,speed,meta}``, ``meta-train``,
``meta-eval``.

``bilevel demo`` runs :mod:`bilevel.demo` (every hypergradient method on diabetes ridge, MAML
vs iMAML on sinusoids) and writes its report to ``./bilevel-demo``. ``bilevel bench NAME``
runs one benchmark of :mod:`bilevel.bench` and writes ``NAME.json``, ``NAME.md`` and
``NAME.png`` into ``--out``; each finished row is saved at once, and ``--resume`` skips the
rows already there. ``meta-train`` and ``meta-eval`` are :mod:`bilevel.meta.cli`.

``bilevel bench memory`` runs one row per (problem, method), problem by problem, and shares
a total ``--budget`` (default 240 s, ``--quick`` 60 s): each problem gets an equal part of
what is left when it starts, each of its rows an equal part of what is left of that, so
cheap rows hand their unused time to the later ones.

Errors a user can fix (a flag out of range, CuPy requested without a GPU, a missing or
corrupt file, a resume from another configuration) are printed as one line without a
traceback, with exit status 2: they are :class:`bilevel.outer.UsageError` (or
:class:`bilevel.backend.BackendError`), worded in flags. Any other exception is a bug and
keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from . import __version__
from .allocator import keep_heap_padding
from .backend import BackendError
from .outer import UsageError
from .outer.driver import progress_bar
from .outer.usage import Parser, output_folder
from .registry import spelling

__all__ = ["BENCHMARKS", "bench_main", "main"]

BENCHMARKS = {
    "memory": "peak memory against inner steps K (10 … 10,000) for every method; slopes",
    "accuracy": "hypergradient error against cost (HVPs) on problems with closed forms",
    "speed": "hypergradient time / inner-solve time per method; HVP / gradient time; "
             "bilevel.numpy overhead per primitive",
    "meta": "seconds and peak memory per meta-iteration of each meta-learning algorithm",
    "peers": "bilevel against PyTorch eager and JAX jit (when installed), same hypergradients",
    "hpo_large": "one HPO step, per-feature ridge N=20,000 d=2,000, vs hand-written Cholesky",
    "stochastic": "suboptimality against time and oracle calls of SOBA, SABA, AmIGO, StocBiO",
    "distributed": "seconds per meta-iteration against Dask workers; overhead per iteration",
    "sklearn": "bilevel.sklearn estimators against RidgeCV, LassoCV, ... and GridSearchCV",
}
_OWN_ROWS = ("speed", "meta")  # modules taking a RowLog; the others are run per method


def _common(p: argparse.ArgumentParser, out: str) -> None:
    p.add_argument("--out", default=out, help=f"output folder (default {out})")
    p.add_argument("--quick", action="store_true", help="small sizes for a smoke run (seconds)")
    p.add_argument("--backend", choices=("numpy", "cupy"), default="numpy",
                   help="array backend (cupy needs an NVIDIA GPU)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--resume", action="store_true",
                   help="keep finished work in --out and continue where a run stopped")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="bilevel",
        description="Bilevel optimization on NumPy and CuPy: demo, benchmarks, meta-learning.",
    )
    p.add_argument("--version", action="version", version=f"bilevel {__version__}")
    sub = p.add_subparsers(dest="command", parser_class=Parser,
                           metavar="{demo,bench,meta-train,meta-eval}")
    demo = sub.add_parser("demo", help="every hypergradient method on one problem, and "
                          "MAML vs iMAML on sinusoids (about two minutes)",
                          description="Run the bilevel demo and write its report.")
    _common(demo, "bilevel-demo")
    bench = sub.add_parser("bench", help="benchmark suite: " + ", ".join(BENCHMARKS),
                           description="Run one benchmark; writes NAME.json, NAME.md, NAME.png.")
    bsub = bench.add_subparsers(dest="benchmark", parser_class=Parser,
                                metavar="{" + ",".join(BENCHMARKS) + "}")
    for name, text in BENCHMARKS.items():
        b = bsub.add_parser(name, help=text, description=text)
        _common(b, "bench-results")
        b.add_argument("--methods", nargs="+", default=None,
                       help="method (or algorithm) labels to run (default: all)")
        b.add_argument("--docs", default=None, metavar="RST",
                       help="also regenerate this docs page (docs/benchmarks.rst) from --out")
        if name == "memory":
            from .bench.memory import BUDGET_QUICK_S, BUDGET_S

            b.add_argument("--budget", type=_positive, default=None, metavar="SECONDS",
                           help=f"total wall-clock budget, shared among the (problem, method) "
                           f"rows; cells predicted not to fit are skipped and listed "
                           f"(default {BUDGET_S:g}, --quick {BUDGET_QUICK_S:g})")
    sub.add_parser("meta-train", help="meta-train an algorithm (bilevel meta-train --help)",
                   add_help=False)
    sub.add_parser("meta-eval", help="evaluate a meta-train run (bilevel meta-eval --help)",
                   add_help=False)
    return p


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _budgeted(mod: Any, labels: list[str], args: argparse.Namespace, log: Any,
              progress: bool) -> list[dict]:
    """One row per (problem, method), sharing a total budget (see the module docstring)."""
    total = getattr(args, "budget", None) or (
        getattr(mod, "BUDGET_QUICK_S", 60.0) if args.quick else getattr(mod, "BUDGET_S", 240.0)
    )
    problems = list(inspect.signature(mod.run).parameters["problems"].default)
    groups = [(pname, label) for pname in problems for label in labels]
    t0 = time.perf_counter()
    parts: list[dict] = []
    problem_budget, problem_start = 0.0, 0.0
    with progress_bar(total=len(groups), desc="bench memory", progress=progress) as bar:
        for i, (pname, label) in enumerate(groups):
            if i == 0 or groups[i - 1][0] != pname:
                problems_left = len(dict.fromkeys(p for p, _ in groups[i:]))
                problem_start = time.perf_counter()
                problem_budget = max(total - (problem_start - t0), 0.0) / problems_left
            left = sum(1 for p, _ in groups[i:] if p == pname)
            spent = time.perf_counter() - problem_start
            share = max(problem_budget - spent, 0.0) / left
            parts.append(log.compute([label, pname], lambda p=pname, lb=label, s=share: {
                "result": mod.run(quick=args.quick, backend=args.backend, methods=[lb],
                                  problems=(p,), budget_s=s)})["result"])
            bar.update(1)
    return parts


def _fail(message: str) -> int:
    print(f"bilevel: error: {message}", file=sys.stderr)
    return 2


def _known_labels(name: str, mod: Any) -> list[str]:
    """The ``--methods`` labels benchmark ``name`` accepts (compared by registry spelling)."""
    from .bench import method_suite

    if name == "speed":
        return list(dict.fromkeys([*method_suite(10, 0.1), "Forward", "Implicit(Direct)"]))
    return list(getattr(mod, "ALGORITHMS", None) or getattr(mod, "METHODS", ()))


def _check_methods(name: str, mod: Any, labels: list[str] | None) -> None:
    """Refuse unknown ``--methods`` labels before any work (one line, exit status 2)."""
    known = _known_labels(name, mod)
    spelled = {spelling(k) for k in known}
    unknown = [lb for lb in labels or () if spelling(lb) not in spelled
               and not lb.startswith("Reverse(truncate")]
    if unknown:
        raise UsageError(f"--methods: unknown label(s) {', '.join(unknown)} for bench {name}; "
                         f"choose from {', '.join(known)}")


def _run_rows(name: str, args: argparse.Namespace) -> dict:
    """Run benchmark ``name`` with a row log in ``args.out``; returns its result dict."""
    from .bench.report import RowLog, merge_results

    mod = importlib.import_module(f".bench.{name}", __package__)
    _check_methods(name, mod, args.methods)
    config = dict(quick=args.quick, backend=args.backend, seed=args.seed,
                  methods=args.methods)
    log = RowLog(os.path.join(args.out, f"{name}.json"), name, config, resume=args.resume)
    if log.resumed:
        print(f"resuming: {log.resumed} finished row(s) in {log.path}")
    progress = not args.no_progress
    if name in _OWN_ROWS:
        kw = {"seed": args.seed} if "seed" in inspect.signature(mod.run).parameters else {}
        result = mod.run(args.quick, args.backend, args.methods, log=log, progress=progress,
                         **kw)
    else:
        params = inspect.signature(mod.run).parameters
        labels = args.methods
        if labels is None and hasattr(mod, "default_methods"):
            labels = list(mod.default_methods())
        if labels is None or "methods" not in params:
            groups: list[Any] = [None]
        else:
            groups = [[lb] for lb in labels]
        seed = {"seed": args.seed} if "seed" in params else {}
        parts = []
        if "budget_s" in params and "problems" in params and labels is not None:
            groups = []
            parts = _budgeted(mod, labels, args, log, progress)
        for group in progress_bar(groups, desc=f"bench {name}", progress=progress):
            kw = dict(seed, methods=group) if group is not None else dict(seed)
            key = group if group is not None else ["all"]
            parts.append(log.compute(key, lambda kw=kw: {
                "result": mod.run(quick=args.quick, backend=args.backend, **kw)})["result"])
        result = merge_results(parts)
    log.extra["result"] = result
    log.save()
    return result


def bench_main(args: argparse.Namespace) -> int:
    """``bilevel bench NAME``: run, then write JSON, markdown and PNG into ``args.out``."""
    from .bench.report import write_text

    name = args.benchmark
    mod = importlib.import_module(f".bench.{name}", __package__)
    result = _run_rows(name, args)
    md = write_text(os.path.join(args.out, f"{name}.md"), mod.to_markdown(result))
    png = mod.plot(result, os.path.join(args.out, f"{name}.png"))
    print(mod.to_markdown(result))
    print(f"wrote {os.path.join(args.out, name + '.json')}, {md}, {png}")
    if args.docs:
        from .bench.report import write_rst_page

        print(f"wrote {write_rst_page(args.out, args.docs)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bilevel`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    keep_heap_padding()  # the heap stops shrinking and regrowing between meta-gradients
    if argv and argv[0] in ("meta-train", "meta-eval"):
        from .meta import cli as meta_cli

        entry = meta_cli.meta_train_main if argv[0] == "meta-train" else meta_cli.meta_eval_main
        return _guarded(lambda: entry(argv[1:]))
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "bench" and args.benchmark is None:
        parser.parse_args(["bench", "--help"])
    return _guarded(lambda: _dispatch(args))


def _dispatch(args: argparse.Namespace) -> int:
    from . import backend

    backend.module(args.backend)  # BackendError with the hint before any work
    output_folder(args.out)
    if getattr(args, "docs", None):
        output_folder(os.path.dirname(os.path.abspath(args.docs)), "--docs")
    if args.command == "demo":
        from . import demo

        demo.run(args.out, quick=args.quick, backend=args.backend, seed=args.seed,
                 resume=args.resume, progress=not args.no_progress)
        return 0
    return bench_main(args)


def _guarded(fn: Any) -> int:
    """Run ``fn()``; user-fixable errors become one line on stderr and exit status 2.

    User-fixable means typed so: :class:`bilevel.outer.UsageError` (printed worded in
    flags, :meth:`~bilevel.outer.UsageError.for_cli`) and
    :class:`bilevel.backend.BackendError`. Other exceptions are bugs: they propagate.
    """
    try:
        return int(fn() or 0)
    except UsageError as err:
        return _fail(err.for_cli())
    except BackendError as err:
        return _fail(str(err))
    except KeyboardInterrupt:
        print("\ninterrupted: finished rows are saved; rerun with --resume to continue",
              file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
