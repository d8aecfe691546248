"""The critic factory of the estimators: :func:`make_critic`."""

from __future__ import annotations

from torch import nn

from mibounds import _checks
from mibounds.nn.critics import MLP, ConcatCritic, SeparableCritic

__all__ = ["make_critic"]


def make_critic(
    kind: str, dim_x: int, dim_y: int, *, hidden: int = 256, embed: int = 64
) -> nn.Module:
    r"""A default critic: ``"separable"`` (two MLPs, dot product) or ``"concat"`` (MLP on pairs).

    Both use two hidden layers of ``hidden`` SiLU units. The separable critic (the architecture
    of Poole et al. 2019, with an ``embed``-dimensional output) costs O(N) network evaluations
    per batch; the concat critic costs O(N^2). SiLU rather than ReLU: on the correlated Gaussian
    (whose log density ratio is quadratic) it reached the truth where ReLU stalled about
    0.1-0.2 nats below it in our runs.

    Args:
        kind: ``"separable"`` or ``"concat"``.
        dim_x: size of x.
        dim_y: size of y.
        hidden: hidden layer width.
        embed: embedding size of the separable critic.

    Returns:
        An ``nn.Module`` mapping ``(x, y)`` to scores.

    Example:
        >>> import torch
        >>> critic = make_critic("separable", 3, 2)
        >>> critic(torch.randn(4, 3), torch.randn(4, 2)).shape
        torch.Size([4, 4])
    """
    kind = _checks.check_choice("critic", kind, ("separable", "concat"))
    if kind == "separable":
        return SeparableCritic(
            MLP(dim_x, embed, (hidden, hidden), nn.SiLU),
            MLP(dim_y, embed, (hidden, hidden), nn.SiLU),
        )
    return ConcatCritic(dim_x, dim_y, (hidden, hidden), nn.SiLU)
