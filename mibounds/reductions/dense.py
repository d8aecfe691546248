"""The dense reductions: what every bound computes from a score matrix it holds, in the
matrix's dtype (the reference the streamed kernels are tested against)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from mibounds._dtypes import upcast


class _FiniteGrad(torch.autograd.Function):
    """Identity whose backward replaces every derivative that is not finite by 0 (the overflow
    rule of :func:`mibounds._dtypes.finite_derivatives_`)."""

    @staticmethod
    def forward(ctx: Any, s: Tensor) -> Tensor:
        return s.view_as(s)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)


def finite_grad(t: Tensor) -> Tensor:
    """``t`` with the overflow rule on its gradient (a no-op where no gradient is needed)."""
    return _FiniteGrad.apply(t) if t.requires_grad else t


def dense_scores(t: Tensor) -> Tensor:
    """Dense scores as the bounds reduce them: in the accumulation dtype, with the
    overflow rule on their gradient (a no-op where no gradient is needed)."""
    return finite_grad(upcast(t))


def log_count(n: int, like: Tensor) -> Tensor:
    """``log(n)`` as a 0-d tensor built from ``n``: unlike ``math.log`` it keeps a symbolic size
    symbolic under ``torch.compile`` (no recompile per batch size)."""
    return torch.log(like.new_full((), n))


def reduce_terms(terms: Tensor, reduction: str) -> Tensor:
    """Apply a (validated) ``reduction`` over the last dimension of per-sample terms."""
    if reduction == "mean":
        return terms.mean(-1)
    if reduction == "sum":
        return terms.sum(-1)
    return terms


def all_pairs_from_means(
    mean_x: Tensor, mean_y: Tensor, mean_sq: Tensor | None, tau: float | Tensor
) -> Tensor:
    r""":math:`\frac{1}{NM}\sum_{i,j} S_{ij}` of separable scores from feature means: dot
    scores (``mean_sq`` None) :math:`\bar x\cdot\bar y/\tau`; Gaussian scores
    :math:`-(\overline{|x|^2} + \overline{|y|^2} - 2\bar x\cdot\bar y)/\tau`, with
    ``mean_sq`` the sum of the two mean squared norms."""
    cross = (mean_x * mean_y).sum(-1)
    if mean_sq is None:
        return cross / tau
    return -(mean_sq - 2 * cross) / tau


def positive_mask(s: Tensor, offset: int = 0) -> Tensor:
    """``(n, m)`` mask of the positive pairs of ``(..., n, m)`` scores: row ``i``'s positive is
    column ``offset + i`` (the diagonal of a square batch; one rank's rows of the global
    batch otherwise)."""
    rows = torch.arange(s.shape[-2], device=s.device)
    cols = torch.arange(s.shape[-1], device=s.device)
    return cols[None, :] == rows[:, None] + offset


def offdiag_row_sum(s: Tensor, fn: Callable[[Tensor], Tensor], offset: int = 0) -> Tensor:
    r""":math:`\sum_{j} \mathrm{fn}(S_{ij})` over each row's negatives, shape ``(..., n)``.

    ``fn`` is never evaluated on the positives, so an overflowing ``fn(S_ii)`` cannot leak a NaN
    into the gradient.
    """
    mask = positive_mask(s, offset)
    return fn(s.masked_fill(mask, 0.0)).masked_fill(mask, 0.0).sum(-1)


def diagonal(s: Tensor) -> Tensor:
    """Positive scores ``S[..., i, i]``, shape ``(..., N)``."""
    return torch.diagonal(s, dim1=-2, dim2=-1)


def row_logsumexp(s: Tensor) -> Tensor:
    r""":math:`\log\sum_j e^{S_{ij}}` for every row, shape ``(..., N)``."""
    return torch.logsumexp(s, dim=-1)


def col_logsumexp(s: Tensor) -> Tensor:
    r""":math:`\log\sum_i e^{S_{ij}}` for every column, shape ``(..., N)``."""
    return torch.logsumexp(s, dim=-2)


def offdiag_logmeanexp(s: Tensor) -> Tensor:
    r""":math:`\log \frac{1}{N(N-1)}\sum_{i\ne j} e^{S_{ij}}`, shape ``(...)``."""
    n = s.shape[-1]
    masked = s.masked_fill(positive_mask(s), -math.inf)
    # two stages (rows, then their results) rather than one flat N^2 reduction: under
    # torch.compile, inductor's CPU code guards on the reduction size, and an N^2 one would add
    # a recompile once N^2 > 4096
    return torch.logsumexp(torch.logsumexp(masked, dim=-1), dim=-1) - log_count(n * (n - 1), s)


def offdiag_row_mean(s: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
    r""":math:`\frac{1}{N-1}\sum_{j\ne i} \mathrm{fn}(S_{ij})` for every row, shape ``(..., N)``
    (see :func:`offdiag_row_sum`)."""
    return offdiag_row_sum(s, fn) / (s.shape[-1] - 1)


def offdiag_mean(s: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
    r""":math:`\frac{1}{N(N-1)}\sum_{i\ne j} \mathrm{fn}(S_{ij})`, shape ``(...)``."""
    return offdiag_row_mean(s, fn).mean(-1)
