r"""Additive uniform noise: ``Y = X + U(-eps, eps)`` with ``X ~ U(0, 1)``, per coordinate."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mibounds import _checks
from mibounds.tasks.base import Task

__all__ = ["AdditiveUniformNoise"]


class AdditiveUniformNoise(Task):
    r"""``x ~ U(0, 1)^d``, ``y = x + n`` with ``n ~ U(-eps, eps)^d`` independent of x.

    :math:`Y` has a trapezoidal density, so with :math:`I = h(Y) - \log(2\epsilon)` per
    coordinate:

    .. math::

        I(X;Y) = d \cdot \begin{cases}
            \epsilon - \log(2\epsilon) & \epsilon \le 1/2 \\
            1/(4\epsilon) & \epsilon > 1/2.
        \end{cases}

    The density ratio is :math:`-\infty` where :math:`|y - x| > \epsilon` (no finite oracle
    critic), so only samples and the MI are offered.

    Args:
        eps: noise half-width :math:`\epsilon > 0`.
        dim: number of independent coordinates d.

    Example:
        >>> AdditiveUniformNoise(eps=0.5).mutual_information
        0.5
        >>> AdditiveUniformNoise(eps=1.0).mutual_information
        0.25

    References:
        Czyz et al. "Beyond Normal: On the Evaluation of Mutual Information Estimators."
        NeurIPS 2023.
    """

    def __init__(self, eps: float, dim: int = 1) -> None:
        self.eps = _checks.check_positive("eps", eps)
        self.dim_x = self.dim_y = _checks.check_positive_int("dim", dim)
        if self.eps <= 0.5:
            per = self.eps - math.log(2 * self.eps)
        else:
            per = 1 / (4 * self.eps)
        self._mi = self.dim_x * per

    @property
    def mutual_information(self) -> float:
        return self._mi

    def _sample(self, n: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        x = torch.rand(n, self.dim_x, generator=generator, dtype=torch.float64)
        noise = torch.rand(n, self.dim_x, generator=generator, dtype=torch.float64)
        return x, x + self.eps * (2 * noise - 1)
