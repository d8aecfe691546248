"""The documentation builds with warnings as errors and lists every public name."""

from __future__ import annotations

import html
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
        # or documented in its own module (the source links need one module per source file)
        and not re.search(rf"mibounds\.\w+\.{name}\n", text)
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


def _broken_internal_links(out: Path) -> list[str]:
    """Every relative link of the built site (``href``/``src``) whose file or ``#anchor`` does
    not exist: the internal part of a link check, offline."""
    link = re.compile(r'(?:href|src)="([^"]+)"')
    ids: dict[Path, set[str]] = {}

    def anchors(page: Path) -> set[str]:
        if page not in ids:
            ids[page] = set(re.findall(r'id="([^"]+)"', page.read_text()))
        return ids[page]

    broken = []
    for page in out.rglob("*.html"):
        for target in link.findall(page.read_text()):
            if re.match(r"[a-z]+:|//", target) or target.startswith("data:"):
                continue
            path, _, anchor = html.unescape(target).partition("#")
            path = path.partition("?")[0]
            dest = (page.parent / path).resolve() if path else page
            missing_file = bool(path) and not dest.exists()
            missing_anchor = bool(anchor) and dest.suffix == ".html" and not missing_file
            if missing_file or (missing_anchor and anchor not in anchors(dest)):
                broken.append(f"{page.relative_to(out)}: {target}")
    return broken


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
    broken = _broken_internal_links(out)
    assert not broken, broken[:10]
    # no build machine's temporary paths in any page
    for page in out.rglob("*.html"):
        assert "/tmp/" not in page.read_text(), page.name
    migrating = (out / "migrating.html").read_text()
    assert "SigLipLoss" in migrating and "streamed / dense time" in migrating
    api = (out / "api.html").read_text()
    assert "mathjax" in api.lower()
    assert re.search(r'id="mibounds\.infonce"', api)
    # no private base classes and no "Bases: object"
    bases = [re.sub(r"<[^>]+>", "", b) for b in re.findall(r"Bases: (.{0,300}?)</p>", api)]
    assert not [b for b in bases if re.search(r"(^|, )(_\w+|object)($|,)", b)], bases
    assert "Keep a Changelog" in (out / "changelog.html").read_text()
    # the guide pages exist and carry their math
    for page in ("getting_started", "distributed"):
        assert (out / f"{page}.html").exists(), page
    for page in ("which_bound", "divergences", "validation"):
        text = (out / f"{page}.html").read_text()
        assert "mathjax" in text.lower(), page
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
            page_html = (out / gallery / f"{name}.html").read_text()
            images = re.findall(r"<img[^>]+src=\"([^\"]+)\"", page_html)
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


def test_every_public_member_has_a_docstring():
    """Methods and properties of the public classes appear on the API page only with a
    docstring (autodoc drops undocumented members)."""
    import importlib
    import inspect
    import pkgutil

    names = [
        m.name
        for m in pkgutil.walk_packages(mibounds.__path__, "mibounds.")
        if not any(part.startswith("_") for part in m.name.split("."))
    ]
    missing = []
    for mod in map(importlib.import_module, names):
        for cls in vars(mod).values():
            if not inspect.isclass(cls) or cls.__module__ != mod.__name__:
                continue
            if cls.__name__.startswith("_"):
                continue
            for name, member in vars(cls).items():
                if name.startswith("_"):
                    continue
                if not (callable(member) or isinstance(member, (property, classmethod))):
                    continue
                # inspect.getdoc on the class attribute inherits a base class's docstring, as
                # autodoc does
                if not inspect.getdoc(getattr(cls, name)):
                    missing.append(f"{cls.__module__}.{cls.__qualname__}.{name}")
    assert not missing, missing


def test_shipped_inventories_match_their_script():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "docs" / "inventories" / "make_inventories.py"
    spec = importlib.util.spec_from_file_location("make_inventories", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name, (project, version, entries) in module.FILES.items():
        assert (path.parent / name).read_bytes() == module.inventory(project, version, entries)
