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
    "sphinx.ext.intersphinx",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
    "sphinx_copybutton",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "_generated"]  # tables included by the pages, not pages
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_custom_sections = [("Returns (forward)", "returns_style")]
nitpicky = False
# Python and PyTorch names link to their documentation; the inventories are shipped in
# docs/inventories (made by make_inventories.py) so that the build needs no network.
intersphinx_mapping = {
    "python": ("https://docs.python.org/3", "inventories/python.inv"),
    "torch": ("https://docs.pytorch.org/docs/stable", "inventories/torch.inv"),
}
intersphinx_disabled_reftypes = ["std:doc"]
html_theme = "furo"
html_title = f"mibounds {release}"
html_static_path = ["_static"]
html_css_files = ["tables.css"]
# Formulas render offline: MathJax's SVG build is vendored in _static/mathjax (its fonts are
# SVG paths inside the script), never fetched from a CDN.
mathjax_path = "mathjax/tex-svg-full.js"
mathjax3_config = {"options": {"enableMenu": False}}
copybutton_prompt_text = r">>> |\.\.\. |\$ "
copybutton_prompt_is_regexp = True
myst_heading_anchors = 2


sphinx_gallery_conf = {
    "examples_dirs": ["../tutorials", "../examples"],
    "gallery_dirs": ["auto_tutorials", "auto_examples"],
    # tutorials run at build time; the paper examples take minutes, so their pages show the
    # committed figures and tables of their full default runs (docs/_static/results), and
    # their --quick smoke runs are tests (tests/test_examples.py), never shown as results
    "filename_pattern": r"/plot_",
    "download_all_examples": False,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
    "abort_on_example_error": True,
    # its timing pages load scripts from CDNs; the docs must render offline
    "write_computation_times": False,
    # no page reports how long the build machine took to run a script
    "min_reported_time": float("inf"),
}
# the tutorials run their short versions (each page shows the figure of its full run)
os.environ["MIBOUNDS_DOCS_QUICK"] = "1"
suppress_warnings = ["myst.header", "config.cache"]


# --- generated pages ---------------------------------------------------------------------


def _row(cells: list[str]) -> list[str]:
    """The lines of one row of an RST list-table."""
    return [("   * - " if i == 0 else "     - ") + c for i, c in enumerate(cells)]


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


def _kernel_rows() -> list[dict]:
    import json

    here = os.path.join(os.path.dirname(__file__), "..", "benchmarks")
    rows: list[dict] = []
    for name in ("results.json", "results_65536.json"):
        with open(os.path.join(here, name)) as fh:
            rows += json.load(fh)
    return rows


def _kernel_ranges() -> str:
    """The ranges the "Large batches" page quotes, computed from benchmarks/results*.json (so
    the text cannot drift from the data): streamed time over the bare products, peak memory,
    and the N = 65,536 runs."""
    rows = _kernel_rows()
    by = {(r["bound"], r["n"], r["d"], r["method"]): r for r in rows}

    def ratio(r: dict) -> float:  # as in the summary table and the figure
        return r["time_s"] / by[(r["bound"], r["n"], r["d"], "bare")]["time_s"]

    streamed = [r for r in rows if r["method"] == "streaming" and r.get("time_s")]
    one_way = [r for r in streamed if r["bound"] != "infonce-sym"]

    def span(values: list[float], fmt: str = "{:.2f}") -> str:
        return f"{fmt.format(min(values))}-{fmt.format(max(values))}"

    big = [ratio(r) for r in one_way if r["n"] >= 4096]
    small = [ratio(r) for r in one_way if r["n"] == 1024]
    sym = [ratio(r) for r in streamed if r["bound"] == "infonce-sym" and r["n"] >= 4096]
    peak = [r["peak_extra_mib"] for r in streamed if r["n"] == 16384 and r["d"] == 128]
    naive = [
        r["peak_extra_mib"] / 1024
        for r in rows
        if r["method"] == "naive" and r["n"] == 16384 and r["d"] == 128 and r.get("time_s")
    ]
    lines = [
        f"* one-way InfoNCE, NWJ, JS and f-MI (JS): {span(big)}x the bare three products for "
        f"N >= 4,096 (d = 128 and 512, up to N = 65,536); at N = 1,024 the Python loop and op "
        f"overhead weigh more ({span(small)}x);",
        f"* symmetric InfoNCE: {span(sym)}x for N >= 4,096. It needs four products against the "
        "bare three, and the column softmax over a row panel is strided in memory;",
        f"* peak extra memory at N = 16,384, d = 128: {span(peak, '{:.0f}')} MiB for the streamed "
        f"bounds, against {span(naive, '{:.1f}')} GiB for the naive implementation;",
    ]
    for bound, label in (("infonce", "one-way InfoNCE"), ("infonce-sym", "symmetric InfoNCE")):
        r = by.get((bound, 65536, 128, "streaming"))
        if r and r.get("time_s"):
            lines.append(
                f"* N = 65,536, d = 128, {label}: {r['time_s']:.0f} s forward+backward with "
                f"{r['peak_extra_mib']:.0f} MiB extra;"
            )
    lines.append(
        "* at N = 65,536 the naive version would need about 48 GiB and was not run; even the "
        "bare products materialise a 16 GiB score matrix."
    )
    return "\n".join(lines) + "\n"


def _kernel_summary() -> str:
    """The streamed kernels at N = 16,384 and 65,536 against the bare products and the naive
    dense version (benchmarks/results*.json), as a short RST table."""
    by = {(r["bound"], r["n"], r["d"], r["method"]): r for r in _kernel_rows()}
    lines = [
        ".. list-table:: streamed forward+backward, float32, 2-core CPU",
        "   :header-rows: 1",
        "",
        "   * - bound",
        "     - N, d",
        "     - streamed time (s)",
        "     - x bare products",
        "     - streamed peak MiB",
        "     - naive peak MiB",
    ]
    for n, d in ((16384, 128), (16384, 512), (65536, 128)):
        for bound in ("infonce", "infonce-sym", "nwj", "js", "fmi-js"):
            ours, bare = by.get((bound, n, d, "streaming")), by.get((bound, n, d, "bare"))
            naive = by.get((bound, n, d, "naive"))
            if ours is None or bare is None:
                continue
            naive_mem = (
                f"{naive['peak_extra_mib']:,.0f}"
                if naive and naive["peak_extra_mib"]
                else "not run (about 48 GiB)"
            )
            lines += [
                f"   * - {bound}",
                f"     - {n:,}, {d}",
                f"     - {ours['time_s']:.2f}",
                f"     - {ours['time_s'] / bare['time_s']:.2f}",
                f"     - {ours['peak_extra_mib']:,.0f}",
                f"     - {naive_mem}",
            ]
    return "\n".join(lines) + "\n"


def _kernel_figure(path: str) -> None:
    """Time over the bare products and peak memory against N (d = 128), one line per bound."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in _kernel_rows() if r["d"] == 128]
    bounds = ("infonce", "infonce-sym", "nwj", "js", "fmi-js")
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(9, 3.6), constrained_layout=True)
    for bound in bounds:
        pts = sorted(
            (r["n"], r["time_s"] / b["time_s"], r["peak_extra_mib"])
            for r in rows
            if r["bound"] == bound and r["method"] == "streaming"
            for b in rows
            if b["bound"] == bound and b["method"] == "bare" and b["n"] == r["n"]
        )
        ns = [p[0] for p in pts]
        ax_t.plot(ns, [p[1] for p in pts], marker="o", label=bound)
        ax_m.plot(ns, [p[2] for p in pts], marker="o", label=f"{bound} streamed")
    naive = sorted(
        (r["n"], r["peak_extra_mib"])
        for r in rows
        if r["bound"] == "infonce" and r["method"] == "naive" and r["peak_extra_mib"]
    )
    ax_m.plot([p[0] for p in naive], [p[1] for p in naive], "k--", marker="s", label="naive")
    ax_t.axhline(1.0, color="0.6", lw=1)
    ax_t.set(xscale="log", xlabel="batch size N", ylabel="time / bare products",
             title="time (d = 128)")  # fmt: skip
    ax_m.set(xscale="log", yscale="log", xlabel="batch size N", ylabel="peak extra MiB",
             title="peak memory (d = 128)")  # fmt: skip
    ax_t.legend(fontsize=8)
    ax_m.legend(fontsize=7)
    fig.savefig(path, dpi=110)
    plt.close(fig)


with open(os.path.join(_GEN, "kernel_summary.rst"), "w") as _fh:
    _fh.write(_kernel_summary())
with open(os.path.join(_GEN, "kernel_ranges.rst"), "w") as _fh:
    _fh.write(_kernel_ranges())
_kernel_figure(os.path.join(_GEN, "large_batches.png"))


def _public_bases(app, name, obj, options, bases) -> None:
    """Show only public base classes: a private base is replaced by its own public bases, and
    ``object`` (every class's base) is not shown."""
    out: list = []
    todo = list(bases)
    while todo:
        base = todo.pop(0)
        if base is object or base in out:
            continue
        if getattr(base, "__name__", "").startswith("_"):
            todo[:0] = list(getattr(base, "__bases__", ()))
            continue
        out.append(base)
    bases[:] = out


def _gpu_model_table() -> str:
    """benchmarks/gpu_model.md (``python benchmarks/gpu.py --model``) at N = 65,536 as an RST
    table: the path the cost model picks and its predicted time over the bare products."""
    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "gpu_model.md")
    with open(path) as fh:
        lines = [ln for ln in fh.read().splitlines() if ln.startswith("| ")][1:]
    lines_out = [
        ".. list-table::",
        "   :header-rows: 1",
        "",
        *_row(["loss", "d", "dtype", "path", "predicted time / bare"]),
    ]
    for ln in lines:
        loss, n, d, dtype, path_, ratio = [c.strip() for c in ln.strip("|").split("|")]
        if n == "65536":
            lines_out += _row([loss, d, dtype, path_, ratio + "x"])
    return "\n".join(lines_out) + "\n"


def _gpu_measured_table() -> str:
    """benchmarks/gpu.json (written by ``benchmarks/gpu_check.sh`` on a GPU) as an RST table,
    or a sentence saying how to produce it when none is committed."""
    import json

    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "gpu.json")
    if not os.path.exists(path):
        return (
            "No measured GPU table is committed yet. ``bash benchmarks/gpu_check.sh`` writes "
            "``gpu.json``; copied to ``benchmarks/gpu.json``, it appears here at the next "
            "build.\n"
        )
    with open(path) as fh:
        report = json.load(fh)
    out = [
        f"Measured on {report['device']}, torch {report['torch']}.",
        "",
        ".. list-table::",
        "   :header-rows: 1",
        "",
        *_row(["loss", "N", "d", "dtype", "path", "time / bare", "dense / bare", "peak MiB"]),
    ]
    for r in report["rows"]:
        if "mibounds_s" not in r:
            continue
        dense = r.get("dense_x_bare")
        peak = r.get("mibounds_peak_mib")
        out += _row([
            r["loss"], str(r["n"]), str(r["d"]), r["dtype"], r.get("path", "-"),
            f"{r['mibounds_x_bare']:.2f}x", "-" if dense is None else f"{dense:.2f}x",
            "-" if peak is None else f"{peak:.0f}",
        ])  # fmt: skip
    return "\n".join(out) + "\n"


with open(os.path.join(_GEN, "gpu_model.rst"), "w") as _fh:
    _fh.write(_gpu_model_table())
with open(os.path.join(_GEN, "gpu_measured.rst"), "w") as _fh:
    _fh.write(_gpu_measured_table())


def _accuracy_table() -> str:
    """benchmarks/accuracy.json (``python benchmarks/accuracy.py``) as an RST table."""
    import json

    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "accuracy.json")
    with open(path) as fh:
        rows = json.load(fh)["rows"]
    out = [
        ".. list-table::",
        "   :header-rows: 1",
        "",
        *_row(["loss", "computed by", "largest relative error", "mean relative error"]),
    ]
    for r in rows:
        out += _row([r["loss"], r["impl"], f"{r['max_rel_error']:.2e}",
                     f"{r['mean_rel_error']:.2e}"])  # fmt: skip
    return "\n".join(out) + "\n"


with open(os.path.join(_GEN, "accuracy.rst"), "w") as _fh:
    _fh.write(_accuracy_table())


def _road_table() -> str:
    """The road of each drop-in loss, traced now by ``benchmarks/road.py`` (a property of the
    code, not of the machine)."""
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "road.py")
    spec = importlib.util.spec_from_file_location("_road", path)
    assert spec is not None and spec.loader is not None
    road = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(road)
    out = [
        ".. list-table::",
        "   :header-rows: 1",
        "",
        *_row(["loss", "modules", "stops", "most entries into one module", "back up"]),
    ]
    rows = road.measure()
    for r in rows:
        most = f"{r['most_entries']} (``{r['most_entered']}``)"
        out += _row([f"``{r['loss']}``", str(r["modules"]), str(r["stops"]), most,
                     str(r["back_up"])])  # fmt: skip
    out += ["", "The stops, in order:", ""]
    for r in rows:
        out += [f"* ``{r['loss']}``: " + " → ".join(f"``{m}``" for m in r["road"])]
    return "\n".join(out) + "\n"


def _overhead_table() -> str:
    """benchmarks/overhead.json (``python benchmarks/overhead.py``) as an RST table."""
    import json

    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "overhead.json")
    with open(path) as fh:
        data = json.load(fh)
    out = [
        ".. list-table::",
        "   :header-rows: 1",
        "",
    ]
    out += _row(["loss", "N", "ours (ms)", "OpenCLIP (ms)", "ours / OpenCLIP",
                 "checks off / OpenCLIP", "path", "our kernel (ms)",
                 "operations, ours / OpenCLIP"])  # fmt: skip
    for r in data["rows"]:
        out += _row([r["loss"], str(r["n"]), f"{r['ours_ms']:.2f}", f"{r['peer_ms']:.2f}",
                     f"{r['ratio']:.2f}", f"{r['unchecked_ratio']:.2f}", r["path"],
                     f"{r['kernel_ms']:.2f}", f"{r['ours_ops']} / {r['peer_ops']}"])  # fmt: skip
    return "\n".join(out) + "\n"


with open(os.path.join(_GEN, "road.rst"), "w") as _fh:
    _fh.write(_road_table())
with open(os.path.join(_GEN, "overhead.rst"), "w") as _fh:
    _fh.write(_overhead_table())


def setup(app) -> None:
    app.connect("autodoc-process-bases", _public_bases)


def _validate_table() -> str:
    """docs/_static/results/validate_default.json (the default ``mibounds validate`` run) as
    an RST table: per estimator and stair, the trained estimate (its standard deviation) and
    the same bound with the exact critic at the same batch size."""
    import json
    import math

    path = os.path.join(os.path.dirname(__file__), "_static", "results", "validate_default.json")
    with open(path) as fh:
        record = json.load(fh)
    rows = record["rows"]
    levels = sorted({r["true_mi"] for r in rows})
    names = list(dict.fromkeys(r["estimator"] for r in rows))
    lines = [
        ".. list-table:: trained estimate (standard deviation) / exact critic (standard "
        "deviation), in nats",
        "   :header-rows: 1",
        "",
        "   * - estimator",
        "     - bound",
        *[f"     - true {v:g}" for v in levels],
    ]
    for name in names:
        mine = {r["true_mi"]: r for r in rows if r["estimator"] == name}
        lines += [f"   * - ``{name}``", f"     - {mine[levels[0]]['kind']}"]
        for v in levels:
            r = mine[v]
            cell = f"{r['estimate']:.2f} ({r['std']:.2f})"
            if r["oracle"] is not None and math.isfinite(r["oracle"]):
                cell += f" / {r['oracle']:.2f} ({r['oracle_std']:.2f})"
            lines.append(f"     - {cell}")
    return "\n".join(lines) + "\n"


with open(os.path.join(_GEN, "validate_table.rst"), "w") as _fh:
    _fh.write(_validate_table())


def _infonce_batches_table() -> str:
    """InfoNCE at batch 64 (validate_default.json) beside batch 4096
    (validate_infonce_4096.json): trained estimate and oracle per stair, with log N."""
    import json
    import math

    runs = []
    for name in ("validate_default.json", "validate_infonce_4096.json"):
        with open(os.path.join(os.path.dirname(__file__), "_static", "results", name)) as fh:
            record = json.load(fh)
        rows = {r["true_mi"]: r for r in record["rows"] if r["estimator"] == "infonce"}
        runs.append((record["batch_size"], rows))
    header = ["true MI"]
    for n, _ in runs:
        header += [f"N = {n}: trained (std)", f"N = {n}: oracle (std)"]
    lines = [
        ".. list-table:: InfoNCE at two batch sizes, in nats "
        f"(log {runs[0][0]} = {math.log(runs[0][0]):.2f}, "
        f"log {runs[1][0]} = {math.log(runs[1][0]):.2f})",
        "   :header-rows: 1",
        "",
        *_row(header),
    ]
    for level in sorted(runs[0][1]):
        lines.append(f"   * - {level:g}")
        for _, rows in runs:
            r = rows[level]
            lines.append(f"     - {r['estimate']:.2f} ({r['std']:.2f})")
            lines.append(f"     - {r['oracle']:.2f} ({r['oracle_std']:.2f})")
    return "\n".join(lines) + "\n"


with open(os.path.join(_GEN, "infonce_batches_table.rst"), "w") as _fh:
    _fh.write(_infonce_batches_table())


def _estimate_table(name: str) -> str:
    """benchmarks/<name>.json (``python benchmarks/estimate_mi.py``) as an RST table: per task,
    the true MI, estimate_mi's estimate, absolute error and seconds, and, where the run had
    them, bmi's three estimators and the best of their errors."""
    import json
    import math

    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", f"{name}.json")
    with open(path) as fh:
        rows = json.load(fh)["rows"]
    bmi = ("infonce", "nwj", "mine")
    with_bmi = all("infonce" in r for r in rows)
    seeds = len({r["seed"] for r in rows}) > 1
    head = ["task (bmi v1)", *(["seed"] if seeds else []), "true MI", "estimate_mi"]
    head += ["abs. error", "s"]
    if with_bmi:
        head += ["bmi InfoNCE", "bmi NWJ", "bmi MINE", "best bmi error", "s"]
    lines = [".. list-table::", "   :header-rows: 1", ""]
    lines += _row(head)

    def err(r: dict, k: str) -> float:
        return abs(r[k] - r["truth"]) if math.isfinite(r[k]) else math.inf

    for r in rows:
        ours = err(r, "ours")
        cells = [f"``{r['task']}``", *([str(r["seed"])] if seeds else [])]
        cells += [f"{r['truth']:.3f}", f"{r['ours']:.3f}"]
        if with_bmi:
            best_name = min(bmi, key=lambda k: err(r, k))
            best = err(r, best_name)
            cells += [f"**{ours:.3f}**" if ours < best else f"{ours:.3f}", f"{r['ours_s']:.0f}"]
            cells += [f"{r[k]:.3f}" if math.isfinite(r[k]) else "failed" for k in bmi]
            cells += [f"**{best:.3f}**" if best <= ours else f"{best:.3f}"]
            cells += [f"{r[best_name + '_s']:.0f}"]
        else:
            cells += [f"{ours:.3f}", f"{r['ours_s']:.0f}"]
        lines += _row(cells)
    return "\n".join(lines) + "\n"


for _name in ("estimate_mi", "estimate_mi_seeds12", "estimate_mi_others"):
    with open(os.path.join(_GEN, f"{_name}_table.rst"), "w") as _fh:
        _fh.write(_estimate_table(_name))


def _coverage_table() -> str:
    """benchmarks/estimate_mi_coverage.json (``python benchmarks/estimate_mi_coverage.py``):
    per task of known MI, the estimate, the bound's interval and what it covers."""
    import json

    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "estimate_mi_coverage.json")
    with open(path) as fh:
        rows = json.load(fh)["rows"]
    head = ["task", "true MI", "estimate", "the bound's 95% interval", "contains the MI"]
    lines = [".. list-table::", "   :header-rows: 1", "", *_row([*head, "MI >= low end", "s"])]
    for r in rows:
        cells = [
            r["task"],
            f"{r['truth']:.3f}",
            f"{r['estimate']:.3f}",
            f"{r['low']:.3f} .. {r['high']:.3f}",
            "yes" if r["contains"] else "no",
            "yes" if r["limit_holds"] else "**no**",
            f"{r['seconds']:.0f}",
        ]
        lines += _row(cells)
    contains = sum(r["contains"] for r in rows)
    holds = sum(r["limit_holds"] for r in rows)
    lines += [
        "",
        f"The interval contains the MI on {contains} of {len(rows)} tasks; the MI is at least "
        f"its low end on {holds} of {len(rows)}.",
    ]
    return "\n".join(lines) + "\n"


with open(os.path.join(_GEN, "estimate_mi_coverage_table.rst"), "w") as _fh:
    _fh.write(_coverage_table())


def _heavy_tails_table(group: str) -> str:
    """benchmarks/estimate_mi_heavy.json (``python benchmarks/estimate_mi_heavy.py``): the
    split Student-t tasks of one group, the default against the networks alone."""
    import json

    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "estimate_mi_heavy.json")
    with open(path) as fh:
        rows = [r for r in json.load(fh)["rows"] if r["group"] == group]
    head = ["task", "true MI", "default", "within 0.05 + 5%", "folds keeping the t critic"]
    head += ["networks alone (t_copula=False)", "s (default, networks)"]
    lines = [".. list-table::", "   :header-rows: 1", "", *_row(head)]
    for r in rows:
        cells = [
            r["task"],
            f"{r['truth']:.3f}",
            f"{r['estimate']:.3f}",
            "yes" if r["within"] else "**no**",
            f"{r['t_copula_folds']} of 5",
            f"{r['networks_estimate']:.3f}" + ("" if r["networks_within"] else " (no)"),
            f"{r['seconds']:.0f}, {r['networks_seconds']:.0f}",
        ]
        lines += _row(cells)
    n = len(rows)
    ok = sum(r["within"] for r in rows)
    ok_plain = sum(r["networks_within"] for r in rows)
    mae = sum(abs(r["estimate"] - r["truth"]) for r in rows) / n
    mae_plain = sum(abs(r["networks_estimate"] - r["truth"]) for r in rows) / n
    lines += [
        "",
        f"Within 0.05 + 5% of the MI: {ok} of {n} tasks (networks alone: {ok_plain} of {n}). "
        f"Mean absolute error {mae:.3f} nats (networks alone: {mae_plain:.3f}).",
    ]
    return "\n".join(lines) + "\n"


for _group, _name in (("developed on", "developed"), ("not tuned on", "untuned")):
    with open(os.path.join(_GEN, f"estimate_mi_heavy_{_name}_table.rst"), "w") as _fh:
        _fh.write(_heavy_tails_table(_group))


def _high_dimensions_table() -> str:
    """benchmarks/estimate_mi_coverage_plain.json, _rank.json and estimate_mi_coverage.json
    side by side: a plain network on z-scores (``standardize=True, gaussian_start=False``), on
    normal scores (``standardize="rank", gaussian_start=False``), and the default."""
    import json

    here = os.path.join(os.path.dirname(__file__), "..", "benchmarks")
    runs = []
    for name in ("estimate_mi_coverage_plain", "estimate_mi_coverage_rank", "estimate_mi_coverage"):
        with open(os.path.join(here, f"{name}.json")) as fh:
            runs.append({r["task"]: r for r in json.load(fh)["rows"]})
    head = ["task", "true MI", "plain network, z-scores", "plain network, normal scores"]
    head += ["default", "s (plain, default)"]
    lines = [".. list-table::", "   :header-rows: 1", "", *_row(head)]
    errors: list[list[float]] = [[], [], []]
    for name, row in runs[-1].items():
        found = [run[name] for run in runs]
        errs = [abs(r["estimate"] - r["truth"]) for r in found]
        for k, e in enumerate(errs):
            errors[k].append(e)
        cells = [name, f"{row['truth']:.3f}"]
        cells += [
            f"**{r['estimate']:.3f}**" if e == min(errs) else f"{r['estimate']:.3f}"
            for r, e in zip(found, errs, strict=True)
        ]
        cells += [f"{found[0]['seconds']:.0f}, {row['seconds']:.0f}"]
        lines += _row(cells)
    n = len(errors[-1])
    wins = sum(d < min(a, b) for a, b, d in zip(*errors, strict=True))
    mae = [sum(e) / n for e in errors]
    lines += [
        "",
        f"Mean absolute error over the {n} tasks: {mae[0]:.3f} nats (plain network, z-scores), "
        f"{mae[1]:.3f} (normal scores), {mae[2]:.3f} (default); the default has the smallest "
        f"error of the three on {wins} tasks.",
    ]
    return "\n".join(lines) + "\n"


with open(os.path.join(_GEN, "estimate_mi_high_dimensions_table.rst"), "w") as _fh:
    _fh.write(_high_dimensions_table())
