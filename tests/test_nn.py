"""Critics and loss modules."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import mibounds
from mibounds.nn import (
    DV,
    FMI,
    JS,
    MINE,
    MLP,
    NWJ,
    SMILE,
    TUBA,
    BilinearCritic,
    ConcatCritic,
    GaussianKernelCritic,
    InfoNCE,
    Interpolated,
    SeparableCritic,
)
from tests import reference as ref


def test_concat_critic_equals_naive_concatenation():
    torch.manual_seed(0)
    critic = ConcatCritic(3, 2, hidden=(16, 8)).double()
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    torch.testing.assert_close(critic(x, y), ref.concat_critic(critic.net, x, y))
    torch.testing.assert_close(critic.pair_scores(x, y), torch.diagonal(critic(x, y)))


def test_concat_critic_leading_dims_and_grad():
    critic = ConcatCritic(3, 2, hidden=(8,)).double()
    x, y = torch.randn(2, 4, 3, dtype=torch.float64), torch.randn(2, 4, 2, dtype=torch.float64)
    s = critic(x, y)
    assert s.shape == (2, 4, 4)
    torch.testing.assert_close(s[1], critic(x[1], y[1]))
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: critic(x, y), (x,))


def test_separable_critic_dot_cosine_and_temperature():
    torch.manual_seed(0)
    enc_x, enc_y = nn.Linear(3, 4), nn.Linear(2, 4)
    critic = SeparableCritic(enc_x, enc_y, similarity="cosine", temperature=0.5)
    x, y = torch.randn(6, 3), torch.randn(6, 2)
    s = critic(x, y)
    assert isinstance(s, mibounds.SeparableScores)
    gx = nn.functional.normalize(enc_x(x), dim=-1)
    hy = nn.functional.normalize(enc_y(y), dim=-1)
    torch.testing.assert_close(s.dense(), gx @ hy.T / 0.5)
    shared = SeparableCritic(enc_x)
    torch.testing.assert_close(shared(x, x).dense(), enc_x(x) @ enc_x(x).T)


def test_learnable_temperature_gets_gradient():
    critic = SeparableCritic(
        nn.Linear(3, 4), similarity="dot", temperature=2.0, learn_temperature=True
    )
    assert critic.temperature.item() == pytest.approx(2.0)
    x = torch.randn(8, 3)
    loss = InfoNCE(critic)(x, x + 0.1 * torch.randn(8, 3))
    loss.backward()
    assert critic.temp.log_value.grad is not None
    assert critic.temp.log_value.grad.abs().item() > 0
    fixed = SeparableCritic(nn.Linear(3, 4), temperature=2.0)
    assert "temp.log_value" in dict(fixed.named_buffers())


def test_gaussian_kernel_critic():
    critic = GaussianKernelCritic(bandwidth=0.5, learn_bandwidth=True)
    x, y = torch.randn(5, 3), torch.randn(5, 3)
    s = critic(x, y).dense()
    want = -(torch.cdist(x, y) ** 2) / (2 * 0.25)
    torch.testing.assert_close(s, want, rtol=1e-4, atol=1e-4)
    mibounds.infonce(critic(x, y)).backward()
    assert critic.sigma.log_value.grad is not None


def test_bilinear_critic():
    critic = BilinearCritic(3, 2)
    x, y = torch.randn(5, 3), torch.randn(5, 2)
    torch.testing.assert_close(critic(x, y).dense(), x @ critic.weight @ y.T)
    with pytest.raises(ValueError, match=r"dim_x=3 and dim_y=2"):
        critic(torch.randn(5, 4), y)


def test_mlp():
    mlp = MLP(3, 1, hidden=(4, 5))
    assert [m.__class__.__name__ for m in mlp] == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]
    with pytest.raises(ValueError, match="in_dim must be >= 1"):
        MLP(0, 1)


LOSSES = [
    (InfoNCE(), lambda s: -mibounds.infonce(s)),
    (InfoNCE(symmetric=True), lambda s: -mibounds.infonce(s, symmetric=True)),
    (NWJ(), lambda s: -mibounds.nwj(s)),
    (TUBA(), lambda s: -mibounds.tuba(s)),
    (DV(), lambda s: -mibounds.dv(s)),
    (JS(), lambda s: -mibounds.js(s)),
    (SMILE(clip=2.0), lambda s: -mibounds.smile(s, clip=2.0)),
    (Interpolated(alpha=0.2), lambda s: -mibounds.interpolated(s, alpha=0.2)),
    (FMI(divergence="js"), lambda s: -mibounds.fmi(s, "js")),
]


@pytest.mark.parametrize(("loss", "fn"), LOSSES, ids=[type(m).__name__ for m, _ in LOSSES])
def test_loss_is_minus_bound(loss, fn):
    s = torch.randn(2, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(loss(s), fn(s))


@pytest.mark.parametrize("cls", [InfoNCE, NWJ, TUBA, DV, MINE, JS, SMILE, Interpolated, FMI])
def test_loss_with_critic_trains(cls):
    torch.manual_seed(0)
    critic = ConcatCritic(2, 2, hidden=(16,))
    loss_fn = cls(critic)
    opt = torch.optim.Adam(critic.parameters(), lr=1e-2)
    x = torch.randn(32, 2)
    y = x + 0.3 * torch.randn(32, 2)
    first = loss_fn(x, y).item()
    for _ in range(30):
        opt.zero_grad()
        loss = loss_fn(x, y)
        loss.backward()
        opt.step()
    assert math.isfinite(loss.item())
    assert loss_fn(x, y).item() < first


def test_mine_buffer():
    loss = MINE(decay=0.5)
    assert loss.log_ema is None
    s = torch.randn(4, 4)
    loss(s)
    first = loss.log_ema.clone()
    loss(s + 1.0)
    torch.testing.assert_close(
        loss.log_ema, torch.logaddexp(first + math.log(0.5), first + 1 + math.log(0.5))
    )
    loss.eval()
    before = loss.log_ema.clone()
    loss(s + 5.0)
    torch.testing.assert_close(loss.log_ema, before)
    state = loss.state_dict()
    assert "log_ema" in state
    fresh = MINE(decay=0.5)
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.log_ema, before)


def test_tuba_baseline_module():
    baseline = nn.Linear(2, 1)
    critic = ConcatCritic(2, 2, hidden=(8,))
    loss = TUBA(critic, baseline)
    x, y = torch.randn(6, 2), torch.randn(6, 2)
    want = -mibounds.tuba(critic(x, y), baseline(y).squeeze(-1))
    torch.testing.assert_close(loss(x, y), want)
    with pytest.raises(TypeError, match="baseline module needs y"):
        loss(critic(x, y))


def test_loss_needs_critic_for_pairs():
    with pytest.raises(TypeError, match=r"InfoNCE\(x, y\) needs a critic"):
        InfoNCE()(torch.randn(4, 2), torch.randn(4, 2))
    with pytest.raises(TypeError, match="takes \\(scores\\) or \\(x, y\\)"):
        InfoNCE()(torch.randn(4, 4), torch.randn(4, 4), torch.randn(4, 4))
    with pytest.raises(TypeError, match="critic must be an nn.Module"):
        InfoNCE(critic=lambda x, y: x)  # type: ignore[arg-type]
