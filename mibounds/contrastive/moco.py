"""MoCo's query/key/queue loss and the queue: :class:`MoCoLoss`, :class:`MemoryQueue`."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from mibounds import _checks, reductions
from mibounds.bounds.lower import infonce
from mibounds.contrastive._common import (
    _anchor_losses,
    _reduce,
    _reduction,
)
from mibounds.scores import SeparableScores

__all__ = ["MemoryQueue", "MoCoLoss"]


class MoCoLoss(nn.Module):
    r"""MoCo's contrastive loss: each query against its own key and a queue of K negatives.

    .. math::

        \mathcal{L} = \frac1N\sum_i -\log\frac{e^{q_i\cdot k_i/\tau}}{e^{q_i\cdot k_i/\tau} +
        \sum_{k=1}^{K} e^{q_i\cdot \kappa_k/\tau}} = \log(K+1) - I_\mathrm{NCE},

    the cross-entropy of MoCo's ``logits = cat([l_pos, l_neg]) / T`` with label 0. The other
    in-batch keys are not negatives (``exclude="batch"``). Features are used as given (MoCo
    normalises them in the encoder); the queue is not differentiated.

    Args:
        temperature: :math:`\tau > 0` (MoCo v2's 0.2; v1's 0.07 is the default here).
        reduction: ``"mean"`` (MoCo's loss), ``"sum"``, or ``"none"``: one loss per query,
            ``(N,)`` (streamed).

    Example:
        >>> q, k = torch.randn(4, 8), torch.randn(4, 8)
        >>> queue = MemoryQueue(16, 8)
        >>> loss = MoCoLoss(0.07)(q, k, queue(k))  # the queue before k is pushed
        >>> loss.shape, len(queue)
        (torch.Size([]), 4)

    References:
        He, Fan, Wu, Xie, Girshick. "Momentum Contrast for Unsupervised Visual Representation
        Learning." CVPR 2020.
    """

    def __init__(self, temperature: float | Tensor = 0.07, *, reduction: str = "mean") -> None:
        super().__init__()
        _checks.check_temperature("temperature", temperature)
        self.temperature = temperature
        self.reduction = _reduction("MoCoLoss", reduction)

    def _scores(self, query: Any, key: Any, queue: Any) -> SeparableScores:
        return SeparableScores._of_loss(
            1, {"query": query, "key": key}, "dot",
            temperature=("temperature", self.temperature), extra=("queue", queue),
        )  # fmt: skip

    def forward(self, query: Tensor, key: Tensor, queue: Tensor) -> Tensor:
        """The loss (to minimise), in the features' dtype.

        Args:
            query: ``(N, d)`` query features.
            key: ``(N, d)`` key features; row ``i`` is query ``i``'s positive.
            queue: ``(K, d)`` negatives (``K`` may be 0 when ``N >= 2``), not differentiated.
        """
        s = self._scores(query, key, queue)
        if self.reduction != "mean":
            return _reduce(_anchor_losses(s), self.reduction).to(query.dtype)
        loss = reductions.nce_loss(s)
        assert loss is not None
        return loss.to(query.dtype)

    def mi(self, query: Tensor, key: Tensor, queue: Tensor) -> Tensor:
        r"""The InfoNCE estimate :math:`\log(K+1) - \mathcal{L}` in nats.

        A lower bound on the MI between the two views' representations, for monitoring:
        it is negative early in training (before the critic beats chance) and capped by the
        log of the number of candidates; it carries a gradient, so ``.detach()`` (or
        ``.item()``) it for logging.
        """
        return infonce(self._scores(query, key, queue))


class MemoryQueue(nn.Module):
    r"""A first-in first-out queue of detached keys (MoCo's queue, a memory bank).

    The entries live in a buffer, so they move with ``.to()`` and are saved in the
    ``state_dict``. Calling the module returns the entries held **before** the call and then
    pushes the new keys (the MoCo order); :meth:`push` and :attr:`entries` do each half.

    Args:
        size: capacity K (the oldest entries are overwritten once full).
        dim: feature size.
        dtype: the dtype of the stored keys.

    Example:
        >>> queue = MemoryQueue(3, 2)
        >>> queue.push(torch.ones(2, 2))
        >>> queue(torch.zeros(2, 2)).shape  # the two ones, then the zeros are pushed
        torch.Size([2, 2])
        >>> len(queue)
        3
    """

    bank: Tensor
    ptr: Tensor
    count: Tensor

    def __init__(self, size: int, dim: int, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        _checks.check_positive_int("size", size)
        _checks.check_positive_int("dim", dim)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        self.register_buffer("bank", torch.zeros(size, dim, dtype=dtype))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def __len__(self) -> int:
        return int(self.count)

    @property
    def entries(self) -> Tensor:
        """The keys held now, oldest first, ``(len, dim)`` (a detached copy)."""
        size, n, p = self.bank.shape[0], int(self.count), int(self.ptr)
        if n < size:
            return self.bank[:n].clone()
        return torch.cat([self.bank[p:], self.bank[:p]]).clone()

    @torch.no_grad()
    def push(self, keys: Tensor) -> None:
        """Append ``keys`` ``(B, dim)`` (detached), overwriting the oldest entries."""
        _checks.check_tensor("keys", keys, min_dim=2)
        size, dim = self.bank.shape
        if keys.dim() != 2 or keys.shape[1] != dim:
            raise ValueError(f"keys must be (B, {dim}), got {tuple(keys.shape)}")
        _checks.check_values("keys", keys)
        keys = keys.detach()[-size:].to(self.bank.dtype)
        idx = (int(self.ptr) + torch.arange(keys.shape[0], device=self.bank.device)) % size
        self.bank[idx] = keys
        self.ptr.fill_((int(self.ptr) + keys.shape[0]) % size)
        self.count.fill_(min(size, int(self.count) + keys.shape[0]))

    def forward(self, keys: Tensor) -> Tensor:
        """The entries before this call, ``(len, dim)``; then ``keys`` are pushed."""
        held = self.entries
        self.push(keys)
        return held
