r"""Upper-bound modules: a Gaussian conditional model and the CLUB family, L1Out, NCE-CLUB.

Each module's ``forward(x, y)`` returns the **upper bound** (the value to minimise to remove
information from the encoders that produce ``x`` and ``y``), and ``learning_loss(x, y)`` returns
the loss that fits its own variational model (the Gaussian :math:`q(y|x)` or the critic). The two
are minimised alternately; :func:`update_variational` does the inner step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mibounds import _checks
from mibounds.bounds import lower, upper
from mibounds.nn.critics import MLP

__all__ = [
    "CLUB",
    "CLUBSample",
    "GaussianConditional",
    "L1Out",
    "NCEClub",
    "update_variational",
]

_LOG_2PI = math.log(2 * math.pi)


class GaussianConditional(nn.Module):
    r"""A diagonal Gaussian :math:`q(y|x) = \mathcal N(\mu(x), \mathrm{diag}\,e^{\ell(x)})`.

    The mean and the log-variance come from two MLP heads. The log-variance is bounded
    *smoothly* to ``[min_logvar, max_logvar]`` with softplus on both sides, so it cannot saturate
    the way a ``tanh`` head does (the reference CLUB code caps the variance to
    :math:`[e^{-1}, e]`) and its gradient does not vanish inside the range. With
    ``fixed_logvar`` the variance is a constant and only the mean is learned.

    Args:
        dim_x: size of x.
        dim_y: size of y.
        hidden: hidden layer sizes of each head.
        min_logvar: smooth lower bound of the log-variance.
        max_logvar: smooth upper bound of the log-variance.
        fixed_logvar: a constant log-variance instead of a learned one.

    Example:
        >>> import torch
        >>> q = GaussianConditional(3, 2, hidden=(16,))
        >>> mu, logvar = q(torch.randn(5, 3))
        >>> mu.shape, logvar.shape
        (torch.Size([5, 2]), torch.Size([5, 2]))
    """

    def __init__(
        self,
        dim_x: int,
        dim_y: int,
        hidden: Sequence[int] = (256, 256),
        *,
        min_logvar: float = -10.0,
        max_logvar: float = 6.0,
        fixed_logvar: float | None = None,
    ) -> None:
        super().__init__()
        _checks.check_positive_int("dim_x", dim_x)
        _checks.check_positive_int("dim_y", dim_y)
        hidden = _checks.check_int_sequence("hidden", hidden)
        self.dim_x, self.dim_y = dim_x, dim_y
        lo = _checks.check_real("min_logvar", min_logvar)
        hi = _checks.check_real("max_logvar", max_logvar)
        if not lo < hi:
            raise ValueError(
                f"min_logvar must be < max_logvar, got min_logvar={min_logvar!r} and "
                f"max_logvar={max_logvar!r}"
            )
        self.min_logvar, self.max_logvar = lo, hi
        self.mean = MLP(dim_x, dim_y, hidden)
        self.fixed_logvar = (
            None if fixed_logvar is None else _checks.check_real("fixed_logvar", fixed_logvar)
        )
        self.logvar = None if fixed_logvar is not None else MLP(dim_x, dim_y, hidden)

    def _bounded(self, raw: Tensor) -> Tensor:
        # lo + softplus(r - lo) - softplus(r - hi): smooth, increasing, slope ~1 inside, inside
        # (lo, hi) exactly. The same value as hi + softplus(lo - r) - softplus(hi - r); each
        # form is used on the side where it has no cancellation, so extreme r stay exact.
        lo, hi = self.min_logvar, self.max_logvar
        low_side = lo + F.softplus(raw - lo) - F.softplus(raw - hi)
        high_side = hi + F.softplus(lo - raw) - F.softplus(hi - raw)
        return torch.where(raw < 0.5 * (lo + hi), low_side, high_side)

    def _check_x(self, x: Tensor) -> None:
        _checks.check_tensor("x", x, min_dim=1)
        owner = f"{type(self).__name__}(dim_x={self.dim_x}, dim_y={self.dim_y})"
        _checks.check_features("x", x, self.dim_x, owner)

    def _check_y(self, x: Tensor, y: Tensor) -> None:
        _checks.check_tensor("y", y, min_dim=1)
        owner = f"{type(self).__name__}(dim_x={self.dim_x}, dim_y={self.dim_y})"
        _checks.check_features("y", y, self.dim_y, owner)
        if x.shape[:-1] != y.shape[:-1]:
            raise ValueError(
                "x and y must agree on every dimension but the last (..., N, d), got "
                f"x {tuple(x.shape)} and y {tuple(y.shape)}"
            )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(mu, logvar)`` of :math:`q(y|x)`, each ``(..., N, dim_y)``."""
        self._check_x(x)
        mu = self.mean(x)
        if self.logvar is None:
            return mu, torch.full_like(mu, float(self.fixed_logvar))  # type: ignore[arg-type]
        return mu, self._bounded(self.logvar(x))

    def log_prob(self, x: Tensor, y: Tensor) -> Tensor:
        r""":math:`\log q(y_i | x_i)` for matched pairs, shape ``(..., N)``."""
        mu, logvar = self(x)
        self._check_y(x, y)
        return -0.5 * (((y - mu) ** 2) * torch.exp(-logvar) + logvar + _LOG_2PI).sum(-1)

    def log_prob_matrix(self, x: Tensor, y: Tensor) -> Tensor:
        r""":math:`\log q(y_j | x_i)` for all pairs, shape ``(..., N, N)`` (:math:`O(N^2 d)`)."""
        mu, logvar = self(x)
        self._check_y(x, y)
        mu, logvar = mu[..., :, None, :], logvar[..., :, None, :]
        diff = y[..., None, :, :] - mu
        return -0.5 * ((diff**2) * torch.exp(-logvar) + logvar + _LOG_2PI).sum(-1)

    def learning_loss(self, x: Tensor, y: Tensor) -> Tensor:
        """Negative log-likelihood of ``y`` given ``x``, averaged over the batch."""
        return -self.log_prob(x, y).mean(-1)


def _conditional(
    conditional: GaussianConditional | None, dim_x: int | None, dim_y: int | None, name: str
) -> GaussianConditional:
    if conditional is not None:
        if not isinstance(conditional, GaussianConditional):
            raise TypeError(
                f"{name}: conditional must be a GaussianConditional, "
                f"got {type(conditional).__name__}"
            )
        return conditional
    if dim_x is None or dim_y is None:
        raise TypeError(f"{name} needs a conditional=GaussianConditional(...) or dim_x and dim_y")
    return GaussianConditional(dim_x, dim_y)


class CLUB(nn.Module):
    r"""CLUB upper bound with a learned Gaussian :math:`q(y|x)` (see :func:`mibounds.club`).

    Args:
        dim_x: size of x (when ``conditional`` is not given).
        dim_y: size of y (when ``conditional`` is not given).
        conditional: a :class:`GaussianConditional` to use.

    Example:
        >>> import torch
        >>> club = CLUB(3, 2)
        >>> x, y = torch.randn(8, 3), torch.randn(8, 2)
        >>> club(x, y).shape, club.learning_loss(x, y).shape
        (torch.Size([]), torch.Size([]))
    """

    def __init__(
        self,
        dim_x: int | None = None,
        dim_y: int | None = None,
        *,
        conditional: GaussianConditional | None = None,
    ) -> None:
        super().__init__()
        self.conditional = _conditional(conditional, dim_x, dim_y, type(self).__name__)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """The upper bound (minimise it to remove information).

        Args:
            x: ``(..., N, dim_x)`` samples of x (the conditional's input).
            y: ``(..., N, dim_y)`` samples of y, row ``i`` paired with row ``i`` of ``x``.
        """
        mu, logvar = self.conditional(x)
        self.conditional._check_y(x, y)
        return upper.club(mu, logvar, y)

    def learning_loss(self, x: Tensor, y: Tensor) -> Tensor:
        """The conditional model's negative log-likelihood."""
        return self.conditional.learning_loss(x, y)


class CLUBSample(CLUB):
    r"""CLUB with one random negative per row (see :func:`mibounds.club_sample`).

    Example:
        >>> import torch
        >>> CLUBSample(3, 2)(torch.randn(8, 3), torch.randn(8, 2)).shape
        torch.Size([])
    """

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        mu, logvar = self.conditional(x)
        self.conditional._check_y(x, y)
        return upper.club_sample(mu, logvar, y)


class L1Out(CLUB):
    r"""Leave-one-out upper bound with a learned Gaussian :math:`q(y|x)` (see
    :func:`mibounds.l1out`). Costs :math:`O(N^2 d)` for the pairwise log-densities.

    Example:
        >>> import torch
        >>> L1Out(3, 2)(torch.randn(8, 3), torch.randn(8, 2)).shape
        torch.Size([])
    """

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return upper.l1out(self.conditional.log_prob_matrix(x, y))


class NCEClub(nn.Module):
    r"""NCE-CLUB upper bound with a critic trained by InfoNCE (see :func:`mibounds.nce_club`).

    ``forward`` gives the bound on the critic's scores; ``learning_loss`` the critic's InfoNCE
    loss. FactorCL updates the encoders with ``forward`` but not the critic, then the critic
    alone with ``learning_loss`` (:func:`update_variational`).

    Args:
        critic: module mapping ``(x, y)`` to scores (dense or separable).

    Example:
        >>> import torch
        >>> from mibounds.nn import ConcatCritic
        >>> bound = NCEClub(ConcatCritic(3, 2, hidden=(16,)))
        >>> x, y = torch.randn(8, 3), torch.randn(8, 2)
        >>> bound(x, y).shape, bound.learning_loss(x, y).shape
        (torch.Size([]), torch.Size([]))
    """

    def __init__(self, critic: nn.Module) -> None:
        super().__init__()
        if not isinstance(critic, nn.Module):
            raise TypeError(f"critic must be an nn.Module, got {type(critic).__name__}")
        self.critic = critic

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """The NCE-CLUB upper bound of the critic's scores (minimise it over the encoders).

        Args:
            x: ``(N, ...)`` samples of x, as the critic takes them.
            y: ``(N, ...)`` samples of y, row ``i`` paired with row ``i`` of ``x``.
        """
        return upper.nce_club(self.critic(x, y))

    def learning_loss(self, x: Tensor, y: Tensor) -> Tensor:
        """The critic's training loss: minus InfoNCE of its scores (NCE-CLUB is an upper bound
        only while the critic is near its InfoNCE optimum; train it with this, detached from
        the encoders)."""
        return -lower.infonce(self.critic(x, y))


def update_variational(
    estimator: nn.Module,
    x: Tensor,
    y: Tensor,
    optimizer: torch.optim.Optimizer,
    steps: int = 1,
) -> float:
    r"""The inner step of the alternating update of an upper-bound estimator.

    Minimises ``estimator.learning_loss(x, y)`` for ``steps`` optimiser steps on *detached*
    inputs, so only the variational model (the conditional or the critic, whatever
    ``optimizer`` holds) moves and no gradient reaches the encoders that produced ``x`` and
    ``y``. The outer step then minimises ``estimator(x, y)`` with an optimiser over the
    encoders only. A typical loop::

        bound = mibounds.nn.CLUB(dim_x, dim_y)
        inner = torch.optim.Adam(bound.parameters(), lr=1e-3)
        outer = torch.optim.Adam(encoder.parameters(), lr=1e-4)
        for batch in loader:
            zx, zy = encoder(batch)
            mibounds.nn.update_variational(bound, zx, zy, inner)  # fit q(y|x)
            outer.zero_grad()
            (task_loss + beta * bound(zx, zy)).backward()        # remove information
            outer.step()

    Args:
        estimator: a module with ``learning_loss(x, y)`` (:class:`CLUB`, :class:`CLUBSample`,
            :class:`L1Out`, :class:`NCEClub`).
        x: ``(..., N, d_x)`` inputs (detached here).
        y: ``(..., N, d_y)`` inputs (detached here).
        optimizer: optimiser over the estimator's own parameters.
        steps: number of inner steps.

    Returns:
        The last learning loss (a float).

    Raises:
        TypeError: if ``estimator`` has no ``learning_loss`` or ``optimizer`` is not an
            optimiser.

    Example:
        >>> import torch
        >>> club = CLUB(2, 2, conditional=GaussianConditional(2, 2, hidden=(8,)))
        >>> opt = torch.optim.Adam(club.parameters(), lr=1e-2)
        >>> x = torch.randn(16, 2)
        >>> isinstance(update_variational(club, x, x, opt, steps=3), float)
        True
    """
    if not callable(getattr(estimator, "learning_loss", None)):
        raise TypeError(
            f"estimator must have a learning_loss(x, y) method, got {type(estimator).__name__}"
        )
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            "optimizer must be a torch.optim.Optimizer over the estimator's parameters, got "
            f"{type(optimizer).__name__} {optimizer!r}"
        )
    _checks.check_positive_int("steps", steps)
    _checks.check_tensor("x", x, min_dim=1)
    _checks.check_tensor("y", y, min_dim=1)
    x, y = x.detach(), y.detach()
    loss = torch.zeros(())
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss = estimator.learning_loss(x, y)  # type: ignore[operator]
        loss.backward()
        optimizer.step()
    return float(loss.detach())
