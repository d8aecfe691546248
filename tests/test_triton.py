"""Triton kernels: correctness in Triton's CPU interpreter (small sizes); CUDA when present."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

pytest.importorskip("triton")

SCRIPT = textwrap.dedent(
    """
    import torch
    from mibounds.kernels import streaming, triton_kernels
    torch.manual_seed(0)
    for n, d in ((37, 5), (64, 16), (70, 33)):
        x = torch.nn.functional.normalize(torch.randn(n, d), dim=-1)
        y = torch.nn.functional.normalize(x + 0.5 * torch.randn(n, d), dim=-1)
        tau = torch.tensor(0.2)
        v, dx, dy, dt = triton_kernels.row_lse_mean_triton(x, y, 0.2, True, block=16)
        rv, rdx, rdy, rdt = streaming._row_lse_mean_sweep(x[None], y[None], tau, 0, True)
        torch.testing.assert_close(v, rv[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(dx, rdx[0], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(dy, rdy[0], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(dt, rdt[0], rtol=1e-4, atol=1e-6)
    print("triton-interpreter-ok")
    """
)


@pytest.mark.slow
def test_triton_row_lse_in_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "triton-interpreter-ok" in proc.stdout


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_triton_on_cuda_matches_cpu():  # pragma: no cover - GPU only
    import mibounds

    x = torch.nn.functional.normalize(torch.randn(2, 1000, 64), dim=-1)
    y = torch.nn.functional.normalize(x + 0.5 * torch.randn(2, 1000, 64), dim=-1)
    for dev in ("cpu", "cuda"):
        xs = x.to(dev).requires_grad_(True)
        v = mibounds.infonce(mibounds.SeparableScores(xs, y.to(dev), "dot", 0.1))
        (g,) = torch.autograd.grad(v.sum(), xs)
        if dev == "cpu":
            want, want_g = v, g
    torch.testing.assert_close(v.cpu(), want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(g.cpu(), want_g, rtol=1e-3, atol=1e-5)
