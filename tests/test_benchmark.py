"""The benchmark harness runs and reports ratios (timings are never asserted)."""

from __future__ import annotations

import json

import pytest

from mibounds.benchmark import METHODS, ratio_table, run_benchmarks, run_one
from mibounds.cli import main


@pytest.mark.parametrize("method", [m for m in METHODS if m != "compiled"])
def test_run_one_in_process(method):
    r = run_one("infonce-sym", method, 64, 8, repeats=1)
    assert r.time_s is not None and r.time_s > 0
    assert r.peak_extra_mib is not None and r.peak_extra_mib >= 0


def test_run_benchmarks_subprocess_and_skips():
    results = run_benchmarks(
        ["nwj"], [48], [4], ["bare", "naive", "streaming"], memory_limit_gib=1e-6
    )
    by = {r.method: r for r in results}
    assert by["naive"].note.startswith("skipped")  # dense buffers over the (tiny) limit
    assert by["streaming"].time_s is not None and by["bare"].time_s is not None
    rows = ratio_table(results)
    assert any("x_bare" in row for row in rows if row["method"] == "streaming")


def test_bench_cli(tmp_path, capsys):
    out = tmp_path / "b.json"
    rc = main(
        [
            "bench",
            "--sizes",
            "32",
            "--dims",
            "4",
            "--methods",
            "bare,streaming",
            "--bounds",
            "infonce",
            "--json",
            str(out),
            "--quiet",
        ]
    )
    assert rc == 0
    assert "x bare" in capsys.readouterr().out
    assert {row["method"] for row in json.loads(out.read_text())} == {"bare", "streaming"}
    with pytest.raises(SystemExit) as exc:  # an argparse error naming the flag
        main(["bench", "--bounds", "nope"])
    assert exc.value.code == 2
    assert "argument --bounds: unknown bounds ['nope']" in capsys.readouterr().err


def test_estimate_mi_benchmark_runs_the_coverage_tables(tmp_path, capsys):
    """``benchmarks/estimate_mi.py coverage`` (no bmi needed) writes the coverage JSON the docs
    tables are built from."""
    import runpy
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "estimate_mi.py"
    out = tmp_path / "coverage.json"
    argv = ["estimate_mi.py", "coverage", "--samples", "600", "--tasks",
            "gaussian 5x5, 1 nat", "--max-seconds", "3", "--json", str(out)]  # fmt: skip
    old = sys.argv
    sys.argv = argv
    try:
        with pytest.raises(SystemExit) as stop:
            runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv = old
    assert stop.value.code == 0
    record = json.loads(out.read_text())
    assert record["standardize"] == "auto" and record["gaussian_start"] is True
    (row,) = record["rows"]
    assert row["task"] == "gaussian 5x5, 1 nat" and row["limit_holds"] in (True, False)
    assert 0.0 < row["estimate"] < 1.2
    assert "interval contains the MI" in capsys.readouterr().out
