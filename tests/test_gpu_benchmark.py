"""benchmarks/gpu.py runs anywhere with small sizes, writes its report and prints its table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"


def test_gpu_benchmark_runs_on_the_cpu(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(SCRIPT), "--device", "cpu", "--sizes", "64", "--dims", "8", "24",
           "--dtypes", "float32", "bfloat16", "--json", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert len(rows) == 2 * 2 * 7  # dtypes x dims x losses
    for row in rows:
        assert row["mibounds_s"] > 0 and row["dense_s"] > 0 and row["bare_s"] > 0
        assert "mibounds_error" not in row and "dense_error" not in row
    assert {r["loss"] for r in rows} == {
        "clip",
        "siglip",
        "ntxent",
        "supcon",
        "infonce",
        "nwj",
        "js",
    }
    assert "| loss | N | d | dtype | bare s | dense | mibounds | path | inf-cl |" in proc.stdout
    # the CPU runs the sweep; CLIP's and SigLIP's losses of so small a batch the dense path
    for row in rows:
        assert row["path"] == ("dense" if row["loss"] in ("clip", "siglip") else "sweep"), row


def test_gpu_benchmark_stops_at_its_time_limit(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(SCRIPT), "--device", "cpu", "--sizes", "64", "--dims", "8",
           "--dtypes", "float32", "--time-limit", "0", "--json", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())["rows"]
    assert rows and all(r.get("skipped") == "time limit" for r in rows)


def test_gpu_benchmark_refuses_bad_flags_before_any_work(tmp_path):
    bad = [
        ["--device", "cpu", "--sizes", "1", "--json", str(tmp_path / "a.json")],
        ["--device", "cpu", "--json", str(tmp_path / "missing" / "a.json")],
    ]
    for args in bad:
        proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True)
        assert proc.returncode == 2 and "usage:" in proc.stderr, proc.stderr
