"""Our losses inside a user's torch.compile'd function: no graph breaks, one dynamic recompile."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

import mibounds


def _dense_loss(x, y):
    s = x @ y.T
    return (
        mibounds.infonce(s, symmetric=True)
        + mibounds.js(s)
        + mibounds.fmi(s, "vlc")
        + mibounds.dv(s)
        + mibounds.smile(s)
        + mibounds.nce_club(s)
        + mibounds.l1out(s)
        + mibounds.interpolated(s, alpha=0.5)
    )


def _streaming_loss(x, y, tau):
    s = mibounds.SeparableScores(x, y, "cosine", tau)
    return (
        mibounds.infonce(s, symmetric=True)
        + mibounds.nwj(s)
        + mibounds.smile(s)
        + mibounds.fmi(s, "js")
        + mibounds.nce_club(s)
        + mibounds.mine(s)[0]
        + mibounds.interpolated(s, alpha=0.5)
    )


@pytest.mark.slow
@pytest.mark.parametrize("path", ["dense", "streaming"])
def test_compiled_without_graph_breaks_and_one_dynamic_recompile(path):
    torch._dynamo.reset()
    counters.clear()
    tau = torch.tensor(0.5, requires_grad=True)
    fn = _dense_loss if path == "dense" else _streaming_loss
    extra = () if path == "dense" else (tau,)
    compiled = torch.compile(fn, fullgraph=True)  # fullgraph: any graph break raises
    for n in (8, 16, 32, 48, 100):
        x = torch.randn(n, 4, requires_grad=True)
        y = torch.randn(n, 4, requires_grad=True)
        out = compiled(x, y, *extra)
        grads = torch.autograd.grad(out, (x, y))
        x_ref, y_ref = x.detach().requires_grad_(True), y.detach().requires_grad_(True)
        ref = fn(x_ref, y_ref, *extra)
        ref_grads = torch.autograd.grad(ref, (x_ref, y_ref))
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
        for a, b in zip(grads, ref_grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # the first batch size compiles a static graph, the second a dynamic one; no more after
    assert counters["stats"]["unique_graphs"] == 2
