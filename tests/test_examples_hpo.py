"""The hyperparameter-optimization examples run start to finish in quick mode."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = [
    "hpo_ridge_diabetes.py",
    "hpo_logistic_breast_cancer.py",
    "hpo_hypercleaning_digits.py",
]


@pytest.mark.parametrize("script", EXAMPLES)
def test_example_quick(script):
    pytest.importorskip("sklearn")
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", script), "--quick"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "fastest:" in out.stdout, out.stdout
    assert "nan" not in out.stdout.split("common target")[0].lower(), out.stdout
