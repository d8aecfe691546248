"""Small networks for the examples: a convolutional encoder that exposes its layers' pooled
features (for LBE's per-layer bounds) and a matching decoder (for RC)."""

from __future__ import annotations

import itertools

from torch import Tensor, nn

from mibounds import _checks

__all__ = ["ConvDecoder", "SmallConvEncoder"]


class SmallConvEncoder(nn.Module):
    """Three 3x3 conv blocks (ReLU, batch norm) with global average pooling after each.

    Args:
        in_channels: input channels.
        width: channels of the first block (then ``2 * width`` and ``4 * width``).

    Returns (forward):
        The pooled features of the three blocks, ``[(N, w), (N, 2w), (N, 4w)]``; the last one
        is the representation (``out_dim = 4 * width``).

    Example:
        >>> import torch
        >>> feats = SmallConvEncoder(width=4)(torch.rand(2, 1, 8, 8))
        >>> [f.shape[-1] for f in feats]
        [4, 8, 16]
    """

    def __init__(self, in_channels: int = 1, width: int = 32) -> None:
        super().__init__()
        c = _checks.check_positive_int("width", width)
        _checks.check_positive_int("in_channels", in_channels)
        chans = [in_channels, c, 2 * c, 4 * c]
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(a, b, 3, padding=1, stride=1 if i == 0 else 2),
                nn.BatchNorm2d(b),
                nn.ReLU(),
            )
            for i, (a, b) in enumerate(itertools.pairwise(chans))
        )
        self.out_dim = 4 * c

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = []
        for block in self.blocks:
            x = block(x)
            feats.append(x.mean((-2, -1)))
        return feats


class ConvDecoder(nn.Module):
    """Linear map from a representation to an image of shape ``(channels, size, size)``.

    Example:
        >>> import torch
        >>> ConvDecoder(16, size=8)(torch.randn(3, 16)).shape
        torch.Size([3, 1, 8, 8])
    """

    def __init__(self, in_dim: int, channels: int = 1, size: int = 8, hidden: int = 256) -> None:
        super().__init__()
        self.shape = (channels, size, size)
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, channels * size * size)
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).reshape(z.shape[0], *self.shape)
