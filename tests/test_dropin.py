"""The peers' own call patterns, replayed against the references in tests/reference.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mibounds.contrastive import (
    CLIPLoss,
    MoCoLoss,
    NTXentLoss,
    PMLNTXentLoss,
    SigLIPLoss,
    SupConLoss,
)
from mibounds.kernels.streaming import set_memory_budget
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
    # per-sample losses: the gradient of a weighted sum, so each sample's gradient counts
    weights = torch.linspace(0.5, 1.5, value.numel(), dtype=value.dtype).reshape(value.shape)
    grads = torch.autograd.grad((value * weights).sum(), leaves, allow_unused=True)
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
    with pytest.raises(TypeError, match="local_loss must be a bool"):
        CLIPLoss(local_loss="yes")
    assert CLIPLoss(local_loss=True, world_size=2, rank=1).local  # the rank's own loss
    assert not CLIPLoss(local_loss=True).local  # one process: the loss of the batch
    assert SigLIPLoss(world_size=2, rank=0).local and not SigLIPLoss(gather=True).local
    # lightly's gather_distributed: the rank's own loss, with several processes only
    assert NTXentLoss(gather_distributed=True).gather_distributed
    assert not NTXentLoss(gather=True).gather_distributed
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
    random unit vectors (the same draws as lightly's, 1.4.25 and later, from the same seed),
    the views are normalised, the bank is read before it is updated with the normalised out1
    rows."""
    k, d = 11, 6
    torch.manual_seed(0)
    loss_fn = NTXentLoss(0.5, (k, d))
    torch.manual_seed(0)
    first_bank = F.normalize(torch.randn(k, d), dim=-1)  # lightly: randn(size, dim), dim -1
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
    # one process: lightly's gather_distributed is the ordinary loss (no process group needed)
    torch.testing.assert_close(NTXentLoss(0.1, gather_distributed=True)(u, v), positional(u, v))
    with pytest.raises(ValueError, match="memory bank with gather is not supported"):
        NTXentLoss(memory_bank_size=16, gather=True)
    with pytest.raises(ValueError, match="memory_bank_size must be"):
        NTXentLoss(memory_bank_size=-1)
    with pytest.raises(ValueError, match="out0 must have 5 features"):
        NTXentLoss(memory_bank_size=(8, 5))(u, v)


def _labelled(n=10, m=None, dtype=torch.float64, seed=1):
    """Embeddings with repeated labels (one label of a single sample: no positive)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 5, generator=g, dtype=torch.float64).to(dtype)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 0, 3, 3, 4][:n])
    if m is None:
        return z, labels
    r = torch.randn(m, 5, generator=g, dtype=torch.float64).to(dtype)
    return z, labels, r, torch.randint(0, 4, (m,), generator=g)


def _close(ours, theirs, tensors, dtype):
    got, got_g = _value_and_grads(ours, *tensors)
    want, want_g = _value_and_grads(theirs, *tensors)
    torch.testing.assert_close(got, want, **TOL[dtype])
    # float32 gradients of a sum over many pairs: two summation orders differ by a few ulp
    grad_tol = TOL[dtype] if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    for a, b in zip(got_g, want_g, strict=True):
        torch.testing.assert_close(a, b, **grad_tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_pml_ntxent_embeddings_and_labels(dtype, reduction):
    """pytorch-metric-learning's ``NTXentLoss()(embeddings, labels)`` and its cross-batch
    memory ``ref_emb`` / ``ref_labels``: per positive pair, the negatives of the anchor only."""
    z, labels, r, rl = _labelled(m=14, dtype=dtype)
    reduce = {"mean": torch.mean, "sum": torch.sum, "none": lambda t: t}[reduction]
    assert PMLNTXentLoss().temperature == 0.07  # pytorch-metric-learning's default
    # at 0.07 the float64 gradients of the two summation orders differ by ~1e-10: 0.2 here
    loss = PMLNTXentLoss(0.2, reduction=reduction)
    _close(lambda z: loss(z, labels), lambda z: reduce(ref.pml_ntxent(z, labels, 0.2)), [z], dtype)
    _close(
        lambda z, r: loss(z, labels, ref_emb=r, ref_labels=rl),
        lambda z, r: reduce(ref.pml_ntxent(z, labels, 0.2, r, rl)),
        [z, r],
        dtype,
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_pml_miner_indices_tuple(dtype):
    """A miner's triplets ``(a, p, n)`` and pairs ``(a1, p, a2, n)``, for NT-Xent and SupCon."""
    z, labels = _labelled(dtype=dtype)
    a, p, n = (
        torch.tensor([0, 1, 2, 2, 7]),
        torch.tensor([1, 0, 3, 3, 8]),
        torch.tensor([4, 5, 6, 0, 1]),
    )
    a2, n2 = torch.tensor([0, 0, 2, 7, 7]), torch.tensor([2, 9, 9, 0, 2])
    for tup, pairs in (((a, p, n), (a, p, a, n)), ((a, p, a2, n2), (a, p, a2, n2))):
        _close(
            lambda z, tup=tup: PMLNTXentLoss(0.1)(z, labels, tup),
            lambda z, pairs=pairs: ref.pml_ntxent(z, labels, 0.1, pairs=pairs).mean(),
            [z],
            dtype,
        )
        per_anchor = ref.pml_supcon_listed  # pytorch-metric-learning averages the non-zero ones
        _close(
            lambda z, tup=tup: SupConLoss(0.1, reduction="none")(z, None, tup),
            lambda z, pairs=pairs: per_anchor(z, 0.1, pairs),
            [z],
            dtype,
        )
        want = per_anchor(z, 0.1, pairs)
        want = want.sum() / (want != 0).sum()
        torch.testing.assert_close(SupConLoss(0.1)(z, labels, tup), want, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_pml_supcon_call_with_reference_embeddings(dtype):
    z, labels, r, rl = _labelled(m=14, dtype=dtype)
    _close(
        lambda z, r: SupConLoss(0.1)(z, labels, None, r, rl),
        lambda z, r: ref.supcon_loss(z, labels, 0.1, r, rl),
        [z, r],
        dtype,
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_per_anchor_losses_of_every_loss_streamed(dtype):
    """``reduction="none"``: one loss per anchor for every pairing (labels, excluded self-pairs,
    a queue, a bias), through panels of a few rows (a 4 KiB panel budget)."""
    u, v = _pair(dtype=dtype)
    scale, bias = torch.tensor(6.0, dtype=dtype), torch.tensor(-2.0, dtype=dtype)
    z, labels = _labelled(dtype=dtype)
    queue = _pair(n=11, seed=3, dtype=dtype)[0]
    cases = [
        (lambda u, v: CLIPLoss(reduction="none")(u, v, scale),
         lambda u, v: ref.openclip_clip_loss(u, v, scale, reduction="none"), [u, v]),
        (lambda u, v: SigLIPLoss(reduction="none")(u, v, scale, bias),
         lambda u, v: ref.openclip_siglip_loss(u, v, scale, bias, per_image=True), [u, v]),
        (lambda u, v: NTXentLoss(0.5, reduction="none")(u, v),
         lambda u, v: ref.lightly_ntxent(u, v, 0.5, reduction="none"), [u, v]),
        (lambda z: SupConLoss(0.1, reduction="none")(z, labels),
         lambda z: ref.supcon_loss(z, labels, 0.1, per_anchor=True), [z]),
        (lambda u, v: MoCoLoss(0.2, reduction="none")(u, v, queue),
         lambda u, v: ref.moco_loss(u, v, queue, 0.2, reduction="none"), [u, v]),
        (lambda u, v: CLIPLoss(reduction="sum")(u, v, scale),
         lambda u, v: ref.openclip_clip_loss(u, v, scale, reduction="sum"), [u, v]),
    ]  # fmt: skip
    set_memory_budget(4096)
    try:
        for ours, theirs, tensors in cases:
            _close(ours, theirs, tensors, dtype)
    finally:
        set_memory_budget(None)
    # the mean of the per-anchor losses is the loss (SupCon: over the anchors with a positive)
    per = SupConLoss(0.1, reduction="none")(z, labels)
    torch.testing.assert_close(per.sum() / (per != 0).sum(), SupConLoss(0.1)(z, labels))


def test_pml_calls_refused_with_the_argument_named():
    z, labels, r, rl = _labelled(m=14, dtype=torch.float32)
    with pytest.raises(TypeError, match="PMLNTXentLoss"):
        NTXentLoss()(z, labels)
    with pytest.raises(ValueError, match="ref_labels is required"):
        PMLNTXentLoss()(z, labels, ref_emb=r)
    with pytest.raises(ValueError, match="ref_labels was given without ref_emb"):
        SupConLoss()(z, labels, ref_labels=rl)
    with pytest.raises(
        ValueError, match=r"indices_tuple\[1\] \(p\) must hold indices in \[0, 10\)"
    ):
        PMLNTXentLoss()(z, labels, (torch.tensor([0]), torch.tensor([12]), torch.tensor([1])))
    with pytest.raises(ValueError, match=r"ref_labels must have shape \(4,\)"):
        SupConLoss()(z, labels, ref_emb=r[:4], ref_labels=rl[:3])
    with pytest.raises(ValueError, match="reduction must be one of"):
        PMLNTXentLoss(reduction="avg")
    # no positive pair: 0 with a zero gradient, as pytorch-metric-learning returns
    zz = z.clone().requires_grad_(True)
    out = PMLNTXentLoss()(zz, torch.arange(10))
    out.backward()
    assert float(out.detach()) == 0.0 and torch.count_nonzero(zz.grad) == 0


@pytest.mark.parametrize("listed", [False, True], ids=["labels", "indices_tuple"])
def test_pml_ntxent_gradient_is_reproducible(listed):
    """The same call gives the same gradient bits every time (the anchors' pairs repeat
    embeddings, and their gradients are summed in a fixed order)."""
    g = torch.Generator().manual_seed(3)
    z = torch.randn(200, 32, generator=g)
    labels = torch.arange(200) % 3
    tup = None
    if listed:
        a = torch.randint(0, 200, (4000,), generator=g)
        tup = (a, (a + 3) % 200, a, (a + 1) % 200)
    grads = []
    for _ in range(6):
        leaf = z.clone().requires_grad_(True)
        PMLNTXentLoss(0.1)(leaf, labels, tup).backward()
        grads.append(leaf.grad)
    for other in grads[1:]:
        assert torch.equal(grads[0], other)
