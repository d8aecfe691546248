r"""The two representations of critic scores, and the separable similarities.

Scores follow one convention everywhere: ``S[..., i, j] = T(x_i, y_j)``. Rows index x, columns
index y, positives sit on the diagonal; leading dimensions are batch dimensions.

* A dense tensor ``(..., N, N)``.
* A lazy :class:`SeparableScores` for separable critics ``T(x, y) = sim(g(x), h(y))``. Every
  bound accepts it; :meth:`SeparableScores.dense` materialises the matrix when needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mibounds import _checks, distributed

__all__ = ["SIMILARITIES", "SeparableScores", "pairwise_similarity"]

SIMILARITIES = ("dot", "cosine", "gaussian")


def pairwise_similarity(
    x: Tensor, y: Tensor, similarity: str = "dot", temperature: float | Tensor = 1.0
) -> Tensor:
    r"""Dense score matrix of a separable critic.

    .. math::

        S_{ij} = \frac{1}{\tau}\begin{cases}
            \langle x_i, y_j\rangle & \text{dot} \\
            \langle x_i / \|x_i\|, y_j / \|y_j\|\rangle & \text{cosine} \\
            -\|x_i - y_j\|^2 & \text{gaussian}
        \end{cases}

    The Gaussian case is the log of the kernel :math:`\exp(-\|x - y\|^2 / (2\sigma^2))` with
    :math:`\tau = 2\sigma^2`.

    Args:
        x: ``(..., N, d)`` features of the x samples.
        y: ``(..., M, d)`` features of the y samples (usually ``M = N``; one rank's rows
            against the gathered global batch have ``M > N``).
        similarity: ``"dot"``, ``"cosine"`` or ``"gaussian"``.
        temperature: positive float or scalar tensor :math:`\tau`.

    Returns:
        ``(..., N, M)`` scores, in the dtype of ``x``.

    Raises:
        ValueError: for shapes that disagree or an unknown similarity.

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> pairwise_similarity(x, x, "gaussian")
        tensor([[ 0., -2.],
                [-2.,  0.]])
    """
    _checks.check_tensor("x", x, min_dim=2)
    _checks.check_tensor("y", y, min_dim=2)
    if x.shape[:-2] != y.shape[:-2]:
        raise ValueError(
            "x and y must agree on their leading dimensions (..., N, d) and (..., M, d), got "
            f"x {tuple(x.shape)} and y {tuple(y.shape)}"
        )
    _checks.check_same_last_dim("x", x, "y", y)
    sim = _checks.check_choice("similarity", similarity, SIMILARITIES)
    _checks.check_temperature("temperature", temperature)
    return _similarity(x, y, sim, temperature)


def _similarity(x: Tensor, y: Tensor, sim: str, temperature: float | Tensor) -> Tensor:
    if sim == "cosine":
        x = F.normalize(x, dim=-1)
        y = F.normalize(y, dim=-1)
    if sim == "gaussian":
        # ||x - y||^2 = |x|^2 + |y|^2 - 2 x.y, clamped at 0 against rounding.
        sq = (x * x).sum(-1)[..., :, None] + (y * y).sum(-1)[..., None, :]
        s = (2 * (x @ y.transpose(-1, -2)) - sq).clamp_max(0)
    else:
        s = x @ y.transpose(-1, -2)
    return s / temperature


@dataclass(frozen=True, eq=False)
class SeparableScores:
    r"""Lazy scores of a separable critic: ``S[..., i, j] = sim(x[..., i, :], y[..., j, :]) / tau``.

    Bounds that receive a :class:`SeparableScores` never need the dense matrix from the user.
    The dense path is used as the fallback; the streaming kernels use ``x`` and ``y`` directly.

    Args:
        x: ``(..., N, d)`` encoded x samples.
        y: ``(..., N, d)`` encoded y samples.
        similarity: ``"dot"``, ``"cosine"`` or ``"gaussian"`` (see :func:`pairwise_similarity`).
        temperature: positive float or scalar tensor (it may require grad).
        gather: ``True`` or a process group to use the negatives of every rank
            (:mod:`mibounds.distributed`): ``x`` and ``y`` then hold this rank's ``n_local >= 1``
            pairs, and the bounds return the value of the concatenated batch. ``False``
            (default): this process's batch only.

    Raises:
        TypeError: for non-tensor or integer inputs.
        ValueError: for mismatched shapes, ``N < 2`` or a bad similarity or temperature.

    Example:
        >>> x, y = torch.randn(4, 3), torch.randn(4, 3)
        >>> s = SeparableScores(x, y, similarity="cosine", temperature=0.5)
        >>> s.shape
        torch.Size([4, 4])
        >>> torch.allclose(s.dense(), pairwise_similarity(x, y, "cosine", 0.5))
        True
    """

    x: Tensor
    y: Tensor
    similarity: str = "dot"
    temperature: float | Tensor = 1.0
    gather: Any = False

    def __post_init__(self) -> None:
        distributed.resolve_group(self.gather)
        _checks.check_pair("x", self.x, "y", self.y, min_n=1 if self.gather else 2)
        _checks.check_same_last_dim("x", self.x, "y", self.y)
        object.__setattr__(
            self, "similarity", _checks.check_choice("similarity", self.similarity, SIMILARITIES)
        )
        _checks.check_temperature("temperature", self.temperature)
        _checks.check_values("x", self.x)
        _checks.check_values("y", self.y)

    @property
    def shape(self) -> torch.Size:
        """Shape of the dense matrix, ``(..., N, N)``."""
        return torch.Size((*self.x.shape[:-1], self.x.shape[-2]))

    @property
    def dtype(self) -> torch.dtype:
        return self.x.dtype

    @property
    def device(self) -> torch.device:
        return self.x.device

    def dense(self) -> Tensor:
        """Materialise the ``(..., N, N)`` score matrix."""
        return _similarity(self.x, self.y, self.similarity, self.temperature)

    def diagonal(self) -> Tensor:
        """The positive scores ``S[..., i, i]`` in O(N d), shape ``(..., N)``."""
        x, y = self.x, self.y
        if self.similarity == "cosine":
            x, y = F.normalize(x, dim=-1), F.normalize(y, dim=-1)
        if self.similarity == "gaussian":
            d = -((x - y) ** 2).sum(-1)
        else:
            d = (x * y).sum(-1)
        return d / self.temperature
