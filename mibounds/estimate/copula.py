r"""The Student-t copula critic: heavy-tailed dependence that a Gaussian critic cannot follow.

A multivariate Student-t pair :math:`(X, Y) \sim t_\nu(0, \Sigma)` is a Gaussian divided by one
shared scale :math:`\sqrt{W / \nu}`: even uncorrelated coordinates are dependent (large values
come together), so the normal scores of ``standardize="rank"`` do not make its dependence
Gaussian. Its **t-scores** keep it: each coordinate replaced by the :math:`t_\nu` quantile of
its mid-rank. They do not change under an increasing map of any coordinate, and after an
invertible linear map of either side (whose coordinates are again :math:`t_\nu`) they are
again multivariate :math:`t_\nu`, whose log density ratio is known:

.. math::

    f(x, y) = \log t_\nu(x, y; \Sigma) - \log t_\nu(x; \Sigma_{XX}) - \log t_\nu(y; \Sigma_{YY}),

    \log t_\nu(z; \Sigma) = c_\nu(k) - \tfrac12 \log\det\Sigma
    - \tfrac{\nu + k}{2} \log\Big(1 + \frac{z^\top \Sigma^{-1} z}{\nu}\Big).

:func:`fit_t_copulas` fits it per cross-fitting fold: for each :math:`\nu` of :data:`DF_GRID`,
the dispersion by the EM iterations of the t maximum likelihood on the fold's training samples.
Where the copula likelihood (the t densities of the t-scores less those of their margins)
prefers the largest :math:`\nu`, a Gaussian copula, the fold gets no t critic. Otherwise
:func:`choose_t_copula` picks :math:`\nu` and a shrinkage of the cross-dispersion
(:data:`CROSS_SCALES`) on the fold's validation split, as :func:`mibounds.estimate_mi` does for
the Gaussian critic, and keeps the result where it validates better than the fold's networks.
"""

from __future__ import annotations

import math

import torch
from scipy import stats
from torch import Tensor, nn

__all__ = [
    "CROSS_SCALES",
    "DF_GRID",
    "TCopulaCritic",
    "choose_t_copula",
    "fit_t_copulas",
    "t_scores",
]

#: The degrees of freedom tried (the last, far above any heavy tail, stands for a Gaussian
#: copula: a fold that chooses it gets no t critic).
DF_GRID = (1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.0, 10.0, 15.0, 25.0, 1000.0)

#: most EM iterations of the dispersion at each degree of freedom, and the relative change of
#: the dispersion at which they stop
EM_ITERATIONS = 100
EM_TOLERANCE = 1e-6


def t_scores(normal_scores: Tensor, df: float) -> Tensor:
    """Each normal score mapped to the :math:`t_\\nu` quantile of the same probability
    (float64): the same mid-ranks, Student-t margins."""
    u = torch.special.ndtr(normal_scores.double())
    out = stats.t.ppf(u.cpu().numpy(), df)
    return torch.from_numpy(out).to(normal_scores.device)


def _log_t(q: Tensor, df: float, k: int, logdet: Tensor) -> Tensor:
    """``log t_df(z; Sigma)`` of points with ``q = z^T Sigma^-1 z`` in ``k`` dimensions."""
    const = math.lgamma(0.5 * (df + k)) - math.lgamma(0.5 * df) - 0.5 * k * math.log(df * math.pi)
    return const - 0.5 * logdet - 0.5 * (df + k) * torch.log1p(q / df)


def _quad(z: Tensor, precision: Tensor) -> Tensor:
    return ((z @ precision) * z).sum(-1)


def _dispersion(z: Tensor, df: float) -> Tensor:
    """The maximum-likelihood dispersion of centred :math:`t_\\nu` samples ``(n, k)`` (EM:
    each sample weighted by :math:`(\\nu + k) / (\\nu + q)`), started from the covariance."""
    n, k = z.shape
    sigma = z.T @ z / n
    for _ in range(EM_ITERATIONS):
        q = _quad(z, torch.linalg.inv(sigma))
        w = (df + k) / (df + q)
        new = (z * w[:, None]).T @ z / n
        done = float((new - sigma).abs().max()) <= EM_TOLERANCE * float(new.abs().max())
        sigma = new
        if done:
            break
    return sigma


class TCopulaCritic(nn.Module):
    """The log density ratio of a fitted :math:`t_\\nu` pair, as a critic of normal scores.

    ``forward(x, y)`` takes normal scores ``(N, d_x)`` and ``(K, d_y)`` (as
    :func:`mibounds.estimate_mi` trains its networks on), maps them to t-scores and returns the
    dense ``(N, K)`` scores :math:`f(x_i, y_j)` in float32 (formed in float64, in row chunks).

    Attributes:
        df: degrees of freedom :math:`\\nu`.
        dispersion: ``(d_x + d_y, d_x + d_y)`` dispersion :math:`\\Sigma` of the t-scores.
        dim_x: coordinates of x.
    """

    dispersion: Tensor

    def __init__(self, df: float, dispersion: Tensor, dim_x: int) -> None:
        super().__init__()
        self.df = float(df)
        self.dim_x = dim_x
        self.register_buffer("dispersion", dispersion.double())

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.scores_of_t(t_scores(x, self.df), t_scores(y, self.df))

    def scores_of_t(self, tx: Tensor, ty: Tensor) -> Tensor:
        """Dense ``(N, K)`` float32 scores of t-scores ``tx (N, d_x)`` and ``ty (K, d_y)``."""
        dx, k, df = self.dim_x, self.dispersion.shape[0], self.df
        sigma = self.dispersion
        tx, ty = tx.to(sigma), ty.to(sigma)
        p = torch.linalg.inv(sigma)
        sxx, syy = sigma[:dx, :dx], sigma[dx:, dx:]
        fx = _log_t(_quad(tx, torch.linalg.inv(sxx)), df, dx, torch.logdet(sxx))
        fy = _log_t(_quad(ty, torch.linalg.inv(syy)), df, k - dx, torch.logdet(syy))
        qx, qy = _quad(tx, p[:dx, :dx]), _quad(ty, p[dx:, dx:])
        cross = tx @ (2.0 * p[:dx, dx:])
        logdet = torch.logdet(sigma)
        out = torch.empty(tx.shape[0], ty.shape[0], dtype=torch.float32, device=tx.device)
        for i in range(0, tx.shape[0], _CHUNK_ROWS):
            rows = slice(i, i + _CHUNK_ROWS)
            q = qx[rows, None] + cross[rows] @ ty.T + qy[None, :]
            out[rows] = _log_t(q, df, k, logdet) - fx[rows, None] - fy[None, :]
        return out

    def shrunk(self, scale: float) -> TCopulaCritic:
        """The same critic with the cross-dispersion :math:`\\Sigma_{XY}` scaled by ``scale``
        (sample cross-dispersions of many coordinates are noisy; ``0`` keeps the shared
        scale alone)."""
        dx = self.dim_x
        sigma = self.dispersion.clone()
        sigma[:dx, dx:] *= scale
        sigma[dx:, :dx] *= scale
        return TCopulaCritic(self.df, sigma, dx)


#: the scales of the cross-dispersion :func:`mibounds.estimate_mi` chooses from on each fold's
#: validation split
CROSS_SCALES = (1.0, 0.75, 0.5, 0.25, 0.0)

#: rows of the score matrix formed at a time (float64 temporaries of this many rows)
_CHUNK_ROWS = 1024


def fit_t_copulas(
    x_normal: Tensor, y_normal: Tensor, fit_idx: Tensor
) -> tuple[list[list[TCopulaCritic]], dict[float, Tensor]]:
    """The t copula critics of paired normal scores ``(n, d_x)``, ``(n, d_y)`` for each
    cross-fitting fold ``k`` (its training samples ``fit_idx[k]``): one per degree of freedom
    of :data:`DF_GRID` but the last, each with its maximum-likelihood dispersion; none (an
    empty list) for a fold whose copula likelihood prefers the last, a Gaussian copula. Which
    one to use is for a validation split to decide: the t-scores of ranks cut the tails short,
    which biases the likelihood's own choice of the degrees of freedom downwards.

    Also returns the t-scores of all ``n`` samples, ``(n, d_x + d_y)`` per degree of freedom
    (computed once for every fold)."""
    dx = x_normal.shape[1]
    joint = torch.cat([x_normal, y_normal], 1).double()
    tables = {df: t_scores(joint, df) for df in DF_GRID}
    fitted: list[list[TCopulaCritic]] = []
    for idx in fit_idx:
        best, fold = -math.inf, list[TCopulaCritic]()
        for df in DF_GRID:
            z = tables[df][idx]
            sigma = _dispersion(z, df)
            q = _quad(z, torch.linalg.inv(sigma))
            log_joint = _log_t(q, df, z.shape[1], torch.logdet(sigma))
            scale = torch.diagonal(sigma)  # the margins of the fitted joint
            margins = _log_t(z * z / scale, df, 1, torch.log(scale)).sum(-1)
            value = float((log_joint - margins).mean())
            if df == DF_GRID[-1] and value >= best:
                fold = []  # a Gaussian copula fits best
            elif df != DF_GRID[-1]:
                fold.append(TCopulaCritic(df, sigma, dx))
            best = max(best, value)
        fitted.append(fold)
    return fitted, tables


def choose_t_copula(
    candidates: list[TCopulaCritic],
    tables: dict[float, Tensor],
    rows: Tensor,
    loss: nn.Module,
    above: float,
) -> TCopulaCritic | None:
    """Of a fold's ``candidates`` (:func:`fit_t_copulas`) and the shrinkages
    :data:`CROSS_SCALES` of each, the critic whose bound ``-loss`` on the validation samples
    ``rows`` (as one batch, from their t-scores in ``tables``) is largest, if it exceeds
    ``above`` (the best of the fold's networks); else ``None``."""
    best, pick = above, None
    for copula in candidates:
        t_val = tables[copula.df][rows]
        for scale in CROSS_SCALES:
            critic = copula.shrunk(scale)
            with torch.no_grad():
                value = -float(
                    loss(critic.scores_of_t(t_val[:, : copula.dim_x], t_val[:, copula.dim_x :]))
                )
            if math.isfinite(value) and value > best:
                best, pick = value, critic
    return pick
