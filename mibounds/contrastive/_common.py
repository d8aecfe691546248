"""What the drop-in losses share: argument checks named as the peers name them, the
reductions, per-anchor losses and the rank bookkeeping of distributed negatives."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mibounds import _checks
from mibounds._dtypes import upcast
from mibounds.distributed import GroupArg, all_gather, batch_layout
from mibounds.reductions import separable_rows
from mibounds.scores import SeparableScores


def _features(name: str, t: Any, min_n: int = 2) -> Tensor:
    """``(N, d)`` features with ``N >= min_n`` rows and finite values (checked while values
    are validated), named as the caller passed them."""
    return _checks.check_embeddings(min_n, **{name: t})[0]


def _min_rows(gather: Any) -> int:
    """Rows a rank needs: one with negatives from other ranks, else two."""
    return 1 if gather else 2


_REDUCTIONS = ("mean", "sum", "none")


def _reduction(owner: str, reduction: Any) -> str:
    """``"mean"`` (the loss), ``"sum"`` or ``"none"`` (one loss per anchor)."""
    if not isinstance(reduction, str) or reduction not in _REDUCTIONS:
        raise ValueError(f"{owner}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    return reduction


def _anchor_losses(s: SeparableScores, symmetric: bool = False) -> Tensor:
    r"""Per anchor, the cross-entropy of the InfoNCE family, streamed: the log-sum-exp over its
    candidates minus the mean score of its positives (0 for an anchor without a positive),
    ``(N,)``; with ``symmetric``, the average of the row's and the column's."""
    st = separable_rows(s)
    assert st is not None
    terms = st.nce_rows(symmetric)
    return torch.where(st.npos > 0, torch.log(st.ncand).to(terms.dtype) - terms, 0.0)


def _reduce(losses: Tensor, reduction: str) -> Tensor:
    return losses.sum(-1) if reduction == "sum" else losses


def _rank_rows(rows: Tensor, group: GroupArg) -> tuple[Tensor, Tensor, Tensor, int]:
    """Every rank's ``rows`` (gathered with gradient), the global ids of this rank's rows and
    of all rows (the labels that pair them), and the global N."""
    first, total = batch_layout(rows.shape[0], group, rows.device)
    gathered = all_gather(rows, group)
    ids = torch.arange(rows.shape[0], device=rows.device) + first
    return gathered, ids, torch.arange(total, device=rows.device), total


def _local_scores(
    rows: Tensor, cols: Tensor, temperature: Any, bias: Any, group: GroupArg
) -> tuple[SeparableScores, int]:
    """This rank's ``rows`` against every rank's ``cols`` (the rank-local loss of OpenCLIP and
    lightly), each row's positive its own pair in the global batch; and the global N."""
    gathered, ids, all_ids, total = _rank_rows(cols, group)
    s = SeparableScores(rows, gathered, "dot", temperature, bias=bias, labels=ids, y_labels=all_ids)
    return s, total


def _global_rows(s: SeparableScores) -> Tensor:
    """The number of rows of the (gathered) batch, as a tensor of the features' dtype."""
    n = s.x.shape[-2]
    if s.gather:
        n = batch_layout(n, s.gather, s.x.device)[1]
    return torch.tensor(float(n), dtype=upcast(s.x).dtype, device=s.x.device)
