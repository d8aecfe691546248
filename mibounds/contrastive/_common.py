"""What the drop-in losses share: argument checks named as the peers name them, the
reductions, per-anchor losses and the rank bookkeeping of distributed negatives."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from mibounds import _checks
from mibounds._dtypes import upcast
from mibounds.distributed import GroupArg, all_gather, batch_layout
from mibounds.pairing import _check_labels
from mibounds.reductions import SeparableBatch, batch_statistics, separable_rows
from mibounds.scores import SeparableScores


def _scale(name: str, logit_scale: Any) -> Tensor | float:
    """A positive, finite logit scale (float or scalar tensor) whose inverse, the temperature,
    is finite too; errors name the argument as the caller passed it."""
    if isinstance(logit_scale, Tensor):
        _checks.check_tensor(name, logit_scale)
        if logit_scale.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got shape {tuple(logit_scale.shape)}")
        if not _checks.validating():
            return logit_scale
        value = float(logit_scale.detach())
        inverse = float((1 / logit_scale.detach()).float())
    else:
        if isinstance(logit_scale, bool) or not isinstance(logit_scale, (int, float)):
            raise TypeError(
                f"{name} must be a float or a scalar tensor, got {type(logit_scale).__name__}"
            )
        value = float(logit_scale)
        inverse = 1.0 / value if value > 0 else math.inf
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be finite and > 0, got {value}")
    if not math.isfinite(inverse):
        raise ValueError(
            f"{name}={value:g} is too small: the temperature 1 / {name} overflows "
            f"{logit_scale.dtype if isinstance(logit_scale, Tensor) else 'float'}"
        )
    return logit_scale


def _bias(name: str, logit_bias: Any) -> Tensor | float:
    """A finite scalar bias (float or one-element tensor), named as the caller passed it."""
    if isinstance(logit_bias, Tensor):
        _checks.check_tensor(name, logit_bias)
        if logit_bias.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got shape {tuple(logit_bias.shape)}")
        _checks.check_values(name, logit_bias)
        return logit_bias
    if isinstance(logit_bias, bool) or not isinstance(logit_bias, (int, float)):
        raise TypeError(
            f"{name} must be a float or a scalar tensor, got {type(logit_bias).__name__}"
        )
    return _checks.check_real(name, logit_bias)


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


def _nce_loss(s: SeparableScores, symmetric: bool = False) -> Tensor | None:
    """The InfoNCE family's mean loss of one process's scores, formed row by row (see
    :meth:`~mibounds.reductions.SeparableBatch.nce_loss`); ``None`` for gathered scores."""
    st = batch_statistics(s, s.gather)
    return st.nce_loss(symmetric) if isinstance(st, SeparableBatch) else None


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


def _labels(name: str, labels: Any, n: int) -> Tensor:
    """``(n,)`` integer labels, named as the caller passed them."""
    if labels is None:
        raise ValueError(f"{name} is required: pass ({n},) integer labels")
    out = _check_labels(name, labels)
    assert out is not None
    if out.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},), got {tuple(labels.shape)}")
    return out
