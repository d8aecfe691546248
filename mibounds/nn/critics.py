r"""Critics :math:`T(x, y)`: modules that turn a batch of pairs into scores.

Separable critics (:class:`SeparableCritic`, :class:`BilinearCritic`,
:class:`GaussianKernelCritic`) return a lazy :class:`~mibounds.scores.SeparableScores`, so the
bounds can avoid the N x N matrix. :class:`ConcatCritic` returns a dense ``(..., N, N)`` tensor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn

from mibounds import _checks
from mibounds.scores import SIMILARITIES, SeparableScores

__all__ = ["MLP", "BilinearCritic", "ConcatCritic", "GaussianKernelCritic", "SeparableCritic"]


class MLP(nn.Sequential):
    r"""A plain multilayer perceptron: ``Linear -> activation`` per hidden layer, then ``Linear``.

    Args:
        in_dim: input features.
        out_dim: output features.
        hidden: sizes of the hidden layers.
        activation: module class used after each hidden layer.

    Example:
        >>> import torch
        >>> MLP(3, 2, hidden=(8,))(torch.randn(5, 3)).shape
        torch.Size([5, 2])
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden: Sequence[int] = (256, 256),
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        _checks.check_positive_int("in_dim", in_dim)
        _checks.check_positive_int("out_dim", out_dim)
        hidden = _checks.check_int_sequence("hidden", hidden)
        _checks.check_module_class("activation", activation)
        sizes = [in_dim, *hidden, out_dim]
        layers: list[nn.Module] = []
        for i in range(len(sizes) - 1):
            layers.append(nn.Linear(sizes[i], sizes[i + 1]))
            if i < len(sizes) - 2:
                layers.append(activation())
        super().__init__(*layers)


def _encode(encoder: nn.Module | None, v: Tensor, name: str = "x", owner: str = "") -> Tensor:
    """``encoder(v)``, after checking that ``v`` has the features the encoder's first linear
    layer takes (a clear error instead of torch's "mat1 and mat2 shapes cannot be
    multiplied")."""
    if encoder is None:
        return v
    expected = _checks.first_in_features(encoder)
    _checks.check_features(name, v, expected, f"the encoder of {owner or 'the critic'}")
    return encoder(v)


class _Temperature(nn.Module):
    """A positive scalar, fixed (buffer) or learnable (log-parameterised)."""

    def __init__(self, value: float, learnable: bool, name: str) -> None:
        super().__init__()
        _checks.check_positive(name, value)
        log_value = torch.tensor(math.log(value))
        if learnable:
            self.log_value = nn.Parameter(log_value)
        else:
            self.register_buffer("log_value", log_value)

    def forward(self) -> Tensor:
        return self.log_value.exp()


class SeparableCritic(nn.Module):
    r"""Separable critic :math:`T(x, y) = \mathrm{sim}(g(x), h(y)) / \tau`.

    Args:
        x_encoder: :math:`g`, maps ``(..., N, d_x)`` to ``(..., N, k)``; ``None`` is identity.
        y_encoder: :math:`h`; ``None`` shares ``x_encoder`` (a siamese critic).
        similarity: ``"dot"`` or ``"cosine"`` (``"gaussian"`` is
            :class:`GaussianKernelCritic`).
        temperature: :math:`\tau > 0`.
        learn_temperature: make :math:`\tau` a parameter (stored as :math:`\log\tau`).
        gather: ``True`` or a process group: the scores use the negatives of every rank
            (:mod:`mibounds.distributed`).
        logit_scale: CLIP's parametrisation instead of a temperature: scores are multiplied by
            :math:`t` = ``logit_scale`` (:math:`\tau = 1/t`), learnt as :math:`\log t` when
            ``learn_temperature`` and capped at ``max_logit_scale`` (CLIP: 1/0.07 and 100).
        max_logit_scale: the cap of the logit scale.

    Returns (forward):
        :class:`~mibounds.scores.SeparableScores` of shape ``(..., N, M)``.

    Example:
        >>> import torch, mibounds
        >>> critic = SeparableCritic(MLP(3, 8), MLP(2, 8), similarity="cosine", temperature=0.1)
        >>> scores = critic(torch.randn(16, 3), torch.randn(16, 2))
        >>> mibounds.infonce(scores).shape
        torch.Size([])
    """

    def __init__(
        self,
        x_encoder: nn.Module | None = None,
        y_encoder: nn.Module | None = None,
        *,
        similarity: str = "dot",
        temperature: float = 1.0,
        learn_temperature: bool = False,
        gather: Any = False,
        logit_scale: float | None = None,
        max_logit_scale: float = 100.0,
    ) -> None:
        super().__init__()
        self.similarity = _checks.check_choice("similarity", similarity, SIMILARITIES[:2])
        self.x_encoder = _checks.check_module("x_encoder", x_encoder)
        self.y_encoder = _checks.check_module("y_encoder", y_encoder)
        self.log_max_scale: float | None = None
        if logit_scale is None:
            self.temp = _Temperature(temperature, learn_temperature, "temperature")
        else:
            _checks.check_positive("max_logit_scale", max_logit_scale)
            self.temp = _Temperature(logit_scale, learn_temperature, "logit_scale")
            self.log_max_scale = math.log(max_logit_scale)
        self.gather = gather

    @property
    def temperature(self) -> Tensor:
        """The temperature :math:`\tau` (``1 / logit_scale`` with a logit scale)."""
        if self.log_max_scale is None:
            return self.temp()
        return torch.exp(-self.temp.log_value.clamp(max=self.log_max_scale))

    def forward(self, x: Tensor, y: Tensor) -> SeparableScores:
        owner = type(self).__name__
        gx = _encode(self.x_encoder, x, "x", owner)
        hy = _encode(
            self.y_encoder if self.y_encoder is not None else self.x_encoder, y, "y", owner
        )
        return SeparableScores(gx, hy, self.similarity, self.temperature, gather=self.gather)


class GaussianKernelCritic(nn.Module):
    r"""Log Gaussian kernel critic :math:`T(x, y) = -\|g(x) - h(y)\|^2 / (2\sigma^2)`.

    Args:
        x_encoder: :math:`g`; ``None`` is identity.
        y_encoder: :math:`h`; ``None`` shares ``x_encoder``.
        bandwidth: kernel width :math:`\sigma > 0`.
        learn_bandwidth: make :math:`\sigma` a parameter (stored as :math:`\log\sigma`).
        gather: ``True`` or a process group: the scores use the negatives of every rank
            (:mod:`mibounds.distributed`).

    Returns (forward):
        :class:`~mibounds.scores.SeparableScores` with ``similarity="gaussian"`` and
        temperature :math:`2\sigma^2`.

    Example:
        >>> import torch
        >>> critic = GaussianKernelCritic(bandwidth=0.5)
        >>> x = torch.zeros(2, 3)
        >>> critic(x, x).dense()
        tensor([[0., 0.],
                [0., 0.]])
    """

    def __init__(
        self,
        x_encoder: nn.Module | None = None,
        y_encoder: nn.Module | None = None,
        *,
        bandwidth: float = 1.0,
        learn_bandwidth: bool = False,
        gather: Any = False,
    ) -> None:
        super().__init__()
        self.x_encoder = _checks.check_module("x_encoder", x_encoder)
        self.y_encoder = _checks.check_module("y_encoder", y_encoder)
        self.sigma = _Temperature(bandwidth, learn_bandwidth, "bandwidth")
        self.gather = gather

    @property
    def bandwidth(self) -> Tensor:
        r"""The kernel width :math:`\sigma`."""
        return self.sigma()

    def forward(self, x: Tensor, y: Tensor) -> SeparableScores:
        owner = type(self).__name__
        gx = _encode(self.x_encoder, x, "x", owner)
        hy = _encode(
            self.y_encoder if self.y_encoder is not None else self.x_encoder, y, "y", owner
        )
        return SeparableScores(gx, hy, "gaussian", 2 * self.bandwidth**2, gather=self.gather)


class BilinearCritic(nn.Module):
    r"""Bilinear critic :math:`T(x, y) = g(x)^\top W h(y)`.

    Args:
        dim_x: feature size of :math:`g(x)` (of ``x`` if ``x_encoder`` is ``None``).
        dim_y: feature size of :math:`h(y)`.
        x_encoder: :math:`g`; ``None`` is identity.
        y_encoder: :math:`h`; ``None`` is identity.

    Returns (forward):
        :class:`~mibounds.scores.SeparableScores` (``dot``) of :math:`g(x) W` and :math:`h(y)`.

    Example:
        >>> import torch
        >>> critic = BilinearCritic(3, 2)
        >>> critic(torch.randn(4, 3), torch.randn(4, 2)).shape
        torch.Size([4, 4])
    """

    def __init__(
        self,
        dim_x: int,
        dim_y: int,
        x_encoder: nn.Module | None = None,
        y_encoder: nn.Module | None = None,
    ) -> None:
        super().__init__()
        _checks.check_positive_int("dim_x", dim_x)
        _checks.check_positive_int("dim_y", dim_y)
        self.x_encoder = _checks.check_module("x_encoder", x_encoder)
        self.y_encoder = _checks.check_module("y_encoder", y_encoder)
        self.weight = nn.Parameter(torch.randn(dim_x, dim_y) / math.sqrt(dim_x * dim_y))

    def forward(self, x: Tensor, y: Tensor) -> SeparableScores:
        gx = _encode(self.x_encoder, x, "x", "BilinearCritic")
        hy = _encode(self.y_encoder, y, "y", "BilinearCritic")
        if gx.shape[-1] != self.weight.shape[0] or hy.shape[-1] != self.weight.shape[1]:
            raise ValueError(
                f"BilinearCritic expects features of size dim_x={self.weight.shape[0]} and "
                f"dim_y={self.weight.shape[1]}, got x features {tuple(gx.shape)} and "
                f"y features {tuple(hy.shape)}"
            )
        return SeparableScores(gx @ self.weight, hy, "dot")


class ConcatCritic(nn.Module):
    r"""Concatenation critic :math:`T(x, y) = \mathrm{MLP}([x; y])` on every pair.

    The first layer :math:`W [x; y] + b = W_x x + W_y y + b` is split, so it costs
    :math:`O(N h)` instead of :math:`O(N^2 h)`; the later layers run on all :math:`N^2` pairs.
    The parameters (and ``state_dict``) equal a plain MLP on the concatenation.

    Args:
        dim_x: size of ``x``.
        dim_y: size of ``y``.
        hidden: hidden layer sizes (FactorCL's official critic: ``(512, 512)``).
        activation: module class after each hidden layer.

    Returns (forward):
        Dense scores ``(..., N, N)`` with ``S[..., i, j] = T(x_i, y_j)``.

    Example:
        >>> import torch
        >>> critic = ConcatCritic(3, 2, hidden=(16,))
        >>> critic(torch.randn(5, 3), torch.randn(5, 2)).shape
        torch.Size([5, 5])
    """

    def __init__(
        self,
        dim_x: int,
        dim_y: int,
        hidden: Sequence[int] = (512, 512),
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        _checks.check_positive_int("dim_x", dim_x)
        _checks.check_positive_int("dim_y", dim_y)
        hidden = _checks.check_int_sequence("hidden", hidden)
        if len(hidden) == 0:
            raise ValueError("hidden must name at least one hidden layer, got ()")
        self.dim_x, self.dim_y = dim_x, dim_y
        self.net = MLP(dim_x + dim_y, 1, hidden, activation)

    def pair_scores(self, x: Tensor, y: Tensor) -> Tensor:
        """Scores of the matched pairs only, ``T(x_i, y_i)``, shape ``(..., N)``."""
        _checks.check_features("x", x, self.dim_x, f"ConcatCritic(dim_x={self.dim_x})")
        _checks.check_features("y", y, self.dim_y, f"ConcatCritic(dim_y={self.dim_y})")
        return self.net(torch.cat([x, y], dim=-1)).squeeze(-1)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        _checks.check_pair("x", x, "y", y)
        first = cast(nn.Linear, self.net[0])
        _checks.check_features("x", x, self.dim_x, f"ConcatCritic(dim_x={self.dim_x})")
        _checks.check_features("y", y, self.dim_y, f"ConcatCritic(dim_y={self.dim_y})")
        wx, wy = first.weight[:, : self.dim_x], first.weight[:, self.dim_x :]
        ax = x @ wx.T + first.bias
        ay = y @ wy.T
        h = ax[..., :, None, :] + ay[..., None, :, :]
        for layer in list(self.net)[1:]:
            h = layer(h)
        return h.squeeze(-1)
