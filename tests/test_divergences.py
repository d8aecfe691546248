"""The f-divergence registry: closed forms derived and checked, registry behaviour."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import optimize

import mibounds
from mibounds.divergences import Domain, FDivergence, get_divergence, list_divergences, tsallis

ALL = [*list_divergences(), tsallis(0.5), tsallis(3.0)]
IDS = [d.name for d in ALL]
U = torch.tensor([0.01, 0.1, 0.5, 0.9, 1.0, 1.5, 3.0, 10.0, 100.0], dtype=torch.float64)
V = torch.linspace(-8, 8, 41, dtype=torch.float64)


@pytest.mark.parametrize("d", ALL, ids=IDS)
def test_f_of_one_is_zero(d):
    assert d.f(torch.tensor(1.0, dtype=torch.float64)).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("d", ALL, ids=IDS)
def test_f_prime_is_derivative(d):
    if d.name == "total-variation":
        u = U[U != 1.0]
    else:
        u = U
    u = u.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(d.f(u).sum(), u)
    torch.testing.assert_close(d.f_prime(u.detach()), grad)


@pytest.mark.parametrize("d", ALL, ids=IDS)
def test_conjugate_of_derivative_closed_form(d):
    # f*(f'(u)) = u f'(u) - f(u), and equals the conjugate evaluated at f'(u)
    want = U * d.f_prime(U) - d.f(U)
    torch.testing.assert_close(d.conjugate_of_derivative(U), want)
    inside = torch.tensor([d.f_prime(u).item() in d.conjugate_domain for u in U])
    torch.testing.assert_close(d.conjugate(d.f_prime(U))[inside], want[inside])


@pytest.mark.parametrize("d", ALL, ids=IDS)
def test_conjugate_matches_numerical_supremum(d):
    # Inside the domain, at t = f'(u) for u > 0, f*(t) = sup_{u > 0} u t - f(u).
    for u0 in (0.05, 0.3, 2.0, 7.0):
        t = d.f_prime(torch.tensor(u0, dtype=torch.float64)).item()
        if d.name == "total-variation":
            t = 0.3 if u0 > 1 else -0.3
        assert t in d.conjugate_domain

        def neg(log_u: float, t: float = t) -> float:
            u = torch.tensor(math.exp(log_u), dtype=torch.float64)
            return -(u.item() * t - d.f(u).item())

        res = optimize.minimize_scalar(
            neg, bounds=(-12, 12), method="bounded", options={"xatol": 1e-12}
        )
        grid = np.linspace(-12, 12, 4001)
        best = -min(min(neg(g) for g in grid), res.fun)
        got = d.conjugate(torch.tensor(t, dtype=torch.float64)).item()
        assert got == pytest.approx(best, rel=1e-6, abs=1e-6), (d.name, t)


@pytest.mark.parametrize("d", ALL, ids=IDS)
def test_fenchel_young(d):
    # f(u) + f*(t) >= u t for t in the domain, with equality at t = f'(u)
    ts = d.activation(V)
    for u in U:
        lhs = d.f(u) + d.conjugate(ts)
        assert (lhs >= u * ts - 1e-9 * (1 + abs(u * ts))).all(), d.name
        if d.name != "total-variation" or u != 1.0:
            t_star = d.f_prime(u)
            eq = d.f(u) + d.conjugate(t_star) - u * t_star
            assert abs(eq.item()) < 1e-9 * (1 + abs(u.item() * t_star.item())), d.name


@settings(max_examples=50, deadline=None)
@given(st.sampled_from(ALL), st.floats(-15, 15), st.floats(1e-3, 50))
def test_fenchel_young_property(d, v, u):
    t = d.activation(torch.tensor(v, dtype=torch.float64))
    uu = torch.tensor(u, dtype=torch.float64)
    assert (d.f(uu) + d.conjugate(t) - uu * t).item() >= -1e-8 * (1 + abs(u * t.item()))


@pytest.mark.parametrize("d", ALL, ids=IDS)
def test_activation_maps_into_domain_and_fused_conjugate(d):
    t = d.activation(V)
    dom = d.conjugate_domain
    assert all(float(x) in dom for x in t), d.name
    torch.testing.assert_close(d.conjugate_at_activation(V), d.conjugate(t))


def test_vincze_le_cam_erratum():
    vlc = get_divergence("vlc")
    u = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    ours = vlc.conjugate_of_derivative(u)
    assert ours[1].item() == 0.0  # f*(f'(1)) = f'(1) - f(1) = 0
    printed = 3 - 4 / (u + 1)  # the f-MICL paper's formula
    assert printed[1].item() == 1.0  # is not zero at u = 1: wrong
    torch.testing.assert_close(ours, (u - 1) * (3 * u + 1) / (u + 1) ** 2)


def test_fmicl_table_of_closed_forms():
    u = torch.tensor([0.2, 0.7, 1.0], dtype=torch.float64)
    table = {
        "kl": u,
        "js": torch.log((1 + u) / 2),
        "pearson": u**2 - 1,
        "hellinger": torch.sqrt(u) - 1,
        "reverse-kl": torch.log(u) - 1,
        "neyman": 2 - 2 / u,
        "tsallis": u**1.5,
    }
    for name, want in table.items():
        torch.testing.assert_close(get_divergence(name).conjugate_of_derivative(u), want)


def test_lookup_by_alias_case_insensitive():
    assert get_divergence("KL").name == "kl"
    assert get_divergence("Jensen-Shannon").name == "js"
    assert get_divergence("Pearson-Chi2").name == "pearson"
    d = get_divergence("kl")
    assert get_divergence(d) is d


def test_unknown_divergence_lists_known():
    with pytest.raises(KeyError, match=r"unknown divergence 'nope'.*known divergences:.*kl"):
        get_divergence("nope")
    with pytest.raises(KeyError, match="known divergences"):
        mibounds.fmi(torch.randn(3, 3), "nope")
    with pytest.raises(TypeError, match="divergence must be a str or FDivergence"):
        get_divergence(3)  # type: ignore[arg-type]


def test_register_custom_and_duplicates():
    d = tsallis(4.0)
    mibounds.register_divergence(d)
    try:
        assert get_divergence("TSALLIS-4").name == "tsallis-4"
        with pytest.raises(ValueError, match="already registered"):
            mibounds.register_divergence(d)
        mibounds.register_divergence(d, overwrite=True)
        s = torch.randn(4, 4, dtype=torch.float64)
        assert torch.isfinite(mibounds.fmi(s, "tsallis-4"))
    finally:
        from mibounds import divergences as mod

        mod._REGISTRY.remove("tsallis-4")
    with pytest.raises(TypeError, match="must be an FDivergence"):
        mibounds.register_divergence("kl")  # type: ignore[arg-type]


def test_tsallis_rejects_bad_alpha():
    for a in (1, 1.0, 0, -0.5):
        with pytest.raises(ValueError, match="alpha must be > 0 and != 1"):
            tsallis(a)


def test_domain():
    dom = Domain(-0.5, 0.5, True, False)
    assert -0.5 in dom and 0.5 not in dom and "x" not in dom
    assert str(Domain(-math.inf, math.log(2))) == "(-inf, log 2)"


def test_fdivergence_is_frozen():
    d = get_divergence("kl")
    assert isinstance(d, FDivergence)
    with pytest.raises(AttributeError):
        d.name = "other"  # type: ignore[misc]


@pytest.mark.parametrize("d", ALL, ids=IDS)
def test_conjugate_of_activation_grad_is_derivative(d):
    assert d.conjugate_of_activation_grad is not None, d.name
    v = torch.linspace(-6, 6, 49, dtype=torch.float64).requires_grad_(True)
    (grad,) = torch.autograd.grad(d.conjugate_at_activation(v).sum(), v)
    torch.testing.assert_close(d.conjugate_of_activation_grad(v.detach()), grad)
