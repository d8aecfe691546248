"""The package's structure: imports run one way (no cycles) and no bound calls a kernel."""

from __future__ import annotations

import ast
from pathlib import Path

import torch

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


def test_scores_of_a_loss_set_every_field_of_the_dataclass():
    from dataclasses import fields

    from mibounds.scores import SeparableScores

    z = torch.randn(4, 3)
    built = [
        SeparableScores._of_loss(2, {"u": z, "v": z}, "dot", logit_scale=("s", 10.0), small=s)
        for s in (None, "cross_entropy", "sigmoid")
    ]
    names = {f.name for f in fields(SeparableScores)}
    for s in built:
        assert set(vars(s)) == names


def test_the_road_benchmark_traces_a_loss_to_its_kernel():
    import importlib.util

    path = ROOT.parent / "benchmarks" / "road.py"
    spec = importlib.util.spec_from_file_location("road", path)
    assert spec is not None and spec.loader is not None
    road = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(road)
    rows = {r["loss"]: r for r in road.measure()}
    assert set(rows) == {"CLIPLoss", "SigLIPLoss", "NTXentLoss", "SupConLoss", "MoCoLoss"}
    for r in rows.values():
        stops = r["road"]
        assert stops[0] == "contrastive" and stops[-1] == "contrastive"
        assert "kernels" in stops and "reductions" in stops
        assert r["stops"] == len(stops) and r["modules"] == len(set(stops))
        # the road of a drop-in loss: at most six modules, none entered more than three times
        assert r["modules"] <= 6 and r["most_entries"] <= 3, r


def _benchmark(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT.parent / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_overhead_benchmark_times_ours_against_the_peer():
    overhead = _benchmark("overhead")
    _, losses = overhead.pairs()
    rows = overhead.measure(8, 4, 1, losses)
    assert [r["loss"] for r in rows] == ["clip", "siglip"]
    assert all(r["ours_ms"] > 0 and r["peer_ms"] > 0 and r["kernel_ms"] > 0 for r in rows)


def test_the_overhead_benchmark_counts_the_operations_a_call_dispatches():
    overhead = _benchmark("overhead")
    u = torch.randn(5, 3, requires_grad=True)
    v = torch.randn(5, 3, requires_grad=True)
    # forward: product, log-softmax, sum; backward: the seed, the sum's, the log-softmax's
    # and the two products' (transposes and the diagonal are views)
    n = overhead.count_ops(lambda u, v: torch.log_softmax(u @ v.T, -1).diagonal().sum(), (u, v))
    assert n == 8
    # views are not counted: a transpose and a reshape add nothing
    m = overhead.count_ops(
        lambda u, v: torch.log_softmax(u @ v.T.reshape(3, 5), -1).diagonal().sum(), (u, v)
    )
    assert m == n


def test_the_overhead_benchmark_times_the_kernel_call_the_loss_makes(monkeypatch):
    from mibounds import contrastive
    from mibounds.kernels import small

    overhead = _benchmark("overhead")
    g = torch.Generator().manual_seed(0)
    u, v = torch.nn.functional.normalize(torch.randn(2, 6, 3, generator=g), dim=-1)
    scale, bias = overhead.SCALE, overhead.BIAS
    # a batch small enough for the dense path: its kernel call is the loss, whole
    for name, loss in (("clip", contrastive.CLIPLoss()), ("siglip", contrastive.SigLIPLoss())):
        kernel, (x, y) = overhead.kernel_call(name, u, v)
        assert torch.allclose(kernel(x, y), loss(u, v, scale, bias), atol=1e-5)
    # a streamed batch (the dense path's limit set to 0 here)
    monkeypatch.setattr(small, "MAX_ENTRIES", {"cross_entropy": 0, "sigmoid": 0})
    # CLIP's loss is the kernel's value: each direction's log-sum-exp less its positive
    kernel, (x, y) = overhead.kernel_call("clip", u, v)
    assert torch.allclose(kernel(x, y), contrastive.CLIPLoss()(u, v, scale), atol=1e-5)
    # SigLIP's loss is the positives' term plus (N - 1) times the kernel's mean over negatives
    kernel, (x, y) = overhead.kernel_call("siglip", u, v)
    positives = torch.nn.functional.softplus(-((u * v).sum(-1) * scale + bias)).mean()
    whole = contrastive.SigLIPLoss()(u, v, scale, bias)
    assert torch.allclose(positives + 5 * kernel(x, y), whole, atol=1e-5)


def test_plain_dense_peers_of_the_overhead_benchmark_are_the_losses():
    from tests import reference

    overhead = _benchmark("overhead")
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(2, 6, 3, generator=g, dtype=torch.float64)
    scale, bias = torch.tensor(3.0, dtype=torch.float64), torch.tensor(-1.0, dtype=torch.float64)
    expected = reference.openclip_clip_loss(u, v, scale)
    assert torch.allclose(overhead._plain_clip(u, v, scale), expected, rtol=1e-12, atol=0)
    expected = reference.openclip_siglip_loss(u, v, scale, bias)
    assert torch.allclose(overhead._plain_siglip(u, v, scale, bias), expected, rtol=1e-12, atol=0)


def _same_scores(built, checked) -> None:
    """The fields and the carried layout of two SeparableScores agree."""
    for name in ("x", "y", "similarity", "temperature", "gather", "exclude"):
        a, b = getattr(built, name), getattr(checked, name)
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b, name
    for name in ("bias", "labels", "y_labels"):
        a, b = getattr(built, name), getattr(checked, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert a.dtype == b.dtype and torch.equal(a, b), name
    assert built._group is checked._group is None
    assert built._plain == checked._plain
    # counted when rows are weighted by them: labels or exclusions (a bias alone needs none)
    laid_plain = built.labels is None and built.exclude == "none"
    assert (built._counts is None) == laid_plain
    for a, b in zip(built._layout, checked._layout, strict=True):
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
    if built._counts is not None:  # known when the loss built them; the batch's otherwise
        counts = checked._layout.counts(checked.x.shape[0], checked.y.shape[0])
        assert all(torch.equal(a, b) for a, b in zip(built._counts, counts, strict=True))


def test_scores_of_a_loss_are_those_of_the_constructor():
    from mibounds.scores import SeparableScores

    x, y = torch.randn(5, 3), torch.randn(5, 3)
    for bias in (None, 0.5, torch.tensor([[-1.0]])):
        checked = SeparableScores(x, y, "dot", 1 / 10.0, bias=bias)
        built = SeparableScores._of_loss(
            2, {"image_features": x, "text_features": y}, "dot",
            logit_scale=("logit_scale", 10.0), logit_bias=("logit_bias", bias),
        )  # fmt: skip
        _same_scores(built, checked)
        assert built._counts is None  # a bias alone weighs no row: the batch counts if asked


def test_scores_of_views_and_of_labels_are_those_of_the_constructor():
    from mibounds.scores import SeparableScores

    a, b = torch.randn(3, 4), torch.randn(3, 4)
    z = torch.cat([a, b])
    checked = SeparableScores(z, z, "cosine", 0.1, labels=torch.arange(3).repeat(2), exclude="self")
    built = SeparableScores._of_loss(
        1, {"out0": a, "out1": b}, "cosine", temperature=("temperature", 0.1), views=True
    )
    _same_scores(built, checked)
    labels = torch.tensor([0, 1, 2, 0, 1, 2], dtype=torch.int32)
    checked = SeparableScores(z, z, "cosine", 0.1, labels=labels, exclude="self")
    built = SeparableScores._of_loss(
        2, {"embeddings": z}, "cosine", temperature=("temperature", 0.1),
        labels=("labels", labels),
    )  # fmt: skip
    _same_scores(built, checked)
    assert built.labels.dtype == torch.int64


def test_scores_of_a_loss_name_its_arguments():
    import pytest

    from mibounds.scores import SeparableScores

    z = torch.randn(4, 3)
    with pytest.raises(ValueError, match="logit_scale must be finite and > 0"):
        SeparableScores._of_loss(2, {"u": z, "v": z}, "dot", logit_scale=("logit_scale", -1.0))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        SeparableScores._of_loss(
            2, {"z": z}, "cosine", temperature=("temperature", torch.tensor(-1.0)),
            labels=("labels", torch.arange(4)),
        )  # fmt: skip
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        SeparableScores._of_loss(
            2, {"z": z}, "cosine", temperature=("temperature", 0.1),
            labels=("labels", torch.arange(3)),
        )  # fmt: skip
    with pytest.raises(ValueError, match="out0 and out1 must have the same shape"):
        SeparableScores._of_loss(1, {"out0": z, "out1": z[:3]}, "cosine", views=True)


def test_scores_of_a_queue_are_those_of_the_constructor():
    from mibounds.scores import SeparableScores

    q, k, queue = torch.randn(4, 3), torch.randn(4, 3), torch.randn(5, 3, dtype=torch.float64)
    checked = SeparableScores(q, torch.cat([k, queue.float()]), "dot", 0.2, exclude="batch")
    built = SeparableScores._of_loss(
        1, {"query": q, "key": k}, "dot", temperature=("temperature", 0.2), extra=("queue", queue)
    )
    _same_scores(built, checked)


def test_a_learnt_moco_temperature_is_checked_at_every_call():
    import pytest

    from mibounds import contrastive

    t = torch.tensor(0.2, requires_grad=True)
    loss = contrastive.MoCoLoss(t)
    q, k, queue = torch.randn(4, 3), torch.randn(4, 3), torch.randn(5, 3)
    loss(q, k, queue).backward()
    with torch.no_grad():
        t.fill_(-0.1)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        loss(q, k, queue)
