"""The Sphinx documentation builds with warnings as errors (skipped without Sphinx)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One ``sphinx-build -W`` of the docs: (process, html folder)."""
    pytest.importorskip("sphinx")
    pytest.importorskip("numpydoc")
    tmp = tmp_path_factory.mktemp("docs")
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
           "-d", str(tmp / "doctrees"), str(DOCS), str(tmp / "html")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    return proc, tmp / "html"


@pytest.mark.slow  # integration run (seconds)
def test_docs_build_without_warnings(built):
    proc, html = built
    assert proc.returncode == 0, f"sphinx-build failed:\n{proc.stdout}\n{proc.stderr}"
    for page in ("index", "getting_started", "api", "methods/reverse", "methods/forward",
                 "methods/implicit", "methods/adjoint", "methods/historyless"):
        assert (html / f"{page}.html").is_file(), page
    api = (html / "api.html").read_text(encoding="utf-8")
    for name in ("bilevel.api.hypergrad", "bilevel.problem.BilevelProblem",
                 "bilevel.methods.implicit.Implicit", "bilevel.backend.namespace"):
        assert f'id="{name}"' in api, name


NETWORK_ASSET = re.compile(
    r"<(?:script[^>]*\bsrc|link[^>]*\bhref)\s*=\s*[\"']?(?:https?:)?//", re.I)


@pytest.mark.slow  # integration run (seconds)
def test_docs_load_nothing_from_the_network(built):
    """No ``<script src>`` or ``<link href>`` of the built HTML points at http(s)://."""
    pages = list(built[1].rglob("*.html"))
    assert pages
    remote = [f"{p.name}: {m.group(0)}" for p in pages
              for m in NETWORK_ASSET.finditer(p.read_text(encoding="utf-8"))]
    assert not remote, remote[:5]
