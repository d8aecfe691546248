"""The small-batch path (:mod:`mibounds.kernels.small`): CLIP's and SigLIP's losses of a batch
whose score matrix is small, reduced from that matrix, against the independent references
(values and gradients, float64 tight, float32 to rounding), its accuracy where the positive
dominates, its range rule, and when it is (and is not) taken."""

from __future__ import annotations

import math

import pytest
import torch

import mibounds
from mibounds.contrastive import CLIPLoss, SigLIPLoss
from mibounds.kernels import cost, small, streaming
from tests import reference as ref

TOL = dict(rtol=1e-10, atol=1e-10)


def _pair(n, d=6, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(n, d, generator=g, dtype=torch.float64)
    v = 0.6 * u + 0.8 * torch.randn(n, d, generator=g, dtype=torch.float64)
    u, v = torch.nn.functional.normalize(u, dim=1), torch.nn.functional.normalize(v, dim=1)
    return u.to(dtype).requires_grad_(True), v.to(dtype).requires_grad_(True)


def _dense_runs() -> int:
    return streaming.path_usage().get("dense", 0)


def _grads(value, inputs):
    return torch.autograd.grad(value, [t for t in inputs if t.requires_grad])


def _clip(u, v, scale, bias=None):
    return CLIPLoss()(u, v, scale, bias)


def _siglip(u, v, scale, bias=None):
    return SigLIPLoss()(u, v, scale, bias)


def _clip_ref(u, v, scale, bias=None):
    return ref.openclip_clip_loss(u, v, scale, bias)


def _siglip_ref(u, v, scale, bias=None):
    return ref.openclip_siglip_loss(u, v, scale, bias)


LOSSES = {"clip": (_clip, _clip_ref), "siglip": (_siglip, _siglip_ref)}


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("n", [2, 3, 17, 64])
@pytest.mark.parametrize("scale_kind", ["tensor", "float"])
@pytest.mark.parametrize("bias_kind", ["none", "tensor", "float"])
def test_matches_the_reference_in_float64(name, n, scale_kind, bias_kind):
    ours, theirs = LOSSES[name]
    u, v = _pair(n, seed=n)
    scale = torch.tensor(7.5, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-2.5, dtype=torch.float64, requires_grad=True)
    s = scale if scale_kind == "tensor" else 7.5
    b = {"none": None, "tensor": bias, "float": -2.5}[bias_kind]
    before = _dense_runs()
    got = ours(u, v, s, b)
    # the small path computed it; CLIP's loss with a bias (which does not change it) streams
    small_path = name == "siglip" or b is None
    assert _dense_runs() == before + small_path
    want = theirs(u, v, scale, None if b is None else bias)
    torch.testing.assert_close(got, want, **TOL)
    inputs = [u, v] + ([scale] if scale_kind == "tensor" else [])
    inputs += [bias] if bias_kind == "tensor" else []
    for a, w in zip(_grads(got, inputs), _grads(want, inputs), strict=True):
        torch.testing.assert_close(a, w, **TOL)


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lower_precision_is_the_float64_value_to_rounding(name, dtype):
    ours, theirs = LOSSES[name]
    u, v = _pair(40, d=16, seed=3)
    scale = torch.tensor(20.0, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-5.0, dtype=torch.float64, requires_grad=True)
    want = theirs(u, v, scale, bias)
    want_g = _grads(want, [u, v, scale, bias])
    ul, vl = (t.detach().to(dtype).requires_grad_(True) for t in (u, v))
    sl, bl = (t.detach().float().requires_grad_(True) for t in (scale, bias))
    got = ours(ul, vl, sl, bl)
    assert got.dtype == dtype
    got_g = _grads(got, [ul, vl, sl, bl])
    assert [g.dtype for g in got_g] == [dtype, dtype, torch.float32, torch.float32]
    # the features themselves are rounded to the dtype: compare with the reference on them
    want = theirs(ul.detach().double(), vl.detach().double(), scale, bias)
    tol = dict(rtol=2e-6, atol=2e-6) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(got.double(), want, **tol)
    limit = 1e-5 if dtype == torch.float32 else 0.05
    for a, w in zip(got_g, want_g, strict=True):
        scale_of = max(1.0, float(w.abs().max()))
        assert float((a.double() - w).abs().max()) / scale_of < limit


def test_matches_the_sweep_to_rounding():
    """The same loss on the small path and on the streamed sweep (forced), float32."""
    u, v = _pair(48, d=12, seed=5, dtype=torch.float32)
    scale = torch.tensor(30.0, requires_grad=True)
    bias = torch.tensor(-8.0, requires_grad=True)
    for loss in (_clip, _siglip):
        got = loss(u, v, scale, bias)
        g = _grads(got, [u, v, scale, bias] if loss is _siglip else [u, v, scale])
        cost.set_path("sweep")
        try:
            before = _dense_runs()
            want = loss(u, v, scale, bias)
            assert _dense_runs() == before
            w = _grads(want, [u, v, scale, bias] if loss is _siglip else [u, v, scale])
        finally:
            cost.set_path(None)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        for a, b in zip(g, w, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_dominant_positive_keeps_its_small_loss():
    """Rows whose positive outscores every other candidate by about 25 nats: each loss is
    about (N - 1) e^-25 = 2e-10, which the dense float32 cross-entropy rounds to 0; here it
    keeps its float32 accuracy (the log1p form of the sweep)."""
    n = 8
    u = torch.eye(n, 16)
    v = torch.eye(n, 16)
    scale = torch.tensor(25.0)
    got = CLIPLoss()(u, v, scale)
    want = ref.openclip_clip_loss(u.double(), v.double(), scale.double())
    assert float(want) > 0
    assert abs(float(got) - float(want)) <= 1e-5 * float(want)
    dense = ref.openclip_clip_loss(u, v, scale)
    assert float(dense) == 0.0  # what the dense float32 formula gives


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("related", [True, False])
def test_every_form_of_the_cross_entropy_matches_the_reference(
    symmetric, dtype, related, monkeypatch
):
    """The dense form (PyTorch's cross-entropy of the logits) where the value is not small;
    below the floor the log1p form, without a shift where the extremes of the logits show
    that the sums of the exponentials stay finite, otherwise from each line's maximum (here
    forced by leaving the unshifted form no room). Every form, with the checks on and off,
    gives the float64 reference's value and gradients, with positives that dominate their
    lines or not (unrelated features: many lines' maxima are elsewhere)."""
    u, v = _pair(12, d=5, seed=21)
    if not related:
        v = torch.randn(12, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
        v.requires_grad_(True)
    scale = torch.tensor(6.0, dtype=torch.float64, requires_grad=True)

    def reference(a, b, k):
        s = k * a @ b.T
        target = torch.arange(a.shape[0])
        rows = torch.nn.functional.cross_entropy(s, target)
        return (rows + torch.nn.functional.cross_entropy(s.T, target)) / 2 if symmetric else rows

    want = reference(u, v, scale)
    assert float(want.detach()) > small._DENSE_FLOOR  # the dense form's value, unless forced
    want_g = _grads(want, [u, v, scale])
    tol = TOL if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    inputs = [t.detach().to(dtype).requires_grad_(True) for t in (u, v, scale)]
    shifts, log1p = [], []
    monkeypatch.setattr(torch.Tensor, "amax", _recording(torch.Tensor.amax, shifts))
    monkeypatch.setattr(small, "_log1p_lines", _counted(small._log1p_lines, log1p))
    for form in ("dense", "log1p", "shifted"):
        if form == "log1p":
            monkeypatch.setattr(small, "_DENSE_FLOOR", math.inf)
        if form == "shifted":
            monkeypatch.setattr(small, "_EXP_ROOM", {torch.float32: 0.0, torch.float64: 0.0})
        for validate in (True, False):
            mibounds.set_validate_args(validate)
            try:
                got = small.cross_entropy(*inputs[:2], 1 / 6.0, symmetric, inputs[2])
            finally:
                mibounds.set_validate_args(True)
            torch.testing.assert_close(got.double(), want, **tol)
            for a, w in zip(_grads(got, inputs), want_g, strict=True):
                torch.testing.assert_close(a.double(), w, **tol)
    assert len(log1p) == 4  # the log1p form only where forced
    assert len(shifts) == 2  # each line's maximum taken only where forced


@pytest.mark.parametrize("bias", [None, -2.0, "tensor"])
def test_the_logits_extremes_read_in_one_copy_as_on_a_gpu(bias):
    """Off the CPU the extremes, the loss's value and a tensor bias are read back in one copy
    (one synchronisation); the same numbers as read one by one."""
    s = torch.tensor([[1.0, -3.0], [4.0, 0.5]])
    value = torch.tensor(0.25)
    b = torch.tensor(-2.0) if bias == "tensor" else bias
    args = (s, s, s, 1.0, None)
    one_by_one = small._read_extremes(*args, bias=b, value=value, stacked=False)
    assert small._read_extremes(*args, bias=b, value=value, stacked=True) == one_by_one
    assert one_by_one == (7.0, 0.25)
    spread, read = small._read_extremes(*args, bias=b, stacked=True)
    assert spread == 7.0 and math.isnan(read)


def _recording(method, calls):
    def recorded(*args, **kwargs):
        calls.append(args[1:])
        return method(*args, **kwargs)

    return recorded


def _counted(function, calls):
    def counted(*args, **kwargs):
        calls.append(None)
        return function(*args, **kwargs)

    return counted


def test_a_dominant_positive_keeps_its_small_loss_in_the_shifted_form(monkeypatch):
    """Formed from each line's maximum, a dominant positive keeps its small loss too."""
    n = 8
    u, v, scale = torch.eye(n, 16), torch.eye(n, 16), torch.tensor(25.0)
    want = ref.openclip_clip_loss(u.double(), v.double(), scale.double())
    monkeypatch.setattr(small, "_EXP_ROOM", {torch.float32: 0.0, torch.float64: 0.0})
    got = CLIPLoss()(u, v, scale)
    assert abs(float(got) - float(want)) <= 1e-5 * float(want)


@pytest.mark.parametrize("form", ["dense", "log1p"])
def test_a_spread_too_wide_for_unshifted_sums_takes_the_shifted_form(form, monkeypatch):
    """Logits spread by more than float32's exponent range (about 88): unshifted, the sums
    of e^(S_ij - S_ii) would overflow; the log1p form (forced here) forms them from each
    line's maximum, and the loss is the float64 reference's in either form."""
    u, v = _pair(6, d=4, seed=8)
    scale = torch.tensor(200.0, dtype=torch.float64)
    want = ref.openclip_clip_loss(u, v, scale)
    s = (scale * u @ v.T).detach()
    assert float(s.max() - s.min()) > 100
    shifts = []
    monkeypatch.setattr(torch.Tensor, "amax", _recording(torch.Tensor.amax, shifts))
    if form == "log1p":
        monkeypatch.setattr(small, "_DENSE_FLOOR", math.inf)
    got = CLIPLoss()(u.detach().float(), v.detach().float(), scale.float())
    assert len(shifts) == (form == "log1p")
    assert math.isfinite(float(got))
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_large_scores_stay_finite(name):
    """Scores of about 1e4 in float32: the loss and its gradients are finite and match the
    float64 reference."""
    ours, theirs = LOSSES[name]
    u, v = _pair(10, d=4, seed=7)
    scale = torch.tensor(1e4, dtype=torch.float64, requires_grad=True)
    want = theirs(u, v, scale, None)
    uf, vf = (t.detach().float().requires_grad_(True) for t in (u, v))
    sf = scale.detach().float().requires_grad_(True)
    got = ours(uf, vf, sf)
    grads = _grads(got, [uf, vf, sf])
    assert math.isfinite(float(got.detach()))
    assert all(bool(torch.isfinite(g).all()) for g in grads)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-2)


def test_overflowing_scores_are_refused_naming_the_temperature():
    u = torch.full((4, 3), 1e19)
    v = torch.full((4, 3), 1e19)
    with pytest.raises(ValueError, match=r"temperature.*overflow"):
        CLIPLoss()(u, v, torch.tensor(1.0))
    with pytest.raises(ValueError, match=r"temperature.*overflow"):
        SigLIPLoss()(u, v, torch.tensor(1.0), torch.tensor(0.0))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_a_logit_scale_whose_inverse_overflows_its_dtype_is_refused(dtype):
    """The temperature 1 / logit_scale must be finite in the scale's own dtype."""
    u, v = _pair(6, dtype=torch.float32)
    tiny = {torch.float16: 1e-5, torch.bfloat16: 1e-39, torch.float32: 1e-39}[dtype]
    scale = torch.tensor(tiny, dtype=dtype)
    assert float(scale) > 0 and math.isinf(float(scale.reciprocal()))
    for loss in (CLIPLoss(), SigLIPLoss()):
        with pytest.raises(ValueError, match=r"logit_scale=.* is too small.*overflows"):
            loss(u, v, scale)
    fine = torch.tensor(4 * tiny if dtype == torch.float16 else 1e-37, dtype=dtype)
    assert math.isfinite(float(CLIPLoss()(u, v, fine).detach()))


def test_nonfinite_features_are_refused_by_name():
    u, v = _pair(6, dtype=torch.float32)
    bad = u.detach().clone()
    bad[2, 1] = math.nan
    with pytest.raises(ValueError, match="image_features must be finite"):
        CLIPLoss()(bad, v, torch.tensor(10.0))
    with pytest.raises(ValueError, match="text_features must be finite"):
        SigLIPLoss()(v, bad, torch.tensor(10.0), torch.tensor(-10.0))


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("where", ["image_features", "text_features"])
@pytest.mark.parametrize(
    "call",
    [
        lambda u, v: CLIPLoss()(u, v, torch.tensor(10.0)),  # the small path
        lambda u, v: SigLIPLoss()(u, v, 10.0, -10.0),  # the small path
        lambda u, v: CLIPLoss(reduction="sum")(u, v, 10.0),  # the bounds' per-row path
        lambda u, v: CLIPLoss()(u, v, 10.0, 1.0),  # a bias: the sweep
        lambda u, v: SigLIPLoss(reduction="none")(u, v, 10.0, -10.0),  # per-row terms
    ],
    ids=["clip", "siglip", "clip-sum", "clip-bias", "siglip-none"],
)
def test_nonfinite_features_are_refused_on_every_path(call, where, value):
    """The small path checks the features' values on its logits' extremes (one read-back for
    the range rule and the values); every other path of the same losses still checks them
    when the arguments are: an infinity makes a line of logits infinite or NaN, and the
    message names the features, not the temperature."""
    u, v = (t.detach() for t in _pair(6, dtype=torch.float32))
    bad = u.clone()
    bad[3, 2] = value
    args = (bad, v) if where == "image_features" else (u, bad)
    with pytest.raises(ValueError, match=f"{where} must be finite"):
        call(*args)
    # with the checks off, the small path's result is not finite (nothing is read back)
    mibounds.set_validate_args(False)
    try:
        out = CLIPLoss()(*args, torch.tensor(10.0))
    finally:
        mibounds.set_validate_args(True)
    assert not math.isfinite(float(out))


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_nonfinite_bias_is_refused_by_name_on_the_small_path(value):
    """SigLIP's small path reads a tensor bias with its logits' extremes (not beside them,
    with the arguments): a NaN or an infinity in it is still refused by its name, before
    the features' values (its own check came first, and still does)."""
    u, v = (t.detach() for t in _pair(6, dtype=torch.float32))
    assert small.covers(u, v, "dot", "sigmoid")
    for bias in (torch.tensor(value), torch.tensor([value]), torch.tensor(value).double()):
        with pytest.raises(ValueError, match="logit_bias must be finite"):
            SigLIPLoss()(u, v, torch.tensor(10.0), bias)
        bad = u.clone()
        bad[0, 0] = math.nan
        with pytest.raises(ValueError, match="logit_bias must be finite"):
            SigLIPLoss()(bad, v, torch.tensor(10.0), bias)


def test_the_small_path_reads_the_features_only_when_the_logits_are_not_finite(monkeypatch):
    """Finite features are not read for their values on the small path: the logits' extremes
    say they are finite (one read-back for the range rule and the features)."""
    from mibounds import _checks

    seen = []
    monkeypatch.setattr(_checks, "check_values_of", lambda named: seen.append(list(named)))
    u, v = _pair(6, dtype=torch.float32)
    before = _dense_runs()
    CLIPLoss()(u, v, torch.tensor(10.0)).backward()
    SigLIPLoss()(u, v, torch.tensor(10.0), torch.tensor(-10.0)).backward()
    assert _dense_runs() == before + 2 and seen == []
    # a path that is not the small one reads them when the arguments are checked
    CLIPLoss(reduction="sum")(u, v, torch.tensor(10.0))
    assert seen == [["image_features", "text_features"]]


@pytest.mark.parametrize("symmetric", [False, True])
def test_cross_entropy_gradcheck(symmetric):
    u, v = _pair(5, d=3, seed=11)
    scale = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    tau = scale.detach().reciprocal()
    assert torch.autograd.gradcheck(
        lambda a, b, s: small.cross_entropy(a, b, tau, symmetric, s), (u, v, scale)
    )
    # a temperature tensor (no logit scale) carries its own gradient
    t = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b, t: small.cross_entropy(a, b, t, symmetric), (u, v, t)
    )


def test_sigmoid_loss_gradcheck():
    u, v = _pair(5, d=3, seed=12)
    scale = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-1.5, dtype=torch.float64, requires_grad=True)
    tau = scale.detach().reciprocal()
    assert torch.autograd.gradcheck(
        lambda a, b, s, c: small.sigmoid_loss(a, b, tau, c, s), (u, v, scale, bias)
    )


def test_the_path_is_taken_only_where_it_covers_the_call():
    u, v = _pair(8, dtype=torch.float32)
    assert small.covers(u, v, "dot")
    assert not small.covers(u, v, "cosine")
    assert not small.covers(u, v, "gaussian")
    assert not small.covers(u[None], v[None], "dot")  # leading dimensions: the sweep
    for loss, limit in small.MAX_ENTRIES.items():
        big = torch.zeros(limit // 8 + 1, 2)
        assert not small.covers(big, torch.zeros(8, 2), "dot", loss)
        assert small.covers(big[: limit // 8], torch.zeros(8, 2), "dot", loss)
    cost.set_path("sweep")
    try:
        assert not small.covers(u, v, "dot")  # a forced path is honoured
    finally:
        cost.set_path(None)
    with pytest.MonkeyPatch.context() as env:  # also where the environment forces it
        env.setenv("MIBOUNDS_PATH", "sweep")
        assert not small.covers(u, v, "dot")
        env.setenv("MIBOUNDS_PATH", "bogus")
        with pytest.raises(ValueError, match="MIBOUNDS_PATH must be one of"):
            small.covers(u, v, "dot")
        env.delenv("MIBOUNDS_PATH")
        assert small.covers(u, v, "dot")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not small.covers(u, v, "dot")
    # compiled panel bodies, where asked for, are the sweep's
    streaming.set_backend("compiled")
    try:
        assert not small.covers(u, v, "dot")
    finally:
        streaming.set_backend("eager")
    # its four matrices must fit the sweep's panel workspace
    streaming.set_memory_budget(4 * 8 * 8 * 4 - 1)
    try:
        assert not small.covers(u, v, "dot")
    finally:
        streaming.set_memory_budget(None)
    assert small.covers(u, v, "dot")


def test_larger_batches_and_other_pairings_stream():
    """Above the size limit, or with another pairing, the loss streams; the small path is
    not used."""
    before = _dense_runs()
    n = math.isqrt(small.MAX_ENTRIES["cross_entropy"]) + 1
    u, v = _pair(n, d=4, dtype=torch.float32)
    CLIPLoss()(u, v, torch.tensor(10.0))
    n = math.isqrt(small.MAX_ENTRIES["sigmoid"]) + 1
    u, v = _pair(n, d=4, dtype=torch.float32)
    SigLIPLoss()(u, v, torch.tensor(10.0), torch.tensor(-10.0))
    mibounds.contrastive.NTXentLoss(0.5)(u[:8], v[:8])
    assert _dense_runs() == before


def test_compiled_loss_uses_the_custom_ops():
    """Under torch.compile the loss keeps the streamed custom op (one node, no size guard)."""
    u, v = _pair(6, dtype=torch.float32)
    scale = torch.tensor(10.0)
    eager = CLIPLoss()(u, v, scale)
    compiled = torch.compile(lambda a, b, s: CLIPLoss()(a, b, s), backend="eager", dynamic=True)
    torch.testing.assert_close(compiled(u, v, scale), eager, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_a_second_derivative_is_refused_on_the_streamed_path(name):
    """The streamed gradient is formed from stored panels: a backward pass that records its
    own graph raises instead of returning a second derivative that leaves the loss's own
    out, alone or beside another term that has one."""
    ours, _ = LOSSES[name]
    u, v = _pair(5)
    bias = torch.tensor(-1.0, dtype=torch.float64) if name == "siglip" else None
    scale = torch.tensor(3.0, dtype=torch.float64)
    before = _dense_runs()
    cost.set_path("sweep")
    try:
        losses = [ours(u, v, scale, bias), ours(u, v, scale, bias) + (u**3).sum()]
        w = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
        losses.append(ours(u, v, 3.0, bias) * w)  # an incoming gradient with a graph
    finally:
        cost.set_path(None)
    assert _dense_runs() == before
    for loss in losses:
        with pytest.raises(RuntimeError, match="first derivatives only"):
            torch.autograd.grad(loss, u, create_graph=True, retain_graph=True)
        # the first derivative alone is as before
        (g,) = torch.autograd.grad(loss, u, retain_graph=True)
        assert torch.isfinite(g).all()


@pytest.mark.parametrize("form", ["clip", "clip-log1p", "siglip"])
def test_the_small_path_has_a_second_derivative(form, monkeypatch):
    """The small path is PyTorch's own operations (CLIP's in both forms): a gradient penalty
    through it gets the reference's second derivative, the logit scale (and the bias) in."""
    name = form.split("-")[0]
    ours, theirs = LOSSES[name]
    if form == "clip-log1p":
        monkeypatch.setattr(small, "_DENSE_FLOOR", math.inf)
    u, v = _pair(5)
    scale = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-1.0, dtype=torch.float64, requires_grad=True)
    extra = [bias] if name == "siglip" else []
    before = _dense_runs()

    def penalty(loss):
        value = loss(u, v, scale, bias if extra else None)
        (g,) = torch.autograd.grad(value, u, create_graph=True)
        return torch.autograd.grad((g**2).sum(), [v, scale, *extra])

    got = penalty(ours)
    assert _dense_runs() == before + 1
    for a, b in zip(got, penalty(theirs), strict=True):
        torch.testing.assert_close(a, b, **TOL)


def test_a_second_derivative_through_dense_scores_matches_the_reference():
    """Where a second derivative is needed, the bounds on a dense score matrix give it (their
    operations are PyTorch's own), as the refusal says."""
    u, v = _pair(5)
    tau = 0.5

    def hessian_term(bound):
        (g,) = torch.autograd.grad(bound(u @ v.T / tau), u, create_graph=True)
        (h,) = torch.autograd.grad((g**2).sum(), v)
        return h

    got = hessian_term(mibounds.infonce)
    want = hessian_term(ref.infonce)
    torch.testing.assert_close(got, want, **TOL)
