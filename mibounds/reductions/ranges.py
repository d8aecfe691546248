"""What dense scores become before they are reduced: validated once and their range checked
against the accumulation dtype (the range rule, shared with the streamed operands of
:mod:`mibounds.kernels.operands`)."""

from __future__ import annotations

from typing import Any, TypeAlias

import torch
from torch import Tensor

from mibounds import _checks
from mibounds._dtypes import accumulation_dtype
from mibounds.kernels.operands import _overflow_message, _score_limit, _within_range
from mibounds.reductions.dense import dense_scores
from mibounds.scores import DenseScores, SeparableScores

Scores: TypeAlias = Tensor | SeparableScores | DenseScores


def prepare(scores: Scores, name: str = "scores") -> tuple[Tensor, torch.dtype]:
    """Validate plain square ``scores`` and return the dense float matrix to reduce and the
    output dtype.

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
        if not is_plain(scores):
            raise ValueError(
                f"{name}: this bound or reduction needs square scores with the positives on the "
                "diagonal (no labels, exclusions, bias or extra columns); got "
                f"{_describe(scores)}"
            )
        dense = scores.dense()
        _check_dense_range(name, dense, scores.temperature)
    elif isinstance(scores, DenseScores):
        if not is_plain(scores):
            raise ValueError(
                f"{name}: this bound or reduction needs square scores with the positives on the "
                f"diagonal; got {_describe(scores)}"
            )
        dense = scores.scores
        _check_dense_range(name, dense)
    else:
        dense = _checks.check_scores(name, scores)
        _check_dense_range(name, dense)
    return dense_scores(dense), dense.dtype


def is_plain(scores: Scores) -> bool:
    """Square scores whose positives are the diagonal: no labels, no excluded pairs, no extra
    columns (and, for separable scores, no bias)."""
    if isinstance(scores, Tensor):
        return scores.shape[-1] == scores.shape[-2]
    return scores._plain  # decided when the scores were built


def _describe(scores: Scores) -> str:
    parts = [f"shape {tuple(scores.shape)}"]
    if not isinstance(scores, Tensor):
        if scores.labels is not None:
            parts.append("labels")
        if scores.exclude != "none":
            parts.append(f"exclude={scores.exclude!r}")
        if getattr(scores, "bias", None) is not None:
            parts.append("a bias")
    return ", ".join(parts)


def _check_dense_range(name: str, dense: Tensor, temperature: Any = None) -> None:
    """The overflow rule for dense scores (while values are validated): refused, naming the
    temperature (separable scores) or the scores, where a bound's sums would overflow."""
    if not _checks.validating():
        return
    m = dense.shape[-1]
    dtype = accumulation_dtype(dense.dtype)
    largest = float(dense.detach().abs().amax()) if dense.numel() else 0.0
    if _within_range(largest, m, dtype):
        return
    if temperature is not None:
        raise ValueError(_overflow_message(temperature, dtype, largest, m))
    raise ValueError(
        f"{name} overflow {dtype} in a bound's sums: the largest |score| is {largest:.3g} "
        f"(accepted: below {_score_limit(dtype, m):.3g} with {m} columns); scale them down"
    )
