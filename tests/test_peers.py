"""The peers' own call patterns: pytorch-metric-learning's distances, reducers, wrappers and
edge cases, lightly's single-process gather and memory bank, the peers' class names; against
the references of tests/reference.py and, where it is installed, the real
pytorch-metric-learning."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import mibounds
from mibounds.contrastive import NTXentLoss, PMLNTXentLoss, SupConLoss
from mibounds.contrastive import lightly as lightly_ns
from mibounds.contrastive import open_clip as open_clip_ns
from mibounds.contrastive import pml as pml_ns
from tests import reference as ref

TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=2e-5, atol=2e-5)}


# --- stand-ins with pytorch-metric-learning's class names and attributes ---------------------


class CosineSimilarity:
    normalize_embeddings, power, is_inverted = True, 1, True


class DotProductSimilarity:
    def __init__(self, normalize_embeddings=True, power=1):
        self.normalize_embeddings, self.power, self.is_inverted = normalize_embeddings, power, True


class LpDistance:
    def __init__(self, normalize_embeddings=True, p=2, power=1):
        self.normalize_embeddings, self.p, self.power = normalize_embeddings, p, power
        self.is_inverted = False


class MeanReducer:
    pass


class AvgNonZeroReducer:
    low, high = 0, None


class PerAnchorReducer:
    def __init__(self, reducer=None):
        self.reducer = reducer


class DoNothingReducer:
    pass


class SNRDistance:
    pass


class ClassWeightedReducer:
    pass


def _data(dtype, m=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(10, 5, generator=g, dtype=torch.float64).to(dtype)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 0, 3, 3, 4])
    if m is None:
        return z, labels, None, None
    r = torch.randn(m, 5, generator=g, dtype=torch.float64).to(dtype)
    return z, labels, r, torch.randint(0, 4, (m,), generator=g)


def _grads(fn, *ts):
    ts = [t.detach().clone().requires_grad_(True) for t in ts if t is not None]
    v = fn(*ts)
    return v.detach(), torch.autograd.grad(v, ts)


def _close(ours, theirs, tensors, dtype):
    got, got_g = _grads(ours, *tensors)
    want, want_g = _grads(theirs, *tensors)
    torch.testing.assert_close(got, want, **TOL[dtype])
    for a, b in zip(got_g, want_g, strict=True):
        torch.testing.assert_close(a, b, **TOL[dtype])


DISTANCES = {
    "cosine": (CosineSimilarity, ("cosine",), True),
    "dot-raw": (lambda: DotProductSimilarity(normalize_embeddings=False), ("cosine",), False),
    "lp": (LpDistance, ("lp", 2.0, 1.0), True),
    "lp-squared": (lambda: LpDistance(power=2), ("lp", 2.0, 2.0), True),
    "l1-raw": (lambda: LpDistance(normalize_embeddings=False, p=1), ("lp", 1.0, 1.0), False),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("refs", [None, 14, 4], ids=["own", "more-refs", "fewer-refs"])
@pytest.mark.parametrize("name", list(DISTANCES))
def test_pml_distances(dtype, refs, name):
    """``distance=`` of pytorch-metric-learning on both losses, values and gradients, with the
    embeddings as their own references, a cross-batch memory, and fewer references than
    anchors."""
    make, dist, normalize = DISTANCES[name]
    z, labels, r, rl = _data(dtype, refs)
    tau = 0.2 if normalize else 2.0  # raw dot products: keep exp() inside float32

    def theirs_nt(z, r=None):
        return ref.pml_ntxent(z, labels, tau, r, rl, distance=dist, normalize=normalize).mean()

    def call(r):
        return {} if r is None else dict(ref_emb=r, ref_labels=rl)

    def ours_nt(z, r=None):
        return pml_ns.NTXentLoss(tau, distance=make())(z, labels, **call(r))

    _close(ours_nt, theirs_nt, [z, r], dtype)

    def theirs_sc(z, r=None):
        per = ref.supcon_loss(z, labels, tau, r, rl, True, distance=dist, normalize=normalize)
        return ref.pml_reduce(per, "avg_non_zero")

    def ours_sc(z, r=None):
        return SupConLoss(tau, distance=make())(z, labels, **call(r))

    _close(ours_sc, theirs_sc, [z, r], dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_pml_reducers(dtype):
    z, labels, _, _ = _data(dtype)
    n = z.shape[0]
    anchors = [a for a in range(n) for k in range(n) if a != k and labels[a] == labels[k]]
    cases = {
        "mean": (MeanReducer, "mean"),
        "avg_non_zero": (AvgNonZeroReducer, "avg_non_zero"),
        "per_anchor": (lambda: PerAnchorReducer(), "per_anchor"),
        "per_anchor_avg_non_zero": (
            lambda: PerAnchorReducer(AvgNonZeroReducer()),
            "per_anchor_avg_non_zero",
        ),
    }
    for make, how in cases.values():
        _close(
            lambda z, make=make: PMLNTXentLoss(0.2, reducer=make())(z, labels),
            lambda z, how=how: ref.pml_reduce(ref.pml_ntxent(z, labels, 0.2), how, anchors, n),
            [z],
            dtype,
        )
        # SupCon's losses are per anchor: the per-anchor reducer passes them to its inner one
        inner = how.replace("per_anchor_", "").replace("per_anchor", "mean")
        _close(
            lambda z, make=make: SupConLoss(0.2, reducer=make())(z, labels),
            lambda z, inner=inner: ref.pml_reduce(
                ref.supcon_loss(z, labels, 0.2, per_anchor=True), inner
            ),
            [z],
            dtype,
        )
    out = PMLNTXentLoss(0.2, reducer=DoNothingReducer())(z, labels)
    info = out["loss"]
    assert info["reduction_type"] == "pos_pair"
    torch.testing.assert_close(info["losses"], ref.pml_ntxent(z, labels, 0.2), **TOL[dtype])
    assert info["indices"][0].tolist() == anchors
    out = SupConLoss(0.2, reducer=DoNothingReducer())(z, labels)
    assert out["loss"]["reduction_type"] == "element"
    want = ref.supcon_loss(z, labels, 0.2, per_anchor=True)
    torch.testing.assert_close(out["loss"]["losses"], want, **TOL[dtype])


@pytest.mark.parametrize("cls", [PMLNTXentLoss, SupConLoss])
@pytest.mark.parametrize("labels", [[0], [0, 0, 0], [1, 2, 3]])
@pytest.mark.parametrize("lp", [False, True])
def test_pml_losses_without_pairs_are_zero_with_zero_gradients(cls, labels, lp):
    """A single embedding, one label throughout (no negative pair) or all labels different
    (no positive pair): 0 and a zero gradient, as pytorch-metric-learning returns."""
    z = torch.randn(len(labels), 2, requires_grad=True)
    loss = cls(0.1, **({"distance": LpDistance()} if lp else {}))(z, torch.tensor(labels))
    loss.backward()
    assert float(loss) == 0.0 and z.grad is not None and float(z.grad.abs().max()) == 0.0


def test_pml_supcon_with_fewer_references_than_embeddings():
    z, labels, r, rl = _data(torch.float64, m=3)
    got = SupConLoss(0.1)(z[:4], labels[:4], ref_emb=r, ref_labels=rl)
    per = ref.supcon_loss(z[:4], labels[:4], 0.1, r, rl, per_anchor=True)
    torch.testing.assert_close(got, ref.pml_reduce(per, "avg_non_zero"))
    none = SupConLoss(0.1, reduction="none")(z[:4], labels[:4], ref_emb=r, ref_labels=rl)
    torch.testing.assert_close(none, per)


def test_what_has_no_meaning_is_refused_by_name():
    with pytest.raises(ValueError, match="distance=SNRDistance is not supported"):
        SupConLoss(0.1, distance=SNRDistance())
    with pytest.raises(ValueError, match="reducer=ClassWeightedReducer is not supported"):
        PMLNTXentLoss(0.1, reducer=ClassWeightedReducer())
    with pytest.raises(ValueError, match=r"DotProductSimilarity\(power=2\) is not supported"):
        PMLNTXentLoss(0.1, distance=DotProductSimilarity(power=2))
    with pytest.raises(ValueError, match="pass reducer= or reduction=, not both"):
        SupConLoss(0.1, reducer=MeanReducer(), reduction="sum")


def test_the_peers_class_names():
    assert pml_ns.NTXentLoss.__name__ == "NTXentLoss" and issubclass(
        pml_ns.NTXentLoss, PMLNTXentLoss
    )
    assert pml_ns.SupConLoss is SupConLoss
    assert lightly_ns.NTXentLoss is NTXentLoss
    assert open_clip_ns.ClipLoss is mibounds.contrastive.CLIPLoss
    assert open_clip_ns.SigLipLoss is mibounds.contrastive.SigLIPLoss


# --- lightly ----------------------------------------------------------------------------------


def test_lightly_gather_distributed_in_one_process_is_the_ordinary_loss():
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    assert not torch.distributed.is_initialized()
    torch.testing.assert_close(
        NTXentLoss(0.1, gather_distributed=True)(u, v), NTXentLoss(0.1)(u, v)
    )
    # with a memory bank too (lightly fills it from every rank when there are several)
    torch.manual_seed(3)
    a = NTXentLoss(0.1, memory_bank_size=(16, 5), gather_distributed=True)
    torch.manual_seed(3)
    b = NTXentLoss(0.1, memory_bank_size=(16, 5))
    for _ in range(2):
        ua, va = u.clone().requires_grad_(), v.clone()
        torch.testing.assert_close(a(ua, va), b(ua, va))
    torch.testing.assert_close(a.bank, b.bank)
    with pytest.raises(ValueError, match="a memory bank with gather is not supported"):
        NTXentLoss(0.1, memory_bank_size=16, gather=True)


def test_lightly_gather_distributed_without_torch_distributed(monkeypatch):
    monkeypatch.setattr(torch.distributed, "is_available", lambda: False)
    with pytest.raises(ValueError, match="gather_distributed=True needs torch.distributed"):
        NTXentLoss(0.1, gather_distributed=True)


def test_lightly_memory_bank_starts_as_lightly_draws_it():
    """lightly (1.4.25 and later, 1.6.0 included) draws ``normalize(randn(K, d), dim=-1)``."""
    torch.manual_seed(123)
    loss = NTXentLoss(0.5, memory_bank_size=(8, 6))
    torch.manual_seed(123)
    torch.testing.assert_close(loss.bank, F.normalize(torch.randn(8, 6), dim=-1))


# --- per-sample terms on dense scores with a pairing ------------------------------------------


@pytest.mark.parametrize("symmetric", [False, True])
def test_dense_scores_with_a_pairing_give_per_sample_terms(symmetric):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    dense = mibounds.DenseScores(x @ x.T / 0.5, labels=labels, exclude="self")
    sep = mibounds.SeparableScores(x, x, "dot", 0.5, labels=labels, exclude="self")
    got = mibounds.infonce(dense, reduction="none", symmetric=symmetric)
    torch.testing.assert_close(got, mibounds.infonce(sep, reduction="none", symmetric=symmetric))
    torch.testing.assert_close(got.mean(), mibounds.infonce(dense, symmetric=symmetric))
    # the losses: log|C_a| - term, against the per-anchor SupCon reference (dot scores)
    if not symmetric:
        per = ref.supcon_loss(x, labels, 0.5, per_anchor=True, normalize=False)
        torch.testing.assert_close(math.log(5) - got, per)


# --- against pytorch-metric-learning itself, where it is installed ----------------------------


def test_against_pytorch_metric_learning():
    pml = pytest.importorskip("pytorch_metric_learning")
    from pytorch_metric_learning import distances as D
    from pytorch_metric_learning import losses as L
    from pytorch_metric_learning import reducers as R

    assert pml.__version__
    torch.manual_seed(0)
    z = torch.randn(10, 5, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 0, 3, 3, 4])
    r3, rl3 = torch.randn(3, 5, dtype=torch.float64), torch.tensor([0, 1, 3])
    r14, rl14 = torch.randn(14, 5, dtype=torch.float64), torch.randint(0, 4, (14,))
    options = [
        {},
        {"distance": D.DotProductSimilarity(normalize_embeddings=False)},
        {"distance": D.LpDistance()},
        {"distance": D.LpDistance(p=1, power=2, normalize_embeddings=False)},
        {"reducer": R.MeanReducer()},
        {"reducer": R.AvgNonZeroReducer()},
        {"reducer": R.ThresholdReducer(low=2.0, high=6.0)},
    ]
    for cls in ("NTXentLoss", "SupConLoss"):
        for kw in options:
            for call in (
                {},
                {"ref_emb": r3, "ref_labels": rl3},
                {"ref_emb": r14, "ref_labels": rl14},
            ):
                theirs = getattr(L, cls)(0.5, **kw)
                ours = getattr(pml_ns, cls)(0.5, **kw)  # the library's own objects
                za, zb = z.clone().requires_grad_(), z.clone().requires_grad_()
                t, o = theirs(za, labels, **call), ours(zb, labels, **call)
                (gt,), (go,) = torch.autograd.grad(t, za), torch.autograd.grad(o, zb)
                torch.testing.assert_close(o, t, rtol=1e-9, atol=1e-9, msg=f"{cls} {kw} {call}")
                torch.testing.assert_close(go, gt, rtol=1e-8, atol=1e-9)
        # the per-anchor reducer (the library needs the references to be the embeddings)
        per = getattr(L, cls)(0.5, reducer=R.PerAnchorReducer(R.AvgNonZeroReducer()))
        ours_per = getattr(pml_ns, cls)(0.5, reducer=R.PerAnchorReducer(R.AvgNonZeroReducer()))
        torch.testing.assert_close(ours_per(z, labels), per(z, labels))
    # the library's wrappers take our losses by their class names
    for cls in ("NTXentLoss", "SupConLoss"):
        ours_mem = L.CrossBatchMemory(getattr(pml_ns, cls)(0.1), embedding_size=5, memory_size=16)
        their_mem = L.CrossBatchMemory(getattr(L, cls)(0.1), embedding_size=5, memory_size=16)
        for _ in range(3):
            e = torch.randn(6, 5, dtype=torch.float64)
            lab = torch.randint(0, 3, (6,))
            torch.testing.assert_close(ours_mem(e, lab), their_mem(e, lab))
        e, a = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
        ours_ss = L.SelfSupervisedLoss(getattr(pml_ns, cls)(0.1))
        torch.testing.assert_close(ours_ss(e, a), L.SelfSupervisedLoss(getattr(L, cls)(0.1))(e, a))
    # no pairs: 0 (and the float32 case of the library's own tests)
    for labels_ in ([0], [0, 0, 0], [1, 2, 3]):
        e = torch.randn(len(labels_), 2)
        for cls in ("NTXentLoss", "SupConLoss"):
            assert float(getattr(pml_ns, cls)(0.1)(e, torch.tensor(labels_))) == 0.0


# --- float32 accuracy: at least that of the dense loss --------------------------------------


def test_lightly_exact_cases_in_float32():
    """lightly's own exact-value cases: embeddings all on one line give log(2N - 1) (one
    candidate each: exactly 0), within lightly's tolerance (relative 1e-6) on every draw."""
    g = torch.Generator().manual_seed(0)
    for n in (1, 2, 8, 16):
        for tau in (0.1, 1.0, 7.0):
            for _ in range(50):
                a, b = torch.rand(n, 1, generator=g), torch.rand(n, 1, generator=g)
                out0, out1 = torch.cat([a, 2 * a], 1), torch.cat([b, 2 * b], 1)
                got = float(NTXentLoss(tau)(out0, out1))
                if n == 1:
                    assert got == 0.0
                else:
                    assert got == pytest.approx(math.log(2 * n - 1), rel=1e-6)


def _dense_ntxent(u, v, tau):
    """NT-Xent as a dense cross-entropy (lightly's formula), in the features' dtype."""
    z = F.normalize(torch.cat([u, v]), dim=1)
    s = z @ z.T / tau
    s.fill_diagonal_(-math.inf)
    n = u.shape[0]
    return F.cross_entropy(s, torch.cat([torch.arange(n, 2 * n), torch.arange(n)]))


def _dense_supcon(z, labels, tau):
    zn = F.normalize(z, dim=1)
    s = (zn @ zn.T / tau).fill_diagonal_(-math.inf)
    pos = (labels[:, None] == labels[None, :]).fill_diagonal_(False)
    logp = s - torch.logsumexp(s, 1, keepdim=True)
    per = -(logp.masked_fill(~pos, 0).sum(1) / pos.sum(1).clamp_min(1))
    return per[pos.any(1)].mean()


def test_float32_at_least_as_accurate_as_the_dense_loss():
    """Over random draws, the streamed float32 losses are no further from float64 than the
    dense float32 computation their peers use (the largest error over the draws, with one
    float32 rounding of slack)."""
    g = torch.Generator().manual_seed(0)
    worst = {"ntxent": [0.0, 0.0], "supcon": [0.0, 0.0]}
    for draw in range(100):
        n, d = 4 + draw % 13, 3 + draw % 7
        u = torch.randn(n, d, generator=g, dtype=torch.float64)
        v = u + 0.3 * torch.randn(n, d, generator=g, dtype=torch.float64)
        tau = (0.05, 0.1, 0.5, 1.0)[draw % 4]
        truth = float(_dense_ntxent(u, v, tau))
        ours = float(NTXentLoss(tau)(u.float(), v.float()))
        dense = float(_dense_ntxent(u.float(), v.float(), tau))
        worst["ntxent"][0] = max(worst["ntxent"][0], abs(ours - truth) / truth)
        worst["ntxent"][1] = max(worst["ntxent"][1], abs(dense - truth) / truth)
        labels = torch.arange(2 * n) % max(2, n // 2)
        z = torch.cat([u, v])
        truth = float(_dense_supcon(z, labels, tau))
        ours = float(SupConLoss(tau)(z.float(), labels))
        dense = float(_dense_supcon(z.float(), labels, tau))
        worst["supcon"][0] = max(worst["supcon"][0], abs(ours - truth) / truth)
        worst["supcon"][1] = max(worst["supcon"][1], abs(dense - truth) / truth)
    for name, (ours_err, dense_err) in worst.items():
        assert ours_err <= dense_err + 1.2e-7, (name, ours_err, dense_err)
