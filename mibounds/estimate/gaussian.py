r"""The Gaussian start of :func:`~mibounds.estimate_mi`'s built-in critics.

A jointly Gaussian pair has the log density ratio

.. math::

    \log\frac{p(x, y)}{p(x)\,p(y)} = \sum_i \Big[-\tfrac12\log(1 - r_i^2)
    - \frac{r_i^2 (u_i^2 + v_i^2) - 2 r_i u_i v_i}{2 (1 - r_i^2)}\Big],

where :math:`u = A^\top (x - \bar x)` and :math:`v = B^\top (y - \bar y)` are the canonical
variates (canonical correlation analysis, CCA) and :math:`r_i` the canonical correlations. Fitted
on a critic's training part, with the correlations shrunk to undo the upward bias of sample
correlations, it is a critic of its own: on many coordinates of weak dependence (the MI spread
thinly over tens of coordinates) it is far closer to the optimal critic than a network trained
on a few thousand samples. :func:`~mibounds.estimate_mi` (above two coordinates in all, by
default) trains two critics per fold, a plain
network and one that starts from the Gaussian critic and learns the rest (its network part
starts at zero output), and keeps the one with the better validation value: the Gaussian start
helps where the dependence is close to Gaussian (after the normal scores of
``standardize="rank"``, any dependence whose copula is Gaussian), and the plain network still
wins where it is not (heavy tails, sharp non-Gaussian dependence).

The critic is separable: :math:`T(x, y) = f(x)^\top g(y)` with
:math:`f(x) = (a^\top u^2 + c,\ 1,\ s \odot u)` and :math:`g(y) = (1,\ a^\top v^2,\ v)`, where
:math:`a_i = -r_i^2 / (2 (1 - r_i^2))`, :math:`s_i = r_i / (1 - r_i^2)` and
:math:`c = -\frac12\sum_i \log(1 - r_i^2)`. It is joined to a separable critic's embeddings
(so the bounds still stream its scores) or added to a concat critic's scores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mibounds.bounds.lower import infonce

__all__ = ["GaussianStart", "fit_gaussian_start"]

#: features per side above which no Gaussian start is fitted (CCA costs O(d^3))
MAX_FEATURES = 1024

#: shrinkage of the sample canonical correlations r: ``scale * max(r - t, 0)`` for the soft
#: thresholds t, ``scale * r * (r > t)`` for the hard ones; the rule with the best symmetric
#: InfoNCE on the validation split is kept (scale 0 keeps no Gaussian part)
SCALES = (0.0, 0.2, 0.4, 0.6, 0.7, 0.8, 0.9, 1.0)
SOFT_THRESHOLDS = (0.0, 0.05, 0.1, 0.15, 0.2)
HARD_THRESHOLDS = (0.05, 0.1, 0.15, 0.2, 0.25)

#: largest shrunk correlation (keeps 1 / (1 - r^2) finite in float32)
MAX_CORRELATION = 0.9999

#: most validation pairs per member scored when the shrinkage is chosen
SELECTION_ROWS = 1024

#: ridge added to the standardised covariances (their eigenvalues are about 1)
RIDGE = 1e-4


@dataclass
class GaussianStart:
    """Fitted Gaussian critics, one per member (cross-fitting fold).

    Attributes:
        mean_x: ``(M, 1, d_x)`` means of x.
        mean_y: ``(M, 1, d_y)``.
        proj_x: ``(M, d_x, k)`` canonical directions of x (:math:`A`).
        proj_y: ``(M, d_y, k)`` (:math:`B`).
        corr: ``(M, k)`` shrunk canonical correlations.
        active: ``(M,)`` (on the CPU) whether the member starts from its Gaussian critic; the
            others start from a plain network (their Gaussian part is 0).
    """

    mean_x: Tensor
    mean_y: Tensor
    proj_x: Tensor
    proj_y: Tensor
    corr: Tensor
    active: Tensor

    def member(self, k: int) -> GaussianStart:
        """Member ``k`` alone (a stack of one)."""
        return self._select(slice(k, k + 1))

    def with_plain(self) -> GaussianStart:
        """2M members: M plain ones (no Gaussian part), then these M."""
        m = self.corr.shape[0]
        twice = self._select(torch.arange(m).repeat(2))
        plain = torch.arange(2 * m) < m
        twice.corr = torch.where(plain.to(self.corr.device)[:, None], 0.0, twice.corr)
        twice.active = ~plain & twice.active
        return twice

    def _select(self, which: slice | Tensor) -> GaussianStart:
        return GaussianStart(
            self.mean_x[which], self.mean_y[which], self.proj_x[which], self.proj_y[which],
            self.corr[which], self.active[which],
        )  # fmt: skip

    def sides(self, dtype: torch.dtype = torch.float32) -> tuple[_GaussianSide, _GaussianSide]:
        """The x and y embeddings whose dot product is the Gaussian critic, in ``dtype``."""
        r = self.corr
        q = 1.0 - r * r
        quad = (-(r * r) / (2 * q))[:, None]
        cross = (r / q)[:, None]
        const = (-0.5 * torch.log(q).sum(-1))[:, None, None]
        x_side = _GaussianSide(self.mean_x, self.proj_x, quad, cross, const)
        y_side = _GaussianSide(self.mean_y, self.proj_y, quad, None, None)
        return x_side.to(dtype), y_side.to(dtype)

    def scores(self, x: Tensor, y: Tensor) -> Tensor:
        """Dense ``(M, N, K)`` scores of ``(M, N, d_x)`` and ``(M, K, d_y)`` samples."""
        side_x, side_y = self.sides(x.dtype)
        fx, gy = side_x(x), side_y(y)
        return fx @ gy.transpose(-1, -2)


class _GaussianSide(nn.Module):
    """One side of a stacked Gaussian critic: ``(M, N, d)`` (or ``(N, d)`` for a stack of
    one) to ``(M, N, k + 2)`` embeddings. The x side carries the constant and the cross
    weights, the y side the plain variates."""

    mean: Tensor
    proj: Tensor
    quad: Tensor
    cross: Tensor | None

    def __init__(
        self, mean: Tensor, proj: Tensor, quad: Tensor, cross: Tensor | None, const: Tensor | None
    ) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("proj", proj)
        self.register_buffer("quad", quad)
        self.register_buffer("cross", cross)
        # the constant is learnt with the network: bounds other than InfoNCE (NWJ, TUBA) are
        # not invariant to a shift of the scores and place their optimum elsewhere
        self.const = None if const is None else nn.Parameter(const)

    def forward(self, v: Tensor) -> Tensor:
        single = v.dim() == 2
        if single:
            v = v[None]
        out = self.embed(self.project(v))
        return out[0] if single else out

    def project(self, v: Tensor) -> Tensor:
        """The canonical variates of ``(M, N, d)`` samples, ``(M, N, k)``."""
        return torch.bmm(v - self.mean, self.proj)

    def embed(self, u: Tensor) -> Tensor:
        """The embeddings of canonical variates ``u``, ``(M, N, k + 2)``."""
        square = (u * u * self.quad).sum(-1, keepdim=True)
        one = torch.ones_like(square)
        if self.cross is None or self.const is None:  # the y side
            return torch.cat([one, square, u], -1)
        return torch.cat([square + self.const, one, u * self.cross], -1)


class JoinedEncoder(nn.Module):
    """A network's embedding followed by a Gaussian side's: their dot products add up."""

    def __init__(self, net: nn.Module, side: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.side = side

    def forward(self, v: Tensor) -> Tensor:
        return torch.cat([self.net(v), self.side(v)], -1)


class PlusGaussian(nn.Module):
    """A dense critic plus a Gaussian critic: ``critic(x, y) + f(x) g(y)^T``. Each score
    still depends on its own pair only, so it can be evaluated on row chunks."""

    def __init__(self, critic: nn.Module, side_x: nn.Module, side_y: nn.Module) -> None:
        super().__init__()
        self.critic = critic
        self.side_x = side_x
        self.side_y = side_y

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        fx, gy = self.side_x(x), self.side_y(y)
        return self.critic(x, y) + fx @ gy.transpose(-1, -2)


@torch.no_grad()
def fit_gaussian_start(
    xs: Tensor, ys: Tensor, fit_idx: Tensor, val_idx: Tensor
) -> GaussianStart | None:
    """CCA of each member's training samples ``fit_idx[k]``, its correlations shrunk by the
    rule (see :data:`SCALES`) with the best symmetric InfoNCE on its validation samples
    ``val_idx[k]``.

    Returns ``None`` when a side has more than :data:`MAX_FEATURES` features or there is no
    validation split to choose the shrinkage on."""
    dx, dy = xs.shape[1], ys.shape[1]
    if max(dx, dy) > MAX_FEATURES or val_idx.shape[1] < 2:
        return None
    x64, y64 = xs.double(), ys.double()
    fits = [_cca(x64[idx], y64[idx]) for idx in fit_idx]
    mean_x, mean_y, proj_x, proj_y, raw = (torch.stack(p) for p in zip(*fits, strict=True))
    active = torch.ones(len(fits), dtype=torch.bool)
    start = GaussianStart(mean_x, mean_y, proj_x, proj_y, raw, active)
    rows = val_idx[:, :SELECTION_ROWS]
    # the canonical variates do not depend on the shrinkage: projected once for every rule
    side_x, side_y = start.sides(torch.float64)
    u, v = side_x.project(x64[rows]), side_y.project(y64[rows])
    best = torch.full((raw.shape[0],), -math.inf, dtype=torch.float64)
    chosen = torch.zeros_like(raw)
    kept = [(raw - t).clamp_min(0) for t in SOFT_THRESHOLDS]
    kept += [raw * (raw > t) for t in HARD_THRESHOLDS]
    for shrunk in kept:
        for scale in SCALES:
            start.corr = (scale * shrunk).clamp(max=MAX_CORRELATION)
            side_x, side_y = start.sides(torch.float64)
            scores = side_x.embed(u) @ side_y.embed(v).transpose(-1, -2)
            value = infonce(scores, symmetric=True)
            better = value > best
            best = torch.where(better, value, best)
            chosen[better] = start.corr[better]
    start.corr = chosen
    start.active = (chosen.amax(-1) > 0).cpu()
    return start


def _cca(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Means, canonical directions and canonical correlations of ``(n, d)`` samples."""
    n = x.shape[0]
    mx, my = x.mean(0, keepdim=True), y.mean(0, keepdim=True)
    xc, yc = x - mx, y - my
    wx, wy = _inverse_sqrt(xc.T @ xc / n), _inverse_sqrt(yc.T @ yc / n)
    u, r, vh = torch.linalg.svd(wx @ (xc.T @ yc / n) @ wy, full_matrices=False)
    return mx, my, wx @ u, wy @ vh.T, r.clamp(0.0, 1.0)


def _inverse_sqrt(cov: Tensor) -> Tensor:
    """:math:`(C + \\epsilon I)^{-1/2}` of a symmetric positive semi-definite matrix."""
    eye = torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
    w, v = torch.linalg.eigh(cov + RIDGE * eye)
    return (v * w.clamp_min(RIDGE).rsqrt()) @ v.T
