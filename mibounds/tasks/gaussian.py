r"""The correlated Gaussian: d independent pairs with correlation :math:`\rho`."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from scipy import integrate, stats
from torch import Tensor

from mibounds import _checks
from mibounds.divergences import FDivergence, get_divergence
from mibounds.scores import SeparableScores
from mibounds.tasks.base import Task

__all__ = ["CorrelatedGaussian", "FMutualInformation"]


class FMutualInformation(NamedTuple):
    """An f-mutual information value with its numerical error and how it was obtained.

    Example:
        >>> value = CorrelatedGaussian(dim=2, mi=1.0).f_mutual_information("kl")
        >>> round(value.value, 6), value.method
        (1.0, 'closed form')
    """

    value: float
    error: float
    method: str


class CorrelatedGaussian(Task):
    r"""``x ~ N(0, I_d)``, ``y = rho x + sqrt(1 - rho^2) eps``: d independent correlated pairs.

    .. math::

        I(X; Y) = -\frac{d}{2}\log(1 - \rho^2), \qquad
        \rho = \sqrt{1 - e^{-2 I / d}}.

    The oracle critic is :math:`\log p(y|x)/p(y) = \sum_k \big[-\tfrac12\log(1-\rho^2)
    - \frac{(y_k - \rho x_k)^2}{2(1-\rho^2)} + \frac{y_k^2}{2}\big]`.

    Args:
        dim: number of pairs d.
        mi: target mutual information in nats (give ``mi`` or ``rho``, not both).
        rho: correlation in ``(-1, 1)``.

    Raises:
        ValueError: if neither or both of ``mi`` and ``rho`` are given, or they are out of range.

    Example:
        >>> task = CorrelatedGaussian(dim=20, mi=2.0)
        >>> round(task.rho, 4), task.mutual_information
        (0.4258, 2.0)
        >>> x, y = task.sample(128, torch.Generator().manual_seed(0))
        >>> task.score_matrix(x, y).shape
        torch.Size([128, 128])

    References:
        Poole et al. "On Variational Bounds of Mutual Information." ICML 2019.
    """

    def __init__(self, dim: int, mi: float | None = None, *, rho: float | None = None) -> None:
        self.dim = _checks.check_positive_int("dim", dim)
        self.dim_x = self.dim_y = dim
        if (mi is None) == (rho is None):
            raise ValueError(f"give exactly one of mi and rho, got mi={mi!r} and rho={rho!r}")
        if mi is not None:
            m = _checks.check_real("mi", mi)
            if m < 0:
                raise ValueError(f"mi must be >= 0, got {mi!r}")
            self.rho = math.sqrt(-math.expm1(-2.0 * m / dim))
            self._mi = m
        else:
            r = _checks.check_real("rho", rho)
            if not -1 < r < 1:
                raise ValueError(f"rho must lie in (-1, 1), got {rho!r}")
            self.rho = r
            self._mi = -0.5 * dim * math.log1p(-r * r)

    @property
    def mutual_information(self) -> float:
        return self._mi

    def _sample(self, n: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        x = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return x, self.rho * x + math.sqrt(1 - self.rho**2) * eps

    def conditional(self, x: Tensor) -> tuple[Tensor, Tensor]:
        r"""The exact conditional :math:`p(y|x) = N(\rho x, (1-\rho^2) I)`.

        Returns:
            ``(mean, variance)``, both of the shape of ``x``.
        """
        _checks.check_tensor("x", x, min_dim=1)
        return self.rho * x, torch.full_like(x, 1 - self.rho**2)

    def log_density_ratio(self, x: Tensor, y: Tensor) -> Tensor:
        one_m = 1 - self.rho**2
        terms = -0.5 * math.log(one_m) - (y - self.rho * x) ** 2 / (2 * one_m) + y**2 / 2
        return terms.sum(-1)

    @property
    def separable_oracle(self) -> bool:
        return True

    def oracle_scores(self, x: Tensor, y: Tensor) -> SeparableScores:
        r"""The exact log density ratio of all pairs as lazy scores.

        :math:`\log r(x, y) = c + k\, x^\top y + a(x) + a(y)` with :math:`k = \rho/(1-\rho^2)`,
        :math:`a(v) = -\rho^2 \lVert v\rVert^2 / (2(1-\rho^2))` and
        :math:`c = -\frac d2 \log(1-\rho^2)`: the dot product of ``[k x, a(x) + c, 1]`` and
        ``[y, 1, a(y)]``, so the bounds stream it in O(N d) memory.

        Example:
            >>> task = CorrelatedGaussian(3, mi=1.0)
            >>> x, y = task.sample(5, dtype=torch.float64)
            >>> torch.allclose(task.oracle_scores(x, y).dense(), task.score_matrix(x, y))
            True
        """
        self._check_batch(x, y)
        one_m = 1 - self.rho**2
        k = self.rho / one_m
        ax = -(self.rho**2) * (x * x).sum(-1, keepdim=True) / (2 * one_m)
        ay = -(self.rho**2) * (y * y).sum(-1, keepdim=True) / (2 * one_m)
        c = -0.5 * self.dim * math.log(one_m)
        fx = torch.cat([k * x, ax + c, torch.ones_like(ax)], dim=-1)
        fy = torch.cat([y, torch.ones_like(ay), ay], dim=-1)
        return SeparableScores(fx, fy)

    # -- f-mutual information ------------------------------------------------------------------

    def _power_moment(self, alpha: float) -> float:
        r""":math:`\mathbb{E}_{p(x)p(y)}[r^\alpha]` in closed form (``inf`` where it diverges)."""
        r = self.rho
        t1, t2 = r / (2 * (1 + r)), -r / (2 * (1 - r))
        a1, a2 = 1 - 2 * alpha * t1, 1 - 2 * alpha * t2
        if a1 <= 0 or a2 <= 0:
            return math.inf
        log_m = -0.5 * self.dim * (alpha * math.log1p(-r * r) + math.log(a1) + math.log(a2))
        return math.exp(log_m)

    def _closed_form(self, div: FDivergence) -> float | None:
        m = self._power_moment
        if div.name == "kl":
            return self._mi
        if div.name == "reverse-kl":
            r2 = self.rho**2
            return 0.5 * self.dim * (2 * r2 / (1 - r2) + math.log1p(-r2))
        if div.name == "pearson":
            return m(2.0) - 1
        if div.name == "hellinger":
            return 2 - 2 * m(0.5)
        if div.name == "neyman":
            return m(-1.0) - 1
        if div.name.startswith("tsallis"):
            # f(u) = (u^a - u)/(a - 1)  =>  D = (E_q[r^a] - 1)/(a - 1)
            u = torch.tensor(2.0, dtype=torch.float64)
            a = float(torch.log2(div.conjugate_of_derivative(u)))  # f*(f'(2)) = 2^a
            return (m(a) - 1) / (a - 1)
        return None

    def f_mutual_information(self, divergence: str | FDivergence) -> FMutualInformation:
        r""":math:`D_f(p(x, y)\,\|\,p(x)p(y))` for a registered (or given) divergence.

        Closed forms for KL, reverse KL, Pearson and Neyman :math:`\chi^2`, squared Hellinger and
        Tsallis (through :math:`\mathbb{E}_{p(x)p(y)}[r^\alpha]`, infinite where it diverges:
        Neyman needs :math:`|\rho| < 1/2`). Otherwise an adaptive 2-D quadrature of
        :math:`\mathbb{E}_{p(x)p(y)}[f(r)]`: under the product of marginals,
        :math:`\log r = -\frac d2\log(1-\rho^2) + \frac{\rho}{2(1+\rho)} U_1
        - \frac{\rho}{2(1-\rho)} U_2` with :math:`U_1, U_2` independent
        :math:`\chi^2_d` (from :math:`(x \pm y)/\sqrt 2`), so the expectation is a 2-D integral,
        computed with :func:`scipy.integrate.dblquad` over :math:`\sqrt{U_1}, \sqrt{U_2}`; its
        error estimate is returned.

        Args:
            divergence: a registered name or alias, or an :class:`FDivergence`.

        Returns:
            :class:`FMutualInformation` ``(value, error, method)``.

        Example:
            >>> CorrelatedGaussian(1, rho=0.5).f_mutual_information("pearson").value
            0.333...
        """
        div = get_divergence(divergence)
        closed = self._closed_form(div)
        if closed is not None:
            return FMutualInformation(closed, 0.0, "closed form")
        return self._quadrature(div)

    def _quadrature(self, div: FDivergence) -> FMutualInformation:
        d, r = self.dim, self.rho
        c0 = -0.5 * d * math.log1p(-r * r)
        t1, t2 = r / (2 * (1 + r)), -r / (2 * (1 - r))
        # Integrate over s = sqrt(U) (a chi variable): its density s^(d-1) e^(-s^2/2) is smooth
        # at 0 for every d, unlike the chi^2 density for d = 1.
        upper = math.sqrt(float(stats.chi2(d).isf(1e-300)))
        log_norm = (1 - 0.5 * d) * math.log(2.0) - math.lgamma(0.5 * d)

        def log_pdf(s: float) -> float:  # chi_d log-density
            return log_norm + (d - 1) * math.log(s) - 0.5 * s * s if s > 0 else -math.inf

        def integrand(s2: float, s1: float) -> float:
            ratio = torch.tensor(math.exp(c0 + t1 * s1 * s1 + t2 * s2 * s2), dtype=torch.float64)
            return float(div.f(ratio)) * math.exp(log_pdf(s1) + log_pdf(s2))

        value, error = integrate.dblquad(
            integrand, 0.0, upper, 0.0, upper, epsabs=1e-10, epsrel=1e-8
        )
        return FMutualInformation(float(value), float(error) + 1e-12, "quadrature")
