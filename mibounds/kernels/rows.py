r"""Per-row streamed terms of separable scores: what ``reduction="none"`` returns.

The reductions of :mod:`mibounds.kernels.ops` return one number per batch; per-sample losses
need one number per row. :func:`row_terms` computes, for every row ``i`` of
``S = sim(x, y) / tau + bias``, the log-sum-exp or the sum of an elementwise function over a
set of its columns (its candidates, its negatives or its positives under a
:class:`~mibounds.pairing.PairLayout`), a panel of rows at a time. With a gradient, each panel
runs under activation checkpointing: its scores are dropped after the forward pass and
rebuilt, one panel at a time, in the backward pass, so memory stays ``O(panel x M)`` and the
``N x M`` matrix never exists.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from mibounds._dtypes import accumulation_dtype
from mibounds.kernels.elementwise import elementwise_function
from mibounds.kernels.panels import get_memory_budget, panel_rows
from mibounds.pairing import PairLayout

__all__ = ["row_terms"]


def row_terms(
    x: Tensor,
    y: Tensor,
    tau: float | Tensor,
    sim: str,
    *,
    layout: PairLayout | None = None,
    keep: str = "cand",
    fn: str | None = None,
    param: float = 0.0,
    bias: Tensor | float | None = None,
) -> Tensor:
    r"""Per row, :math:`\log\sum_{j \in K_i} e^{S_{ij}}` (``fn=None``) or
    :math:`\sum_{j\in K_i} \mathrm{fn}(S_{ij})` over the set :math:`K_i` named by ``keep``
    (``"cand"``, ``"neg"`` or ``"pos"``, see :meth:`~mibounds.pairing.PairLayout.drop_mask`),
    shape ``(..., N)``, in the accumulation dtype. A row whose set is empty gives
    :math:`-\infty` (log-sum-exp) or 0 (sum), with a zero gradient.

    ``sim`` is ``"dot"`` or ``"gaussian"``; ``fn`` a name registered with
    :func:`mibounds.kernels.streaming.elementwise`.

    Example:
        >>> x, y = torch.randn(5, 3), torch.randn(7, 3)
        >>> dense = torch.logsumexp(x @ y.T / 0.5, dim=-1)
        >>> torch.allclose(row_terms(x, y, 0.5, "dot"), dense)
        True
    """
    lead, n, m = x.shape[:-2], x.shape[-2], y.shape[-2]
    xf = x.reshape(-1, n, x.shape[-1])
    yf = y.reshape(-1, m, y.shape[-1])
    lay = PairLayout(n_paired=n) if layout is None else layout.to(x.device)
    # a Python float stays exact until the panel casts it to the accumulation dtype
    t = tau if isinstance(tau, Tensor) else torch.tensor(tau, dtype=torch.float64)
    b = (
        bias
        if bias is None or isinstance(bias, Tensor)
        else torch.tensor(bias, dtype=torch.float64)
    )
    value = None if fn is None else elementwise_function(fn)
    body = functools.partial(_panel, layout=lay, keep=keep, value=value, param=param, sim=sim)
    tensors = [t for t in (x, y, t, b) if isinstance(t, Tensor)]
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    rows = panel_rows(m * xf.shape[0], get_memory_budget(x.device))
    out = []
    for r0 in range(0, n, rows):
        xp = xf[:, r0 : min(n, r0 + rows)]
        if grad:
            out.append(checkpoint(body, xp, yf, t, b, r0, use_reentrant=False))
        else:
            out.append(body(xp, yf, t, b, r0))
    return torch.cat(out, dim=-1).reshape(*lead, n)


def _panel(
    xp: Tensor,
    y: Tensor,
    tau: Tensor,
    bias: Tensor | None,
    r0: int,
    *,
    layout: PairLayout,
    keep: str,
    value: Callable[[Tensor, float], Tensor] | None,
    param: float,
    sim: str,
) -> Tensor:
    """The terms of rows ``r0 : r0 + P`` (``xp`` is ``(B, P, d)``), ``(B, P)``."""
    with torch.autocast(xp.device.type, enabled=False):
        dt = accumulation_dtype(torch.promote_types(xp.dtype, y.dtype))
        xp, y = xp.to(dt), y.to(dt)
        s = torch.bmm(xp, y.transpose(1, 2))
        if sim == "gaussian":
            sqx = (xp * xp).sum(-1)[:, :, None]
            sqy = (y * y).sum(-1)[:, None, :]
            s = (2 * s - sqx - sqy).clamp_max(0)
        s = s / tau.to(xp.device, dt)
        if bias is not None:
            s = s + bias.to(xp.device, dt)
        drop = layout.drop_mask(r0, r0 + xp.shape[1], y.shape[1], keep, xp.device)
        if value is not None:
            if drop is None:
                return value(s, param).sum(-1)
            # the dropped entries are set to 0 before fn, so no inf reaches its derivative
            return value(s.masked_fill(drop, 0.0), param).masked_fill(drop, 0.0).sum(-1)
        if drop is None:
            return torch.logsumexp(s, dim=-1)
        empty = drop.all(-1)  # rows without an entry: -inf, with a zero (not NaN) gradient
        s = s.masked_fill(drop & ~empty[:, None], -math.inf).masked_fill(empty[:, None], 0.0)
        return torch.logsumexp(s, dim=-1).masked_fill(empty, -math.inf)
