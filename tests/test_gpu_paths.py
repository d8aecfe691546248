"""The dispatch by cost, the cost model's published table and the sweep's half-precision
products, checked without a GPU."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mibounds.kernels import cost, panels, sweep

ROOT = Path(__file__).resolve().parents[1]


def test_the_published_model_table_is_what_the_model_prints():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--model"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (ROOT / "benchmarks" / "gpu_model.md").read_text()


def test_model_counts_products_and_bytes():
    n = d = 4096
    unit = 2.0 * n * n * d
    r = cost.RATES[90]
    t = cost.predict("row_lse_mean", torch.bfloat16, n, n, d, 90, memory_budget=2**40)
    # one-way panels: three products, 18 bytes an entry, one panel
    assert math.isclose(t["panels"], 3 * unit / r.half + 18 * n * n / r.memory + r.panel_overhead)
    assert math.isclose(t["bare"], 4 * unit / r.half)
    t = cost.predict("sym_lse_mean", torch.bfloat16, n, n, d, 90, memory_budget=2**40)
    assert math.isclose(
        t["panels"], 4 * unit / r.half + 22 * n * n / r.memory + 2 * r.panel_overhead
    )
    # fused symmetric at d = 128 on sm_90: 2 statistics + 2 x (1 + 1) products
    t = cost.predict("sym_lse_mean", torch.bfloat16, n, n, 128, 90)
    assert math.isclose(t["fused"], 6 * 2.0 * n * n * 128 / (r.half * r.fused_efficiency))
    # without out_dtype products, half-precision panels run at the float32 rate
    slow = cost.predict("sym_lse_mean", torch.bfloat16, n, n, d, 90, half_products=False)
    fast = cost.predict("sym_lse_mean", torch.bfloat16, n, n, d, 90)
    assert slow["panels"] > 5 * fast["panels"]


def test_choose_path_by_cost_forced_and_uncovered(monkeypatch):
    monkeypatch.delenv("MIBOUNDS_PATH", raising=False)
    cpu = torch.device("cpu")
    assert cost.choose_path("sym_lse_mean", cpu, torch.float32, 8, 8, 4, False) == "sweep"
    assert cost.choose_path("sym_lse_mean", cpu, torch.float32, 8, 8, 4, True) == "fused"
    cost.set_path("panels")
    try:
        assert cost.choose_path("row_lse_mean", cpu, torch.float32, 8, 8, 4, True) == "panels"
        assert cost.choose_path("row_lse_mean", cpu, torch.float32, 8, 8, 4, False) == "sweep"
    finally:
        cost.set_path(None)
    monkeypatch.setenv("MIBOUNDS_PATH", "sweep")
    assert cost.choose_path("row_lse_mean", cpu, torch.float32, 8, 8, 4, True) == "sweep"
    # on a CUDA device the cheaper predicted path: small d fused, large d on panels
    monkeypatch.delenv("MIBOUNDS_PATH")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(cost, "out_dtype_products", lambda device: True)
    gpu = torch.device("cuda")
    assert cost.choose_path("sym_lse_mean", gpu, torch.bfloat16, 65536, 65536, 64, True) == (
        "fused"
    )
    assert cost.choose_path("sym_lse_mean", gpu, torch.bfloat16, 65536, 65536, 512, True) == (
        "panels"
    )


def test_bad_path_names_are_refused(monkeypatch):
    with pytest.raises(ValueError, match=r"path must be one of .* got 'cublas'"):
        cost.set_path("cublas")
    monkeypatch.setenv("MIBOUNDS_PATH", "triton")
    with pytest.raises(ValueError, match="MIBOUNDS_PATH must be one of .* got 'triton'"):
        cost.get_path()


@pytest.mark.parametrize("sim", [0, 1])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_sweep_multiplies_half_features_as_they_are(monkeypatch, sim, dtype):
    """The sweep's half-precision products (CUDA's ``out_dtype`` path; on the CPU the same
    code with float32 copies): values and gradients as the float32-operand sweep, to the
    rounding of ``G`` to the features' dtype."""
    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(2, 50, 16, generator=g), dim=-1).to(dtype)
    y = F.normalize(torch.randn(2, 50, 16, generator=g), dim=-1).to(dtype)
    args = (x, y, torch.tensor(0.3), torch.tensor(-0.5), sim, None, None, 0, 0, 50, None, None,
            False, True)  # fmt: skip
    want = sweep.sym_lse_mean_sweep(*args)
    calls = []

    def half(a, b):
        calls.append(1)
        return True

    monkeypatch.setattr(panels, "half_operands", half)
    got = sweep.sym_lse_mean_sweep(*args)
    assert calls
    for a, b in zip(got, want, strict=True):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-3)


def test_half_products_need_cuda():
    assert not panels.out_dtype_products(torch.device("cpu"))
    a = torch.ones(1, 2, 3, dtype=torch.bfloat16)
    out = panels.product(a, a.transpose(1, 2))
    assert out.dtype == torch.float32 and torch.equal(out, torch.full((1, 2, 2), 3.0))
    assert not panels.half_operands(a, a)
