"""Every example runs end to end in its --quick mode, prints its table and writes its figure."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).parents[1] / "examples").glob("[!_]*.py"))


def _limit() -> float | None:
    """No wall-clock limit by default (the quick runs are bounded by their steps, and a loaded
    machine must not fail them); ``MIBOUNDS_TEST_TIMEOUT=SECONDS`` sets one, e.g. to catch a
    hang in a long unattended run."""
    value = os.environ.get("MIBOUNDS_TEST_TIMEOUT")
    return float(value) if value else None


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
        timeout=_limit(),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert out.stat().st_size > 5000
    assert "figure:" in proc.stdout


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_help(path):
    proc = subprocess.run(
        [sys.executable, str(path), "--help"], capture_output=True, text=True, timeout=_limit()
    )
    assert proc.returncode == 0, proc.stderr
    for flag in ("--quick", "--device", "--out"):
        assert flag in proc.stdout
