"""The drop-in contrastive losses equal the losses they replace (float64, values and
gradients), stream without an N x M buffer, compile, and read out sensible MI estimates."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import pytest
import torch

import mibounds
from mibounds.contrastive import (
    CLIPLoss,
    MemoryQueue,
    MoCoLoss,
    NTXentLoss,
    SigLIPLoss,
    SupConLoss,
)
from mibounds.kernels import streaming
from tests import reference as ref

TOL = dict(rtol=1e-10, atol=1e-10)


def _pair(n=12, d=5, seed=0, normalize=True):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(n, d, generator=g, dtype=torch.float64)
    v = 0.6 * u + 0.8 * torch.randn(n, d, generator=g, dtype=torch.float64)
    if normalize:
        u, v = torch.nn.functional.normalize(u, dim=1), torch.nn.functional.normalize(v, dim=1)
    return u.requires_grad_(True), v.requires_grad_(True)


def _check(got, want, inputs):
    torch.testing.assert_close(got, want, **TOL)
    for a, b in zip(
        torch.autograd.grad(got, inputs), torch.autograd.grad(want, inputs), strict=True
    ):
        torch.testing.assert_close(a, b, **TOL)


@pytest.fixture(params=[None, 4 * 4 * 24 * 3], ids=["one-panel", "panels-of-3"])
def budget(request):
    streaming.set_memory_budget(request.param)
    yield
    streaming.set_memory_budget(None)


def test_clip_equals_openclip(budget):
    u, v = _pair()
    scale = torch.tensor(14.0, dtype=torch.float64, requires_grad=True)
    _check(CLIPLoss()(u, v, scale), ref.openclip_clip_loss(u, v, scale), (u, v, scale))


def test_siglip_equals_openclip(budget):
    u, v = _pair()
    scale = torch.tensor(10.0, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-7.0, dtype=torch.float64, requires_grad=True)
    got = SigLIPLoss()(u, v, scale, bias)
    _check(got, ref.openclip_siglip_loss(u, v, scale, bias), (u, v, scale, bias))


@pytest.mark.parametrize("temperature", [0.5, 0.1])
def test_ntxent_equals_lightly(temperature, budget):
    a, b = _pair(normalize=False)
    tau = torch.tensor(temperature, dtype=torch.float64, requires_grad=True)
    got = NTXentLoss(tau)(a, b)
    _check(got, ref.lightly_ntxent(a, b, tau), (a, b, tau))


@pytest.mark.parametrize(
    "labels",
    [
        torch.tensor([0, 1, 0, 2, 1, 0, 3, 2, 0, 4, 5, 5]),  # uneven, two anchors without positives
        torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1]),
    ],
)
def test_supcon_equals_khosla(labels, budget):
    z, _ = _pair(normalize=False)
    tau = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    _check(SupConLoss(tau)(z, labels), ref.supcon_loss(z, labels, tau), (z, tau))


def test_supcon_without_any_positive_is_zero():
    z, _ = _pair(normalize=False)
    loss = SupConLoss()(z, torch.arange(12))
    assert float(loss.detach()) == 0.0
    (g,) = torch.autograd.grad(loss, z)
    assert torch.count_nonzero(g) == 0


@pytest.mark.parametrize("k", [0, 7, 30])
def test_moco_equals_reference(k, budget):
    q, key = _pair()
    queue = torch.nn.functional.normalize(torch.randn(k, 5, dtype=torch.float64), dim=1)
    tau = torch.tensor(0.07, dtype=torch.float64, requires_grad=True)
    got = MoCoLoss(tau)(q, key, queue)
    _check(got, ref.moco_loss(q, key, queue, tau), (q, key, tau))


def test_memory_queue_is_fifo_and_saved():
    queue = MemoryQueue(5, 2, dtype=torch.float64)
    first = torch.arange(6.0, dtype=torch.float64).reshape(3, 2)
    assert queue(first).shape == (0, 2)
    held = queue(first + 10)
    torch.testing.assert_close(held, first)
    assert len(queue) == 5
    # the oldest entry was overwritten: what remains is first[1:], then the second push
    torch.testing.assert_close(queue.entries, torch.cat([first[1:], first + 10]))
    state = queue.state_dict()
    again = MemoryQueue(5, 2, dtype=torch.float64)
    again.load_state_dict(state)
    torch.testing.assert_close(again.entries, queue.entries)
    with pytest.raises(ValueError, match=r"keys must be \(B, 2\)"):
        queue.push(torch.zeros(3, 4, dtype=torch.float64))


def test_gradcheck_small():
    u, v = _pair(n=5, d=3)
    scale = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-1.0, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 0, 1, 2])
    assert torch.autograd.gradcheck(lambda a, b, t: CLIPLoss()(a, b, t), (u, v, scale))
    assert torch.autograd.gradcheck(
        lambda a, b, t, c: SigLIPLoss()(a, b, t, c), (u, v, scale, bias)
    )
    assert torch.autograd.gradcheck(lambda a, b: NTXentLoss(0.5)(a, b), (u, v))
    assert torch.autograd.gradcheck(lambda a: SupConLoss(0.3)(a, labels), (u,))
    queue = torch.randn(4, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, b: MoCoLoss(0.5)(a, b, queue), (u, v))


def test_compile_fullgraph():
    u, v = _pair(normalize=False)
    u, v = u.detach().float().requires_grad_(True), v.detach().float()
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 3, 2, 0, 4, 5, 5])
    queue = torch.randn(9, 5)
    cases = [
        (lambda a, b: CLIPLoss()(a, b, torch.tensor(5.0)), (u, v)),
        (lambda a, b: SigLIPLoss()(a, b, torch.tensor(5.0), torch.tensor(-3.0)), (u, v)),
        (lambda a, b: NTXentLoss(0.5)(a, b), (u, v)),
        (lambda a, b: SupConLoss(0.1)(a, labels), (u, v)),
        (lambda a, b: MoCoLoss(0.2)(a, b, queue), (u, v)),
    ]
    for fn, args in cases:
        torch._dynamo.reset()
        eager = fn(*args)
        compiled = torch.compile(fn, fullgraph=True, backend="eager")(*args)
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
        (g_eager,) = torch.autograd.grad(eager, u)
        (g_comp,) = torch.autograd.grad(compiled, u)
        torch.testing.assert_close(g_comp, g_eager, rtol=1e-5, atol=1e-6)


def test_mi_read_outs_are_the_loss_identities():
    u, v = _pair()
    scale = torch.tensor(8.0, dtype=torch.float64)
    n = u.shape[0]
    torch.testing.assert_close(CLIPLoss().mi(u, v, scale), math.log(n) - CLIPLoss()(u, v, scale))
    nt = NTXentLoss(0.5)
    torch.testing.assert_close(nt.mi(u, v), math.log(2 * n - 1) - nt(u, v))
    queue = torch.randn(7, 5, dtype=torch.float64)
    moco = MoCoLoss(0.2)
    torch.testing.assert_close(moco.mi(u, v, queue), math.log(8) - moco(u, v, queue))


def _oracle_features(task, n, seed):
    """Features whose dot product plus a constant is the exact log density ratio."""
    x, y = task.sample(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    rho = task.rho
    b = rho / (1 - rho**2)
    a = -(rho**2) / (2 * (1 - rho**2))
    c = -task.dim / 2 * math.log(1 - rho**2)
    one = torch.ones(n, 1, dtype=torch.float64)
    u = torch.cat([math.sqrt(b) * x, a * (x * x).sum(1, keepdim=True), one], 1)
    v = torch.cat([math.sqrt(b) * y, one, a * (y * y).sum(1, keepdim=True)], 1)
    return u, v, c


@pytest.mark.slow
def test_mi_read_outs_with_the_oracle_critic():
    """On a correlated Gaussian (1 nat), the exact log-ratio critic: SigLIP's NWJ read-out is
    unbiased, CLIP's symmetric InfoNCE is just below the truth."""
    task = mibounds.tasks.CorrelatedGaussian(4, mi=1.0)
    n, reps = 256, 40
    siglip, clip = [], []
    for seed in range(reps):
        u, v, c = _oracle_features(task, n, seed)
        one = torch.tensor(1.0, dtype=torch.float64)
        # the SigLIP-optimal logit is log r - log(N - 1)
        siglip.append(float(SigLIPLoss().mi(u, v, one, torch.tensor(c - math.log(n - 1)))))
        clip.append(float(CLIPLoss().mi(u, v, one)))
    sig = torch.tensor(siglip)
    err = 3 * float(sig.std()) / math.sqrt(reps)
    assert abs(float(sig.mean()) - 1.0) < err + 0.02
    assert 0.85 < sum(clip) / reps < 1.0 + 0.02


def test_streams_without_an_n_by_m_buffer():
    """Peak memory of the streamed losses at 2N = 8192 stays far below one 2N x 2N matrix."""
    script = textwrap.dedent(
        """
        import resource, torch
        from mibounds.contrastive import CLIPLoss, NTXentLoss, SigLIPLoss, SupConLoss
        torch.manual_seed(0)
        n, d = 4096, 32
        u = torch.nn.functional.normalize(torch.randn(n, d), dim=1).requires_grad_(True)
        v = torch.nn.functional.normalize(torch.randn(n, d), dim=1).requires_grad_(True)
        labels = torch.randint(0, 100, (2 * n,))
        z = torch.cat([u, v])
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for loss in (
            CLIPLoss()(u, v, torch.tensor(10.0)),
            SigLIPLoss()(u, v, torch.tensor(10.0), torch.tensor(-5.0)),
            NTXentLoss(0.5)(u, v),
            SupConLoss(0.1)(z, labels),
        ):
            loss.backward()
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        print("grown-kib", grown)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    grown_mib = int(proc.stdout.split("grown-kib")[1]) / 1024
    # one float32 matrix of 8192 x 8192 is 256 MiB; the panels use 32 MiB
    assert grown_mib < 96, grown_mib


def test_bad_inputs_name_the_argument():
    u, v = _pair()
    with pytest.raises(ValueError, match=r"image_features and text_features must have the same"):
        CLIPLoss()(u, v[:5], 1.0)
    with pytest.raises(ValueError, match="logit_scale"):
        CLIPLoss()(u, v, -1.0)
    with pytest.raises(TypeError, match="logit_bias must be a float or a scalar tensor"):
        SigLIPLoss()(u, v, 1.0, "zero")
    with pytest.raises(ValueError, match=r"labels must have shape \(12,\), got \(3,\)"):
        SupConLoss()(u, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"queue must be \(K, 5\)"):
        MoCoLoss()(u, v, torch.zeros(4, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="temperature"):
        NTXentLoss(0.0)


def test_infonce_module_with_a_temperature_and_a_logit_scale_critic():
    u, v = _pair(normalize=False)
    got = mibounds.nn.InfoNCE(temperature=0.2, symmetric=True)(u, v)
    want = -mibounds.infonce(mibounds.SeparableScores(u, v, "cosine", 0.2), symmetric=True)
    torch.testing.assert_close(got, want, **TOL)
    critic = mibounds.nn.SeparableCritic(logit_scale=1 / 0.07, learn_temperature=True)
    torch.testing.assert_close(float(critic.temperature.detach()), 0.07, rtol=1e-6, atol=0)
    with torch.no_grad():
        critic.temp.log_value.fill_(10.0)  # beyond the cap of 100
    torch.testing.assert_close(float(critic.temperature.detach()), 0.01, rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="a critic or a temperature, not both"):
        mibounds.nn.InfoNCE(critic, temperature=0.1)


def test_supcon_multi_view_features_get_a_reshape_hint():
    z = torch.randn(4, 2, 8)
    labels = torch.arange(4)
    with pytest.raises(
        ValueError, match=r"torch\.cat\(embeddings\.unbind\(1\)\).*labels\.repeat\(2\)"
    ):
        SupConLoss()(z, labels)
