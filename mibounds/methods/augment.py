r"""Data augmentations for the paper methods (all take an optional ``torch.Generator``).

* :func:`vector_augment`: FactorCL's augmentation of feature vectors: per sample one of
  swapping the two halves, Gaussian noise (std 0.01), zeroing a random 10% of the features, or
  the identity.
* :func:`sequence_augment`: FactorCL's time-series augmentation: per sample one of permuting
  the time steps, Gaussian noise (std 0.1), zeroing a random 20% of the steps, or the identity.
* :func:`mixup`: FactorCL's tabular mixup with a Beta(1, 1) weight.
* :func:`image_augment`: light augmentations for small grey images such as scikit-learn's 8x8
  digits: a random shift of up to one pixel, random intensity scaling, Gaussian noise and a
  random erased square.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mibounds import _checks

__all__ = ["image_augment", "mixup", "sequence_augment", "vector_augment"]


def _uniform(shape: tuple[int, ...], x: Tensor, generator) -> Tensor:
    return torch.rand(shape, generator=generator, device=x.device, dtype=x.dtype)


def vector_augment(
    x: Tensor,
    generator: torch.Generator | None = None,
    *,
    noise: float = 0.01,
    drop: float = 0.1,
) -> Tensor:
    """FactorCL's vector augmentation: each row gets one of four operations at random.

    Args:
        x: ``(N, d)`` vectors.
        generator: optional random generator (on ``x``'s device).
        noise: standard deviation of the Gaussian noise (FactorCL: 0.01).
        drop: fraction of features zeroed (FactorCL: 0.1).

    Returns:
        The augmented ``(N, d)`` batch (a new tensor).

    Example:
        >>> x = torch.arange(8.0).reshape(2, 4)
        >>> vector_augment(x, torch.Generator().manual_seed(0)).shape
        torch.Size([2, 4])
    """
    _checks.check_tensor("x", x, min_dim=2)
    if x.dim() != 2:
        raise ValueError(f"x must be (N, d), got shape {tuple(x.shape)}")
    n, d = x.shape
    choice = torch.randint(0, 4, (n, 1), generator=generator, device=x.device)
    half = d // 2
    swapped = torch.cat([x[:, half:], x[:, :half]], dim=1)
    noisy = x + noise * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    dropped = x * (_uniform((n, d), x, generator) >= drop)
    out = torch.where(choice == 0, swapped, x)
    out = torch.where(choice == 1, noisy, out)
    return torch.where(choice == 2, dropped, out)


def sequence_augment(
    x: Tensor,
    generator: torch.Generator | None = None,
    *,
    noise: float = 0.1,
    drop: float = 0.2,
) -> Tensor:
    """FactorCL's time-series augmentation of ``(N, T, C)`` sequences, one operation per sample:
    a random permutation of the ``T`` steps, Gaussian noise, zeroing a random ``drop`` share of
    the steps (all channels), or the identity.

    Example:
        >>> x = torch.arange(24.0).reshape(2, 4, 3)
        >>> sequence_augment(x, torch.Generator().manual_seed(0)).shape
        torch.Size([2, 4, 3])
    """
    _checks.check_tensor("x", x, min_dim=3)
    if x.dim() != 3:
        raise ValueError(f"x must be (N, T, C), got shape {tuple(x.shape)}")
    n, t, _ = x.shape
    choice = torch.randint(0, 4, (n, 1, 1), generator=generator, device=x.device)
    order = torch.argsort(_uniform((n, t), x, generator), dim=1)
    permuted = torch.gather(x, 1, order[:, :, None].expand_as(x))
    noisy = x + noise * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    dropped = x * (_uniform((n, t, 1), x, generator) >= drop)
    out = torch.where(choice == 0, permuted, x)
    out = torch.where(choice == 1, noisy, out)
    return torch.where(choice == 2, dropped, out)


def mixup(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Mix each row with a random other row, weight ~ Beta(1, 1) (uniform) per row.

    Example:
        >>> mixup(torch.ones(3, 2)).tolist()
        [[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]]
    """
    _checks.check_tensor("x", x, min_dim=2)
    n = x.shape[0]
    lam = _uniform((n,) + (1,) * (x.dim() - 1), x, generator)
    partner = torch.randperm(n, generator=generator, device=x.device)
    return lam * x + (1 - lam) * x[partner]


def image_augment(
    images: Tensor,
    generator: torch.Generator | None = None,
    *,
    shift: int = 1,
    noise: float = 0.1,
    erase: int = 2,
) -> Tensor:
    """Random shift, intensity scaling, noise and erasing for ``(N, C, H, W)`` images in [0, 1].

    Args:
        images: ``(N, C, H, W)`` images scaled to [0, 1].
        generator: optional random generator.
        shift: largest shift in pixels (zero padding), per axis.
        noise: standard deviation of the added Gaussian noise.
        erase: side of the square set to 0 at a random place (0: no erasing).

    Returns:
        Augmented images, clamped to [0, 1].

    Example:
        >>> image_augment(torch.rand(4, 1, 8, 8), torch.Generator().manual_seed(0)).shape
        torch.Size([4, 1, 8, 8])
    """
    _checks.check_tensor("images", images, min_dim=4)
    n, _, h, w = images.shape
    dev, gen = images.device, generator
    pad = torch.nn.functional.pad(images, (shift, shift, shift, shift))
    dy = torch.randint(0, 2 * shift + 1, (n,), generator=gen, device=dev)
    dx = torch.randint(0, 2 * shift + 1, (n,), generator=gen, device=dev)
    rows = (dy[:, None] + torch.arange(h, device=dev))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, None, :]
    idx = torch.arange(n, device=dev)[:, None, None, None]
    chan = torch.arange(images.shape[1], device=dev)[None, :, None, None]
    out = pad[idx, chan, rows, cols]
    scale = 0.7 + 0.6 * _uniform((n, 1, 1, 1), images, gen)
    out = out * scale + noise * torch.randn(out.shape, generator=gen, device=dev, dtype=out.dtype)
    if erase > 0:
        ey = torch.randint(0, h - erase + 1, (n,), generator=gen, device=dev)
        ex = torch.randint(0, w - erase + 1, (n,), generator=gen, device=dev)
        r = torch.arange(h, device=dev)[None, :, None]
        c = torch.arange(w, device=dev)[None, None, :]
        inside = (r >= ey[:, None, None]) & (r < ey[:, None, None] + erase)
        inside = inside & (c >= ex[:, None, None]) & (c < ex[:, None, None] + erase)
        out = out.masked_fill(inside[:, None], 0.0)
    return out.clamp(0.0, 1.0)
