"""lightly's NT-Xent loss (two views, with or without its memory bank), streamed:
:class:`NTXentLoss`, under lightly's own name (``from mibounds.contrastive.lightly import
NTXentLoss``)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mibounds import _checks, reductions
from mibounds.bounds.lower import infonce
from mibounds.contrastive._common import (
    _anchor_losses,
    _global_rows,
    _rank_rows,
    _reduce,
    _reduction,
)
from mibounds.distributed import GroupArg, all_gather
from mibounds.scores import SeparableScores

__all__ = ["NTXentLoss"]


def _two_views(out0: Any, out1: Any, min_n: int) -> tuple[Tensor, Tensor]:
    a, b = _checks.check_embeddings(min_n, out0=out0, out1=out1)
    return a, b


class NTXentLoss(nn.Module):
    r"""SimCLR's NT-Xent loss, as lightly's ``NTXentLoss`` (without memory bank), streamed.

    The :math:`2N` embeddings :math:`z = (z^{(0)}, z^{(1)})` of two views are compared by cosine
    similarity over a temperature :math:`\tau`; each is an anchor whose positive is its other
    view and whose negatives are the other :math:`2N - 2` embeddings (the self-pair is
    excluded):

    .. math::

        \mathcal{L} = \frac{1}{2N}\sum_{a=1}^{2N} -\log
        \frac{e^{\cos(z_a, z_{a^+})/\tau}}{\sum_{k \ne a} e^{\cos(z_a, z_k)/\tau}}
        = \log(2N-1) - I_\mathrm{NCE}.

    This is :func:`mibounds.infonce` on ``SeparableScores(z, z, "cosine", tau,
    labels=[0..N-1, 0..N-1], exclude="self")``. Equal to ``lightly.loss.NTXentLoss(temperature)
    (out0, out1)`` and to pytorch-metric-learning's ``NTXentLoss`` on the same pairs.

    **Memory bank** (lightly's MoCo recipe, ``memory_bank_size=K`` or ``(K, d)``): as lightly
    does, the views are normalised, each ``out0`` row is an anchor whose positive is its
    ``out1`` row and whose negatives are the bank's K entries; the bank starts as K random unit
    vectors (drawn from torch's global generator on the first call), and after each call that
    needs a gradient (``out0.requires_grad``, in training mode) the normalised ``out1`` rows
    replace its oldest entries, the rows past its end dropped (lightly's order). Unlike
    :class:`MoCoLoss` with a :class:`MemoryQueue` (the paper's recipe: features as given, an
    empty queue at first, every key kept), this is lightly's loss to the last detail.

    Args:
        temperature: :math:`\tau > 0` (lightly's default 0.5).
        memory_bank_size: 0 (no bank, SimCLR), a bank size K, or ``(K, d)``.
        gather_distributed: as lightly: with more than one process, negatives from every
            rank, and each rank returns the loss of its own 2n anchors against the 2N
            embeddings of all ranks; with a memory bank, every rank's keys fill the bank. In a
            single process, or without a process group, the ordinary loss.
        gather: ``True`` or a process group: negatives from every rank, and every rank
            returns the loss of the global batch (the gradients after DDP's averaging are
            those of the rank-local loss).
        reduction: ``"mean"`` (lightly's loss), ``"sum"``, or ``"none"``: one loss per anchor,
            ``(2N,)`` (the ``out0`` rows, then the ``out1`` rows), or ``(N,)`` with a memory
            bank (streamed; one process only).

    pytorch-metric-learning's ``NTXentLoss`` takes ``(embeddings, labels)`` instead of two
    views, with a temperature of 0.07: that is :class:`PMLNTXentLoss`.

    Example:
        >>> z0, z1 = torch.randn(8, 4), torch.randn(8, 4)
        >>> NTXentLoss(temperature=0.5)(z0, z1).shape
        torch.Size([])
        >>> NTXentLoss(0.5, memory_bank_size=(32, 4))(z0, z1).shape
        torch.Size([])

    References:
        Chen, Kornblith, Norouzi, Hinton. "A Simple Framework for Contrastive Learning of Visual
        Representations." ICML 2020.
    """

    bank: Tensor
    bank_ptr: Tensor

    def __init__(
        self,
        temperature: float | Tensor = 0.5,
        memory_bank_size: int | tuple[int, int] = 0,
        gather_distributed: bool = False,
        *,
        gather: GroupArg = False,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        _checks.check_temperature("temperature", temperature)
        self.temperature = temperature
        self.reduction = _reduction("NTXentLoss", reduction)
        if not isinstance(gather_distributed, bool):
            raise TypeError(
                f"gather_distributed must be a bool, got {type(gather_distributed).__name__}"
            )
        if gather_distributed and not torch.distributed.is_available():
            raise ValueError(
                "NTXentLoss: gather_distributed=True needs torch.distributed, which this torch "
                "build does not have: pass gather_distributed=False"
            )
        self.gather = gather
        #: lightly's ``gather_distributed``: this rank's own loss, with every rank's negatives
        #: when there is more than one process (the ordinary loss otherwise)
        self.gather_distributed = gather_distributed
        self.bank_size, dim = _bank_size(memory_bank_size)
        if self.bank_size and gather:
            raise ValueError(
                "NTXentLoss: a memory bank with gather is not supported: the bank's entries are "
                "the negatives (gather_distributed=True fills the bank from every rank, as "
                "lightly does)"
            )
        empty = torch.zeros(0, 0) if dim is None else _random_bank(self.bank_size, dim)
        self.register_buffer("bank", empty, persistent=False)
        self.register_buffer("bank_ptr", torch.zeros((), dtype=torch.long), persistent=False)

    def _scores(self, out0: Any, out1: Any) -> SeparableScores:
        # 2N >= 2 embeddings from one pair; pair labels unique over the ranks when gathering
        return SeparableScores._of_loss(
            1, {"out0": out0, "out1": out1}, "cosine",
            temperature=("temperature", self.temperature),
            gather=self.gather or self._across_ranks(), views=True,
        )  # fmt: skip

    def forward(self, out0: Tensor, out1: Tensor) -> Tensor:
        """The loss (to minimise), in the features' dtype.

        Args:
            out0: ``(N, d)`` embeddings of the first views.
            out1: ``(N, d)`` embeddings of the second views (row ``i`` is the other view of
                ``out0`` row ``i``).
        """
        if isinstance(out1, Tensor) and out1.dim() == 1 and not out1.is_floating_point():
            raise TypeError(
                f"NTXentLoss takes two views (out0, out1), as lightly's does; out1 is a "
                f"{tuple(out1.shape)} tensor of {out1.dtype} labels, the call of "
                "pytorch-metric-learning's NTXentLoss(embeddings, labels): use "
                "mibounds.contrastive.PMLNTXentLoss for that call"
            )
        if self.bank_size:
            return self._bank_loss(out0, out1)
        local = self._across_ranks()
        s = self._rank_scores(out0, out1) if local else self._scores(out0, out1)
        if self.reduction != "mean":
            return _reduce(_anchor_losses(s), self.reduction).to(out0.dtype)
        loss = reductions.nce_loss(s)  # one process's scores: formed row by row
        if loss is None:
            loss = torch.log(_global_rows(s) - 1) - infonce(s)
        return loss.to(out0.dtype)

    def _across_ranks(self) -> bool:
        """lightly's ``gather_distributed`` with more than one process (in a single process,
        or without a process group, lightly computes the ordinary loss, and so does this)."""
        return (
            self.gather_distributed
            and torch.distributed.is_initialized()
            and torch.distributed.get_world_size() > 1
        )

    def _rank_scores(self, out0: Any, out1: Any) -> SeparableScores:
        """lightly's ``gather_distributed``: this rank's 2n anchors against the 2N embeddings
        of every rank (this rank's first, so that each anchor's own column is excluded)."""
        a, b = _two_views(out0, out1, 1)
        all_a, ids, all_ids, _ = _rank_rows(a, True)
        all_b = all_gather(b, True)
        others = (all_ids < ids[0]) | (all_ids > ids[-1])
        cols = torch.cat([a, b, all_a[others], all_b[others]])
        row_ids = torch.cat([ids, ids])
        col_ids = torch.cat([row_ids, all_ids[others], all_ids[others]])
        return SeparableScores(
            torch.cat([a, b]), cols, "cosine", self.temperature, labels=row_ids,
            y_labels=col_ids, exclude="self",
        )  # fmt: skip

    def _bank_scores(self, out0: Any, out1: Any, update: bool) -> SeparableScores:
        """The anchors ``out0`` against their ``out1`` rows and the bank's entries (held
        before this call), all normalised; with ``update``, the bank is then updated as lightly
        updates it."""
        a, b = _two_views(out0, out1, 1)
        a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
        if self.bank.numel() == 0:
            self.bank = _random_bank(self.bank_size, a.shape[1]).to(a.device)
        if self.bank.shape[1] != a.shape[1]:
            raise ValueError(
                f"out0 must have {self.bank.shape[1]} features to match the memory bank, got "
                f"shape {tuple(a.shape)}"
            )
        negatives = self.bank.clone()
        if update and a.requires_grad and self.training:
            keys = b.detach()
            if self._across_ranks():  # lightly fills the bank with every rank's keys
                keys = all_gather(keys, True)
            self._enqueue(keys)
        candidates = torch.cat([b, negatives.to(b.dtype)], dim=0)
        return SeparableScores(a, candidates, "dot", self.temperature, exclude="batch")

    def _bank_loss(self, out0: Tensor, out1: Tensor) -> Tensor:
        s = self._bank_scores(out0, out1, update=True)
        if self.reduction != "mean":
            return _reduce(_anchor_losses(s), self.reduction).to(out0.dtype)
        loss = reductions.nce_loss(s)
        assert loss is not None
        return loss.to(out0.dtype)

    @torch.no_grad()
    def _enqueue(self, keys: Tensor) -> None:
        """lightly's order: from the pointer on; a batch that runs past the end is cut there
        and the pointer goes back to 0."""
        size, ptr = self.bank_size, int(self.bank_ptr)
        if ptr + keys.shape[0] >= size:
            self.bank[ptr:] = keys[: size - ptr].to(self.bank.dtype)
            self.bank_ptr.fill_(0)
        else:
            self.bank[ptr : ptr + keys.shape[0]] = keys.to(self.bank.dtype)
            self.bank_ptr.fill_(ptr + keys.shape[0])

    def mi(self, out0: Tensor, out1: Tensor) -> Tensor:
        r"""The InfoNCE estimate :math:`\log(2N-1) - \mathcal{L}` in nats.

        A lower bound on the MI between the two views' representations, for monitoring:
        it is negative early in training (before the critic beats chance) and capped by the
        log of the number of candidates; it carries a gradient, so ``.detach()`` (or
        ``.item()``) it for logging.
        """
        if self.bank_size:  # reading the estimate leaves the bank as it is
            return infonce(self._bank_scores(out0, out1, update=False))
        return infonce(self._scores(out0, out1))


def _bank_size(size: Any) -> tuple[int, int | None]:
    """lightly's ``memory_bank_size``: ``K`` (the feature size comes with the first batch) or
    ``(K, d)``."""
    if isinstance(size, tuple) and len(size) == 2:
        k, d = size
        _checks.check_positive_int("memory_bank_size[0]", k, minimum=1)
        _checks.check_positive_int("memory_bank_size[1]", d, minimum=1)
        return k, d
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(
            f"memory_bank_size must be an int >= 0 or a (size, dim) tuple, got {size!r}"
        )
    return size, None


def _random_bank(size: int, dim: int) -> Tensor:
    """``size`` random unit vectors of ``dim`` features: lightly's initial bank (since lightly
    1.4.25, ``normalize(randn(size, dim), dim=-1)``: the same draws from the same seed)."""
    return F.normalize(torch.randn(size, dim), dim=-1)
