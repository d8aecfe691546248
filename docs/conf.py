"""Sphinx configuration for mibounds (built with warnings as errors)."""

from __future__ import annotations

import os
import sys
import tempfile

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
    "sphinx_gallery.gen_gallery",
    "sphinx_copybutton",
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
html_theme = "furo"
html_title = f"mibounds {release}"
html_static_path = ["_static"]
# Formulas render offline: MathJax's SVG build is vendored in _static/mathjax (its fonts are
# SVG paths inside the script), never fetched from a CDN.
mathjax_path = "mathjax/tex-svg-full.js"
mathjax3_config = {"options": {"enableMenu": False}}
copybutton_prompt_text = r">>> |\.\.\. |\$ "
copybutton_prompt_is_regexp = True
myst_heading_anchors = 2


def _gallery_argv(gallery_conf, script_vars):
    """Tutorials run as they are; the paper examples run their --quick mode (seconds each),
    writing their PNG to a temporary folder: their figure in the gallery is that run's."""
    if "/examples/" not in script_vars["src_file"].replace(os.sep, "/"):
        return []
    out = os.path.join(
        tempfile.gettempdir(), "mibounds-docs-" + os.path.basename(script_vars["src_file"])
    )
    return ["--quick", "--out", out + ".png"]


sphinx_gallery_conf = {
    "examples_dirs": ["../tutorials", "../examples"],
    "gallery_dirs": ["auto_tutorials", "auto_examples"],
    "filename_pattern": r"/(plot_|factorcl_|nce_club_|infocl_|fmicl_)",
    "reset_argv": _gallery_argv,
    "download_all_examples": False,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
    "abort_on_example_error": True,
    # its timing pages load scripts from CDNs; the docs must render offline
    "write_computation_times": False,
}
# the gallery's argv hook is a function, which sphinx cannot cache (harmless: it only means
# the environment is rebuilt when the configuration is re-read)
suppress_warnings = ["myst.header", "config.cache"]


# --- generated pages ---------------------------------------------------------------------


def _divergence_table() -> str:
    """The registry as an RST list-table, with the shape of f-MICL's h(t) on [0, 4]."""
    import torch

    from mibounds.methods import fmicl_terms

    t = torch.linspace(0.01, 4.0, 400, dtype=torch.float64)  # t = 0 is the positive pair
    lines = [
        ".. list-table::",
        "   :header-rows: 1",
        "",
        "   * - name",
        "     - aliases",
        "     - generator :math:`f(u)`",
        "     - domain of :math:`f^*`",
        "     - f-MICL :math:`h(t)`",
    ]
    for div in mibounds.list_divergences():
        _, marginal, _ = fmicl_terms(div.name)
        h = marginal(-t)
        second = h[2:] - 2 * h[1:-1] + h[:-2]
        scale = float(h.abs().max()) * 1e-9 + 1e-12
        if bool((h - h[0]).abs().max() < scale):
            shape = "constant (no gradient)"
        elif bool((second.abs() < scale).all()):
            shape = "linear: collapses"
        elif bool((second > scale).all()):
            shape = "strictly convex: spreads"
        elif bool((second < -scale).all()):
            shape = "concave: collapses"
        else:
            shape = "mixed"
        aliases = ", ".join(f"``{a}``" for a in div.aliases) or "-"
        formula = div.formula or "-"
        lines += [
            f"   * - ``{div.name}``",
            f"     - {aliases}",
            f"     - ``{formula}``",
            "     - :math:`"
            + str(div.conjugate_domain).replace("log 2", "\\log 2").replace("inf", "\\infty")
            + "`",
            f"     - {shape}",
        ]
    return "\n".join(lines) + "\n"


_GEN = os.path.join(os.path.dirname(__file__), "_generated")
os.makedirs(_GEN, exist_ok=True)
with open(os.path.join(_GEN, "divergence_table.rst"), "w") as _fh:
    _fh.write(_divergence_table())


def _contrastive_table() -> str:
    """benchmarks/contrastive.json as an RST table: each loss, streamed vs its dense form."""
    import json

    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "contrastive.json")
    with open(path) as fh:
        rows = json.load(fh)
    by = {(r["bound"], r["n"], r["method"]): r for r in rows}
    lines = [
        ".. list-table::",
        "   :header-rows: 1",
        "",
        "   * - loss",
        "     - N",
        "     - dense: time (s), peak MiB",
        "     - streamed: time (s), peak MiB",
        "     - streamed / dense time",
        "     - dense / streamed memory",
    ]
    for bound, n in sorted({(r["bound"], r["n"]) for r in rows}):
        dense, ours = by.get((bound, n, "naive")), by.get((bound, n, "streaming"))
        if dense is None or ours is None or not dense["time_s"] or not ours["time_s"]:
            continue
        mem = dense["peak_extra_mib"] / max(ours["peak_extra_mib"], 1.0)
        lines += [
            f"   * - {bound}",
            f"     - {n}",
            f"     - {dense['time_s']:.2f}, {dense['peak_extra_mib']:.0f}",
            f"     - {ours['time_s']:.2f}, {ours['peak_extra_mib']:.0f}",
            f"     - {ours['time_s'] / dense['time_s']:.2f}x",
            f"     - {mem:.0f}x",
        ]
    return "\n".join(lines) + "\n"


with open(os.path.join(_GEN, "contrastive_table.rst"), "w") as _fh:
    _fh.write(_contrastive_table())
