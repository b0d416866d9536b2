"""The GPU check: one command, about five minutes, a short report.

``python -m bilevel.bench.gpu [--out DIR] [--budget SECONDS]`` (or ``tests/gpu/run.sh``)
on a machine with an NVIDIA GPU:

1. finds the GPU (``nvidia-smi``) and CuPy, installing the ``gpu`` extra
   (``pip install -e .[gpu]`` from a checkout, else ``bilevel[gpu]``) when CuPy is missing;
2. runs ``pytest -m cupy`` (the tests that need CuPy and a GPU);
3. runs the speed, memory and meta benchmarks with ``--quick --backend cupy``, and the
   Conv4 MAML meta-batch scaling (:func:`bilevel.bench.meta.meta_batch_scaling`) on CuPy;
4. writes ``gpu.md`` into ``DIR`` (default ``bench-gpu``): the device, each step's status,
   time and last lines of output.

Each step has its share of the budget (default 300 s) and is stopped when it runs over, so
the whole check fits. Without a GPU it says so and exits with status 0 (``--require`` makes
that status 2); a failed step gives status 1.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["STEPS", "Step", "find_gpu", "main", "report"]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCALING = ("import json; from bilevel.bench.meta import meta_batch_scaling as s; "
           "[print(json.dumps(r)) for r in s((4, 16), hidden=32, K=5, backend='cupy')]")


@dataclass(frozen=True)
class Step:
    """One step of the check: a name, a command, and its share of the time budget."""

    name: str
    command: tuple[str, ...]
    share: float


def _steps(out: str) -> tuple[Step, ...]:
    py = sys.executable
    bench = (py, "-m", "bilevel.cli", "bench")
    common = ("--quick", "--backend", "cupy", "--no-progress", "--out", out)
    return (
        Step("pytest -m cupy", (py, "-m", "pytest", "-q", "-m", "cupy", "-p", "no:cacheprovider",
                                os.path.join(ROOT, "tests")), 0.35),
        Step("bench speed", (*bench, "speed", *common), 0.15),
        Step("bench memory", (*bench, "memory", *common, "--budget", "30"), 0.15),
        Step("bench meta", (*bench, "meta", *common), 0.15),
        Step("Conv4 MAML meta-batch 4 -> 16 (cupy)", (py, "-c", SCALING), 0.2),
    )


STEPS = tuple(step.name for step in _steps("bench-gpu"))
"""The steps of the check, in order."""


def find_gpu() -> str | None:
    """The GPU's name from ``nvidia-smi``, or ``None`` when there is no NVIDIA GPU."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=name,memory.total,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.strip().splitlines()
    return lines[0].strip() if out.returncode == 0 and lines else None


def _install_cupy(timeout: float) -> str:
    """Install the ``gpu`` extra when CuPy is missing; what happened, in words."""
    if importlib.util.find_spec("cupy") is not None:
        return "CuPy already installed"
    target = f"{ROOT}[gpu]" if os.path.exists(os.path.join(ROOT, "setup.cfg")) else "bilevel[gpu]"
    args = [sys.executable, "-m", "pip", "install", "-q"]
    args += ["-e", target] if target != "bilevel[gpu]" else [target]
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"pip install {target} ran over {timeout:.0f} s"
    if done.returncode != 0:
        return f"pip install {target} failed: {done.stderr.strip()[-500:]}"
    return f"installed {target}"


def _run(step: Step, seconds: float) -> dict:
    t0 = time.perf_counter()
    try:
        done = subprocess.run(step.command, capture_output=True, text=True, timeout=seconds,
                              cwd=ROOT)
        status = "ok" if done.returncode == 0 else f"failed (exit {done.returncode})"
        output = done.stdout + done.stderr
    except subprocess.TimeoutExpired as err:
        status = f"stopped after {seconds:.0f} s"
        output = (err.stdout or b"").decode(errors="replace") if isinstance(
            err.stdout, bytes) else str(err.stdout or "")
    tail = "\n".join(output.strip().splitlines()[-12:])
    return dict(step=step.name, status=status, seconds=time.perf_counter() - t0, tail=tail)


def report(gpu: str | None, setup: str, rows: Sequence[dict]) -> str:
    """The markdown report of a check: the device, then each step's status and output."""
    lines = ["# bilevel GPU check", "", f"- device: {gpu or 'no NVIDIA GPU found'}",
             f"- CuPy: {setup}", ""]
    if rows:
        lines += ["| step | status | seconds |", "|---|---|---|"]
        lines += [f"| {r['step']} | {r['status']} | {r['seconds']:.1f} |" for r in rows]
    for r in rows:
        lines += ["", f"## {r['step']}", "", "```", r["tail"], "```"]
    return "\n".join(lines) + "\n"


def _write(out: str, text: str) -> str:
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "gpu.md")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Run the check; 0 when every step passed (or no GPU without ``--require``)."""
    p = argparse.ArgumentParser(prog="python -m bilevel.bench.gpu", description=__doc__.split(
        "\n\n")[0])
    p.add_argument("--out", default="bench-gpu", help="report folder (default bench-gpu)")
    p.add_argument("--budget", type=float, default=300.0, help="total seconds (default 300)")
    p.add_argument("--require", action="store_true", help="exit 2 when there is no GPU")
    args = p.parse_args(argv)
    start = time.perf_counter()
    gpu = find_gpu()
    if gpu is None:
        path = _write(args.out, report(None, "not checked", []))
        print("bilevel GPU check: no NVIDIA GPU found (nvidia-smi is missing or lists no "
              f"device); nothing was run. Run this on a machine with a GPU. Report: {path}")
        return 2 if args.require else 0
    setup = _install_cupy(0.2 * args.budget)
    print(f"bilevel GPU check on {gpu}; {setup}", flush=True)
    rows = []
    for step in _steps(args.out):
        left = args.budget - (time.perf_counter() - start)
        rows.append(_run(step, max(10.0, min(step.share * args.budget, left))))
        print(f"{step.name}: {rows[-1]['status']} ({rows[-1]['seconds']:.0f} s)", flush=True)
    path = _write(args.out, report(gpu, setup, rows))
    print(f"report: {path}")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
