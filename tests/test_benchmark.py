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
