"""Sphinx configuration of the bilevel documentation (``sphinx-build -W -b html docs out``)."""

import importlib.util
import os
import sys

sys.path.insert(0, os.path.abspath(".."))

project = "bilevel"
author = "the bilevel developers"
copyright = "2025, the bilevel developers"  # noqa: A001

import bilevel  # noqa: E402

release = bilevel.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
]

# Offline math: the built pages load no script from the network. The renderer is shipped
# locally by the ``sphinx-mathjax-offline`` package (MathJax 3 copied into ``_static``); without
# it, the pages point at a local path that is absent, so formulas show as their LaTeX source
# rather than fetching a script from a CDN.
if importlib.util.find_spec("sphinx-mathjax-offline") is not None:
    extensions.append("sphinx-mathjax-offline")
else:
    mathjax_path = "mathjax/tex-chtml.js"

autosummary_generate = False
autodoc_member_order = "bysource"
autodoc_typehints = "none"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_validation_checks: set[str] = set()
nitpicky = False

templates_path: list[str] = []
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
html_theme = "alabaster"
html_static_path = ["_css"]
html_css_files = ["wrap.css"]  # wide code blocks wrap, so expected output stays visible
html_theme_options = {"description": "Hypergradients on NumPy and CuPy", "fixed_sidebar": True,
                      "page_width": "1080px"}
