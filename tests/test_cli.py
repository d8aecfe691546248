"""The console script."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

import mibounds
from mibounds.cli import main


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"mibounds {mibounds.__version__}"


def test_divergences_table(capsys):
    assert main(["divergences"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["name", "aliases", "f(u)", "conjugate", "domain"]
    for d in mibounds.list_divergences():
        row = next(line for line in lines if line.startswith(d.name + " "))
        assert str(d.conjugate_domain) in row
    assert "(-inf, log 2)" in out and "[-0.5, 0.5]" in out


def test_console_script_runs():
    out = subprocess.run(
        [sys.executable, "-m", "mibounds.cli", "divergences"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "vincze-le-cam" in out


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "usage: mibounds" in capsys.readouterr().out


def test_check_on_the_cpu_passes(capsys):
    from mibounds.cli import main

    assert main(["check", "--device", "cpu", "--sizes", "256"]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out and " 0 failed" in out
    assert "infonce-sym N=256" in out and "autocast" in out and "compiled" in out


def test_check_fails_on_a_wrong_kernel(monkeypatch, capsys):
    from mibounds.cli import main
    from mibounds.kernels import streaming

    right = streaming.row_logsumexp_mean

    def wrong(*args, **kwargs):
        return right(*args, **kwargs) + 1e-3

    monkeypatch.setattr(streaming, "row_logsumexp_mean", wrong)
    assert main(["check", "--device", "cpu", "--sizes", ""]) == 1
    out = capsys.readouterr().out
    assert re.search(r"infonce d=16\s+streaming\s+FAIL", out), out
    assert re.search(r"\n\d+ passed, 4 failed\n", out)
