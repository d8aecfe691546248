r"""f-MICL: contrastive learning with an f-divergence and the f-Gaussian similarity.

Lu et al. (2023) replace the KL divergence behind InfoNCE by any f-divergence, through the
variational bound :math:`I_f \ge \mathbb{E}_{p}[T] - \mathbb{E}_{p\otimes p}[f^*(T)]`, and pick
the critic by assuming that the joint density of the features is a Gaussian kernel of their
distance: :math:`T = f'(G)` with
:math:`G(x, y) = \mu\exp(-\|g(x) - g(y)\|^2 / (2\sigma^2))` on L2-normalised features. With
:math:`\ell = \log G` (computed analytically, never as ``log(exp(.))``) the objective is

.. math::

    J_f = \frac1N\sum_i f'\big(e^{\ell_{ii}}\big)
        - \alpha\,\frac{1}{N(N-1)}\sum_{i\ne j} f^*\big(f'(e^{\ell_{ij}})\big),

where :math:`f^*(f'(u)) = u f'(u) - f(u)`. Both terms are written here as functions of
:math:`\ell` in closed form for every built-in divergence (for example reverse KL's
:math:`f^*(f'(u)) = \log u - 1 = \ell - 1`), so nothing overflows where the result is
representable. The scores are :class:`~mibounds.scores.SeparableScores`, so the negative term
runs on the streaming kernels (no N x N matrix) and composes with ``gather``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mibounds import _checks
from mibounds.divergences import FDivergence, get_divergence
from mibounds.kernels import streaming
from mibounds.reductions import batch_statistics, offdiag_mean
from mibounds.scores import SeparableScores

__all__ = ["FMICL", "SIGMA_VISION", "fmicl", "fmicl_terms", "log_kernel_scores"]

Fn = Callable[[Tensor], Tensor]
_LOG2, _LOG4 = math.log(2.0), math.log(4.0)

#: The paper's kernel width for vision, :math:`1/(2\sigma^2) = 1`.
SIGMA_VISION = 1 / math.sqrt(2.0)

#: name -> (f'(e^l), f*(f'(e^l)), d/dl f*(f'(e^l))) as functions of l = log u.
_LOG_FORMS: dict[str, tuple[Fn, Fn, Fn]] = {
    "kl": (lambda t: 1 + t, torch.exp, torch.exp),
    "reverse-kl": (lambda t: -torch.exp(-t), lambda t: t - 1, torch.ones_like),
    "pearson": (
        lambda t: 2 * torch.expm1(t),
        lambda t: torch.expm1(2 * t),
        lambda t: 2 * torch.exp(2 * t),
    ),
    "neyman": (
        lambda t: -torch.expm1(-2 * t),
        lambda t: -2 * torch.expm1(-t),
        lambda t: 2 * torch.exp(-t),
    ),
    "hellinger": (
        lambda t: -torch.expm1(-0.5 * t),
        lambda t: torch.expm1(0.5 * t),
        lambda t: 0.5 * torch.exp(0.5 * t),
    ),
    "js": (lambda t: _LOG2 - F.softplus(-t), lambda t: F.softplus(t) - _LOG2, torch.sigmoid),
    "gan": (lambda t: -F.softplus(-t), lambda t: F.softplus(t) - _LOG4, torch.sigmoid),
    "total-variation": (
        lambda t: 0.5 * torch.sign(t),
        lambda t: 0.5 * torch.sign(t),
        torch.zeros_like,
    ),
}


def _ratio_parameterised(div: FDivergence) -> bool:
    """Divergences whose activation is already ``g(v) = f'(e^v)`` (see mibounds.divergences)."""
    return div.name == "vincze-le-cam" or div.name.startswith("tsallis")


def fmicl_terms(divergence: str | FDivergence) -> tuple[Fn, Fn, Fn | None]:
    r"""``(joint, marginal, marginal_grad)`` of f-MICL as functions of :math:`\ell = \log u`:
    :math:`f'(e^\ell)`, :math:`f^*(f'(e^\ell))` and its derivative (``None`` when unknown: the
    objective then uses the dense path and autograd).

    Example:
        >>> joint, marginal, _ = fmicl_terms("reverse-kl")
        >>> marginal(torch.tensor(-200.0))  # log u - 1, finite although u underflows
        tensor(-201.)
    """
    div = get_divergence(divergence)
    if div.name in _LOG_FORMS and get_divergence(div.name) is div:
        return _LOG_FORMS[div.name]
    if _ratio_parameterised(div) and div.conjugate_of_activation is not None:
        return div.activation, div.conjugate_of_activation, div.conjugate_of_activation_grad
    return (
        lambda t: div.f_prime(torch.exp(t)),
        lambda t: div.conjugate_of_derivative(torch.exp(t)),
        None,
    )


def log_kernel_scores(
    z1: Tensor,
    z2: Tensor,
    *,
    similarity: str = "gaussian",
    sigma: float | Tensor = SIGMA_VISION,
    temperature: float | Tensor = 0.5,
    gather: Any = False,
) -> SeparableScores:
    r"""Scores :math:`S` with :math:`\ell = \log\mu + S` for f-MICL.

    ``"gaussian"``: :math:`S_{ij} = -\|\bar z_{1i} - \bar z_{2j}\|^2 / (2\sigma^2)` on normalised
    features :math:`\bar z` (the f-Gaussian similarity). ``"cosine"``:
    :math:`S_{ij} = \cos(z_{1i}, z_{2j}) / \tau` (the InfoNCE-style similarity the paper compares
    with).

    Example:
        >>> s = log_kernel_scores(torch.eye(2), torch.eye(2))
        >>> s.dense()
        tensor([[ 0., -2.],
                [-2.,  0.]])
    """
    sim = _checks.check_choice("similarity", similarity, ("gaussian", "cosine"))
    if sim == "cosine":
        return SeparableScores(z1, z2, "cosine", temperature, gather=gather)
    _checks.check_temperature("sigma", sigma)
    z1, z2 = F.normalize(z1, dim=-1), F.normalize(z2, dim=-1)
    return SeparableScores(z1, z2, "gaussian", 2 * sigma**2, gather=gather)


def fmicl(
    z1: Tensor,
    z2: Tensor,
    divergence: str | FDivergence = "kl",
    *,
    alpha: float = 40.0,
    sigma: float | Tensor = SIGMA_VISION,
    mu: float = 1.0,
    similarity: str = "gaussian",
    temperature: float | Tensor = 0.5,
    negatives: str = "cross",
    gather: Any = False,
) -> Tensor:
    r"""The f-MICL objective :math:`J_f` (to **maximise**) of two views' features.

    Args:
        z1: ``(..., N, d)`` features of the first views (normalised here).
        z2: ``(..., N, d)`` features of the second views; ``(z1[i], z2[i])`` are positives.
        divergence: registered name or :class:`~mibounds.divergences.FDivergence`.
        alpha: weight :math:`\alpha > 0` of the negative term (paper, vision: 40).
        sigma: kernel width :math:`\sigma` (paper, vision: :math:`1/(2\sigma^2) = 1`).
        mu: kernel scale :math:`\mu > 0` (paper: 1).
        similarity: ``"gaussian"`` (the f-Gaussian similarity) or ``"cosine"``.
        temperature: :math:`\tau` of the cosine similarity.
        negatives: ``"cross"``: pairs ``(z1[i], z2[j])``, ``i != j`` (the paper);
            ``"all"``: also the pairs within each view, ``(z1[i], z1[j])`` and
            ``(z2[i], z2[j])``, averaged with equal weight.
        gather: ``True`` or a process group: negatives from every rank
            (:mod:`mibounds.distributed`).

    Returns:
        :math:`J_f`, shape ``(...)``.

    Raises:
        KeyError: unknown divergence.
        ValueError: non-positive ``alpha`` or ``mu``, bad ``similarity`` or ``negatives``.

    Example:
        >>> z = torch.nn.functional.normalize(torch.randn(8, 4), dim=-1)
        >>> value = fmicl(z, z, "js", alpha=1.0)
        >>> value.shape
        torch.Size([])

    References:
        Lu, Zhang, Sun, Guo, Yu. "f-MICL: Understanding and Generalizing InfoNCE-based
        Contrastive Learning." TMLR 2023.
    """
    a = _checks.check_positive("alpha", alpha)
    log_mu = math.log(_checks.check_positive("mu", mu))
    neg = _checks.check_choice("negatives", negatives, ("cross", "all"))
    joint_fn, marginal_fn, marginal_grad = fmicl_terms(divergence)
    name = None
    if marginal_grad is not None:
        div = get_divergence(divergence)
        name = streaming.elementwise(
            f"fmicl:{div.name}:{id(marginal_fn)}",
            lambda t, p: marginal_fn(t),
            lambda t, p: marginal_grad(t),
        )

    def scores(p: Tensor, q: Tensor) -> SeparableScores:
        return log_kernel_scores(
            p, q, similarity=similarity, sigma=sigma, temperature=temperature, gather=gather
        )

    def negative_mean(s: SeparableScores) -> Tensor:
        st = batch_statistics(s, gather)
        if name is not None and st is not None:
            return st.offdiag_means(name, shift=log_mu)[1]
        # dense fallback for divergences without a closed-form derivative
        return offdiag_mean(s.dense() + log_mu, marginal_fn)

    main = scores(z1, z2)
    st = batch_statistics(main, gather)
    assert st is not None
    joint = st.row_mean(joint_fn(st.positives() + log_mu))
    marginal = negative_mean(main)
    if neg == "all":
        marginal = (marginal + negative_mean(scores(z1, z1)) + negative_mean(scores(z2, z2))) / 3
    return (joint - a * marginal).to(z1.dtype)


class FMICL(nn.Module):
    r"""Loss :math:`-J_f` of f-MICL (see :func:`fmicl`); the arguments are :func:`fmicl`'s.

    Example:
        >>> loss = FMICL("js", alpha=1.0)
        >>> z1, z2 = torch.randn(8, 4), torch.randn(8, 4)
        >>> loss(z1, z2).shape
        torch.Size([])
    """

    def __init__(self, divergence: str | FDivergence = "kl", **kwargs: Any) -> None:
        super().__init__()
        self.divergence = get_divergence(divergence)
        self.divergence_arg = divergence
        self.kwargs = kwargs

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        return -fmicl(z1, z2, self.divergence_arg, **self.kwargs)
