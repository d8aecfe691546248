"""The documentation builds with warnings as errors and lists every public name."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import mibounds
import mibounds.nn
from mibounds import benchmark
from mibounds.kernels import streaming

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _api_text() -> str:
    return (DOCS / "api.rst").read_text()


def test_every_public_name_in_api_reference():
    text = _api_text()
    missing = [
        name
        for name in mibounds.__all__
        if name not in ("contrastive", "distributed", "methods", "nn", "tasks", "__version__")
        and f"mibounds.{name}\n" not in text
    ]
    assert not missing, f"not in docs/api.rst: {missing}"
    modules = (
        mibounds.nn,
        mibounds.tasks,
        mibounds.estimate,
        streaming,
        benchmark,
        mibounds.contrastive,
        mibounds.pairing,
    )
    for module in (*modules, mibounds.distributed, mibounds.methods):
        prefix = module.__name__
        missing_sub = [n for n in module.__all__ if f"{prefix}.{n}\n" not in text]
        missing_sub = [n for n in missing_sub if f"mibounds.{n}\n" not in text]
        assert not missing_sub, f"not in docs/api.rst: {missing_sub}"
    assert "__version__" in text


def test_all_is_sorted_and_importable():
    modules = (
        mibounds.nn,
        mibounds.tasks,
        mibounds.estimate,
        streaming,
        benchmark,
        mibounds.contrastive,
        mibounds.pairing,
    )
    for module in (mibounds, *modules, mibounds.distributed, mibounds.methods):
        assert list(module.__all__) == sorted(module.__all__)
        for name in module.__all__:
            assert hasattr(module, name), name


@pytest.mark.slow
def test_docs_build(tmp_path):
    pytest.importorskip("sphinx")
    out = tmp_path / "html"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-b",
            "html",
            "-q",
            str(DOCS),
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # everything renders offline: no page loads a script, stylesheet or font from the network
    remote = re.compile(r'<(?:script|link)[^>]+(?:src|href)="(?:https?:)?//[^"]+"', re.I)
    for page in out.rglob("*.html"):
        found = [m.group(0) for m in remote.finditer(page.read_text())]
        found = [f for f in found if 'rel="canonical"' not in f]
        assert not found, (page.name, found[:3])
    for sheet in out.rglob("*.css"):
        assert not re.search(r"url\((['\"]?)https?://", sheet.read_text()), sheet.name
    assert (out / "_static" / "mathjax" / "tex-svg-full.js").exists()
    migrating = (out / "migrating.html").read_text()
    assert "SigLipLoss" in migrating and "streamed / dense time" in migrating
    api = (out / "api.html").read_text()
    assert "mathjax" in api.lower()
    assert re.search(r'id="mibounds\.infonce"', api)
    assert "Keep a Changelog" in (out / "changelog.html").read_text()
    # the guide pages exist and carry their math
    for page in ("getting_started", "distributed"):
        assert (out / f"{page}.html").exists(), page
    for page in ("which_bound", "divergences", "validation"):
        html = (out / f"{page}.html").read_text()
        assert "mathjax" in html.lower(), page
    table = (out / "divergences.html").read_text()
    assert "strictly convex: spreads" in table and "concave: collapses" in table
    # every executed tutorial and paper example has the figure its run produced
    for gallery, names in (
        (
            "auto_tutorials",
            ("plot_01_first_estimate", "plot_02_contrastive_loss", "plot_03_validate"),
        ),
        (
            "auto_examples",
            ("factorcl_synthetic", "nce_club_gaussian", "infocl_simclr_digits", "fmicl_digits"),
        ),
    ):
        for name in names:
            html = (out / gallery / f"{name}.html").read_text()
            images = re.findall(r'<img[^>]+src="([^"]+)"', html)
            assert images, f"{gallery}/{name} has no figure"
            for src in images:
                assert (out / gallery / src).exists(), src


def test_every_public_callable_has_a_runnable_example():
    """Every public function and class documents an Example (run by --doctest-modules); plain
    data (constants, type aliases) has no docstring of its own in Python and is exempt."""
    import inspect

    modules = (
        mibounds.nn,
        mibounds.tasks,
        mibounds.estimate,
        streaming,
        benchmark,
        mibounds.contrastive,
        mibounds.pairing,
    )
    missing = []
    for module in (mibounds, *modules, mibounds.distributed, mibounds.methods):
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.ismodule(obj) or not (inspect.isclass(obj) or callable(obj)):
                continue
            if ">>>" not in (inspect.getdoc(obj) or ""):
                missing.append(f"{module.__name__}.{name}")
    assert not missing, f"no doctest example: {missing}"
