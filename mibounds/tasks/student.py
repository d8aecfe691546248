r"""Multivariate Student-t: heavy tails, MI above the Gaussian value of the same dispersion."""

from __future__ import annotations

import math

import torch
from scipy import special
from torch import Tensor

from mibounds import _checks
from mibounds.tasks.base import Task

__all__ = ["MultivariateStudentT"]


def _entropy_shape_term(k: int, df: float) -> float:
    # The part of the entropy of a k-dim t_df(0, Sigma) that depends on (k, df) but not on
    # Sigma or log(df pi): log G(df/2) - log G((df+k)/2) + (df+k)/2 [psi((df+k)/2) - psi(df/2)].
    h = 0.5 * (df + k)
    return float(
        special.gammaln(0.5 * df)
        - special.gammaln(h)
        + h * (special.digamma(h) - special.digamma(0.5 * df))
    )


class MultivariateStudentT(Task):
    r"""``(x, y) ~ t_nu(0, Sigma)``: a Gaussian ``N(0, Sigma)`` divided by ``sqrt(W / nu)``.

    With :math:`W \sim \chi^2_\nu`, :math:`m = ` ``dim_x`` and :math:`n = ` ``dim_y``:

    .. math::

        I(X;Y) = \tfrac12 \log\frac{\det\Sigma_{XX}\det\Sigma_{YY}}{\det\Sigma} + c(\nu, m, n),
        \quad c = g(m) + g(n) - g(m + n),

    .. math::

        g(k) = \log\Gamma(\tfrac\nu2) - \log\Gamma(\tfrac{\nu+k}2)
        + \tfrac{\nu+k}{2}\big[\psi(\tfrac{\nu+k}2) - \psi(\tfrac\nu2)\big],

    from the entropy of the multivariate t (Arellano-Valle, Contreras-Reyes and Genton 2013).
    The correction :math:`c > 0` does not vanish at :math:`\Sigma = I`: uncorrelated t
    variables still share the common scale :math:`W`.

    Args:
        dim_x: dimension of x.
        dim_y: dimension of y.
        df: degrees of freedom :math:`\nu > 0`.
        rho: correlation of each pair ``(x_k, y_k)``, ``k < min(dim_x, dim_y)`` (unit
            dispersion elsewhere); ignored when ``dispersion`` is given.
        dispersion: a full ``(dim_x + dim_y)``-square positive definite dispersion matrix.

    Example:
        >>> t = MultivariateStudentT(1, 1, df=3, rho=0.0)
        >>> round(t.mutual_information, 4)
        0.0424

    References:
        Czyz, Grabowski, Vogt, Beerenwinkel, Marx. "Beyond Normal: On the Evaluation of Mutual
        Information Estimators." NeurIPS 2023. Arellano-Valle, Contreras-Reyes, Genton. "Shannon
        Entropy and Mutual Information for Multivariate Skew-Elliptical Distributions."
        Scand. J. Stat. 2013.
    """

    def __init__(
        self,
        dim_x: int,
        dim_y: int,
        df: float,
        *,
        rho: float = 0.0,
        dispersion: Tensor | None = None,
    ) -> None:
        self.dim_x = _checks.check_positive_int("dim_x", dim_x)
        self.dim_y = _checks.check_positive_int("dim_y", dim_y)
        self.df = _checks.check_positive("df", df)
        k = dim_x + dim_y
        if dispersion is None:
            r = _checks.check_real("rho", rho)
            if not -1 < r < 1:
                raise ValueError(f"rho must lie in (-1, 1), got {rho!r}")
            sigma = torch.eye(k, dtype=torch.float64)
            for i in range(min(dim_x, dim_y)):
                sigma[i, dim_x + i] = sigma[dim_x + i, i] = r
        else:
            _checks.check_tensor("dispersion", dispersion, min_dim=2)
            if dispersion.shape != (k, k):
                raise ValueError(
                    f"dispersion must have shape ({k}, {k}) for dim_x={dim_x}, dim_y={dim_y}, "
                    f"got {tuple(dispersion.shape)}"
                )
            sigma = dispersion.detach().to(torch.float64).cpu()
            if not torch.allclose(sigma, sigma.T):
                raise ValueError("dispersion must be symmetric")
        try:
            self._chol = torch.linalg.cholesky(sigma)
        except RuntimeError:
            raise ValueError("dispersion must be positive definite") from None
        self.dispersion = sigma
        logdet = 2 * torch.log(torch.diagonal(self._chol)).sum()
        logdet_x = torch.logdet(sigma[:dim_x, :dim_x])
        logdet_y = torch.logdet(sigma[dim_x:, dim_x:])
        gaussian = 0.5 * float(logdet_x + logdet_y - logdet)
        g = _entropy_shape_term
        self.gaussian_mutual_information = gaussian
        self.correction = g(dim_x, self.df) + g(dim_y, self.df) - g(k, self.df)
        self._mi = gaussian + self.correction

    @property
    def mutual_information(self) -> float:
        return self._mi

    @classmethod
    def with_mi(cls, dim: int, df: float, mi: float) -> MultivariateStudentT:
        r"""The ``dim``+``dim`` task whose pairs share one correlation, chosen to give ``mi``.

        Solves :math:`-\frac d2 \log(1-\rho^2) = I - c(\nu, d, d)`.

        Raises:
            ValueError: if ``mi`` is below the correction :math:`c` (the MI at :math:`\rho=0`).

        Example:
            >>> round(MultivariateStudentT.with_mi(2, 5.0, 1.0).mutual_information, 6)
            1.0
        """
        base = cls(dim, dim, df)
        m = _checks.check_real("mi", mi)
        gaussian = m - base.correction
        if gaussian < 0:
            raise ValueError(
                f"mi must be >= {base.correction:.4f} nats for a Student-t task with dim={dim} "
                f"and df={df} (its MI at zero correlation), got {mi!r}"
            )
        rho = math.sqrt(-math.expm1(-2.0 * gaussian / dim))
        return cls(dim, dim, df, rho=rho)

    def _sample(self, n: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        k = self.dim_x + self.dim_y
        z = torch.randn(n, k, generator=generator, dtype=torch.float64) @ self._chol.T
        # chi^2_df as 2 * Gamma(df / 2): torch's Gamma sampler takes no generator, so draw it
        # from a uniform through scipy's inverse CDF.
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        w = torch.from_numpy(special.gammaincinv(0.5 * self.df, u.numpy()) * 2.0)
        v = z / torch.sqrt(w / self.df)[:, None]
        return v[:, : self.dim_x], v[:, self.dim_x :]

    def _log_density(self, v: Tensor, sigma: Tensor) -> Tensor:
        k, nu = sigma.shape[0], self.df
        precision = torch.linalg.inv(sigma).to(v)
        q = torch.einsum("...i,ij,...j->...", v, precision, v)
        const = (
            math.lgamma(0.5 * (nu + k))
            - math.lgamma(0.5 * nu)
            - 0.5 * k * math.log(nu * math.pi)
            - 0.5 * float(torch.logdet(sigma))
        )
        return const - 0.5 * (nu + k) * torch.log1p(q / nu)

    def log_density_ratio(self, x: Tensor, y: Tensor) -> Tensor:
        r"""Exact :math:`\log p(x, y) / (p(x) p(y))`; the marginals are t with the same
        :math:`\nu` and the sub-blocks of the dispersion. Leading dimensions broadcast."""
        lead = torch.broadcast_shapes(x.shape[:-1], y.shape[:-1])
        joint = torch.cat([x.expand(*lead, x.shape[-1]), y.expand(*lead, y.shape[-1])], -1)
        dx = self.dim_x
        return (
            self._log_density(joint, self.dispersion)
            - self._log_density(x, self.dispersion[:dx, :dx])
            - self._log_density(y, self.dispersion[dx:, dx:])
        )
