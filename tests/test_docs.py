"""The Sphinx documentation builds with warnings as errors (skipped without Sphinx)."""

import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.mark.slow  # integration run (seconds)
def test_docs_build_without_warnings(tmp_path):
    pytest.importorskip("sphinx")
    pytest.importorskip("numpydoc")
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
           "-d", str(tmp_path / "doctrees"), str(DOCS), str(tmp_path / "html")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"sphinx-build failed:\n{proc.stdout}\n{proc.stderr}"
    html = tmp_path / "html"
    for page in ("index", "getting_started", "api", "methods/reverse", "methods/forward",
                 "methods/implicit", "methods/adjoint", "methods/historyless"):
        assert (html / f"{page}.html").is_file(), page
    api = (html / "api.html").read_text(encoding="utf-8")
    for name in ("bilevel.api.hypergrad", "bilevel.problem.BilevelProblem",
                 "bilevel.methods.implicit.Implicit", "bilevel.backend.namespace"):
        assert f'id="{name}"' in api, name
