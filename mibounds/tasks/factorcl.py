r"""The two-modality synthetic data of FactorCL: shared and unique latents, a controllable label.

Latents :math:`w_s \in \mathbb{R}^{d_s}` (shared), :math:`w_1, w_2 \in \mathbb{R}^{d_u}`
(unique to each modality) are independent :math:`\mathcal{N}(0, v I)`. Each modality is a fixed
random linear map of its latents, :math:`x_1 = [w_s, w_1] T_1`, :math:`x_2 = [w_s, w_2] T_2`,
with :math:`T_i` of Uniform[0, 1) entries. The binary label is the sign of the mean of chosen
coordinates, :math:`y = 1[\mathrm{mean}(w_s[:l_s], w_1[:l_1], w_2[:l_2]) \ge 0]`, so
:math:`(l_s, l_1, l_2)` sets how much of the task-relevant information is shared and how much
is unique to each modality.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mibounds import _checks

__all__ = ["FactorCLSynthetic"]


class FactorCLSynthetic:
    r"""Sampler of the FactorCL synthetic task (the official notebook's setting by default).

    Args:
        shared_dim: :math:`d_s` (notebook: 10).
        unique_dim: :math:`d_u`, each modality's unique latent size (notebook: 6).
        out_dim: size of each modality (notebook: 100).
        label_shared: :math:`l_s`, coordinates of :math:`w_s` in the label.
        label_unique: :math:`(l_1, l_2)`, coordinates of :math:`w_1` and :math:`w_2` in the
            label. At least one of :math:`l_s, l_1, l_2` must be positive.
        variance: :math:`v`, the latents' variance (notebook: 0.5).
        noise: standard deviation of Gaussian noise added to each modality (notebook: 0).
        seed: seed of the fixed maps :math:`T_1, T_2`.

    Raises:
        ValueError: non-positive sizes, label coordinates outside ``[0, dim]`` or all zero.

    Example:
        >>> task = FactorCLSynthetic(label_shared=10, label_unique=(0, 0))
        >>> batch = task.sample(4, torch.Generator().manual_seed(0))
        >>> batch["x1"].shape, batch["y"].shape, batch["w_s"].shape
        (torch.Size([4, 100]), torch.Size([4]), torch.Size([4, 10]))

    References:
        Liang, Deng, Ma, Zou, Morency, Salakhutdinov. "Factorized Contrastive Learning: Going
        Beyond Multi-view Redundancy." NeurIPS 2023.
    """

    def __init__(
        self,
        shared_dim: int = 10,
        unique_dim: int = 6,
        out_dim: int = 100,
        *,
        label_shared: int = 10,
        label_unique: tuple[int, int] = (6, 6),
        variance: float = 0.5,
        noise: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.shared_dim = _checks.check_positive_int("shared_dim", shared_dim)
        self.unique_dim = _checks.check_positive_int("unique_dim", unique_dim)
        self.out_dim = _checks.check_positive_int("out_dim", out_dim)
        self.variance = _checks.check_positive("variance", variance)
        self.noise = _checks.check_real("noise", noise)
        if self.noise < 0:
            raise ValueError(f"noise must be >= 0, got {noise}")
        if not (isinstance(label_unique, tuple) and len(label_unique) == 2):
            raise ValueError(f"label_unique must be a pair (l_1, l_2), got {label_unique!r}")
        counts = (label_shared, *label_unique)
        limits = (self.shared_dim, self.unique_dim, self.unique_dim)
        for name, c, lim in zip(("label_shared", "l_1", "l_2"), counts, limits, strict=True):
            if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c <= lim:
                raise ValueError(f"{name} must be an int in [0, {lim}], got {c!r}")
        if sum(counts) == 0:
            raise ValueError("the label needs at least one coordinate: all of l_s, l_1, l_2 are 0")
        self.label_counts = counts
        g = torch.Generator().manual_seed(seed)
        width = self.shared_dim + self.unique_dim
        self.maps = (
            torch.rand(width, self.out_dim, generator=g, dtype=torch.float64),
            torch.rand(width, self.out_dim, generator=g, dtype=torch.float64),
        )

    def label_of(self, w_s: Tensor, w_1: Tensor, w_2: Tensor) -> Tensor:
        """The label of given latents (``int64``, 0 or 1)."""
        ls, l1, l2 = self.label_counts
        chosen = torch.cat([w_s[..., :ls], w_1[..., :l1], w_2[..., :l2]], dim=-1)
        return (chosen.mean(-1) >= 0).long()

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> dict[str, Tensor]:
        """Draw ``n`` samples: a dict with ``x1``, ``x2`` ``(n, out_dim)``, label ``y`` ``(n,)``
        and the latents ``w_s``, ``w_1``, ``w_2``."""
        n = _checks.check_positive_int("n", n)
        std = self.variance**0.5
        w_s = std * torch.randn(n, self.shared_dim, generator=generator, dtype=torch.float64)
        w_1 = std * torch.randn(n, self.unique_dim, generator=generator, dtype=torch.float64)
        w_2 = std * torch.randn(n, self.unique_dim, generator=generator, dtype=torch.float64)
        x1 = torch.cat([w_s, w_1], -1) @ self.maps[0]
        x2 = torch.cat([w_s, w_2], -1) @ self.maps[1]
        if self.noise > 0:
            x1 = x1 + self.noise * torch.randn(x1.shape, generator=generator, dtype=torch.float64)
            x2 = x2 + self.noise * torch.randn(x2.shape, generator=generator, dtype=torch.float64)
        out = {"x1": x1, "x2": x2, "w_s": w_s, "w_1": w_1, "w_2": w_2}
        batch = {k: v.to(dtype=dtype, device=device) for k, v in out.items()}
        batch["y"] = self.label_of(w_s, w_1, w_2).to(device)
        return batch
