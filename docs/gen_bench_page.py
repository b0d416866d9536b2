"""Regenerate docs/benchmarks.rst from the output folder of ``bilevel bench``.

Usage::

    bilevel bench memory --out bench-results      # and accuracy, speed, meta
    python docs/gen_bench_page.py bench-results   # writes docs/benchmarks.rst

``--run`` first runs every benchmark (``--quick`` for the small sizes) into the folder.
"""

import argparse
import os
import sys

from bilevel.bench.report import write_rst_page

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", nargs="?", default="bench-results", help="bench output folder")
    p.add_argument("--page", default=os.path.join(HERE, "benchmarks.rst"))
    p.add_argument("--run", action="store_true", help="run every benchmark first")
    p.add_argument("--quick", action="store_true", help="with --run: quick sizes")
    args = p.parse_args()
    if args.run:
        from bilevel.cli import main as cli

        for name in ("memory", "accuracy", "speed", "meta"):
            extra = ["--quick"] if args.quick else []
            code = cli(["bench", name, "--out", args.results, "--resume", *extra])
            if code:
                return code
    print(f"wrote {write_rst_page(args.results, args.page)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
