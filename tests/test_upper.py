"""Upper bounds: against loops, gradients, oracle conditionals, trained staircase, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import mibounds
from mibounds.estimate import run_staircase, staircase_table
from mibounds.nn import (
    CLUB,
    CLUBSample,
    ConcatCritic,
    GaussianConditional,
    L1Out,
    NCEClub,
    SeparableCritic,
    update_variational,
)
from mibounds.tasks import CorrelatedGaussian, staircase
from tests import reference as ref

DTYPES = [torch.float32, torch.float64]


def _gauss(n=6, d=3, dtype=torch.float64, seed=0, lead=()):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(*lead, n, d, generator=g, dtype=torch.float64)
    logvar = 0.5 * torch.randn(*lead, n, d, generator=g, dtype=torch.float64)
    y = mu + torch.randn(*lead, n, d, generator=g, dtype=torch.float64)
    return mu.to(dtype), logvar.to(dtype), y.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_club_equals_quadratic_definition(dtype):
    mu, logvar, y = _gauss(dtype=dtype)
    want = ref.club(mu.double(), logvar.double(), y.double()).to(dtype)
    torch.testing.assert_close(mibounds.club(mu, logvar, y), want)
    # a fixed (scalar) log-variance broadcasts
    lv = torch.tensor(0.3, dtype=dtype)
    torch.testing.assert_close(
        mibounds.club(mu, lv, y), ref.club(mu.double(), lv.double(), y.double()).to(dtype)
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_club_sample_and_l1out_and_nce_club_match_loops(dtype):
    mu, logvar, y = _gauss(dtype=dtype)
    perm = [3, 0, 5, 1, 2, 4]
    got = mibounds.club_sample(mu, logvar, y, permutation=torch.tensor(perm))
    torch.testing.assert_close(
        got, ref.club_sample(mu.double(), logvar.double(), y.double(), perm).to(dtype)
    )
    s = torch.randn(6, 6, dtype=torch.float64).to(dtype)
    torch.testing.assert_close(mibounds.l1out(s), ref.l1out(s.double()).to(dtype))
    torch.testing.assert_close(mibounds.nce_club(s), ref.nce_club(s.double()).to(dtype))


def test_club_sample_random_permutation_reproducible():
    mu, logvar, y = _gauss()
    a = mibounds.club_sample(mu, logvar, y, generator=torch.Generator().manual_seed(3))
    b = mibounds.club_sample(mu, logvar, y, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)


def test_leading_batch_dims():
    mu, logvar, y = _gauss(lead=(2, 3))
    got = mibounds.club(mu, logvar, y)
    assert got.shape == (2, 3)
    torch.testing.assert_close(got[1, 2], mibounds.club(mu[1, 2], logvar[1, 2], y[1, 2]))
    s = torch.randn(2, 5, 5, dtype=torch.float64)
    for fn in (mibounds.l1out, mibounds.nce_club):
        torch.testing.assert_close(fn(s)[1], fn(s[1]))
    assert mibounds.club(mu, logvar, y, reduction="none").shape == (2, 3, 6)


def test_gradcheck():
    mu, logvar, y = (t.requires_grad_(True) for t in _gauss(n=4, d=2))
    assert torch.autograd.gradcheck(mibounds.club, (mu, logvar, y))
    perm = torch.tensor([2, 0, 3, 1])
    assert torch.autograd.gradcheck(
        lambda m, lv, yy: mibounds.club_sample(m, lv, yy, permutation=perm), (mu, logvar, y)
    )
    s = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(mibounds.l1out, (s,))
    assert torch.autograd.gradcheck(mibounds.nce_club, (s,))
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    yy = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    for sim in ("dot", "cosine", "gaussian"):
        assert torch.autograd.gradcheck(
            lambda a, b, sim=sim: mibounds.nce_club(mibounds.SeparableScores(a, b, sim, 0.7)),
            (x, yy),
        )


@pytest.mark.parametrize("sim", ["dot", "cosine", "gaussian"])
def test_nce_club_separable_equals_dense(sim):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(2, 7, 4, generator=g), torch.randn(2, 7, 4, generator=g)
    sep = mibounds.SeparableScores(x, y, sim, 0.5)
    torch.testing.assert_close(mibounds.nce_club(sep), mibounds.nce_club(sep.dense()))
    torch.testing.assert_close(mibounds.l1out(sep), mibounds.l1out(sep.dense()))


def test_variational_upper_bound():
    torch.testing.assert_close(
        mibounds.variational_upper_bound(
            torch.tensor([0.0, -2.0]), torch.tensor([-1.0, -1.0]), reduction="none"
        ),
        torch.tensor([1.0, -1.0]),
    )


# --- oracle conditional ----------------------------------------------------------------------


def _oracle(task, n, reps, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {"club": [], "l1out": [], "vub": [], "vub-wide": [], "nce-club": []}
    for _ in range(reps):
        x, y = task.sample(n, g, dtype=torch.float64)
        mu, var = task.conditional(x)
        logvar = torch.log(var)
        out["club"].append(mibounds.club(mu, logvar, y).item())
        log_q = -0.5 * (
            ((y[None] - mu[:, None]) ** 2) / var[:, None] + logvar[:, None] + math.log(2 * math.pi)
        ).sum(-1)
        out["l1out"].append(mibounds.l1out(log_q).item())
        log_cond = torch.diagonal(log_q)
        log_marg = (-0.5 * (y**2 + math.log(2 * math.pi))).sum(-1)  # the true p(y)
        out["vub"].append(mibounds.variational_upper_bound(log_cond, log_marg).item())
        wide = (-0.5 * (y**2 / 4 + math.log(4) + math.log(2 * math.pi))).sum(-1)  # q(y)=N(0,4)
        out["vub-wide"].append(mibounds.variational_upper_bound(log_cond, wide).item())
        out["nce-club"].append(mibounds.nce_club(task.score_matrix(x, y)).item())
    return {k: np.asarray(v) for k, v in out.items()}


def _mean_se(v):
    return v.mean(), v.std(ddof=1) / math.sqrt(len(v))


@pytest.mark.slow
@pytest.mark.parametrize(("dim", "mi"), [(20, 2.0), (5, 1.0), (1, 0.5)])
def test_oracle_conditional(dim, mi):
    task = CorrelatedGaussian(dim, mi=mi)
    vals = _oracle(task, 64, 300)
    # I + KL(p(x)p(y) || p(x, y)), times (1 - 1/N): the all-pairs term includes the positives
    closed = (1 - 1 / 64) * dim * task.rho**2 / (1 - task.rho**2)
    mean, se = _mean_se(vals["club"])
    assert abs(mean - closed) < 4 * se and closed > mi + 4 * se
    mean, se = _mean_se(vals["nce-club"])  # the oracle log-ratio critic gives the same value
    assert abs(mean - closed) < 4 * se
    mean, se = _mean_se(vals["vub"])
    assert abs(mean - mi) < 4 * se  # tight with the true marginal
    mean, se = _mean_se(vals["vub-wide"])
    assert mean > mi + 4 * se  # loose with a wrong one
    mean, se = _mean_se(vals["l1out"])
    assert mean > mi - 4 * se


@pytest.mark.slow
def test_l1out_tends_to_mi_from_above():
    task = CorrelatedGaussian(5, mi=2.0)
    small, large = _oracle(task, 16, 200)["l1out"], _oracle(task, 256, 60, seed=1)["l1out"]
    assert small.mean() > large.mean() > 2.0 - 4 * _mean_se(large)[1]
    assert abs(large.mean() - 2.0) < 0.15


@pytest.mark.slow
def test_trained_upper_bounds_above_truth_on_staircase():
    result = run_staircase(
        ["club", "nce-club"], staircase(steps_per_level=1000, dim=20), batch_size=64, progress=False
    )
    k = 500
    for row in staircase_table(result):
        mc_error = 4 * row.std / math.sqrt(k)
        assert row.estimate > row.true_mi - mc_error, row


# --- modules ---------------------------------------------------------------------------------


def test_gaussian_conditional_bounded_logvar_finite_at_extremes():
    q = GaussianConditional(3, 2, hidden=(8,), min_logvar=-5.0, max_logvar=3.0)
    with torch.no_grad():
        for p in q.logvar.parameters():
            p.mul_(1e6)
    x = torch.randn(10, 3) * 100
    y = torch.randn(10, 2)
    _, logvar = q(x)
    assert (logvar >= -5.0 - 1e-6).all() and (logvar <= 3.0).all()
    club = CLUB(conditional=q)
    value = club(x, y)
    value.backward()
    assert torch.isfinite(value)
    assert all(torch.isfinite(p.grad).all() for p in q.parameters() if p.grad is not None)
    raw = torch.tensor([-1e30, -100.0, 0.0, 100.0, 1e30])
    bounded = q._bounded(raw)
    assert torch.isfinite(bounded).all() and bounded.min() >= -5.0 - 1e-6
    assert bounded.max() <= 3.0 and (bounded.diff() >= 0).all()


def test_gaussian_conditional_log_probs():
    q = GaussianConditional(3, 2, hidden=(8,)).double()
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    mat = q.log_prob_matrix(x, y)
    mu, logvar = q(x)
    torch.testing.assert_close(mat[2, 4], ref.gaussian_log_q(mu[2], logvar[2], y[4]))
    torch.testing.assert_close(torch.diagonal(mat), q.log_prob(x, y))
    fixed = GaussianConditional(3, 2, hidden=(8,), fixed_logvar=0.0)
    assert fixed.logvar is None and (fixed(x.float())[1] == 0).all()


@pytest.mark.parametrize("cls", [CLUB, CLUBSample, L1Out])
def test_upper_modules_train_and_alternate(cls):
    torch.manual_seed(0)
    encoder = torch.nn.Linear(3, 3)
    bound = cls(3, 3)
    inner = torch.optim.Adam(bound.parameters(), lr=1e-3)
    x = torch.randn(32, 3)
    before = [p.detach().clone() for p in encoder.parameters()]
    z = encoder(x)
    first = update_variational(bound, z, x, inner, steps=5)
    last = update_variational(bound, z, x, inner, steps=20)
    assert last < first
    for p, b in zip(encoder.parameters(), before, strict=True):
        assert p.grad is None and torch.equal(p, b)  # the inner step never touches encoders
    bound(z, x).backward()  # the outer step reaches the encoder
    assert all(p.grad is not None for p in encoder.parameters())


def test_nce_club_module():
    critic = SeparableCritic(torch.nn.Linear(2, 4), torch.nn.Linear(2, 4))
    bound = NCEClub(critic)
    x, y = torch.randn(8, 2), torch.randn(8, 2)
    torch.testing.assert_close(bound(x, y), mibounds.nce_club(critic(x, y)))
    torch.testing.assert_close(bound.learning_loss(x, y), -mibounds.infonce(critic(x, y)))
    dense = NCEClub(ConcatCritic(2, 2, hidden=(8,)))
    assert dense(x, y).shape == ()


# --- errors ----------------------------------------------------------------------------------


def test_upper_errors():
    mu, logvar, y = _gauss(dtype=torch.float32)
    with pytest.raises(ValueError, match=r"mu and y must have the same shape"):
        mibounds.club(mu, logvar, y[:, :2])
    with pytest.raises(ValueError, match=r"mu and y must agree"):
        mibounds.club(mu, logvar, y[:4])
    with pytest.raises(ValueError, match=r"logvar must broadcast to the shape of mu \(6, 3\)"):
        mibounds.club(mu, logvar[:, :2], y)
    with pytest.raises(TypeError, match="logvar must have a floating dtype"):
        mibounds.club(mu, logvar.long(), y)
    bad = logvar.clone()
    bad[0, 0] = math.nan
    with pytest.raises(ValueError, match="logvar must be finite"):
        mibounds.club(mu, bad, y)
    with pytest.raises(ValueError, match=r"permutation must be a permutation of range\(6\)"):
        mibounds.club_sample(mu, logvar, y, permutation=torch.tensor([0, 0, 1, 2, 3, 4]))
    with pytest.raises(TypeError, match="permutation must be an integer tensor"):
        mibounds.club_sample(mu, logvar, y, permutation=torch.zeros(6))
    with pytest.raises(ValueError, match="log_q must be square"):
        mibounds.l1out(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="scores needs N >= 2"):
        mibounds.nce_club(torch.zeros(1, 1))
    with pytest.raises(ValueError, match="must have the same shape"):
        mibounds.variational_upper_bound(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="min_logvar must be < max_logvar"):
        GaussianConditional(2, 2, min_logvar=1.0, max_logvar=0.0)
    with pytest.raises(TypeError, match="needs a conditional=GaussianConditional"):
        CLUB()
    with pytest.raises(TypeError, match="must have a learning_loss"):
        update_variational(torch.nn.Linear(2, 2), mu, y, torch.optim.SGD([mu], lr=0.1))
    with pytest.raises(ValueError, match="reduction must be one of"):
        mibounds.club(mu, logvar, y, reduction="max")
