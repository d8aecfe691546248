"""Extreme scores: no NaN in any value or gradient for finite inputs.

The rule (docs/conventions.rst, "Extreme scores"): a bound whose terms overflow is +-inf (a lower
bound whose infinite terms would cancel is -inf); the derivative with respect to a score that
overflowed is 0, on the dense and the streamed path alike; streamed feature gradients that are
beyond the dtype's range are +-inf; scores ``sim(x, y) / temperature`` that themselves overflow
are not finite input and raise a ``ValueError`` naming the temperature.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mibounds
from mibounds import SeparableScores, contrastive

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
FDIVS = [d.name for d in mibounds.list_divergences()] + ["tsallis-0.5", "tsallis-3"]


def _fdiv(name):
    if name.startswith("tsallis-"):
        div = mibounds.divergences.tsallis(float(name.split("-")[1]))
        return lambda s: mibounds.fmi(s, div)
    return lambda s: mibounds.fmi(s, name)


def _first(out):
    return out[0] if isinstance(out, tuple) else out


#: every bound that reduces a score matrix (dense or SeparableScores)
BOUNDS = {
    "infonce": mibounds.infonce,
    "infonce-symmetric": lambda s: mibounds.infonce(s, symmetric=True),
    "nwj": mibounds.nwj,
    "tuba": mibounds.tuba,
    "js": mibounds.js,
    "smile": mibounds.smile,
    "smile-noclip": lambda s: mibounds.smile(s, clip=None),
    "dv": mibounds.dv,
    "mine": lambda s: _first(mibounds.mine(s)),
    "interpolated": mibounds.interpolated,
    "nce_club": mibounds.nce_club,
    "l1out": mibounds.l1out,
    **{f"fmi-{name}": _fdiv(name) for name in FDIVS},
}
#: the bounds the streamed path reduces without a dense matrix
STREAMED = [b for b in BOUNDS if b not in ("l1out",)]


def _magnitudes(dtype):
    top = 30.0 if dtype != torch.float16 else math.log10(6e4)
    return st.floats(-3.0, top).map(lambda e: 10.0**e)


@st.composite
def extreme_scores(draw, dtype):
    n = draw(st.integers(2, 5))
    mags = draw(st.lists(_magnitudes(dtype), min_size=n * n, max_size=n * n))
    signs = draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=n * n, max_size=n * n))
    values = torch.tensor([m * s for m, s in zip(mags, signs, strict=True)], dtype=torch.float64)
    return values.reshape(n, n).to(dtype)


def _assert_no_nan(name, t):
    assert not bool(torch.isnan(t).any()), f"{name} has NaN: {t}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bound", list(BOUNDS))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_dense_extreme_scores_never_nan(bound, dtype, data):
    s = data.draw(extreme_scores(dtype)).requires_grad_(True)
    value = BOUNDS[bound](s)
    _assert_no_nan("value", value)
    value.backward()
    _assert_no_nan("score gradient", s.grad)


@st.composite
def separable_inputs(draw, dtype):
    n = draw(st.integers(2, 5))
    d = draw(st.integers(1, 3))
    coords = st.floats(-10.0, 10.0, allow_subnormal=False)
    x = torch.tensor(draw(st.lists(coords, min_size=n * d, max_size=n * d))).reshape(n, d)
    y = torch.tensor(draw(st.lists(coords, min_size=n * d, max_size=n * d))).reshape(n, d)
    tau = 10.0 ** draw(st.floats(-38.0, 2.0))
    return x.to(dtype), y.to(dtype), tau


def _streamed(bound, x, y, tau):
    x = x.clone().requires_grad_(True)
    y = y.clone().requires_grad_(True)
    t = torch.tensor(tau, requires_grad=True)
    return x, y, t, BOUNDS[bound](SeparableScores(x, y, temperature=t))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bound", STREAMED)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_streamed_extreme_temperatures_never_nan(bound, dtype, data):
    x0, y0, tau = data.draw(separable_inputs(dtype))
    try:
        x, y, t, value = _streamed(bound, x0, y0, tau)
    except ValueError as err:
        # only scores that overflow the accumulation dtype are refused
        assert "temperature" in str(err) and "overflow" in str(err), err
        return
    _assert_no_nan("value", value)
    value.backward()
    for name, grad in (("x", x.grad), ("y", y.grad), ("temperature", t.grad)):
        _assert_no_nan(f"gradient of {name}", grad)


@pytest.mark.parametrize("bound", ["nwj", "tuba", "fmi-kl", "fmi-hellinger", "js", "smile"])
def test_overflow_rule_is_the_same_dense_and_streamed(bound):
    """Scores of about 1e4 (features times 5e3): the exponential terms overflow; the value is
    -inf or finite and the gradients agree between the dense and the streamed path."""
    torch.manual_seed(0)
    x, y = torch.randn(12, 4, dtype=torch.float64), torch.randn(12, 4, dtype=torch.float64)
    y = y * 5e3
    grads = []
    for dense in (True, False):
        xs, ys = x.clone().requires_grad_(True), y.clone().float().requires_grad_(True)
        s = SeparableScores(xs.float(), ys)
        value = BOUNDS[bound](s.dense() if dense else s)
        value.backward()
        grads.append((value.detach(), xs.grad, ys.grad))
    (v_dense, gx_dense, gy_dense), (v_stream, gx_stream, gy_stream) = grads
    assert not torch.isnan(v_stream)
    torch.testing.assert_close(v_stream, v_dense, equal_nan=False)
    torch.testing.assert_close(gx_stream, gx_dense, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gy_stream, gy_dense, rtol=1e-4, atol=1e-6)


def test_overflowing_entries_get_zero_derivative():
    """The documented rule on a case worked by hand: NWJ with one negative at 1000."""
    s = torch.zeros(3, 3, requires_grad=True)
    with torch.no_grad():
        s[0, 1] = 1000.0
    value = mibounds.nwj(s)
    assert value.item() == -math.inf
    value.backward()
    expected = torch.full((3, 3), -math.exp(-1) / 6)
    expected.fill_diagonal_(1 / 3)
    expected[0, 1] = 0.0
    torch.testing.assert_close(s.grad, expected)


def test_cancelling_infinite_terms_give_minus_inf():
    """Neyman chi^2: both terms overflow for a large negative positive score."""
    s = torch.tensor([[-200.0, 0.0], [0.0, -200.0]], requires_grad=True)
    value = mibounds.fmi(s, "neyman")
    assert value.item() == -math.inf
    value.backward()
    _assert_no_nan("score gradient", s.grad)


def test_overflowing_streamed_scores_raise_naming_the_temperature():
    x, y = torch.full((4, 2), 3.0), torch.full((4, 2), 3.0)
    with pytest.raises(ValueError, match=r"temperature.*1e-38.*overflow"):
        mibounds.infonce(SeparableScores(x, y, temperature=1e-38))
    with pytest.raises(ValueError, match="scores must be finite"):
        mibounds.infonce(SeparableScores(x, y, temperature=1e-38).dense())


@pytest.mark.parametrize("temperature", [1.0, 0.5])
@pytest.mark.parametrize("similarity", ["dot", "gaussian"])
def test_scores_that_overflow_the_dtype_itself_raise_at_any_temperature(similarity, temperature):
    """Features whose products overflow float32 at temperature 1 (nothing to fold) are
    refused as at any other temperature, never a NaN; the message says the scores are beyond
    the dtype's range instead of giving a number."""
    g = torch.Generator().manual_seed(0)
    x, y = (torch.randn(8, 4, generator=g) * 1e19 for _ in range(2))
    scores = SeparableScores(x, y, similarity, temperature)
    with pytest.raises(ValueError, match=r"temperature.*beyond torch.float32's range"):
        mibounds.infonce(scores)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "make",
    [
        lambda: lambda x, y: contrastive.CLIPLoss()(x, y, 1.0),
        lambda: lambda x, y: contrastive.SigLIPLoss()(x, y, 10.0, -10.0),
        lambda: contrastive.NTXentLoss(),
    ],
    ids=["clip", "siglip", "ntxent"],
)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scale=st.floats(0.0, 30.0))
def test_contrastive_losses_with_huge_features_never_nan(make, dtype, scale):
    torch.manual_seed(0)
    x = torch.randn(6, 3) * 10.0**scale
    if dtype == torch.float16:
        x = x.clamp(-6e4, 6e4)
    x = x.to(dtype).requires_grad_(True)
    y = torch.randn(6, 3).to(dtype).requires_grad_(True)
    loss = make()(x, y)
    _assert_no_nan("loss", loss)
    loss.backward()
    _assert_no_nan("x gradient", x.grad)
    _assert_no_nan("y gradient", y.grad)
