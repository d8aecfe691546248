"""The critic factory of the estimators: :func:`make_critic`, and the stacked critics that let
:func:`~mibounds.estimate_mi` train one critic per cross-fitting fold in a single pass."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from mibounds import _checks
from mibounds.nn.critics import MLP, ConcatCritic, SeparableCritic

__all__ = [
    "StackedConcatCritic",
    "StackedLinear",
    "StackedMLP",
    "StackedSeparableCritic",
    "make_critic",
]

#: ``critic="auto"`` picks a concat critic up to this many input features in all (dim_x + dim_y)
AUTO_CONCAT_MAX_FEATURES = 2


def make_critic(
    kind: str,
    dim_x: int,
    dim_y: int,
    *,
    hidden: int = 256,
    embed: int = 64,
    members: int | None = None,
    activation: type[nn.Module] | None = None,
) -> nn.Module:
    r"""A default critic: ``"separable"`` (two MLPs, dot product), ``"concat"`` (MLP on pairs) or
    ``"auto"``.

    Both use two hidden layers of ``hidden`` units. The separable critic (the architecture of
    Poole et al. 2019, with an ``embed``-dimensional output) costs O(N) network evaluations per
    batch and is rank-limited: it represents :math:`f(x)^\top g(y)`. The concat critic costs
    O(N^2) evaluations and can represent any function of the pair. ``"auto"`` is the concat
    critic when ``dim_x + dim_y <= 2`` (where N^2 evaluations of a small network are cheap and a
    sharp, non-separable log density ratio such as that of additive uniform noise needs it) and
    the separable critic otherwise.

    The default activation is SiLU for the separable critic (on the correlated Gaussian, whose
    log density ratio is quadratic, it reached the truth where ReLU stalled 0.1-0.2 nats below
    it in our runs) and ReLU for the concat critic (piecewise-linear pieces follow the edges of
    a non-smooth ratio).

    Args:
        kind: ``"separable"``, ``"concat"`` or ``"auto"``.
        dim_x: size of x.
        dim_y: size of y.
        hidden: hidden layer width.
        embed: embedding size of the separable critic.
        members: ``None`` for one critic; an integer M builds M independent critics in one
            module (:class:`StackedMLP` weights), taking ``(M, N, d)`` inputs and returning
            ``(M, N, N)`` scores.
        activation: module class of the hidden layers (default: see above).

    Returns:
        An ``nn.Module`` mapping ``(x, y)`` to scores.

    Example:
        >>> import torch
        >>> make_critic("separable", 3, 2)(torch.randn(4, 3), torch.randn(4, 2)).shape
        torch.Size([4, 4])
        >>> make_critic("auto", 1, 1, members=5)(torch.randn(5, 4, 1), torch.randn(5, 4, 1)).shape
        torch.Size([5, 4, 4])
    """
    kind = _checks.check_choice("critic", kind, ("separable", "concat", "auto"))
    _checks.check_positive_int("dim_x", dim_x)
    _checks.check_positive_int("dim_y", dim_y)
    _checks.check_positive_int("hidden", hidden)
    _checks.check_positive_int("embed", embed)
    if members is not None:
        _checks.check_positive_int("members", members)
    if activation is not None:
        _checks.check_module_class("activation", activation)
    kind = resolve_auto(kind, dim_x, dim_y)
    sizes = (hidden, hidden)
    if kind == "separable":
        act = activation or nn.SiLU
        if members is None:
            return SeparableCritic(MLP(dim_x, embed, sizes, act), MLP(dim_y, embed, sizes, act))
        return StackedSeparableCritic(
            StackedMLP(members, dim_x, embed, sizes, act),
            StackedMLP(members, dim_y, embed, sizes, act),
        )
    act = activation or nn.ReLU
    if members is None:
        return ConcatCritic(dim_x, dim_y, sizes, act)
    return StackedConcatCritic(members, dim_x, dim_y, sizes, act)


def resolve_auto(kind: str, dim_x: int, dim_y: int) -> str:
    """The critic kind ``"auto"`` stands for at these dimensions (any other kind unchanged).

    Example:
        >>> resolve_auto("auto", 1, 1), resolve_auto("auto", 5, 5), resolve_auto("concat", 5, 5)
        ('concat', 'separable', 'concat')
    """
    if kind != "auto":
        return kind
    return "concat" if dim_x + dim_y <= AUTO_CONCAT_MAX_FEATURES else "separable"


class StackedLinear(nn.Module):
    """M independent linear layers applied to ``(M, N, in)`` inputs (one batched matmul).

    Initialised like ``nn.Linear`` (uniform in :math:`\\pm 1/\\sqrt{\\text{in}}`), member by
    member.

    Example:
        >>> StackedLinear(3, 4, 2)(torch.randn(3, 5, 4)).shape
        torch.Size([3, 5, 2])
    """

    def __init__(self, members: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(in_dim)
        self.weight = nn.Parameter(torch.empty(members, in_dim, out_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(members, 1, out_dim).uniform_(-bound, bound))

    def forward(self, v: Tensor) -> Tensor:
        return torch.baddbmm(self.bias, v, self.weight)


class StackedMLP(nn.Sequential):
    """M independent :class:`~mibounds.nn.MLP` s in one module: ``(M, N, in) -> (M, N, out)``.

    Example:
        >>> StackedMLP(2, 3, 4, (8, 8), nn.SiLU)(torch.randn(2, 5, 3)).shape
        torch.Size([2, 5, 4])
    """

    def __init__(
        self,
        members: int,
        in_dim: int,
        out_dim: int,
        hidden: tuple[int, ...],
        activation: type[nn.Module],
    ) -> None:
        sizes = [in_dim, *hidden, out_dim]
        layers: list[nn.Module] = []
        for i in range(len(sizes) - 1):
            layers.append(StackedLinear(members, sizes[i], sizes[i + 1]))
            if i < len(sizes) - 2:
                layers.append(activation())
        super().__init__(*layers)


class StackedSeparableCritic(SeparableCritic):
    """M independent separable critics on ``(M, N, d)`` inputs. Up to :attr:`DENSE_MAX`
    scores per member the ``(M, N, K)`` matrix is formed directly (at training batch sizes one
    batched matmul is faster than streaming); above it the lazy
    :class:`~mibounds.scores.SeparableScores` is returned, which the bounds stream.

    Example:
        >>> c = StackedSeparableCritic(StackedMLP(2, 3, 4, (8,), nn.SiLU),
        ...                            StackedMLP(2, 1, 4, (8,), nn.SiLU))
        >>> c(torch.randn(2, 5, 3), torch.randn(2, 5, 1)).shape
        torch.Size([2, 5, 5])
    """

    #: largest N * K formed as a dense matrix
    DENSE_MAX = 1 << 20

    def forward(self, x: Tensor, y: Tensor) -> Any:
        scores = super().forward(x, y)
        return scores.dense() if x.shape[-2] * y.shape[-2] <= self.DENSE_MAX else scores


class StackedConcatCritic(nn.Module):
    """M independent concat critics: ``(M, N, d_x), (M, K, d_y) -> (M, N, K)`` dense scores.

    The first layer is applied to x and y apart and summed per pair, which is the same linear
    map of the concatenated pair at O(N + K) instead of O(N K) cost.

    Example:
        >>> critic = StackedConcatCritic(2, 1, 3, (8,), nn.ReLU)
        >>> critic(torch.randn(2, 4, 1), torch.randn(2, 6, 3)).shape
        torch.Size([2, 4, 6])
    """

    def __init__(
        self,
        members: int,
        dim_x: int,
        dim_y: int,
        hidden: tuple[int, ...],
        activation: type[nn.Module],
    ) -> None:
        super().__init__()
        first = StackedLinear(members, dim_x + dim_y, hidden[0])
        self.first_x = nn.Parameter(first.weight.data[:, :dim_x].clone())
        self.first_y = nn.Parameter(first.weight.data[:, dim_x:].clone())
        self.first_bias = nn.Parameter(first.bias.data[:, None].clone())  # (M, 1, 1, h)
        self.act = activation()
        self.rest = StackedMLP(members, hidden[0], 1, tuple(hidden[1:]), activation)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        m, n, k = x.shape[0], x.shape[1], y.shape[1]
        h = torch.bmm(x, self.first_x)[:, :, None] + torch.bmm(y, self.first_y)[:, None]
        h = self.act(h + self.first_bias)
        return self.rest(h.reshape(m, n * k, -1)).reshape(m, n, k)
