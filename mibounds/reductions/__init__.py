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

The package holds the rooms of that step: :mod:`~mibounds.reductions.ranges` (the validation
of dense scores and their range rule), :mod:`~mibounds.reductions.batches` (one process's
batch, streamed or dense), :mod:`~mibounds.reductions.global_batch` (the batch of all ranks)
and :mod:`~mibounds.reductions.dense` (the dense reductions). A bound asks
:func:`batch_statistics` (or :func:`separable_rows`, for per-sample terms) for its batch.
"""

from __future__ import annotations

from typing import TypeAlias

from torch import Tensor

from mibounds import distributed
from mibounds.kernels import small
from mibounds.reductions.batches import DenseBatch, SeparableBatch
from mibounds.reductions.dense import (
    all_pairs_from_means,
    col_logsumexp,
    diagonal,
    log_count,
    offdiag_logmeanexp,
    offdiag_mean,
    offdiag_row_mean,
    offdiag_row_sum,
    positive_mask,
    reduce_terms,
    row_logsumexp,
)
from mibounds.reductions.global_batch import GlobalBatch
from mibounds.reductions.ranges import Scores, is_plain, prepare
from mibounds.scores import DenseScores, SeparableScores

__all__ = [
    "BatchStatistics",
    "GlobalBatch",
    "DenseBatch",
    "is_plain",
    "Scores",
    "SeparableBatch",
    "all_pairs_from_means",
    "batch_statistics",
    "col_logsumexp",
    "diagonal",
    "log_count",
    "nce_loss",
    "offdiag_logmeanexp",
    "offdiag_mean",
    "offdiag_row_mean",
    "offdiag_row_sum",
    "positive_mask",
    "prepare",
    "reduce_terms",
    "separable_rows",
    "sigmoid_loss",
    "row_logsumexp",
]


BatchStatistics: TypeAlias = "SeparableBatch | DenseBatch | GlobalBatch"


def batch_statistics(
    scores: Scores, gather: distributed.GroupArg = False, reduction: str = "mean"
) -> BatchStatistics | None:
    """The mean-reduced statistics a bound should use, or ``None`` for the dense per-row path.

    Gathering (``gather`` here or on the :class:`SeparableScores`) gives a
    :class:`GlobalBatch`; separable scores with a mean or sum reduction
    give a :class:`SeparableBatch`; dense scores with a pairing, or rectangular ones, a
    :class:`DenseBatch`.

    Raises:
        ValueError: ``reduction="none"`` while gathering (per-sample terms are per rank), or
            with scores that are not plain square scores.
    """
    if isinstance(scores, SeparableScores) and not gather:
        group = scores._group  # resolved when the scores were built
    else:
        group = distributed.resolve_group(gather)
    if group is not None:
        if reduction == "none":
            raise ValueError(
                "reduction='none' is not supported with gather: the per-sample terms of the "
                "global batch are split over ranks; use 'mean' or 'sum'"
            )
        return GlobalBatch(scores, group)
    if reduction == "none":
        return None  # prepare() raises for scores that are not plain
    if isinstance(scores, SeparableScores):
        return SeparableBatch(scores)
    if isinstance(scores, DenseScores) or (
        isinstance(scores, Tensor) and scores.dim() >= 2 and scores.shape[-1] != scores.shape[-2]
    ):
        return DenseBatch(scores)
    return None


def nce_loss(scores: SeparableScores, symmetric: bool = False) -> Tensor | None:
    """The InfoNCE family's cross-entropy of one process's separable scores, formed row by
    row (:meth:`SeparableBatch.nce_loss`; a small batch of the plain pairing from its score
    matrix held whole, :func:`mibounds.kernels.small.cross_entropy`); ``None`` for gathered
    scores (the losses take the bound's value over the global batch then)."""
    if scores._small is not None:  # decided when the scores were built
        return small.cross_entropy(
            scores.x, scores.y, scores.temperature, symmetric, scores._scale, scores._small
        )
    if scores._group is not None:
        return None
    return SeparableBatch(scores).nce_loss(symmetric)


def sigmoid_loss(scores: SeparableScores, n_columns: int | None = None) -> Tensor:
    r"""SigLIP's loss of separable scores (over the global batch when they gather): the mean
    over the rows with a positive of :math:`\mathrm{softplus}(-S)` over their positives, plus
    ``n_columns - 1`` (default ``N - 1``) times the mean of :math:`\mathrm{softplus}(S)` over
    the negatives. A small batch of one process with the plain pairing (and any bias) is
    reduced from its score matrix held whole (:func:`mibounds.kernels.small.sigmoid_loss`)."""
    if scores._small is not None and n_columns is None:  # decided when the scores were built
        return small.sigmoid_loss(
            scores.x, scores.y, scores.temperature, scores.bias, scores._scale, scores._small
        )
    group = scores._group
    batch = SeparableBatch(scores) if group is None else GlobalBatch(scores, group)
    _, negatives = batch.offdiag_means("softplus")
    return batch.positive_softplus() + ((n_columns or batch.n) - 1) * negatives


def separable_rows(
    scores: Scores, gather: distributed.GroupArg = False
) -> SeparableBatch | DenseBatch | None:
    """The statistics of one process's scores for per-row (``reduction="none"``) terms:
    streamed for separable scores, from the matrix for dense scores with a pairing (or
    rectangular ones); ``None`` for plain square dense scores (the bounds' own per-row path)."""
    if isinstance(scores, SeparableScores):
        batch_statistics(scores, gather, "none")  # refuses per-sample terms while gathering
        return SeparableBatch(scores)
    if isinstance(scores, DenseScores) and not is_plain(scores):
        batch_statistics(scores, gather, "none")
        return DenseBatch(scores)
    if isinstance(scores, Tensor) and scores.dim() >= 2 and scores.shape[-1] != scores.shape[-2]:
        batch_statistics(scores, gather, "none")
        return DenseBatch(scores)
    return None
