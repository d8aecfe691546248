"""The package's structure: imports run one way (no cycles) and no bound calls a kernel."""

from __future__ import annotations

import ast
from pathlib import Path

import mibounds

ROOT = Path(mibounds.__file__).parent


def _module_graph() -> dict[str, set[str]]:
    """module -> the mibounds modules it imports (at any depth of its code)."""
    files = {
        ".".join(p.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(".__init__"): p
        for p in ROOT.rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    deps.add(full if full in files else node.module)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        # the package itself (for `from mibounds import _checks`) is not a dependency
        graph[name] = {d for d in deps if d in files and d not in (name, "mibounds")}
    return graph


def test_no_import_cycles():
    graph = _module_graph()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in graph[node]:
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path, dep]))
            if dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for module in graph:
        if module not in state:
            visit(module, [module])


def test_bounds_do_not_call_kernels():
    graph = _module_graph()
    for module in ("mibounds.bounds.lower", "mibounds.bounds.upper"):
        assert not any(d.startswith("mibounds.kernels") for d in graph[module]), graph[module]


def test_separable_field_list_matches_the_dataclass():
    from dataclasses import fields

    from mibounds import scores

    names = tuple(f.name for f in fields(scores.SeparableScores))
    assert names == scores._SEPARABLE_FIELDS


def test_the_road_benchmark_traces_a_loss_to_its_kernel():
    import importlib.util

    path = ROOT.parent / "benchmarks" / "road.py"
    spec = importlib.util.spec_from_file_location("road", path)
    assert spec is not None and spec.loader is not None
    road = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(road)
    rows = {r["loss"]: r for r in road.measure()}
    assert set(rows) == {"CLIPLoss", "SigLIPLoss", "NTXentLoss", "SupConLoss"}
    for r in rows.values():
        stops = r["road"]
        assert stops[0] == "contrastive" and stops[-1] == "contrastive"
        assert "kernels" in stops and "reductions" in stops
        assert r["stops"] == len(stops) and r["modules"] == len(set(stops))
