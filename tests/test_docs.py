"""The documentation builds with warnings as errors and lists every public name."""

from __future__ import annotations

import fcntl
import html
import json
import os
import re
import shutil
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
    """The API reference, one page per audience (docs/api/*.rst)."""
    return "\n".join(p.read_text() for p in sorted((DOCS / "api").glob("*.rst")))


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
    assert not missing, f"not in docs/api/*.rst: {missing}"
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
        assert not missing_sub, f"not in docs/api/*.rst: {missing_sub}"
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


@pytest.fixture(scope="session")
def built_docs(tmp_path_factory):
    """The site, built once per test run with warnings as errors: the first worker to get here
    builds it (sphinx-gallery writes into the source tree, so two builds at once would collide),
    the others wait for it and read the same output."""
    pytest.importorskip("sphinx")
    # this run's folder, the same for every xdist worker (a worker's own folder is one below)
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    out = shared / "docs_html"
    with open(shared / "docs_build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return _build_docs(out)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _build_docs(out: Path) -> tuple[Path, subprocess.CompletedProcess]:
    record = out.with_suffix(".json")
    if record.exists():  # built by another worker of this run
        rc, log = json.loads(record.read_text())
        return out, subprocess.CompletedProcess([], rc, log, "")
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
    record.write_text(json.dumps([proc.returncode, proc.stdout + proc.stderr]))
    return out, proc


@pytest.mark.slow
def test_docs_build(built_docs):
    out, proc = built_docs
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
    api = "".join(p.read_text() for p in (out / "api").glob("*.html"))
    assert "mathjax" in (out / "api" / "bounds.html").read_text().lower()
    assert re.search(r'id="mibounds\.infonce"', (out / "api" / "bounds.html").read_text())
    # internals live on their own page, not among the losses and bounds
    for page in ("losses", "bounds", "estimation"):
        text = (out / "api" / f"{page}.html").read_text()
        assert "mark_triton" not in text and "set_validate_args" not in text, page
    # no page reports the build machine's running time of a script
    for page in out.rglob("*.html"):
        assert "Total running time" not in page.read_text(), page.name
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
            # no empty code block (a cell holding only a sphinx-gallery setting)
            assert not re.search(r"<pre><span></span>\s*</pre>", page_html), name
    for name in ("factorcl_synthetic", "nce_club_gaussian", "infocl_simclr_digits", "fmicl_digits"):
        # the results table is plain text, not highlighted as Python
        assert "highlight-text" in (out / "auto_examples" / f"{name}.html").read_text(), name


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


_CHROMIUM = next(
    (p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p),
    None,
)

# For each page (in an iframe of the viewport's width): how far the page, or a table, code
# block, image or formula that does not sit in a horizontally scrolling box, reaches past the
# right edge of the viewport, in CSS pixels.
_OVERFLOW_JS = r"""
function overflow(doc) {
  const w = doc.documentElement.clientWidth;
  let worst = doc.documentElement.scrollWidth - w, what = "page";
  for (const el of doc.querySelectorAll("table, pre, img, svg, mjx-container")) {
    let scrolls = false;
    for (let a = el.parentElement; a && a !== doc.documentElement; a = a.parentElement) {
      const o = doc.defaultView.getComputedStyle(a).overflowX;
      if (o === "auto" || o === "scroll") { scrolls = true; break; }
    }
    const right = el.getBoundingClientRect().right - w;
    if (!scrolls && right > worst) { worst = right; what = el.tagName.toLowerCase(); }
  }
  let scrolling = 0;  // tables wider than their box (they scroll inside it)
  for (const box of doc.querySelectorAll(".table-wrapper")) {
    if (box.scrollWidth > box.clientWidth + 1) scrolling += 1;
  }
  return [Math.round(worst), what, scrolling];
}
window.addEventListener("load", () => {
  const rows = [];
  for (const f of document.querySelectorAll("iframe")) {
    rows.push([f.getAttribute("src")].concat(overflow(f.contentDocument)));
  }
  const pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify(rows);
  document.body.appendChild(pre);
});
"""


@pytest.mark.skipif(
    _CHROMIUM is None, reason="needs Chromium (chromium, chromium-browser or google-chrome) on PATH"
)
@pytest.mark.slow
@pytest.mark.parametrize("width", [1280, 390])
def test_no_page_is_wider_than_the_viewport(built_docs, width):
    """Every page at a desktop and a phone width, in headless Chromium: wide tables wrap or
    scroll inside their own box, and nothing else runs past the right edge."""
    out, proc = built_docs
    assert proc.returncode == 0, proc.stdout + proc.stderr
    skip = {"_static", "_modules", "_sources", "_images"}
    pages = [p for p in sorted(out.rglob("*.html")) if not skip & set(p.relative_to(out).parts)]
    frames = "".join(
        f'<iframe src="{p.relative_to(out).as_posix()}" '
        f'style="width:{width}px;height:800px;border:0;display:block"></iframe>'
        for p in pages
    )
    probe = out / f"_probe_{width}.html"
    probe.write_text(
        f"<!doctype html><html><body>{frames}<script>{_OVERFLOW_JS}</script></body></html>"
    )
    try:
        result = subprocess.run(
            [_CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
             "--allow-file-access-from-files", "--window-size=1400,900",
             "--virtual-time-budget=30000", "--dump-dom", probe.as_uri()],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    finally:
        probe.unlink()
    found = re.search(r'<pre id="probe">(.*?)</pre>', result.stdout, re.S)
    assert found, result.stderr[-2000:]
    rows = json.loads(html.unescape(found.group(1)))
    assert len(rows) == len(pages)
    wide = [row for row in rows if row[1] > 1]
    assert not wide, f"wider than {width} px: {wide[:10]}"
    if width == 1280:  # the reference tables of the guides fit a desktop window without scrolling
        guides = ("which_bound.html", "migrating.html")
        scrolling = [row for row in rows if row[0] in guides and row[3]]
        assert not scrolling, f"tables that scroll at {width} px: {scrolling}"
