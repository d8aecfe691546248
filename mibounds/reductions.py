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
    "batch_statistics",
    "col_logsumexp",
    "diagonal",
    "log_count",
    "offdiag_logmeanexp",
    "offdiag_mean",
    "offdiag_row_mean",
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


def positive_mean(scores: SeparableScores) -> Tensor:
    """Mean positive score ``(1/N) sum_i S_ii`` in O(N d), in the accumulation dtype."""
    return sep_diagonal(scores).mean(-1)


def sep_row_logsumexp_mean(scores: SeparableScores, transpose: bool = False) -> Tensor:
    r"""Streaming :math:`\frac1N\sum_i \log\sum_j e^{S_{ij}}` (columns with ``transpose``)."""
    x, y, tau, sim = streaming_operands(scores)
    if transpose:
        x, y = y, x
    return streaming.row_logsumexp_mean(x, y, tau, sim)


def sep_symmetric_logsumexp_mean(scores: SeparableScores) -> Tensor:
    """Streaming average of the row and the column log-sum-exp means (two sweeps)."""
    x, y, tau, sim = streaming_operands(scores)
    return streaming.symmetric_logsumexp_mean(x, y, tau, sim)


def sep_offdiag_logmeanexp(scores: SeparableScores) -> Tensor:
    """Streaming off-diagonal log-mean-exp, shape ``(...)``."""
    x, y, tau, sim = streaming_operands(scores)
    return streaming.offdiag_logmeanexp(x, y, tau, sim)


def sep_offdiag_means(
    scores: SeparableScores,
    grad_fn: str,
    value_fn: str | None = None,
    shift: float = 0.0,
    param: float = 0.0,
    grad_value: bool = True,
) -> tuple[Tensor | None, Tensor]:
    """Streaming off-diagonal means of registered elementwise functions (see
    :func:`mibounds.kernels.streaming.offdiag_means`)."""
    x, y, tau, sim = streaming_operands(scores)
    return streaming.offdiag_means(x, y, tau, sim, grad_fn, value_fn, shift, param, grad_value)


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
        if symmetric:
            return sep_symmetric_logsumexp_mean(self.scores)
        return sep_row_logsumexp_mean(self.scores)

    def offdiag_means(
        self,
        grad_fn: str,
        value_fn: str | None = None,
        shift: float = 0.0,
        param: float = 0.0,
        grad_value: bool = True,
    ) -> tuple[Tensor | None, Tensor]:
        return sep_offdiag_means(self.scores, grad_fn, value_fn, shift, param, grad_value)

    def offdiag_logmeanexp(self) -> Tensor:
        return sep_offdiag_logmeanexp(self.scores)

    def all_pairs_mean(self) -> Tensor:
        """The mean of all N^2 scores (the diagonal included) in O(N d), from feature means."""
        x, y, tau, sim = streaming_operands(self.scores)
        x, y = upcast(x), upcast(y)
        cross = (x.mean(-2) * y.mean(-2)).sum(-1)
        if sim == "gaussian":
            sq = (x * x).sum(-1).mean(-1) + (y * y).sum(-1).mean(-1)
            return -(sq - 2 * cross) / tau
        return cross / tau


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


def _eye(s: Tensor) -> Tensor:
    n = s.shape[-1]
    return torch.eye(n, dtype=torch.bool, device=s.device)


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
    masked = s.masked_fill(_eye(s), -math.inf)
    # two stages (rows, then their results) rather than one flat N^2 reduction: under
    # torch.compile, inductor's CPU code guards on the reduction size, and an N^2 one would add
    # a recompile once N^2 > 4096
    return torch.logsumexp(torch.logsumexp(masked, dim=-1), dim=-1) - log_count(n * (n - 1), s)


def offdiag_row_mean(s: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
    r""":math:`\frac{1}{N-1}\sum_{j\ne i} \mathrm{fn}(S_{ij})` for every row, shape ``(..., N)``.

    ``fn`` is never evaluated on the diagonal, so an overflowing ``fn(S_ii)`` cannot leak a NaN
    into the gradient.
    """
    n = s.shape[-1]
    eye = _eye(s)
    values = fn(s.masked_fill(eye, 0.0)).masked_fill(eye, 0.0)
    return values.sum(-1) / (n - 1)


def offdiag_mean(s: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
    r""":math:`\frac{1}{N(N-1)}\sum_{i\ne j} \mathrm{fn}(S_{ij})`, shape ``(...)``."""
    return offdiag_row_mean(s, fn).mean(-1)
