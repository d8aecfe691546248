"""Distributed negatives: 2 and 3 gloo processes on the CPU against one process on the
concatenated batch (values, gradients of x, y and the temperature, and a real DDP step)."""

from __future__ import annotations

import datetime
import os
import sys
import tempfile
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import mibounds
from mibounds import distributed

D = 3
DIVERGENCES = [d.name for d in mibounds.list_divergences()]


def _bounds():
    """name -> f(scores, gather) returning a scalar to compare (and differentiate)."""
    out = {
        "infonce": lambda s, g: mibounds.infonce(s, gather=g),
        "infonce-sym": lambda s, g: mibounds.infonce(s, symmetric=True, gather=g),
        "infonce-sum": lambda s, g: mibounds.infonce(s, reduction="sum", gather=g),
        "nwj": lambda s, g: mibounds.nwj(s, gather=g),
        "tuba": lambda s, g: mibounds.tuba(s, gather=g),
        "dv": lambda s, g: mibounds.dv(s, gather=g),
        "mine": lambda s, g: mibounds.mine(s, gather=g)[0],
        "js": lambda s, g: mibounds.js(s, gather=g),
        "smile": lambda s, g: mibounds.smile(s, gather=g),
        "smile-noclip": lambda s, g: mibounds.smile(s, clip=None, gather=g),
        "nce_club": lambda s, g: mibounds.nce_club(s, gather=g),
    }
    for name in DIVERGENCES:
        out[f"fmi-{name}"] = lambda s, g, name=name: mibounds.fmi(s, name, gather=g)
    return out


def _data(n, lead=()):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*lead, n, D, generator=g, dtype=torch.float64)
    y = 0.8 * x + 0.6 * torch.randn(*lead, n, D, generator=g, dtype=torch.float64)
    return x, y


def _value_and_grads(fn, x, y, tau, make_scores):
    x = x.detach().clone().requires_grad_(True)
    y = y.detach().clone().requires_grad_(True)
    t = torch.tensor(tau, dtype=torch.float64, requires_grad=True)
    v = fn(make_scores(x, y, t))
    v.sum().backward()
    return v.detach(), x.grad, y.grad, t.grad


def _check_bounds(rank, world, sizes, lead):
    n = sum(sizes)
    start = sum(sizes[:rank])
    sl = slice(start, start + sizes[rank])
    x, y = _data(n, lead)
    xl, yl = x[..., sl, :], y[..., sl, :]
    modes = {
        f"separable-{sim}": (
            lambda a, b, t, sim=sim, g=False: mibounds.SeparableScores(a, b, sim, t, gather=g)
        )
        for sim in ("dot", "cosine", "gaussian")
    }
    for name, fn in _bounds().items():
        for mode, make in modes.items():
            ref = _value_and_grads(lambda s, fn=fn: fn(s, False), x, y, 0.7, make)
            got = _value_and_grads(
                lambda s, fn=fn: fn(s, False),
                xl,
                yl,
                0.7,
                lambda a, b, t, make=make: make(a, b, t, g=True),
            )
            _compare(f"{name}/{mode}", ref, got, sl, world)
        # dense: this rank's rows against the gathered columns
        ref = _value_and_grads(
            lambda s, fn=fn: fn(s, False), x, y, 0.7, lambda a, b, t: (a @ b.mT) / t
        )
        got = _value_and_grads(
            lambda s, fn=fn: fn(s, True),
            xl,
            yl,
            0.7,
            lambda a, b, t: (a @ distributed.all_gather(b, dim=-2).mT) / t,
        )
        _compare(f"{name}/dense", ref, got, sl, world)


def _check_fmicl(rank, world, sizes):
    """f-MICL's objective with negatives from every rank (both negative sets)."""
    from mibounds.methods import fmicl

    n = sum(sizes)
    start = sum(sizes[:rank])
    sl = slice(start, start + sizes[rank])
    x, y = _data(n)
    for name in ("kl", "js", "neyman"):
        for negatives, sim in (("cross", "gaussian"), ("all", "cosine")):
            kw = dict(negatives=negatives, similarity=sim, alpha=3.0)
            ref = _value_and_grads(
                lambda s, kw=kw, name=name: fmicl(*s, name, **kw), x, y, 0.7, lambda a, b, t: (a, b)
            )
            got = _value_and_grads(
                lambda s, kw=kw, name=name: fmicl(*s, name, gather=True, **kw),
                x[sl],
                y[sl],
                0.7,
                lambda a, b, t: (a, b),
            )
            v_ref, gx_ref, gy_ref, _ = ref
            v, gx, gy, _ = got
            label = f"fmicl {name} {negatives} {sim}"
            torch.testing.assert_close(v, v_ref, rtol=1e-9, atol=1e-9, msg=label)
            torch.testing.assert_close(gx / world, gx_ref[sl], rtol=1e-7, atol=1e-9, msg=label)
            torch.testing.assert_close(gy / world, gy_ref[sl], rtol=1e-7, atol=1e-9, msg=label)


def _check_pairings(rank, world, sizes):
    """Labels, excluded self-pairs, a bias and the contrastive losses with negatives from every
    rank, against one process on the concatenated batch."""
    from mibounds.contrastive import CLIPLoss, NTXentLoss, SigLIPLoss, SupConLoss

    n = sum(sizes)
    start = sum(sizes[:rank])
    sl = slice(start, start + sizes[rank])
    x, y = _data(n)
    labels = torch.arange(n) % 3
    bias = torch.tensor(-0.4, dtype=torch.float64)
    bounds = {
        k: v
        for k, v in _bounds().items()
        if k in ("infonce", "infonce-sum", "nwj", "dv", "js", "smile", "fmi-hellinger")
    }
    for name, fn in bounds.items():
        for kw in (dict(labels=labels, exclude="self"), dict(bias=bias), dict(labels=labels)):

            def make(a, b, t, g=False, kw=kw, local=False):
                kw = dict(kw)
                if "labels" in kw and local:
                    kw["labels"] = kw["labels"][sl]
                return mibounds.SeparableScores(a, b, "cosine", t, gather=g, **kw)

            ref = _value_and_grads(lambda s, fn=fn: fn(s, False), x, y, 0.7, make)
            got = _value_and_grads(
                lambda s, fn=fn: fn(s, False),
                x[sl],
                y[sl],
                0.7,
                lambda a, b, t, make=make: make(a, b, t, g=True, local=True),
            )
            _compare(f"{name}/{sorted(kw)}", ref, got, sl, world)
    scale = torch.tensor(5.0, dtype=torch.float64)
    losses = {
        "clip": (lambda a, b, g: CLIPLoss(gather=g)(a, b, scale)),
        "siglip": (lambda a, b, g: SigLIPLoss(gather=g)(a, b, scale, bias)),
        "ntxent": (lambda a, b, g: NTXentLoss(0.5, gather=g)(a, b)),
        "supcon": (lambda a, b, g: SupConLoss(0.3, gather=g)(a, labels[sl] if g else labels)),
    }
    for name, fn in losses.items():
        a, b = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
        want = fn(a, b, False)
        ga, gb = torch.autograd.grad(want, (a, b), allow_unused=True)
        al, bl = x[sl].clone().requires_grad_(True), y[sl].clone().requires_grad_(True)
        got = fn(al, bl, True)
        gal, gbl = torch.autograd.grad(got, (al, bl), allow_unused=True)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9, msg=name)
        torch.testing.assert_close(gal / world, ga[sl], rtol=1e-7, atol=1e-9, msg=name)
        if gb is not None:
            torch.testing.assert_close(gbl / world, gb[sl], rtol=1e-7, atol=1e-9, msg=name)


def _check_rank_local(rank, world, sizes):
    """OpenCLIP's local_loss and SigLipLoss(world_size > 1), lightly's gather_distributed:
    each rank's own loss against every rank's columns (references on the concatenated batch);
    the gradients each rank gets are those of the sum of the ranks' local losses."""
    from mibounds.contrastive import CLIPLoss, NTXentLoss, SigLIPLoss

    n = sum(sizes)
    start = sum(sizes[:rank])
    sl = slice(start, start + sizes[rank])
    x, y = _data(n)
    x, y = torch.nn.functional.normalize(x, dim=-1), torch.nn.functional.normalize(y, dim=-1)
    scale, bias = torch.tensor(5.0, dtype=torch.float64), torch.tensor(-1.5, dtype=torch.float64)
    ce = torch.nn.functional.cross_entropy

    def clip_ref(a, b, r):
        rows = slice(sum(sizes[:r]), sum(sizes[: r + 1]))
        target = torch.arange(rows.start, rows.stop)
        return 0.5 * (ce(scale * a[rows] @ b.T, target) + ce(scale * b[rows] @ a.T, target))

    def siglip_ref(a, b, r):
        rows = slice(sum(sizes[:r]), sum(sizes[: r + 1]))
        logits = scale * a[rows] @ b.T + bias
        sign = -torch.ones_like(logits)
        sign[torch.arange(logits.shape[0]), torch.arange(rows.start, rows.stop)] = 1.0
        return -torch.nn.functional.logsigmoid(sign * logits).sum() / logits.shape[0]

    def ntxent_ref(a, b, r):
        rows = slice(sum(sizes[:r]), sum(sizes[: r + 1]))
        z = torch.nn.functional.normalize(torch.cat([a, b]), dim=-1)  # cosine, as lightly
        anchors = list(range(rows.start, rows.stop)) + [n + i for i in range(rows.start, rows.stop)]
        total = z.new_zeros(())
        for i in anchors:
            pos = i + n if i < n else i - n
            logits = z[i] @ z.T / 0.5
            logits = logits.masked_fill(torch.arange(2 * n) == i, -torch.inf)
            total = total + torch.logsumexp(logits, 0) - logits[pos]
        return total / len(anchors)

    cases = {
        "clip": (lambda a, b: CLIPLoss(local_loss=True, world_size=world, rank=rank)(a, b, scale),
                 clip_ref),
        "siglip": (lambda a, b: SigLIPLoss(world_size=world, rank=rank)(a, b, scale, bias),
                   siglip_ref),
        "ntxent": (lambda a, b: NTXentLoss(0.5, gather_distributed=True)(a, b), ntxent_ref),
    }  # fmt: skip
    for name, (ours, ref) in cases.items():
        a, b = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
        want = ref(a, b, rank)
        total = sum(ref(a, b, r) for r in range(world))
        ga, gb = torch.autograd.grad(total, (a, b))
        al, bl = x[sl].clone().requires_grad_(True), y[sl].clone().requires_grad_(True)
        got = ours(al, bl)
        gal, gbl = torch.autograd.grad(got, (al, bl))
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9, msg=name)
        torch.testing.assert_close(gal, ga[sl], rtol=1e-7, atol=1e-9, msg=name)
        torch.testing.assert_close(gbl, gb[sl], rtol=1e-7, atol=1e-9, msg=name)


def _compare(label, ref, got, sl, world):
    v_ref, gx_ref, gy_ref, gt_ref = ref
    v, gx, gy, gt = got
    try:
        torch.testing.assert_close(v, v_ref, rtol=1e-9, atol=1e-9)
        # DDP convention: each rank's local gradient is world x the single-process one ...
        torch.testing.assert_close(gx / world, gx_ref[..., sl, :], rtol=1e-7, atol=1e-9)
        torch.testing.assert_close(gy / world, gy_ref[..., sl, :], rtol=1e-7, atol=1e-9)
        # ... and the replicated temperature's gradients average to the single-process one
        tau_avg = distributed.all_reduce(gt.detach()) / world
        torch.testing.assert_close(tau_avg, gt_ref, rtol=1e-7, atol=1e-9)
    except AssertionError as e:
        raise AssertionError(f"{label}: {e}") from None


class _Pair(torch.nn.Module):
    """Two encoders and a learnt temperature; forward returns (gathered) cosine scores."""

    def __init__(self, gather):
        super().__init__()
        torch.manual_seed(0)
        f, g = torch.nn.Linear(D, 4).double(), torch.nn.Linear(D, 4).double()
        self.critic = mibounds.nn.SeparableCritic(
            f, g, similarity="cosine", temperature=0.5, learn_temperature=True, gather=gather
        ).double()

    def forward(self, x, y):
        return self.critic(x, y)


def _check_ddp(rank, world, sizes):
    """One DDP step with gathered symmetric InfoNCE: the averaged parameter gradients equal the
    single-process gradients on the concatenated batch."""
    n = sum(sizes)
    start = sum(sizes[:rank])
    x, y = _data(n)
    single = _Pair(False)
    ref_loss = -mibounds.infonce(single(x, y), symmetric=True)
    ref_loss.backward()
    ddp = torch.nn.parallel.DistributedDataParallel(_Pair(True))
    xl, yl = x[start : start + sizes[rank]], y[start : start + sizes[rank]]
    loss = -mibounds.infonce(ddp(xl, yl), symmetric=True)
    torch.testing.assert_close(loss.detach(), ref_loss.detach(), rtol=1e-9, atol=1e-9)
    loss.backward()
    for p, r in zip(ddp.module.parameters(), single.parameters(), strict=True):
        torch.testing.assert_close(p.grad, r.grad, rtol=1e-7, atol=1e-9)


def _check_errors(rank, world):
    x, y = _data(4)
    with pytest.raises(ValueError, match=r"N_local, N_global"):
        mibounds.infonce(x @ y.mT, gather=True)  # 4 x 4 on each rank: not N_global columns
    with pytest.raises(ValueError, match="reduction='none'"):
        mibounds.infonce(mibounds.SeparableScores(x, y, gather=True), reduction="none")
    with pytest.raises(ValueError, match="gather"):
        mibounds.interpolated(mibounds.SeparableScores(x, y, gather=True))
    xd = torch.randn(4, 3 + rank)
    with pytest.raises(ValueError, match="ranks must agree"):
        mibounds.infonce(mibounds.SeparableScores(xd, xd, gather=True))


def _worker(rank, world, init_file, errors, sizes):
    try:
        dist.init_process_group(
            "gloo",
            init_method=f"file://{init_file}",
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=120),
        )
        torch.set_num_threads(1)
        _check_bounds(rank, world, sizes, ())
        _check_bounds(rank, world, sizes, (2,))
        _check_ddp(rank, world, sizes)
        _check_fmicl(rank, world, sizes)
        _check_pairings(rank, world, sizes)
        _check_rank_local(rank, world, sizes)
        _check_errors(rank, world)
        dist.barrier()
        dist.destroy_process_group()
    except BaseException:
        with open(errors, "a") as fh:
            fh.write(f"rank {rank}:\n{traceback.format_exc()}\n")
        raise
    # Every check passed. Leave without running the interpreter's and C++ static teardown:
    # gloo's background threads (DDP's among them) can abort the process at exit ("terminate
    # called without an active exception") after all the work is done, about once in ten runs.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@pytest.mark.parametrize("sizes", [[3, 5], [2, 4, 3]], ids=["2-ranks", "3-ranks-uneven"])
def test_gathered_bounds_match_one_process(sizes):
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        errors = os.path.join(tmp, "errors")
        try:
            mp.spawn(_worker, args=(len(sizes), init_file, errors, sizes), nprocs=len(sizes))
        except Exception:
            msg = Path(errors).read_text() if os.path.exists(errors) else ""
            pytest.fail(f"a worker failed:\n{msg}")


def test_gather_needs_a_process_group():
    x = torch.randn(4, 3)
    with pytest.raises(RuntimeError, match="init_process_group"):
        mibounds.infonce(mibounds.SeparableScores(x, x, gather=True))
    with pytest.raises(RuntimeError, match="init_process_group"):
        mibounds.nwj(x @ x.mT, gather=True)
    with pytest.raises(TypeError, match="gather must be"):
        mibounds.dv(x @ x.mT, gather="yes")
    assert distributed.resolve_group(False) is None
