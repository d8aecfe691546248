r"""The few pairwise reductions every bound is made of.

Each bound in :mod:`mibounds.bounds` is algebra over these reductions of a score matrix
``S[..., i, j] = T(x_i, y_j)``:

* the positive scores :math:`S_{ii}` (:func:`diagonal`),
* row and column log-sum-exp (:func:`row_logsumexp`, :func:`col_logsumexp`),
* the off-diagonal log-mean-exp :math:`\log \frac{1}{N(N-1)}\sum_{i\ne j} e^{S_{ij}}`
  (:func:`offdiag_logmeanexp`),
* the off-diagonal mean of an elementwise function, per row or overall
  (:func:`offdiag_row_mean`, :func:`offdiag_mean`).

Scores arrive as a dense tensor or a :class:`~mibounds.scores.SeparableScores`. The kernel is
chosen here from the representation, never by the bound. float16/bfloat16 scores are
accumulated in float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeAlias

import torch
from torch import Tensor

from mibounds import _checks, distributed
from mibounds._dtypes import upcast
from mibounds.kernels import streaming
from mibounds.scores import SeparableScores

Scores: TypeAlias = Tensor | SeparableScores

__all__ = [
    "BatchStatistics",
    "Scores",
    "SeparableBatch",
    "all_pairs_from_means",
    "batch_statistics",
    "col_logsumexp",
    "diagonal",
    "log_count",
    "offdiag_logmeanexp",
    "offdiag_mean",
    "offdiag_row_mean",
    "offdiag_row_sum",
    "positive_mask",
    "prepare",
    "reduce_terms",
    "sep_diagonal",
    "row_logsumexp",
]


def prepare(scores: Scores, name: str = "scores") -> tuple[Tensor, torch.dtype]:
    """Validate ``scores`` and return the dense float matrix to reduce and the output dtype.

    Half-precision scores are upcast to float32; the caller casts its result back to the
    returned dtype.
    """
    if isinstance(scores, SeparableScores):
        if scores.gather:
            raise ValueError(
                f"{name}: SeparableScores with gather are only reduced over the global batch "
                "(the bounds listed in mibounds.distributed, with reduction 'mean' or 'sum'); "
                "this bound or reduction would see this rank's pairs only"
            )
        dense = scores.dense()
    else:
        dense = _checks.check_scores(name, scores)
    return upcast(dense), dense.dtype


def streaming_operands(scores: SeparableScores) -> tuple[Tensor, Tensor, float | Tensor, str]:
    """``(x, y, temperature, similarity)`` for the streaming kernels: cosine scores become dot
    scores of normalised features (normalised with differentiable torch ops)."""
    if scores.similarity == "cosine":
        x = torch.nn.functional.normalize(scores.x, dim=-1)
        y = torch.nn.functional.normalize(scores.y, dim=-1)
        return x, y, scores.temperature, "dot"
    return scores.x, scores.y, scores.temperature, scores.similarity


def sep_diagonal(scores: SeparableScores) -> Tensor:
    """Positive scores ``S[..., i, i]`` in O(N d), in the accumulation dtype."""
    return upcast(scores.diagonal())


class SeparableBatch:
    """The mean-reduced statistics of one process's :class:`SeparableScores`, streamed.

    :class:`mibounds.distributed.GlobalBatch` has the same methods over the batch of all ranks;
    the bounds' mean-reduced formulations are written once against either.
    """

    def __init__(self, scores: SeparableScores) -> None:
        self.scores = scores
        self.n = scores.shape[-1]
        self.dtype = scores.dtype

    def positives(self) -> Tensor:
        return sep_diagonal(self.scores)

    def row_mean(self, terms: Tensor) -> Tensor:
        return terms.mean(-1)

    def lse_mean(self, symmetric: bool = False) -> Tensor:
        r"""Streamed :math:`\frac1N\sum_i \log\sum_j e^{S_{ij}}`, averaged with the column
        version (two sweeps) if ``symmetric``."""
        x, y, tau, sim = streaming_operands(self.scores)
        if symmetric:
            return streaming.symmetric_logsumexp_mean(x, y, tau, sim)
        return streaming.row_logsumexp_mean(x, y, tau, sim)

    def offdiag_means(
        self,
        grad_fn: str,
        value_fn: str | None = None,
        shift: float = 0.0,
        param: float = 0.0,
        grad_value: bool = True,
    ) -> tuple[Tensor | None, Tensor]:
        """Streamed off-diagonal means of registered elementwise functions (see
        :func:`mibounds.kernels.streaming.offdiag_means`)."""
        x, y, tau, sim = streaming_operands(self.scores)
        return streaming.offdiag_means(x, y, tau, sim, grad_fn, value_fn, shift, param, grad_value)

    def offdiag_logmeanexp(self) -> Tensor:
        """Streamed off-diagonal log-mean-exp, shape ``(...)``."""
        x, y, tau, sim = streaming_operands(self.scores)
        return streaming.offdiag_logmeanexp(x, y, tau, sim)

    def all_pairs_mean(self) -> Tensor:
        """The mean of all N^2 scores (the diagonal included) in O(N d), from feature means."""
        x, y, tau, sim = streaming_operands(self.scores)
        x, y = upcast(x), upcast(y)
        sq = (x * x).sum(-1).mean(-1) + (y * y).sum(-1).mean(-1) if sim == "gaussian" else None
        return all_pairs_from_means(x.mean(-2), y.mean(-2), sq, tau)


BatchStatistics: TypeAlias = "SeparableBatch | distributed.GlobalBatch"


def batch_statistics(
    scores: Scores, gather: distributed.GroupArg = False, reduction: str = "mean"
) -> BatchStatistics | None:
    """The mean-reduced statistics a bound should use, or ``None`` for the dense per-row path.

    Gathering (``gather`` here or on the :class:`SeparableScores`) gives a
    :class:`~mibounds.distributed.GlobalBatch`; separable scores with a mean or sum reduction
    give a :class:`SeparableBatch`.

    Raises:
        ValueError: ``reduction="none"`` while gathering (per-sample terms are per rank).
    """
    if isinstance(scores, SeparableScores) and not gather:
        gather = scores.gather
    group = distributed.resolve_group(gather)
    if group is not None:
        if reduction == "none":
            raise ValueError(
                "reduction='none' is not supported with gather: the per-sample terms of the "
                "global batch are split over ranks; use 'mean' or 'sum'"
            )
        return distributed.GlobalBatch(scores, group)
    if isinstance(scores, SeparableScores) and reduction != "none":
        return SeparableBatch(scores)
    return None


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
