r"""The kernels' entry points: the functions the batches call for a streamed reduction.

Each flattens the leading dimensions of its features to one batch dimension, turns the
temperature, bias and pairing into the op's arguments, decides once whether a gradient is
needed and, under CUDA autocast, casts float32 features to the autocast dtype (so the fused
kernels multiply them on tensor cores, as ``torch.matmul`` would), then calls one custom op of
:mod:`mibounds.kernels.ops`, which decides where the call runs.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor

from mibounds._dtypes import accumulation_dtype as _acc
from mibounds._dtypes import cuda_autocast_dtype
from mibounds.kernels.elementwise import ELEMENTWISE
from mibounds.kernels.ops import (
    _MEANS_CALL,
    _NEG_LME_CALL,
    _ROW_LSE_CALL,
    _SYM_LSE_CALL,
    _interpolated_terms,
)
from mibounds.kernels.panels import _SIMS
from mibounds.pairing import PairLayout

__all__ = [
    "interpolated_terms",
    "offdiag_logmeanexp",
    "offdiag_means",
    "row_logsumexp_mean",
    "symmetric_logsumexp_mean",
]


def _entry(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, torch.Size, Any]:
    """The features of an op call, flattened to ``(B, N, d)`` and ``(B, M, d)``, with their
    leading shape, and the context to call the op in. Under CUDA autocast (decided here once
    per call) float32 features are cast to the autocast dtype (differentiably), as
    ``torch.matmul`` would multiply them, and autocast is off around the op (its features are
    cast already); elsewhere the features are unchanged and the context does nothing."""
    dt = cuda_autocast_dtype(x.device)
    if dt is None:
        return (*_flatten(x, y), contextlib.nullcontext())
    x, y = (t.to(dt) if t.dtype == torch.float32 else t for t in (x, y))
    return (*_flatten(x, y), torch.autocast("cuda", enabled=False))


def _flatten(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, torch.Size]:
    lead = x.shape[:-2]
    return x.reshape(-1, *x.shape[-2:]), y.reshape(-1, *y.shape[-2:]), lead


def _need_grad(*ts: Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in ts)


def _tau(tau: float | Tensor, like: Tensor) -> Tensor:
    if isinstance(tau, Tensor):
        return tau.reshape(())
    return torch.tensor(float(tau), dtype=_acc(like.dtype), device=like.device)


def _bias(bias: Tensor | None) -> Tensor | None:
    return None if bias is None else bias.reshape(())


def _pair_args(layout: PairLayout | None, x: Tensor, offset: int = 0) -> tuple:
    """The pairing arguments of the ops: ``(row labels, column labels, offset, exclude,
    n_paired)``; without a layout, the plain pairing with the own columns from ``offset``."""
    if layout is None:
        return (None, None, offset, 0, x.shape[-2])
    return tuple(layout)


def row_logsumexp_mean(
    x: Tensor,
    y: Tensor,
    tau: float | Tensor,
    sim: str,
    *,
    layout: PairLayout | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    minus_positives: bool = False,
) -> Tensor:
    r""":math:`\sum_i w_i \log\sum_{j\in C_i} e^{S_{ij}}` for ``S = sim(x, y) / tau + bias``,
    shape ``(...)``: without ``weight`` the mean over rows; without ``layout`` every column is
    a candidate (:math:`C_i` are the candidates of :class:`~mibounds.pairing.PairLayout`).

    With ``minus_positives`` each row's term is less the mean score of its positives, formed
    without rounding the log-sum-exp first (the InfoNCE family's cross-entropy); the gradient
    is still that of the log-sum-exp alone (the caller adds the positives' own).

    The column version is ``row_logsumexp_mean(y, x, ...)`` (the similarities are symmetric).

    Example:
        >>> x, y = torch.randn(5, 3), torch.randn(5, 3)
        >>> dense = torch.logsumexp(x @ y.T / 0.5, dim=-1).mean()
        >>> torch.allclose(row_logsumexp_mean(x, y, 0.5, "dot"), dense)
        True
    """
    xf, yf, lead, autocast_off = _entry(x, y)
    t, b = _tau(tau, x), _bias(bias)
    with autocast_off:
        value, *_ = _ROW_LSE_CALL(
            xf, yf, t, b, _SIMS[sim], *_pair_args(layout, x), weight, bool(minus_positives),
            _need_grad(x, y, t, b),
        )  # fmt: skip
    return value.reshape(lead)


def symmetric_logsumexp_mean(
    x: Tensor,
    y: Tensor,
    tau: float | Tensor,
    sim: str,
    *,
    layout: PairLayout | None = None,
    row_weight: Tensor | None = None,
    col_weight: Tensor | None = None,
    bias: Tensor | None = None,
    minus_positives: bool = False,
) -> Tensor:
    r"""Weighted row plus column log-sum-exp over the candidates, ``(...)``: two sweeps, four
    matrix products, three in the CPU sweep when the batch fits one panel (the symmetric
    InfoNCE partition terms). Without weights, the average of
    the row and the column :math:`\frac1N\sum \log\sum e^{S}`. With ``minus_positives``,
    each row's and column's term less the mean score of its positives (see
    :func:`row_logsumexp_mean`).

    Example:
        >>> x, y = torch.randn(5, 3), torch.randn(5, 3)
        >>> s = x @ y.T
        >>> dense = 0.5 * (torch.logsumexp(s, -1).mean() + torch.logsumexp(s, -2).mean())
        >>> torch.allclose(symmetric_logsumexp_mean(x, y, 1.0, "dot"), dense)
        True
    """
    xf, yf, lead, autocast_off = _entry(x, y)
    t, b = _tau(tau, x), _bias(bias)
    args = _pair_args(layout, x)
    with autocast_off:
        value, *_ = _SYM_LSE_CALL(
            xf, yf, t, b, _SIMS[sim], *args, row_weight, col_weight, bool(minus_positives),
            _need_grad(x, y, t, b),
        )  # fmt: skip
    return value.reshape(lead)


def offdiag_logmeanexp(
    x: Tensor,
    y: Tensor,
    tau: float | Tensor,
    sim: str,
    offset: int = 0,
    *,
    layout: PairLayout | None = None,
    log_weight: Tensor | None = None,
    bias: Tensor | None = None,
) -> Tensor:
    r""":math:`\log\frac1{N(N-1)}\sum_{i\ne j} e^{S_{ij}}`, shape ``(...)``.

    With ``n`` rows of ``x`` against ``m`` columns of ``y`` (one rank's rows against the global
    batch), the positive of row ``i`` is column ``offset + i`` and the mean is over the
    ``n (m - 1)`` other pairs. With a ``layout`` the sum is over each row's negatives, weighted
    by ``exp(log_weight)`` per row.

    Example:
        >>> import math
        >>> x, y = torch.randn(6, 3), torch.randn(6, 3)
        >>> s = x @ y.T
        >>> dense = torch.logsumexp(s[~torch.eye(6, dtype=torch.bool)], 0) - math.log(30)
        >>> torch.allclose(offdiag_logmeanexp(x, y, 1.0, "dot"), dense)
        True
    """
    xf, yf, lead, autocast_off = _entry(x, y)
    t, b = _tau(tau, x), _bias(bias)
    args = _pair_args(layout, x, offset)
    with autocast_off:
        value, *_ = _NEG_LME_CALL(
            xf, yf, t, b, _SIMS[sim], *args, log_weight, _need_grad(x, y, t, b)
        )
    return value.reshape(lead)


def offdiag_means(
    x: Tensor,
    y: Tensor,
    tau: float | Tensor,
    sim: str,
    grad_fn: str,
    value_fn: str | None = None,
    shift: float = 0.0,
    param: float = 0.0,
    grad_value: bool = True,
    offset: int = 0,
    *,
    layout: PairLayout | None = None,
    weight: Tensor | None = None,
    positives: bool = False,
    bias: Tensor | None = None,
) -> tuple[Tensor | None, Tensor]:
    r"""Off-diagonal means of ``value_fn(S + shift)`` (no gradient) and ``grad_fn(S + shift)``
    (differentiable), in one sweep; ``param`` is passed to both registered functions. ``offset``
    places the positives as in :func:`offdiag_logmeanexp`. With a ``layout``, sums over each
    row's negatives (or its positives) weighted by ``weight`` per row.
    Returns ``(value_mean or None, grad_mean)``, each ``(...)``; with ``grad_value=False`` the
    second is 0 with the right gradient (for an objective whose value cancels).

    Example:
        >>> x, y = torch.randn(6, 3), torch.randn(6, 3)
        >>> off = (x @ y.T)[~torch.eye(6, dtype=torch.bool)]
        >>> _, mean_exp = offdiag_means(x, y, 1.0, "dot", "exp")
        >>> torch.allclose(mean_exp, off.exp().mean())
        True
    """
    xf, yf, lead, autocast_off = _entry(x, y)
    t, b = _tau(tau, x), _bias(bias)
    vid = -1 if value_fn is None else ELEMENTWISE[value_fn]
    with autocast_off:
        vmean, gmean, *_ = _MEANS_CALL(
            xf,
            yf,
            t,
            b,
            _SIMS[sim],
            *_pair_args(layout, x, int(offset)),
            weight,
            vid,
            ELEMENTWISE[grad_fn],
            float(shift),
            float(param),
            positives,
            _need_grad(x, y, t, b),
            grad_value,
        )
    return (None if value_fn is None else vmean.reshape(lead)), gmean.reshape(lead)


def interpolated_terms(
    x: Tensor,
    y: Tensor,
    tau: float | Tensor,
    sim: str,
    log_baseline: Tensor,
    alpha: float,
) -> Tensor:
    r"""The terms of :func:`mibounds.interpolated` beyond :math:`1 + \frac1N\sum_j S_{jj}`,
    streamed: :math:`-\frac{1}{N(N-1)}\sum_{i\ne j} A_{ij} - \frac1N\sum_j e^{L_{jj}-A_{jj}}`,
    shape ``(...)``; ``log_baseline`` is ``(..., N)`` and receives a gradient too.

    Example:
        >>> import mibounds
        >>> x, y = torch.randn(6, 3), torch.randn(6, 3)
        >>> rest = interpolated_terms(x, y, 1.0, "dot", torch.zeros(6), 0.5)
        >>> value = 1 + (x * y).sum(-1).mean() + rest
        >>> torch.allclose(value, mibounds.interpolated(x @ y.T, alpha=0.5), atol=1e-5)
        True
    """
    xf, yf, lead = _flatten(x, y)
    t = _tau(tau, x)
    bf = log_baseline.reshape(-1, log_baseline.shape[-1])
    value, *_ = _interpolated_terms(
        xf, yf, t, bf, _SIMS[sim], float(alpha), _need_grad(x, y, t, log_baseline)
    )
    return value.reshape(lead)
