"""Streaming kernels on SeparableScores: agreement with the dense path, gradients, custom ops."""

from __future__ import annotations

import math

import pytest
import torch

import mibounds
from mibounds.kernels import streaming

SIMS = ["dot", "cosine", "gaussian"]

BOUNDS = {
    "infonce": mibounds.infonce,
    "infonce-sym": lambda s: mibounds.infonce(s, symmetric=True),
    "infonce-sum": lambda s: mibounds.infonce(s, reduction="sum"),
    "nwj": mibounds.nwj,
    "tuba": mibounds.tuba,
    "dv": mibounds.dv,
    "mine": lambda s: mibounds.mine(s)[0],
    "js": mibounds.js,
    "smile": mibounds.smile,
    "smile-1": lambda s: mibounds.smile(s, clip=1.0),
    "smile-noclip": lambda s: mibounds.smile(s, clip=None),
    "nce_club": mibounds.nce_club,
    "interpolated": lambda s: mibounds.interpolated(s, alpha=0.3),
    **{
        f"fmi-{d.name}": (lambda d: lambda s: mibounds.fmi(s, d))(d)
        for d in mibounds.list_divergences()
    },
}


@pytest.fixture(params=[None, 4 * 4 * 7 * 37], ids=["one-panel", "panels-of-7"])
def budget(request):
    streaming.set_memory_budget(request.param)
    yield request.param
    streaming.set_memory_budget(None)


def _xy(dtype, lead=(2,), n=37, d=5, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    x = scale * torch.randn(*lead, n, d, generator=g, dtype=torch.float64)
    y = x + torch.randn(*lead, n, d, generator=g, dtype=torch.float64)
    return x.to(dtype), y.to(dtype)


@pytest.mark.parametrize("name", list(BOUNDS))
@pytest.mark.parametrize("sim", SIMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_streaming_equals_dense_value_and_gradient(name, sim, dtype, budget):
    x, y = _xy(dtype)
    x.requires_grad_(True)
    y.requires_grad_(True)
    tau = torch.tensor(0.7, dtype=dtype, requires_grad=True)
    fn = BOUNDS[name]
    sep = mibounds.SeparableScores(x, y, sim, tau)
    got = fn(sep)
    want = fn(sep.dense())
    f32 = dtype == torch.float32
    tol = dict(rtol=1e-5, atol=1e-5) if f32 else dict(rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(got, want, **tol)
    # float32 gradients are summed in another order than the dense path; exponential
    # divergences (Tsallis: terms up to e^42 here) have huge entries, so 3e-4 relative.
    gtol = dict(rtol=3e-4, atol=1e-5) if f32 else tol
    g_got = torch.autograd.grad(got.sum(), (x, y, tau))
    g_want = torch.autograd.grad(want.sum(), (x, y, tau))
    for a, b in zip(g_got, g_want, strict=True):
        torch.testing.assert_close(a, b, **gtol)


@pytest.mark.parametrize(
    "name", ["infonce", "infonce-sym", "nwj", "tuba", "dv", "fmi-js", "nce_club", "interpolated"]
)
@pytest.mark.parametrize("sim", SIMS)
def test_streaming_gradcheck(name, sim):
    streaming.set_memory_budget(4 * 4 * 3 * 7)  # panels of 3 rows for N = 7
    try:
        x, y = _xy(torch.float64, lead=(), n=7, d=3)
        tau = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
        x.requires_grad_(True)
        y.requires_grad_(True)
        fn = BOUNDS[name]
        assert torch.autograd.gradcheck(
            lambda a, b, t: fn(mibounds.SeparableScores(a, b, sim, t)), (x, y, tau)
        )
    finally:
        streaming.set_memory_budget(None)


@pytest.mark.parametrize("sim", SIMS)
def test_streaming_interpolated_with_a_baseline(sim, budget):
    x, y = _xy(torch.float64)
    x.requires_grad_(True)
    b = torch.randn(2, 37, dtype=torch.float64, requires_grad=True)
    sep = mibounds.SeparableScores(x, y, sim, 0.6)
    got = mibounds.interpolated(sep, b, alpha=0.7)
    want = mibounds.interpolated(sep.dense(), b, alpha=0.7)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    for a, c in zip(
        torch.autograd.grad(got.sum(), (x, b)), torch.autograd.grad(want.sum(), (x, b)), strict=True
    ):
        torch.testing.assert_close(a, c, rtol=1e-9, atol=1e-9)


def test_streaming_interpolated_is_exact_when_one_row_dominates_a_column():
    """A column whose maximum dwarfs the rest: its leave-one-out sum must not cancel."""
    x, y = _xy(torch.float64, lead=(), n=9, d=3)
    x = x.clone()
    x[4] = 40.0 * y[2] / y[2].norm() ** 2  # S[4, 2] = 40, far above the rest of column 2
    x.requires_grad_(True)
    sep = mibounds.SeparableScores(x, y, "dot", 1.0)
    got, want = mibounds.interpolated(sep), mibounds.interpolated(sep.dense())
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    (g1,) = torch.autograd.grad(got, x)
    (g2,) = torch.autograd.grad(want, x)
    torch.testing.assert_close(g1, g2, rtol=1e-8, atol=1e-10)


def test_no_grad_computes_statistics_only():
    x, y = _xy(torch.float32)
    with torch.no_grad():
        v = mibounds.infonce(mibounds.SeparableScores(x, y))
    assert not v.requires_grad
    xf, yf = x.reshape(-1, 37, 5), y.reshape(-1, 37, 5)
    plain = (None, 0, None, None, 0, 0, 37)  # bias, sim, labels, offset, exclude, n_paired
    _, dx, dy, *_ = torch.ops.mibounds.row_lse_mean(
        xf, yf, torch.tensor(1.0), *plain, None, False, False
    )
    assert dx.numel() == 0 and dy.numel() == 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_accumulates_in_float32(dtype):
    x, y = _xy(torch.float32)
    sep_h = mibounds.SeparableScores(x.to(dtype), y.to(dtype), "cosine", 0.5)
    sep_f = mibounds.SeparableScores(x.to(dtype).float(), y.to(dtype).float(), "cosine", 0.5)
    for fn in (mibounds.infonce, mibounds.nwj, mibounds.dv, mibounds.js):
        got = fn(sep_h)
        assert got.dtype == dtype
        torch.testing.assert_close(got.float(), fn(sep_f), rtol=2e-2, atol=2e-2)


def test_large_scores_finite():
    x, y = _xy(torch.float32, scale=100.0)
    x.requires_grad_(True)
    sep = mibounds.SeparableScores(x, y, "dot", 0.01)  # scores of order 1e6
    for fn in (mibounds.infonce, mibounds.dv, lambda s: mibounds.infonce(s, symmetric=True)):
        v = fn(sep)
        (g,) = torch.autograd.grad(v.sum(), x)
        assert torch.isfinite(v).all() and torch.isfinite(g).all()


PLAIN = (None, None, 0, 0, 9)  # labels, column labels, offset, exclude, n_paired


@pytest.mark.parametrize(
    ("op", "extra"),
    [
        ("row_lse_mean", (None, False, True)),
        ("row_lse_mean", (None, True, True)),
        ("sym_lse_mean", (None, None, False, True)),
        ("sym_lse_mean", (None, None, True, True)),
        ("offdiag_lme", (None, True)),
        ("offdiag_means", (None, 0, 1, -1.0, 0.0, False, True, True)),
        ("offdiag_means", (None, 2, 1, 0.0, 2.0, False, True, False)),
    ],
)
@pytest.mark.parametrize("sim_id", [0, 1])
def test_opcheck(op, extra, sim_id):
    x, y = _xy(torch.float64, lead=(2,), n=9, d=3)
    x.requires_grad_(True)
    y.requires_grad_(True)
    tau = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)
    args = (x, y, tau, None, sim_id, *PLAIN, *extra)
    torch.library.opcheck(getattr(torch.ops.mibounds, op).default, args)


@pytest.mark.parametrize(
    ("op", "extra"),
    [
        ("row_lse_mean", (None, False, True)),
        ("offdiag_lme", (None, True)),
        ("offdiag_means", (None, 0, 1, 0.0, 0.0, False, True, True)),
    ],
)
def test_opcheck_rectangular(op, extra):
    """One rank's rows against the global columns: 4 rows, 9 columns, positives from column 3."""
    x, y = _xy(torch.float64, lead=(2,), n=9, d=3)
    x = x[:, :4].detach().requires_grad_(True)
    y.requires_grad_(True)
    tau = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)
    pairing = (None, None, 3, 0, 9)
    args = (x, y, tau, None, 1, *pairing, *extra)
    torch.library.opcheck(getattr(torch.ops.mibounds, op).default, args)


@pytest.mark.parametrize(
    ("op", "extra"),
    [
        ("row_lse_mean", (False, True)),
        ("row_lse_mean", (True, True)),
        ("sym_lse_mean", (False, True)),
        ("sym_lse_mean", (True, True)),
        ("offdiag_lme", (True,)),
        ("offdiag_means", (0, 1, 0.0, 0.0, False, True, True)),
        ("offdiag_means", (-1, 4, 0.0, 0.0, True, True, True)),
    ],
)
@pytest.mark.parametrize("sim_id", [0, 1])
def test_opcheck_labels_weights_bias(op, extra, sim_id):
    """Labels with a self exclusion, per-row (and per-column) weights and a learnable bias."""
    x, y = _xy(torch.float64, lead=(2,), n=9, d=3)
    x.requires_grad_(True)
    y.requires_grad_(True)
    tau = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-0.3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 3, 2, 0])
    weights = torch.rand(9, dtype=torch.float64)
    n_weights = 2 if op == "sym_lse_mean" else 1
    args = (x, y, tau, bias, sim_id, labels, labels, 0, 1, 9, *[weights] * n_weights, *extra)
    torch.library.opcheck(getattr(torch.ops.mibounds, op).default, args)


def test_rectangular_offset_matches_dense():
    x, y = _xy(torch.float64, lead=(), n=9, d=3)
    xl = x[3:7]
    s = (xl @ y.mT) / 0.7
    mask = torch.zeros_like(s, dtype=torch.bool)
    mask[torch.arange(4), torch.arange(4) + 3] = True
    off = s[~mask]
    lme = streaming.offdiag_logmeanexp(xl, y, 0.7, "dot", offset=3)
    torch.testing.assert_close(lme, torch.logsumexp(off, 0) - math.log(off.numel()))
    _, sp = streaming.offdiag_means(xl, y, 0.7, "dot", "softplus", offset=3)
    torch.testing.assert_close(sp, torch.nn.functional.softplus(off).mean())
    lse = streaming.row_logsumexp_mean(xl, y, 0.7, "dot")
    torch.testing.assert_close(lse, torch.logsumexp(s, -1).mean())


def test_opcheck_interpolated():
    x, y = _xy(torch.float64, lead=(2,), n=9, d=3)
    x.requires_grad_(True)
    b = torch.randn(2, 9, dtype=torch.float64, requires_grad=True)
    tau = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)
    for sim in (0, 1):
        torch.library.opcheck(
            torch.ops.mibounds.interpolated_terms.default, (x, y, tau, b, sim, 0.4, True)
        )


def test_memory_budget_setting():
    streaming.set_memory_budget(1024)
    assert streaming.get_memory_budget() == 1024
    assert streaming.panel_rows(10_000) == 1
    streaming.set_memory_budget(None)
    assert streaming.get_memory_budget() == streaming.DEFAULT_MEMORY_BUDGET
    assert streaming.panel_rows(16384) == 128
    with pytest.raises(ValueError, match="nbytes must be a positive int"):
        streaming.set_memory_budget(0)


@pytest.mark.slow
def test_compiled_panel_backend_matches_eager():
    x, y = _xy(torch.float32, n=40)
    x.requires_grad_(True)
    sep = mibounds.SeparableScores(x, y, "cosine", 0.3)
    fns = (
        mibounds.infonce,
        lambda s: mibounds.infonce(s, symmetric=True),
        mibounds.nwj,
        mibounds.dv,
        mibounds.js,
    )
    want = [fn(sep) for fn in fns]
    want_g = [torch.autograd.grad(v.sum(), x)[0] for v in want]
    streaming.set_backend("compiled")
    try:
        for n in (40, 23):  # a second panel shape: dynamic, no failure
            xs = x[:n].detach().requires_grad_(True)
            got = mibounds.infonce(mibounds.SeparableScores(xs, y[:n], "gaussian", 0.3))
            torch.autograd.grad(got.sum(), xs)
        for fn, w, wg in zip(fns, want, want_g, strict=True):
            v = fn(sep)
            torch.testing.assert_close(v, w, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(torch.autograd.grad(v.sum(), x)[0], wg, rtol=1e-4, atol=1e-5)
    finally:
        streaming.set_backend("eager")
    with pytest.raises(ValueError, match="backend must be 'eager' or 'compiled'"):
        streaming.set_backend("triton")


def test_float_bias_keeps_float64_precision_and_float32_scores():
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    s = mibounds.SeparableScores(x, y, bias=0.1)
    torch.testing.assert_close(s.dense(), x @ y.T + 0.1, rtol=0, atol=1e-15)
    lazy = mibounds.infonce(s)
    torch.testing.assert_close(lazy, mibounds.infonce(x @ y.T + 0.1), rtol=1e-14, atol=0)
    s32 = mibounds.SeparableScores(x.float(), y.float(), bias=0.1)
    assert s32.dense().dtype == torch.float32 and mibounds.infonce(s32).dtype == torch.float32


@pytest.mark.parametrize("labels", [False, True])
def test_log_sum_exp_less_the_positives(labels):
    """``minus_positives``: each row's (and column's) log-sum-exp less the mean score of its
    positives, against the dense formula; the gradient stays the log-sum-exp's."""
    from mibounds.pairing import PairLayout

    x, y = _xy(torch.float64, lead=(), n=9, d=3)
    s = x @ y.T / 0.3
    lab = torch.tensor([0, 1, 0, 2, 1, 0, 3, 2, 0])
    if labels:
        layout = PairLayout(lab, lab, 0, 1, 9)
        cand = ~torch.eye(9, dtype=torch.bool)
        pos = (lab[:, None] == lab[None, :]) & cand
    else:
        layout, cand, pos = None, torch.ones(9, 9, dtype=torch.bool), torch.eye(9, dtype=torch.bool)
    w = torch.rand(9, dtype=torch.float64)
    lse = torch.logsumexp(s.masked_fill(~cand, -math.inf), -1)
    mean_pos = (s * pos).sum(-1) / pos.sum(-1).clamp_min(1)
    row = torch.where(pos.any(-1), lse - mean_pos, lse)
    got = streaming.row_logsumexp_mean(x, y, 0.3, "dot", layout=layout, weight=w,
                                       minus_positives=True)  # fmt: skip
    torch.testing.assert_close(got, (w * row).sum())
    col_lse = torch.logsumexp(s.masked_fill(~cand, -math.inf), 0)
    col_pos = (s * pos).sum(0) / pos.sum(0).clamp_min(1)
    col = torch.where(pos.any(0), col_lse - col_pos, col_lse)
    v = torch.rand(9, dtype=torch.float64)
    got = streaming.symmetric_logsumexp_mean(
        x, y, 0.3, "dot", layout=layout, row_weight=w, col_weight=v, minus_positives=True
    )
    torch.testing.assert_close(got, (w * row).sum() + (v * col).sum())
    # the gradient is the log-sum-exp's
    xg = x.clone().requires_grad_(True)
    a = streaming.row_logsumexp_mean(xg, y, 0.3, "dot", layout=layout, minus_positives=True)
    b = streaming.row_logsumexp_mean(xg, y, 0.3, "dot", layout=layout)
    torch.testing.assert_close(torch.autograd.grad(a, xg)[0], torch.autograd.grad(b, xg)[0])
