"""Sphinx configuration for mibounds (built with warnings as errors)."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

import mibounds

project = "mibounds"
author = "mibounds developers"
copyright = "2026, mibounds developers"
release = mibounds.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_custom_sections = [("Returns (forward)", "returns_style")]
nitpicky = False
html_theme = "alabaster"
html_static_path = ["_static"]
myst_heading_anchors = 2
suppress_warnings = ["myst.header"]
