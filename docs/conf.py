"""Sphinx configuration of the bilevel documentation (``sphinx-build -W -b html docs out``)."""

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
html_static_path: list[str] = []
html_theme_options = {"description": "Hypergradients on NumPy and CuPy", "fixed_sidebar": True}
