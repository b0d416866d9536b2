"""Every script in examples/ runs start to finish, in its quick configuration and (slow tier)
with its default arguments, as the docs and the examples' docstrings tell a user to run it."""

import glob
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = sorted(glob.glob(os.path.join(ROOT, "examples", "*.py")))


# what an example must print besides exiting with 0: the HPO examples compare methods on a
# common target and name the fastest, with no NaN in the table before that line
OUTPUT_CHECKS = {
    name: lambda out: "fastest:" in out and "nan" not in out.split("common target")[0].lower()
    for name in ("hpo_ridge_diabetes.py", "hpo_logistic_breast_cancer.py",
                 "hpo_hypercleaning_digits.py")
}


def _command(path: str, quick: bool = True) -> list[str]:
    with open(path) as fh:
        text = fh.read()
    if os.path.basename(path).startswith("test_") or "def test_" in text and "__main__" not in text:
        return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", path]
    return [sys.executable, path, *(["--quick"] if quick else [])]


@pytest.mark.slow  # integration run (seconds)
@pytest.mark.parametrize("path", EXAMPLES, ids=[os.path.basename(p) for p in EXAMPLES])
def test_example_runs_quick(path, tmp_path):
    _run_example(path, tmp_path, quick=True)


# Examples whose default run takes far longer than the slow tier's ~2 minutes on two CPU
# cores (measured). BILEVEL_LONG_EXAMPLES runs them: "1" all of them, or a comma-separated
# list of names (CI, .ci/run, runs both; meta_omniglot.py skips cleanly without the data).
LONG_EXAMPLES = {
    "meta_sinusoid.py": "every algorithm, 1000 meta-iterations, two shot counts: 3.4 min",
    "meta_omniglot.py": "Conv4 MAML, 150 meta-iterations of 32 Omniglot tasks: about 7 min",
}


def long_example_wanted(name: str) -> bool:
    """Whether BILEVEL_LONG_EXAMPLES asks for the default run of the long example ``name``."""
    wanted = os.environ.get("BILEVEL_LONG_EXAMPLES", "")
    return wanted == "1" or name in {w.strip() for w in wanted.split(",")}


@pytest.mark.slow  # the default run of each example: up to about 90 s each on two cores
@pytest.mark.parametrize("path", EXAMPLES, ids=[os.path.basename(p) for p in EXAMPLES])
def test_example_runs_with_its_defaults(path, tmp_path):
    name = os.path.basename(path)
    if name in LONG_EXAMPLES and not long_example_wanted(name):
        pytest.skip(f"{name} with its defaults ({LONG_EXAMPLES[name]}): "
                    f"set BILEVEL_LONG_EXAMPLES={name} (or 1) to run it")
    _run_example(path, tmp_path, quick=False)


def _run_example(path: str, tmp_path, quick: bool) -> None:
    env = dict(os.environ, MPLBACKEND="Agg")
    proc = subprocess.run(_command(path, quick), cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900 if quick else 1800)
    needs_data = proc.returncode == 2 and "not available" in proc.stderr + proc.stdout
    if needs_data and "usage:" not in proc.stderr:
        # examples on local datasets (Omniglot) exit with status 2 and say what is missing
        pytest.skip(f"{os.path.basename(path)}: {(proc.stderr or proc.stdout).strip()[:200]}")
    assert proc.returncode == 0, f"{os.path.basename(path)} failed:\n{proc.stdout}\n{proc.stderr}"
    check = OUTPUT_CHECKS.get(os.path.basename(path))
    assert check is None or check(proc.stdout), proc.stdout
    assert "Traceback" not in proc.stderr and "RuntimeWarning" not in proc.stderr, proc.stderr


def test_output_checks_name_existing_examples():
    names = {os.path.basename(p) for p in EXAMPLES}
    assert set(OUTPUT_CHECKS) <= names and set(LONG_EXAMPLES) <= names


def test_examples_found():
    assert any(p.endswith("quickstart.py") for p in EXAMPLES)
