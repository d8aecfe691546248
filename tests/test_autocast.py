"""Mixed precision: every bound, loss module and contrastive loss under torch.autocast (CPU
bfloat16) against float32, forward and backward; mixed input dtypes on every path."""

from __future__ import annotations

import pytest
import torch

import mibounds
from mibounds import contrastive
from mibounds import nn as mnn

BOUNDS = {
    "infonce": lambda s: mibounds.infonce(s),
    "infonce-sym": lambda s: mibounds.infonce(s, symmetric=True),
    "nwj": mibounds.nwj,
    "tuba": mibounds.tuba,
    "dv": mibounds.dv,
    "mine": lambda s: mibounds.mine(s)[0],
    "js": mibounds.js,
    "smile": mibounds.smile,
    "fmi-js": lambda s: mibounds.fmi(s, "js"),
    "interpolated": mibounds.interpolated,
    "nce_club": mibounds.nce_club,
    "labels": lambda s: mibounds.infonce(
        mibounds.SeparableScores(
            s.x, s.y, s.similarity, s.temperature, labels=torch.arange(16) % 4, exclude="self"
        )
    ),
}


def _setup(seed=0):
    torch.manual_seed(seed)
    f, g = torch.nn.Linear(6, 8), torch.nn.Linear(6, 8)
    x = torch.randn(16, 6)
    y = 0.8 * x + 0.6 * torch.randn(16, 6)
    return f, g, x, y


def _run(fn, autocast: bool):
    f, g, x, y = _setup()
    critic = mnn.SeparableCritic(f, g, similarity="cosine", temperature=0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        value = fn(critic(x, y))
        value.float().backward()
    return value.float().detach(), f.weight.grad.clone(), g.weight.grad.clone()


@pytest.mark.parametrize("name", list(BOUNDS))
def test_bounds_under_autocast(name):
    v16, gf16, gg16 = _run(BOUNDS[name], True)
    v32, gf32, gg32 = _run(BOUNDS[name], False)
    assert torch.isfinite(v16) and torch.isfinite(gf16).all() and torch.isfinite(gg16).all()
    # bfloat16 features carry 8 bits of mantissa: agreement to a few percent
    torch.testing.assert_close(v16, v32, rtol=5e-2, atol=5e-2)
    scale = gf32.abs().max()
    torch.testing.assert_close(gf16, gf32, rtol=0, atol=0.1 * float(scale) + 1e-3)
    torch.testing.assert_close(gg16, gg32, rtol=0, atol=0.1 * float(gg32.abs().max()) + 1e-3)


LOSSES = {
    "clip": lambda u, v: contrastive.CLIPLoss()(u, v, torch.tensor(5.0)),
    "siglip": lambda u, v: contrastive.SigLIPLoss()(u, v, torch.tensor(5.0), torch.tensor(-2.0)),
    "ntxent": lambda u, v: contrastive.NTXentLoss(0.5)(u, v),
    "supcon": lambda u, v: contrastive.SupConLoss(0.5)(u, torch.arange(16) % 4),
    "moco": lambda u, v: contrastive.MoCoLoss(0.5)(u, v, torch.randn(8, 8)),
    "nn-infonce": lambda u, v: mnn.InfoNCE(temperature=0.5)(u, v),
}


@pytest.mark.parametrize("name", list(LOSSES))
def test_contrastive_losses_under_autocast(name):
    out = []
    for autocast in (True, False):
        f, g, x, y = _setup()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            u = torch.nn.functional.normalize(f(x), dim=-1)
            v = torch.nn.functional.normalize(g(y), dim=-1)
            torch.manual_seed(1)
            loss = LOSSES[name](u, v)
        loss.float().backward()
        out.append((loss.float().detach(), f.weight.grad.clone()))
    (l16, g16), (l32, g32) = out
    assert torch.isfinite(l16) and torch.isfinite(g16).all()
    torch.testing.assert_close(l16, l32, rtol=5e-2, atol=5e-2)
    torch.testing.assert_close(g16, g32, rtol=0, atol=0.1 * float(g32.abs().max()) + 1e-3)


def test_mixed_input_dtypes_on_every_path():
    x = torch.randn(6, 3, dtype=torch.float32, requires_grad=True)
    y = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    s = mibounds.SeparableScores(x, y, "cosine", 0.5)
    assert s.dtype == torch.float64 and s.dense().dtype == torch.float64
    want = mibounds.infonce(s.dense())
    for value in (
        mibounds.infonce(s),
        mibounds.infonce(s, reduction="none").mean(),
        mibounds.infonce(s, symmetric=True) * 0 + mibounds.infonce(s),
    ):
        torch.testing.assert_close(value.double(), want, rtol=1e-6, atol=1e-6)
    gx, gy = torch.autograd.grad(mibounds.infonce(s), (x, y))
    assert gx.dtype == torch.float32 and gy.dtype == torch.float64
    assert torch.isfinite(mibounds.l1out(s)) and mibounds.l1out(s).dtype == torch.float64
