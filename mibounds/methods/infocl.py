r"""The LBE and RC regularisers of "Rethinking Minimal Sufficient Representation in Contrastive
Learning" (Wang, Guo, Deng, Lu, CVPR 2022).

A contrastive loss keeps mostly the information shared by the two views. Both regularisers add a
term that raises :math:`I(z; v)` between a representation and its own input, so that
task-relevant information that is not shared survives:

* **LBE** (lower-bound estimate): a stochastic encoder :math:`z = f(v) + \sigma\epsilon` and the
  InfoNCE bound with the Gaussian critic :math:`-\rho\|z_l - f(v_k)\|^2`,

  .. math::

      \hat I(z; v) = \frac1M\sum_k \Big[-\rho\|z_k - f(v_k)\|^2
          - \log\sum_l e^{-\rho\|z_l - f(v_k)\|^2}\Big] + \log M,

  over the :math:`M` features of both views, applied to several layers with per-layer weights;
  the loss is :math:`L_{CL} - \lambda\sum_{\text{layers}} w\,\hat I`. (The paper drops the
  positive term, whose gradient is zero because :math:`z_k - f(v_k) = \sigma\epsilon_k`; it only
  shifts the value.)
* **RC** (reconstruction): a decoder reconstructs each view from its representation;
  the loss is :math:`L_{CL} + \lambda\,\mathrm{MSE}`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mibounds import _checks
from mibounds.bounds.lower import infonce
from mibounds.scores import SeparableScores

__all__ = ["LBE", "lbe_bound", "reconstruction_loss"]


def lbe_bound(
    features: Tensor, *, sigma: float = 0.1, rho: float = 0.05, generator=None
) -> tuple[Tensor, Tensor]:
    r"""The LBE estimate :math:`\hat I(z; v)` of one layer and the noisy features :math:`z`.

    The critic is separable (a Gaussian kernel), so the bound runs on the streaming kernels.

    Args:
        features: ``(..., M, d)`` deterministic features :math:`f(v)` (typically both views'
            pooled features, ``M = 2N``); gradients flow through both the noise centre and the
            scores, as in the paper.
        sigma: noise standard deviation :math:`\sigma > 0` (paper: 0.1).
        rho: critic scale :math:`\rho > 0` (paper: 0.05).
        generator: optional ``torch.Generator`` for the noise.

    Returns:
        ``(estimate, z)``: the bound in nats, shape ``(...)``, and :math:`z = f(v) +
        \sigma\epsilon`, the features to pass on.

    Raises:
        ValueError: non-positive ``sigma`` or ``rho``.

    Example:
        >>> est, z = lbe_bound(torch.randn(16, 8), sigma=0.1, rho=0.05)
        >>> est.shape, z.shape
        (torch.Size([]), torch.Size([16, 8]))

    References:
        Wang, Guo, Deng, Lu. "Rethinking Minimal Sufficient Representation in Contrastive
        Learning." CVPR 2022.
    """
    s = _checks.check_positive("sigma", sigma)
    r = _checks.check_positive("rho", rho)
    _checks.check_tensor("features", features, min_dim=2)
    noise = torch.randn(
        features.shape, generator=generator, dtype=features.dtype, device=features.device
    )
    z = features + s * noise
    # S[k, l] = -rho ||f(v_k) - z_l||^2: gaussian similarity with temperature 1 / rho
    return infonce(SeparableScores(features, z, "gaussian", 1.0 / r)), z


class LBE(nn.Module):
    r"""LBE over several layers: :math:`\sum_l w_l \hat I(z_l; v)` (see :func:`lbe_bound`).

    Args:
        weights: per-layer weights (paper, ResNet-18 layers 2-4: ``(0.25, 0.5, 1.0)``).
        sigma: noise standard deviation (paper: 0.1).
        rho: critic scale (paper: 0.05).

    Returns (forward):
        ``(weighted_estimate, noisy_features)``; subtract ``lam * weighted_estimate`` from the
        contrastive loss, and feed the last noisy features to the projector.

    Example:
        >>> lbe = LBE(weights=(0.5, 1.0))
        >>> est, zs = lbe([torch.randn(16, 8), torch.randn(16, 4)])
        >>> est.shape, [z.shape[-1] for z in zs]
        (torch.Size([]), [8, 4])
    """

    def __init__(
        self, weights: Sequence[float] = (1.0,), *, sigma: float = 0.1, rho: float = 0.05
    ) -> None:
        super().__init__()
        if len(weights) == 0:
            raise ValueError("weights must name at least one layer")
        self.weights = tuple(_checks.check_real("weights", w) for w in weights)
        self.sigma = _checks.check_positive("sigma", sigma)
        self.rho = _checks.check_positive("rho", rho)

    def forward(self, features: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
        if len(features) != len(self.weights):
            raise ValueError(
                f"LBE has {len(self.weights)} layer weights but got {len(features)} feature tensors"
            )
        total: Tensor | None = None
        noisy = []
        for w, f in zip(self.weights, features, strict=True):
            est, z = lbe_bound(f, sigma=self.sigma, rho=self.rho)
            total = w * est if total is None else total + w * est
            noisy.append(z)
        assert total is not None
        return total, noisy


def reconstruction_loss(decoder: nn.Module, representation: Tensor, view: Tensor) -> Tensor:
    r"""RC: mean squared error between ``decoder(representation)`` and the normalised view.

    The view is standardised per sample (zero mean, unit variance over its elements), the
    "normalised input" of the paper. Sum it over both views.

    Args:
        decoder: maps ``(N, k)`` representations to the view's shape.
        representation: ``(N, k)`` pooled representation of the view.
        view: ``(N, ...)`` the augmented input it came from.

    Returns:
        The mean squared error, a scalar.

    Raises:
        ValueError: the decoder's output does not have the view's shape.

    Example:
        >>> dec = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Unflatten(1, (2, 3)))
        >>> reconstruction_loss(dec, torch.randn(5, 4), torch.randn(5, 2, 3)).shape
        torch.Size([])
    """
    out = decoder(representation)
    if out.shape != view.shape:
        raise ValueError(
            f"the decoder must return the view's shape {tuple(view.shape)}, got {tuple(out.shape)}"
        )
    flat = view.reshape(view.shape[0], -1)
    target = (flat - flat.mean(-1, keepdim=True)) / (flat.std(-1, keepdim=True) + 1e-6)
    return torch.mean((out.reshape_as(flat) - target) ** 2)
