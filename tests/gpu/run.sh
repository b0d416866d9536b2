#!/usr/bin/env bash
# The GPU check in one command (about five minutes): installs the gpu extra if needed, runs
# pytest -m cupy and the quick speed/memory/meta benchmarks with --backend cupy, and writes
# bench-gpu/gpu.md. Without an NVIDIA GPU it says so and exits 0 (2 with --require).
# Usage: tests/gpu/run.sh [--out DIR] [--budget SECONDS] [--require]
set -euo pipefail
cd "$(dirname "$0")/../.."
exec "${PYTHON:-python}" -m bilevel.bench.gpu "$@"
