"""Every example runs end to end in its --quick mode, prints its table and writes its figure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).parents[1] / "examples").glob("[!_]*.py"))


def test_examples_are_found():
    names = {p.stem for p in EXAMPLES}
    assert {
        "factorcl_synthetic",
        "nce_club_gaussian",
        "infocl_simclr_digits",
        "fmicl_digits",
    } <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_quick_run(path, tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    out = tmp_path / "figure.png"
    proc = subprocess.run(
        [sys.executable, str(path), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert out.stat().st_size > 5000
    assert "figure:" in proc.stdout


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_help(path):
    proc = subprocess.run(
        [sys.executable, str(path), "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    for flag in ("--quick", "--device", "--out"):
        assert flag in proc.stdout
