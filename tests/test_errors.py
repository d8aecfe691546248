"""Bad input gets a clear error naming the argument and what was expected and given."""

from __future__ import annotations

import math

import pytest
import torch

import mibounds
from mibounds.nn import FMI, MINE, SMILE, InfoNCE, Interpolated, SeparableCritic

SCORE_FNS = [
    mibounds.infonce,
    mibounds.nwj,
    mibounds.tuba,
    mibounds.dv,
    lambda s: mibounds.mine(s)[0],
    mibounds.js,
    mibounds.smile,
    mibounds.interpolated,
    mibounds.fmi,
]


@pytest.mark.parametrize("fn", SCORE_FNS)
def test_more_rows_than_columns(fn):
    with pytest.raises(ValueError, match=r"scores must be .*got shape \(4, 3\)"):
        fn(torch.randn(4, 3))


@pytest.mark.parametrize("fn", SCORE_FNS)
def test_one_by_one_scores(fn):
    with pytest.raises(ValueError, match=r"scores needs N >= 2 .* got shape \(1, 1\)"):
        fn(torch.randn(1, 1))


@pytest.mark.parametrize("fn", SCORE_FNS)
def test_vector_scores(fn):
    with pytest.raises(ValueError, match=r"at least 2 dimension\(s\), got shape \(4,\)"):
        fn(torch.randn(4))


@pytest.mark.parametrize("fn", SCORE_FNS)
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_integer_scores(fn, dtype):
    with pytest.raises(TypeError, match=f"scores must have a floating dtype.*got {dtype}"):
        fn(torch.ones(3, 3, dtype=dtype))


@pytest.mark.parametrize("fn", SCORE_FNS)
def test_not_a_tensor(fn):
    with pytest.raises(TypeError, match="scores must be a torch.Tensor, got list"):
        fn([[1.0, 0.0], [0.0, 1.0]])


@pytest.mark.parametrize("fn", SCORE_FNS)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_inf_scores(fn, bad):
    s = torch.randn(3, 3)
    s[1, 2] = bad
    with pytest.raises(ValueError, match="scores must be finite"):
        fn(s)


def test_value_checks_can_be_switched_off():
    s = torch.randn(3, 3)
    s[0, 0] = math.nan
    mibounds.set_validate_args(False)
    try:
        assert torch.isnan(mibounds.infonce(s))
    finally:
        mibounds.set_validate_args(True)
    with pytest.raises(TypeError, match="value must be a bool"):
        mibounds.set_validate_args(1)  # type: ignore[arg-type]


def test_mismatched_batch_sizes():
    with pytest.raises(ValueError, match=r"M >= N .* got x \(5, 3\) and y \(4, 3\)"):
        mibounds.SeparableScores(torch.randn(5, 3), torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"same feature dimension .* x \(4, 3\) and y \(4, 2\)"):
        mibounds.SeparableScores(torch.randn(4, 3), torch.randn(4, 2))
    critic = SeparableCritic(torch.nn.Linear(3, 2))
    with pytest.raises(ValueError, match="M >= N"):
        InfoNCE(critic)(torch.randn(6, 3), torch.randn(4, 3))
    from mibounds.nn import ConcatCritic

    with pytest.raises(ValueError, match="x and y must agree"):
        ConcatCritic(3, 3)(torch.randn(4, 3), torch.randn(6, 3))


def test_separable_scores_bad_args():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="similarity must be one of"):
        mibounds.SeparableScores(x, x, similarity="l2")
    with pytest.raises(ValueError, match="temperature must be > 0, got -1"):
        mibounds.SeparableScores(x, x, temperature=-1)
    with pytest.raises(ValueError, match=r"temperature must be a scalar tensor, got shape \(2,\)"):
        mibounds.SeparableScores(x, x, temperature=torch.ones(2))
    with pytest.raises(TypeError, match="x must have a floating dtype"):
        mibounds.SeparableScores(x.long(), x)
    with pytest.raises(ValueError, match="x must be finite"):
        mibounds.SeparableScores(x.clone().fill_(math.nan), x)


@pytest.mark.parametrize("reduction", ["avg", "MEAN", None])
def test_unknown_reduction(reduction):
    with pytest.raises(ValueError, match=r"reduction must be one of \('mean', 'sum', 'none'\)"):
        mibounds.infonce(torch.randn(3, 3), reduction=reduction)
    with pytest.raises(ValueError, match="reduction must be one of"):
        InfoNCE(reduction=reduction)


def test_unknown_divergence():
    with pytest.raises(KeyError, match="unknown divergence 'kld'; known divergences: gan"):
        mibounds.fmi(torch.randn(3, 3), "kld")
    with pytest.raises(KeyError, match="known divergences"):
        FMI(divergence="kld")


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5])
def test_alpha_outside_unit_interval(alpha):
    with pytest.raises(ValueError, match=r"alpha must lie in the open interval \(0, 1\)"):
        mibounds.interpolated(torch.randn(3, 3), alpha=alpha)
    with pytest.raises(ValueError, match="alpha must lie in the open interval"):
        Interpolated(alpha=alpha)
    with pytest.raises(TypeError, match="alpha must be a real number, got str"):
        mibounds.interpolated(torch.randn(3, 3), alpha="0.5")  # type: ignore[arg-type]


@pytest.mark.parametrize("clip", [-1.0, 0.0])
def test_non_positive_clip(clip):
    with pytest.raises(ValueError, match="clip must be > 0"):
        mibounds.smile(torch.randn(3, 3), clip=clip)
    with pytest.raises(ValueError, match="clip must be > 0"):
        SMILE(clip=clip)


@pytest.mark.parametrize("decay", [0.0, 1.0, 2.0])
def test_mine_decay(decay):
    with pytest.raises(ValueError, match=r"decay must lie in the open interval \(0, 1\)"):
        mibounds.mine(torch.randn(3, 3), decay=decay)
    with pytest.raises(ValueError, match="decay must lie"):
        MINE(decay=decay)


def test_baseline_shape():
    msg = r"log_baseline must broadcast to .* \(3,\), got shape \(4,\)"
    with pytest.raises(ValueError, match=msg):
        mibounds.tuba(torch.randn(3, 3), torch.zeros(4))
    with pytest.raises(ValueError, match=r"log_ema must broadcast to the batch shape"):
        mibounds.mine(torch.randn(2, 3, 3), torch.zeros(3))
