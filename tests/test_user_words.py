"""Errors in the user's own words: each bad call names the argument the user passed, extreme
scores and pairings without negatives follow one rule, and every bad CLI flag is a usage error
before any work."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import mibounds
from mibounds.cli import main
from mibounds.contrastive import (
    CLIPLoss,
    MemoryQueue,
    MoCoLoss,
    NTXentLoss,
    SigLIPLoss,
    SupConLoss,
)


def _unit(n, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=-1)


# --- extreme scores: a value without NaN, or an error naming the temperature ---------------


@pytest.mark.parametrize("bound", ["infonce", "js", "nwj", "dv", "smile", "tuba"])
@pytest.mark.parametrize("tau", [1e-37, 1e-39])
def test_scores_beyond_the_range_of_a_bounds_sums_are_refused_on_every_path(bound, tau):
    x = _unit(64, 8) * 1.1
    y = F.normalize(x + 0.1 * _unit(64, 8, 1), dim=-1) * 1.1
    s = mibounds.SeparableScores(x, y, temperature=tau)
    fn = getattr(mibounds, bound)
    with pytest.raises(ValueError, match=f"temperature={tau:g}"):
        fn(s)
    if bound in ("infonce", "js", "nwj", "tuba"):  # the per-sample path names it too
        with pytest.raises(ValueError, match=f"temperature={tau:g}"):
            fn(s, reduction="none")


def test_large_finite_scores_give_no_nan_on_any_path():
    x = _unit(64, 8) * 1.1
    y = F.normalize(x + 0.1 * _unit(64, 8, 1), dim=-1) * 1.1
    s = mibounds.SeparableScores(x, y, temperature=1e-34)
    for bound in (mibounds.infonce, mibounds.js, mibounds.nwj, mibounds.dv, mibounds.smile):
        for scores in (s, s.dense()):
            assert not math.isnan(float(bound(scores))), bound.__name__


# --- contrastive losses name their own arguments -------------------------------------------


def test_contrastive_errors_name_the_callers_arguments():
    u, v = _unit(5), _unit(5, seed=1)
    nan = u.clone()
    nan[0, 0] = math.nan
    cases = [
        (lambda: CLIPLoss()(u[:1], v[:1], 10.0), "image_features needs at least 2 samples"),
        (lambda: CLIPLoss()(nan, v, 10.0), "image_features must be finite"),
        (lambda: CLIPLoss()(u, nan, 10.0), "text_features must be finite"),
        (lambda: CLIPLoss()(u, v, 1e-320), "logit_scale=.* is too small"),
        (lambda: CLIPLoss()(u, v, torch.tensor(1e-40)), "logit_scale=.* is too small"),
        (lambda: CLIPLoss()(u, v, math.inf), "logit_scale must be finite and > 0"),
        (lambda: CLIPLoss()(u, v, torch.tensor(math.nan)), "logit_scale must be finite"),
        (lambda: SigLIPLoss()(u, v, 10.0, torch.tensor(math.nan)), "logit_bias must be finite"),
        (lambda: SigLIPLoss()(u, v, 10.0, torch.ones(2)), "logit_bias must be a scalar"),
        (lambda: SigLIPLoss()(u, v, 10.0, math.nan), "logit_bias must be finite"),
        (lambda: MoCoLoss()(u, v, torch.full((7, 4), math.nan)), "queue must be finite"),
        (lambda: MoCoLoss()(u[:1], v[:1], torch.zeros(0, 4)), "query has one sample"),
        (lambda: NTXentLoss()(nan, v), "out0 must be finite"),
        (lambda: SupConLoss()(nan, torch.arange(5)), "embeddings must be finite"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
    with pytest.raises(ValueError, match="keys must be finite"):
        MemoryQueue(8, 4).push(torch.full((2, 4), math.nan))


def test_moco_with_one_query_is_its_cross_entropy():
    q, k, queue = _unit(1), _unit(1, seed=1), _unit(7, seed=2)
    loss = MoCoLoss(0.07)(q, k, queue)
    logits = torch.cat([q @ k.T, q @ queue.T], dim=1) / 0.07
    want = F.cross_entropy(logits, torch.zeros(1, dtype=torch.long))
    torch.testing.assert_close(loss, want, rtol=1e-6, atol=1e-6)


def test_estimate_mi_with_no_features_says_so():
    with pytest.raises(ValueError, match=r"x has no features: shape \(600, 0\)"):
        mibounds.estimate_mi(torch.zeros(600, 0), torch.randn(600, 2))


# --- the CLI: a usage error naming the flag, exit 2, before any work -----------------------


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["validate", "--transform", "nope"], "--transform"),
        (["validate", "--task", "student-t", "--df", "-1"], "--df"),
        (["validate", "--df", "nan"], "--df"),
        (["validate", "--json", "/missing/dir/r.json"], "--json"),
        (["validate", "--out", "fig.txt"], "--out"),
        (["bench", "--json", "/missing/dir/b.json"], "--json"),
        (["bench", "--plot", "/missing/dir/b.png"], "--plot"),
        (["validate", "--seed", "18446744073709551616"], "--seed"),
        (["validate", "--device", "meta"], "--device"),
        (["bench", "--device", "meta"], "--device"),
        (["check", "--device", "meta"], "--device"),
    ],
)
def test_bad_cli_flags_are_usage_errors(argv, flag, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage: mibounds" in err and flag in err and "Traceback" not in err


def test_a_bad_flag_stops_the_command_before_any_work():
    # the console script, as a user runs it: no traceback, exit 2, quick
    code = "import sys; from mibounds.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run(
        [sys.executable, "-c", code, "validate", "--json", "/missing/dir/r.json"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "usage:" in proc.stderr and "Traceback" not in proc.stderr
    assert "mibounds validate:" not in proc.stdout  # the header of a started run
