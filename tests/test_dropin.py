"""The peers' own call patterns, replayed against the references in tests/reference.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mibounds.contrastive import CLIPLoss, MoCoLoss, NTXentLoss, SigLIPLoss, SupConLoss
from tests import reference as ref


def _pair(n=9, d=6, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    v = F.normalize(u + 0.7 * torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    return u.to(dtype), v.to(dtype)


def _value_and_grads(fn, *tensors):
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    out = fn(*leaves)
    value = out["contrastive_loss"] if isinstance(out, dict) else out
    grads = torch.autograd.grad(value, leaves, allow_unused=True)
    return value, [
        torch.zeros_like(t) if g is None else g for t, g in zip(leaves, grads, strict=True)
    ]


TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-6, atol=1e-6)}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_openclip_training_loop_call(dtype):
    """OpenCLIP's loop: ``loss(**model_out, output_dict=True)`` with and without a logit bias
    (CLIP models built with init_logit_bias pass one); the constructor's arguments."""
    u, v = _pair(dtype=dtype)
    scale = torch.tensor(7.0, dtype=dtype)
    bias = torch.tensor(-2.5, dtype=dtype)
    loss_fn = CLIPLoss(local_loss=False, gather_with_grad=False, cache_labels=True, rank=0,
                       world_size=1, use_horovod=False)  # fmt: skip
    for model_out in (
        {"image_features": u, "text_features": v, "logit_scale": scale},
        {"image_features": u, "text_features": v, "logit_scale": scale, "logit_bias": bias},
    ):
        out = loss_fn(**model_out, output_dict=True)
        assert set(out) == {"contrastive_loss"}
        keys = list(model_out)

        def ours(*t, keys=keys):
            return loss_fn(**dict(zip(keys, t, strict=True)), output_dict=True)

        def theirs(*t, keys=keys):
            return ref.openclip_clip_loss(*t)

        got, got_g = _value_and_grads(ours, *model_out.values())
        want, want_g = _value_and_grads(theirs, *model_out.values())
        torch.testing.assert_close(got, want, **TOL[dtype])
        for a, b in zip(got_g, want_g, strict=True):
            torch.testing.assert_close(a, b, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("with_bias", [True, False])
def test_openclip_siglip_call(dtype, with_bias):
    u, v = _pair(dtype=dtype)
    scale = torch.tensor(10.0, dtype=dtype)
    bias = torch.tensor(-10.0, dtype=dtype) if with_bias else None
    loss_fn = SigLIPLoss(cache_labels=False, rank=0, world_size=1, dist_impl="bidir")
    got, got_g = _value_and_grads(
        lambda a, b, t: loss_fn(a, b, t, bias, output_dict=True), u, v, scale
    )
    want, want_g = _value_and_grads(lambda a, b, t: ref.openclip_siglip_loss(a, b, t, bias), u, v,
                                    scale)  # fmt: skip
    torch.testing.assert_close(got, want, **TOL[dtype])
    for a, b in zip(got_g, want_g, strict=True):
        torch.testing.assert_close(a, b, **TOL[dtype])
    # positional, as OpenCLIP's loop calls it without output_dict
    torch.testing.assert_close(loss_fn(u, v, scale, bias), want, **TOL[dtype])


def test_openclip_arguments_that_cannot_mean_the_same_are_refused_by_name():
    with pytest.raises(ValueError, match="use_horovod=True is not supported"):
        CLIPLoss(use_horovod=True)
    with pytest.raises(ValueError, match="local_loss=True"):
        CLIPLoss(local_loss=True, world_size=2, rank=1)
    with pytest.raises(ValueError, match="rank must be an int in"):
        CLIPLoss(rank=3, world_size=2)
    with pytest.raises(ValueError, match="dist_impl must be one of"):
        SigLIPLoss(dist_impl="ring")
    with pytest.raises(TypeError, match="output_dict must be a bool"):
        CLIPLoss()(*_pair(), 10.0, None, "yes")
    assert CLIPLoss(world_size=4, rank=2).gather is True  # world_size > 1 gathers
    assert CLIPLoss().gather is False


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_the_loss_comes_back_in_the_features_dtype(dtype):
    u, v = _pair(dtype=torch.float32)
    u, v = u.to(dtype), v.to(dtype)
    labels = torch.arange(9) % 3
    queue = _pair(n=5, seed=3)[0].to(dtype)
    losses = {
        "clip": CLIPLoss()(u, v, 10.0),
        "siglip": SigLIPLoss()(u, v, 10.0, -10.0),
        "ntxent": NTXentLoss()(u, v),
        "supcon": SupConLoss()(u, labels),
        "moco": MoCoLoss()(u, v, queue),
    }
    for name, loss in losses.items():
        assert loss.dtype == dtype, name
    # accumulated in float32: the rounding of the result is the only difference
    want = ref.openclip_clip_loss(u.double(), v.double(), torch.tensor(10.0, dtype=torch.float64))
    torch.testing.assert_close(losses["clip"].double(), want, rtol=1e-2, atol=1e-2)


# --- lightly: positional arguments, gather_distributed and the memory bank ------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_lightly_memory_bank_recipe(dtype):
    """``NTXentLoss(memory_bank_size=(K, d))`` as lightly computes it: the bank starts as K
    random unit vectors (the same draws as lightly's from the same seed), the views are
    normalised, the bank is read before it is updated with the normalised out1 rows."""
    k, d = 11, 6
    torch.manual_seed(0)
    loss_fn = NTXentLoss(0.5, (k, d))
    torch.manual_seed(0)
    first_bank = F.normalize(torch.randn(d, k), dim=0).T  # lightly: randn(dim, size), dim 0
    torch.testing.assert_close(loss_fn.bank, first_bank)
    loss_fn = loss_fn.to(dtype)
    for step in range(3):
        out0, out1 = _pair(n=4, dtype=dtype, seed=step)
        out0 = 3.0 * out0  # unnormalised: lightly normalises them
        held = loss_fn.bank.clone()
        got, got_g = _value_and_grads(loss_fn, out0, out1)
        want, want_g = _value_and_grads(
            lambda a, b, held=held: ref.lightly_ntxent_bank(a, b, held, 0.5), out0, out1
        )
        torch.testing.assert_close(got, want, **TOL[dtype])
        for a, b in zip(got_g, want_g, strict=True):
            torch.testing.assert_close(a, b, **TOL[dtype])
    # after 3 updates of 4 rows into 11 slots: the third batch was cut at the end (lightly
    # drops the rest), and the pointer went back to 0
    assert int(loss_fn.bank_ptr) == 0
    last = F.normalize(_pair(n=4, dtype=dtype, seed=2)[1], dim=1)
    torch.testing.assert_close(loss_fn.bank[8:], last[:3], **TOL[dtype])


def test_lightly_memory_bank_is_frozen_without_gradients_and_in_eval():
    loss_fn = NTXentLoss(0.5, memory_bank_size=8)
    out0, out1 = _pair(n=4, dtype=torch.float32)
    loss_fn(out0, out1)  # the bank is made on the first call (8 x 6), no gradient: no update
    before = loss_fn.bank.clone()
    with torch.no_grad():
        loss_fn(out0.requires_grad_(), out1)
    loss_fn.eval()
    loss_fn(out0.detach().requires_grad_(), out1)
    loss_fn.mi(out0, out1)
    torch.testing.assert_close(loss_fn.bank, before)
    loss_fn.train()
    loss_fn(out0.detach().requires_grad_(), out1)
    assert not torch.equal(loss_fn.bank, before) and int(loss_fn.bank_ptr) == 4


def test_lightly_signature_and_gather_distributed():
    u, v = _pair(dtype=torch.float32)
    positional = NTXentLoss(0.1, 0, False)
    torch.testing.assert_close(positional(u, v), NTXentLoss(temperature=0.1)(u, v))
    assert NTXentLoss(gather_distributed=True).gather is True
    with pytest.raises(ValueError, match="memory bank with gather_distributed"):
        NTXentLoss(memory_bank_size=16, gather_distributed=True)
    with pytest.raises(ValueError, match="memory_bank_size must be"):
        NTXentLoss(memory_bank_size=-1)
    with pytest.raises(ValueError, match="out0 must have 5 features"):
        NTXentLoss(memory_bank_size=(8, 5))(u, v)
