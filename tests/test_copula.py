"""The Student-t copula critic of estimate_mi: exact on t data, absent on Gaussian data."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from scipy import stats

from mibounds.estimate import estimate_mi
from mibounds.estimate.copula import DF_GRID, TCopulaCritic, fit_t_copulas, t_scores
from mibounds.estimate.inputs import _normal_scores
from mibounds.tasks import CorrelatedGaussian, MultivariateStudentT


def _fit_all(x: torch.Tensor, y: torch.Tensor) -> list[TCopulaCritic]:
    """The t copula critics fitted to every sample (one fold of all)."""
    every = torch.arange(x.shape[0])[None]
    return fit_t_copulas(_normal_scores(x.double()), _normal_scores(y.double()), every)[0][0]


def _normal_of_t(v: torch.Tensor, df: float) -> torch.Tensor:
    """Normal scores of exact t_df coordinates: Phi^-1(F_t(v))."""
    u = stats.t.cdf(v.numpy(), df)
    return torch.from_numpy(stats.norm.ppf(u))


def test_t_scores_invert_the_normal_scores_of_t_margins():
    v = torch.linspace(-6, 6, 25, dtype=torch.float64)[:, None]
    assert torch.allclose(t_scores(_normal_of_t(v, 3.0), 3.0), v, atol=1e-9)


def test_critic_is_the_log_density_ratio_of_a_multivariate_t():
    """With the task's own dispersion (unit diagonal) and degrees of freedom, the critic of
    the normal scores is the task's exact log density ratio, pair by pair."""
    task = MultivariateStudentT(2, 3, df=2.5, rho=0.6)
    x, y = task.sample(40, torch.Generator().manual_seed(0))
    x, y = x.double(), y.double()
    critic = TCopulaCritic(2.5, task.dispersion, dim_x=2)
    got = critic(_normal_of_t(x, 2.5), _normal_of_t(y, 2.5)).double()
    want = task.log_density_ratio(x[:, None, :], y[None, :, :])
    assert got.shape == (40, 40)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_fit_recovers_the_degrees_of_freedom_and_the_dispersion():
    task = MultivariateStudentT(3, 3, df=3.0, rho=0.5)
    x, y = task.sample(4000, torch.Generator().manual_seed(1))
    fitted = _fit_all(x, y)
    assert [c.df for c in fitted] == list(DF_GRID[:-1])
    at3 = fitted[DF_GRID.index(3.0)]
    torch.testing.assert_close(at3.dispersion, task.dispersion, atol=0.08, rtol=0)


def test_gaussian_data_get_no_t_critic():
    x, y = CorrelatedGaussian(3, mi=1.0).sample(4000, torch.Generator().manual_seed(2))
    assert _fit_all(x, y) == []
    assert DF_GRID[-1] >= 1000  # the stand-in for a Gaussian copula


def test_shrunk_scales_the_cross_dispersion_only():
    sigma = torch.tensor([[1.0, 0.2, 0.5], [0.2, 1.0, 0.4], [0.5, 0.4, 1.0]])
    s = TCopulaCritic(3.0, sigma, dim_x=2).shrunk(0.5).dispersion
    assert float(s[0, 1]) == pytest.approx(0.2) and float(s[0, 2]) == pytest.approx(0.25)
    assert float(s[2, 1]) == pytest.approx(0.2) and float(s[2, 2]) == 1.0


@pytest.mark.slow
def test_estimate_mi_follows_the_shared_scale_of_uncorrelated_t_sides():
    """Uncorrelated Student-t sides, dependent only through their shared scale: the t copula
    critic is kept and the estimate is within 0.05 + 5% of the MI."""
    task = MultivariateStudentT(4, 4, df=2.0)
    x, y = task.sample(3000, torch.Generator().manual_seed(3))
    r = estimate_mi(torch.asinh(x), y, progress=False, steps=300)
    truth = task.mutual_information
    assert any(df is not None for df in r.t_copula)
    assert abs(r.estimate - truth) <= 0.05 + 0.05 * truth, (r.estimate, truth)
    off = estimate_mi(torch.asinh(x), y, progress=False, steps=300, t_copula=False)
    assert off.t_copula == []


def test_t_copula_argument_errors():
    x = torch.randn(200, 2)
    with pytest.raises(TypeError, match="t_copula must be a bool or 'auto', got 'yes'"):
        estimate_mi(x, x, t_copula="yes", progress=False)
    with pytest.raises(
        ValueError, match="t_copula=True .* standardize='rank'.* got standardize=True"
    ):
        estimate_mi(x, x, t_copula=True, standardize=True, progress=False)


def test_t_copula_result_lists_one_entry_per_fold():
    task = MultivariateStudentT(2, 2, df=2.0)
    x, y = task.sample(600, torch.Generator().manual_seed(4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        r = estimate_mi(x, y, progress=False, steps=20, folds=3)
    assert len(r.t_copula) in (0, 3)
    assert all(df is None or df in DF_GRID for df in r.t_copula)
    assert math.isfinite(r.estimate)
