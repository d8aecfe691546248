"""The paper methods against hand-written references, and where their gradients go."""

from __future__ import annotations

import math

import pytest
import torch

import mibounds
from mibounds.methods import (
    FMICL,
    LBE,
    FactorCLSSL,
    FactorCLSUP,
    effective_rank,
    fmicl,
    fmicl_terms,
    image_augment,
    lbe_bound,
    linear_probe,
    mean_pairwise_sq_distance,
    mixup,
    reconstruction_loss,
    sequence_augment,
    vector_augment,
)
from mibounds.tasks import FactorCLSynthetic
from tests import reference as ref

DIVS = [d.name for d in mibounds.list_divergences()]

# --- f-MICL --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DIVS)
def test_fmicl_log_forms_match_the_generator(name):
    """f'(e^l), f*(f'(e^l)) = u f'(u) - f(u) and its derivative, from the generator itself."""
    div = mibounds.get_divergence(name)
    joint, marginal, grad = fmicl_terms(name)
    ell = torch.linspace(-3.0, -0.05, 25, dtype=torch.float64, requires_grad=True)
    u = torch.exp(ell)
    torch.testing.assert_close(joint(ell), div.f_prime(u))
    torch.testing.assert_close(marginal(ell), u * div.f_prime(u) - div.f(u))
    assert grad is not None
    (auto,) = torch.autograd.grad((u * div.f_prime(u) - div.f(u)).sum(), ell)
    torch.testing.assert_close(grad(ell), auto)


def test_fmicl_reverse_kl_and_kl_stay_finite_with_a_narrow_kernel():
    # 1 / (2 sigma^2) = 200: the negatives' u = G goes down to e^-800 (0 in floating point),
    # the positives stay close; every term that is representable must come out finite
    z1 = torch.randn(16, 4)
    z2 = z1 + 0.001 * torch.randn(16, 4)
    for name in ("reverse-kl", "kl", "js", "gan", "hellinger", "pearson"):
        v = fmicl(z1, z2, name, sigma=0.05, alpha=1.0)
        assert torch.isfinite(v), name


def _fmicl_reference(z1, z2, name, alpha, sigma, mu, similarity, tau, negatives):
    div = mibounds.get_divergence(name)

    def log_g(a, b):
        if similarity == "cosine":
            return math.log(mu) + torch.dot(a / a.norm(), b / b.norm()) / tau
        a, b = a / a.norm(), b / b.norm()
        return math.log(mu) - ((a - b) ** 2).sum() / (2 * sigma**2)

    n = z1.shape[0]
    joint = sum(div.f_prime(torch.exp(log_g(z1[i], z2[i]))) for i in range(n)) / n

    def neg(p, q):
        vals = [
            div.conjugate_of_derivative(torch.exp(log_g(p[i], q[j])))
            for i in range(n)
            for j in range(n)
            if i != j
        ]
        return sum(vals) / len(vals)

    marg = neg(z1, z2)
    if negatives == "all":
        marg = (marg + neg(z1, z1) + neg(z2, z2)) / 3
    return joint - alpha * marg


@pytest.mark.parametrize("name", DIVS)
@pytest.mark.parametrize(
    ("similarity", "negatives"), [("gaussian", "cross"), ("cosine", "cross"), ("gaussian", "all")]
)
def test_fmicl_matches_reference(name, similarity, negatives):
    g = torch.Generator().manual_seed(1)
    z1 = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    kw = dict(alpha=2.0, sigma=0.8, mu=1.0, similarity=similarity, temperature=0.7)
    got = fmicl(z1, z2, name, negatives=negatives, **kw)
    want = _fmicl_reference(z1, z2, name, 2.0, 0.8, 1.0, similarity, 0.7, negatives)
    torch.testing.assert_close(got, want)
    g_got = torch.autograd.grad(got, (z1, z2))
    g_want = torch.autograd.grad(want, (z1, z2))
    for a, b in zip(g_got, g_want, strict=True):
        torch.testing.assert_close(a, b)


def test_fmicl_streams_without_the_dense_matrix(monkeypatch):
    def boom(self):
        raise AssertionError("dense() called")

    monkeypatch.setattr(mibounds.SeparableScores, "dense", boom)
    z1 = torch.randn(40, 8, requires_grad=True)
    v = fmicl(z1, torch.randn(40, 8), "js", negatives="all")
    v.backward()
    assert z1.grad is not None and torch.isfinite(z1.grad).all()


def test_fmicl_custom_divergence_uses_the_dense_fallback():
    base = mibounds.get_divergence("pearson")
    custom = mibounds.FDivergence(
        name="my-pearson",
        f=base.f,
        f_prime=base.f_prime,
        conjugate=base.conjugate,
        conjugate_domain=base.conjugate_domain,
        activation=base.activation,
        conjugate_of_derivative=base.conjugate_of_derivative,
    )
    z1, z2 = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    torch.testing.assert_close(fmicl(z1, z2, custom), fmicl(z1, z2, "pearson"))


def test_fmicl_module_and_errors():
    z1, z2 = torch.randn(6, 3), torch.randn(6, 3)
    torch.testing.assert_close(FMICL("kl", alpha=3.0)(z1, z2), -fmicl(z1, z2, "kl", alpha=3.0))
    with pytest.raises(ValueError, match="alpha"):
        fmicl(z1, z2, alpha=0.0)
    with pytest.raises(ValueError, match="negatives"):
        fmicl(z1, z2, negatives="some")
    with pytest.raises(ValueError, match="similarity"):
        fmicl(z1, z2, similarity="dot")
    with pytest.raises(KeyError, match="known"):
        fmicl(z1, z2, "nope")


# --- LBE and RC ----------------------------------------------------------------------------


def test_lbe_bound_matches_reference():
    f = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    est, z = lbe_bound(f, sigma=0.3, rho=0.2, generator=torch.Generator().manual_seed(0))
    eps = torch.randn(7, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(z, f + 0.3 * eps)
    m = 7
    s = torch.stack(
        [torch.stack([-0.2 * ((z[j] - f[k]) ** 2).sum() for j in range(m)]) for k in range(m)]
    )
    torch.testing.assert_close(est, ref.infonce(s))
    (g,) = torch.autograd.grad(est, f)
    (g_ref,) = torch.autograd.grad(ref.infonce(s), f)
    torch.testing.assert_close(g, g_ref)


def test_lbe_module_weights_layers():
    torch.manual_seed(0)
    feats = [torch.randn(8, 4), torch.randn(8, 6)]
    torch.manual_seed(1)
    est, zs = LBE(weights=(0.25, 1.0), sigma=0.1, rho=0.05)(feats)
    torch.manual_seed(1)
    e1, _ = lbe_bound(feats[0])
    e2, _ = lbe_bound(feats[1])
    torch.testing.assert_close(est, 0.25 * e1 + e2)
    assert [z.shape for z in zs] == [f.shape for f in feats]
    with pytest.raises(ValueError, match="layer weights"):
        LBE(weights=(1.0,))(feats)
    with pytest.raises(ValueError, match="sigma"):
        lbe_bound(feats[0], sigma=0.0)


def test_reconstruction_loss_matches_reference():
    dec = torch.nn.Linear(4, 6)
    h, v = torch.randn(5, 4), torch.rand(5, 1, 2, 3)
    flat = v.reshape(5, -1)
    target = (flat - flat.mean(1, keepdim=True)) / (flat.std(1, keepdim=True) + 1e-6)
    want = ((dec(h) - target) ** 2).mean()
    got = reconstruction_loss(torch.nn.Sequential(dec, torch.nn.Unflatten(1, (1, 2, 3))), h, v)
    torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="decoder must return"):
        reconstruction_loss(dec, h, v)


# --- FactorCL ------------------------------------------------------------------------------


def _sup_model():
    torch.manual_seed(0)
    return FactorCLSUP(
        torch.nn.Linear(5, 8),
        torch.nn.Linear(4, 8),
        8,
        num_classes=3,
        head_dim=4,
        critic_hidden=(6,),
    ).double()


def _batch(n=6):
    g = torch.Generator().manual_seed(2)
    x1 = torch.randn(n, 5, generator=g, dtype=torch.float64)
    x2 = torch.randn(n, 4, generator=g, dtype=torch.float64)
    return x1, x2, torch.tensor([0, 1, 2, 0, 1, 2])[:n]


def test_factorcl_sup_matches_reference():
    m = _sup_model()
    x1, x2, y = _batch()
    _, terms = m.loss(x1, x2, y)
    f1, f2 = m.encoder1(x1), m.encoder2(x2)
    s1, s2 = m.heads["shared1"](f1), m.heads["shared2"](f2)
    u1, u2 = m.heads["unique1"](f1), m.heads["unique2"](f2)
    c = torch.nn.functional.one_hot(y, 3).double()
    cat = torch.cat

    def crit(group, name, a, b):
        return ref.concat_critic(getattr(m, group)[name].net, a, b)

    want = {
        "shared": ref.infonce(crit("critics", "shared", s1, s2)),
        "x1_y": ref.infonce(crit("critics", "x1_y", u1, c)),
        "x2_y": ref.infonce(crit("critics", "x2_y", u2, c)),
        "unique_given_y": ref.infonce(
            crit("critics", "unique_given_y", cat([u1, c], 1), cat([u2, c], 1))
        ),
        "shared_given_y": ref.nce_club(
            crit("club_critics", "shared_given_y", cat([s1, c], 1), cat([s2, c], 1))
        ),
        "unique": ref.nce_club(crit("club_critics", "unique", u1, u2)),
    }
    for k, v in want.items():
        torch.testing.assert_close(terms[k], v.detach(), msg=k)
    loss, _ = m.loss(x1, x2, y)
    lower = want["shared"] + want["x1_y"] + want["x2_y"] + want["unique_given_y"]
    torch.testing.assert_close(loss, want["shared_given_y"] + want["unique"] - lower)


def _grads(model):
    return {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("variant", ["sup", "ssl"])
def test_factorcl_gradients_reach_what_the_paper_trains(variant):
    if variant == "sup":
        m = _sup_model()
        x1, x2, y = _batch()
        cond = y
    else:
        torch.manual_seed(0)
        m = FactorCLSSL(
            torch.nn.Linear(5, 8), torch.nn.Linear(4, 8), 8, head_dim=4, critic_hidden=(6,)
        ).double()
        x1, x2, _ = _batch()
        cond = (vector_augment(x1), vector_augment(x2))
    loss, _ = m.loss(x1, x2, cond)
    loss.backward()
    for name, g in _grads(m).items():
        if name.startswith("club_critics."):
            assert g is None, f"the main step must not train {name}"
        else:
            assert g is not None and g.abs().sum() > 0, f"no gradient for {name}"
    m.zero_grad(set_to_none=True)
    m.club_critic_loss(x1, x2, cond).backward()
    for name, g in _grads(m).items():
        if name.startswith("club_critics."):
            assert g is not None and g.abs().sum() > 0, name
        else:
            assert g is None, f"the critic step must not train {name}"


def test_factorcl_step_updates_both_groups():
    m = _sup_model()
    main = torch.optim.Adam(m.main_parameters(), lr=1e-2)
    critic = torch.optim.Adam(m.club_critics.parameters(), lr=1e-2)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    x1, x2, y = _batch()
    terms = m.step((x1, x2, y), (x1, x2, y), main, critic)
    assert set(terms) == {"shared", "shared_given_y", "x1_y", "x2_y", "unique", "unique_given_y"}
    changed = {n for n, p in m.named_parameters() if not torch.equal(p, before[n])}
    assert any(n.startswith("club_critics.") for n in changed)
    assert any(n.startswith("encoder1.") for n in changed)
    assert m.embed(x1, x2).shape == (6, 16)


def test_factorcl_input_errors():
    m = _sup_model()
    x1, x2, y = _batch()
    with pytest.raises(ValueError, match="integer labels"):
        m.loss(x1, x2, y.double())
    with pytest.raises(ValueError, match=r"labels y must lie in \[0, 2\]"):
        m.loss(x1, x2, y + 1)
    ssl = FactorCLSSL(torch.nn.Linear(5, 8), torch.nn.Linear(4, 8), 8, head_dim=4).double()
    with pytest.raises(ValueError, match="augmented views"):
        ssl.loss(x1, x2, y)


# --- the synthetic FactorCL task -----------------------------------------------------------


def test_synthetic_label_depends_on_the_chosen_latents_only():
    task = FactorCLSynthetic(label_shared=3, label_unique=(2, 0))
    b = task.sample(2000, torch.Generator().manual_seed(0), dtype=torch.float64)
    ws, w1, w2 = b["w_s"], b["w_1"], b["w_2"]
    chosen = torch.cat([ws[:, :3], w1[:, :2]], 1)
    assert torch.equal(b["y"], (chosen.mean(1) >= 0).long())
    # resampling the coordinates that are not chosen leaves every label unchanged
    g = torch.Generator().manual_seed(1)
    ws2, w12 = ws.clone(), w1.clone()
    ws2[:, 3:] = torch.randn(2000, 7, generator=g, dtype=torch.float64)
    w12[:, 2:] = torch.randn(2000, 4, generator=g, dtype=torch.float64)
    w22 = torch.randn_like(w2)
    assert torch.equal(task.label_of(ws2, w12, w22), b["y"])
    # and each chosen coordinate is correlated with the label; an unchosen one is not
    yc = b["y"].double() - b["y"].double().mean()
    corr = lambda v: float((v - v.mean()) @ yc / (v.std() * yc.std() * 2000))  # noqa: E731
    assert corr(ws[:, 0]) > 0.2 and corr(w1[:, 1]) > 0.2
    assert abs(corr(w2[:, 0])) < 0.1 and abs(corr(ws[:, 5])) < 0.1


def test_synthetic_modalities_are_the_stated_linear_maps():
    task = FactorCLSynthetic()
    b = task.sample(5, dtype=torch.float64)
    torch.testing.assert_close(b["x1"], torch.cat([b["w_s"], b["w_1"]], 1) @ task.maps[0])
    torch.testing.assert_close(b["x2"], torch.cat([b["w_s"], b["w_2"]], 1) @ task.maps[1])
    assert task.maps[0].shape == (16, 100) and task.maps[0].min() >= 0 and task.maps[0].max() < 1
    with pytest.raises(ValueError, match="at least one coordinate"):
        FactorCLSynthetic(label_shared=0, label_unique=(0, 0))
    with pytest.raises(ValueError, match=r"l_1 must be an int in \[0, 6\]"):
        FactorCLSynthetic(label_unique=(7, 0))


# --- augmentations and evaluation ----------------------------------------------------------


def test_vector_augment_applies_one_of_four_operations():
    x = torch.arange(1.0, 41.0).reshape(4, 10).repeat(50, 1)
    out = vector_augment(x, torch.Generator().manual_seed(0))
    swapped = torch.cat([x[:, 5:], x[:, :5]], 1)
    kinds = set()
    for a, b, s in zip(x, out, swapped, strict=True):
        if torch.equal(a, b):
            kinds.add("identity")
        elif torch.equal(b, s):
            kinds.add("swap")
        elif ((b == 0) | (b == a)).all():
            kinds.add("drop")
        else:
            assert (b - a).abs().max() < 0.1
            kinds.add("noise")
    assert kinds == {"identity", "swap", "drop", "noise"}
    assert mixup(x).shape == x.shape


def test_sequence_augment_applies_one_of_four_operations():
    x = torch.arange(1.0, 201.0).reshape(40, 5, 1).repeat(1, 1, 2)
    out = sequence_augment(x, torch.Generator().manual_seed(0))
    kinds = set()
    for a, b in zip(x, out, strict=True):
        if torch.equal(a, b):
            kinds.add("identity")
        elif torch.equal(torch.sort(b[:, 0]).values, a[:, 0]) and torch.equal(b[:, 0], b[:, 1]):
            kinds.add("permute")
        elif ((b == 0).all(1) | (b == a).all(1)).all():
            kinds.add("drop")
        else:
            assert (b - a).abs().max() < 1.0
            kinds.add("noise")
    assert kinds == {"identity", "permute", "drop", "noise"}
    with pytest.raises(ValueError, match=r"\(N, T, C\)"):
        sequence_augment(torch.zeros(2, 3, 4, 5))


def test_image_augment_range_and_shape():
    imgs = torch.rand(10, 1, 8, 8)
    out = image_augment(imgs, torch.Generator().manual_seed(0))
    assert out.shape == imgs.shape and out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, imgs)


def test_evaluation_helpers():
    z = torch.randn(30, 5, dtype=torch.float64)
    zn = torch.nn.functional.normalize(z, dim=1)
    brute = sum(((zn[i] - zn[j]) ** 2).sum() for i in range(30) for j in range(30) if i != j)
    assert mean_pairwise_sq_distance(z) == pytest.approx(float(brute) / (30 * 29))
    assert effective_rank(torch.randn(100, 1) @ torch.randn(1, 5)) == pytest.approx(1.0)
    assert effective_rank(torch.randn(500, 4)) > 3.5
    x = torch.randn(300, 3)
    y = (x[:, 1] > 0).long()
    assert linear_probe(x[:200], y[:200], x[200:], y[200:]) > 0.9
