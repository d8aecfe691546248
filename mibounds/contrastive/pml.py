"""pytorch-metric-learning's losses, streamed: :class:`NTXentLoss` (exported at the package
level as ``PMLNTXentLoss``) and :class:`SupConLoss`, under the library's own class names, so
its wrappers (``CrossBatchMemory``, ``SelfSupervisedLoss``) and ``from ... import
NTXentLoss`` both work."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mibounds import _checks, reductions
from mibounds.bounds.lower import infonce
from mibounds.contrastive._common import (
    _anchor_losses,
    _features,
    _global_rows,
    _min_rows,
    _reduce,
)
from mibounds.contrastive._pml_args import (
    _COSINE,
    _arange,
    _as_computed,
    _cast,
    _dense_terms,
    _has_negative,
    _label_pairs,
    _listed_pairs,
    _listed_supcon,
    _no_pairs,
    _pair_scores,
    _pml_options,
    _pml_reduce,
    _pml_reference,
    _prepared,
    _scatter_logsumexp,
    _supcon_anchor_losses,
    _zero,
)
from mibounds.distributed import GroupArg
from mibounds.kernels.rows import row_terms
from mibounds.pairing import PairLayout
from mibounds.reductions import SeparableBatch, batch_statistics
from mibounds.scores import SeparableScores

__all__ = ["NTXentLoss", "PMLNTXentLoss", "SupConLoss"]


class SupConLoss(nn.Module):
    r"""The supervised contrastive loss :math:`\mathcal{L}_\mathrm{out}` of Khosla et al., streamed.

    On cosine similarities over a temperature, :math:`s_{ak} = \cos(z_a, z_k)/\tau`, for each
    anchor :math:`a` with at least one positive :math:`P(a) = \{p \ne a: y_p = y_a\}`:

    .. math::

        \ell_a = \frac{1}{|P(a)|}\sum_{p\in P(a)} -\log\frac{e^{s_{ap}}}{\sum_{k\ne a} e^{s_{ak}}},
        \qquad \mathcal{L} = \operatorname{mean}_{a:\,|P(a)|>0} \ell_a
        = \log(N - 1) - I_\mathrm{NCE}.

    Anchors without positives do not count. This is :func:`mibounds.infonce` on
    ``SeparableScores(z, z, "cosine", tau, labels=labels, exclude="self")``, and what
    pytorch-metric-learning's ``SupConLoss(temperature)`` computes, with its call
    ``loss(embeddings, labels, indices_tuple=None, ref_emb=None, ref_labels=None)``:

    * ``ref_emb``, ``ref_labels`` (a cross-batch memory): the anchors are ``embeddings``, the
      candidates every row of ``ref_emb`` (none excluded), the positives those with an equal
      label; streamed as ``SeparableScores(z, ref_emb, "cosine", tau, labels=labels,
      y_labels=ref_labels)``.
    * ``indices_tuple`` (a miner's ``(a, p, n)`` triplets or ``(a1, p, a2, n)`` pairs): the
      positives of anchor ``a`` are the listed pairs ``(a, p)``, its candidates the listed
      positive and negative pairs (each counted once), computed on the listed pairs only.

    As pytorch-metric-learning's, the loss is 0 with a zero gradient when there is no positive
    or no negative pair at all (a single embedding, or one label throughout).

    Args:
        temperature: :math:`\tau > 0` (default 0.1, as pytorch-metric-learning's).
        gather: ``True`` or a process group: negatives from every rank.
        reduction: ``"mean"`` (the loss), ``"sum"``, or ``"none"``: one loss per anchor,
            ``(N,)``, 0 for an anchor without a positive (streamed; one process only).
        distance: pytorch-metric-learning's ``CosineSimilarity()`` (the default),
            ``DotProductSimilarity()`` or ``LpDistance(normalize_embeddings, p, power)``: the
            scores are the similarity over :math:`\tau` (streamed), or minus the distance
            over :math:`\tau` (computed from the ``N x M`` distances, as the library does).
        reducer: pytorch-metric-learning's reducer of the per-anchor losses:
            ``AvgNonZeroReducer()`` (the default: the mean over the anchors with a loss),
            ``MeanReducer()``, ``ThresholdReducer(low, high)``, ``PerAnchorReducer(...)`` or
            ``DoNothingReducer()`` (the library's dictionary of per-anchor losses).

    Example:
        >>> z = torch.randn(8, 4)
        >>> SupConLoss(0.1)(z, torch.tensor([0, 1, 0, 1, 2, 2, 0, 1])).shape
        torch.Size([])

    References:
        Khosla et al. "Supervised Contrastive Learning." NeurIPS 2020.
    """

    def __init__(
        self,
        temperature: float | Tensor = 0.1,
        *,
        gather: GroupArg = False,
        reduction: str = "mean",
        distance: Any = None,
        reducer: Any = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        options = _pml_options(name, temperature, reduction, distance, reducer)
        self.temperature, self.reduction, self.distance, self.reducer = options
        self.gather = gather
        if gather and (self.distance.kind == "lp" or reducer is not None):
            raise ValueError(
                f"{name}: distance=LpDistance or a reducer with gather is not supported"
            )

    def _scores(
        self, embeddings: Any, labels: Any, ref_emb: Any = None, ref_labels: Any = None
    ) -> SeparableScores:
        if isinstance(embeddings, Tensor) and embeddings.dim() == 3:
            b, v, d = embeddings.shape
            raise ValueError(
                f"embeddings must be (N, d) features, got shape {(b, v, d)}: for the SupCon "
                f"paper's [batch, n_views, dim] features, pass torch.cat(embeddings.unbind(1)) "
                f"(shape ({b * v}, {d})) and labels.repeat({v}) (shape ({b * v},))"
            )
        if ref_emb is None:
            s = SeparableScores._of_loss(
                _min_rows(self.gather), {"embeddings": embeddings}, "cosine",
                temperature=("temperature", self.temperature), gather=self.gather,
                labels=("labels", labels),
            )  # fmt: skip
            if ref_labels is not None:
                raise ValueError("ref_labels was given without ref_emb: pass both, or neither")
            return s
        z, labels, r, ref_labels = _pml_reference(embeddings, labels, ref_emb, ref_labels)
        if self.gather:
            raise ValueError("SupConLoss: ref_emb with gather is not supported")
        return SeparableScores(z, r, "cosine", self.temperature, labels=labels, y_labels=ref_labels)

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor | None = None,
        indices_tuple: Sequence[Tensor] | None = None,
        ref_emb: Tensor | None = None,
        ref_labels: Tensor | None = None,
    ) -> Any:
        """The loss (to minimise), in the embeddings' dtype; 0 (with a zero gradient) if no
        anchor has a positive, or none has a negative. With ``reducer=DoNothingReducer()``,
        pytorch-metric-learning's dictionary of per-anchor losses.

        Args:
            embeddings: ``(N, d)`` embeddings (the anchors).
            labels: ``(N,)`` integer labels (optional with ``indices_tuple``).
            indices_tuple: a miner's ``(a, p, n)`` or ``(a1, p, a2, n)`` index tensors.
            ref_emb: ``(M, d)`` reference embeddings (the candidates).
            ref_labels: ``(M,)`` labels of ``ref_emb``.
        """
        if indices_tuple is not None:
            losses = _listed_supcon(
                self.temperature, embeddings, labels, indices_tuple, ref_emb, self.distance
            )
            if self.reducer is not None:
                n = losses.shape[0]
                out = _pml_reduce(self.reducer, losses, _arange(losses), None, n, embeddings)
                return _cast(out, embeddings.dtype)
            if self.reduction == "mean":
                loss = losses.sum() / (losses != 0).sum().clamp_min(1)
            else:
                loss = _reduce(losses, self.reduction)
            return loss.to(embeddings.dtype)
        single = isinstance(embeddings, Tensor) and embeddings.dim() == 2
        if single and ref_emb is None and not self.gather and embeddings.shape[0] == 1:
            z = _features("embeddings", embeddings, 1)  # one embedding: no pair at all
            _checks.check_labels_of("labels", labels, 1)
            return _cast(_no_pairs(self.reducer, z), z.dtype)
        fewer = (
            isinstance(ref_emb, Tensor)
            and ref_emb.dim() == 2
            and (isinstance(embeddings, Tensor) and ref_emb.shape[0] < embeddings.shape[0])
        )
        if self.distance != _COSINE or self.reducer is not None or fewer:
            early = self._without_negatives(embeddings, labels, ref_emb, ref_labels)
            if early is not None:
                return early
            return self._pml_path(embeddings, labels, ref_emb, ref_labels)
        s = self._scores(embeddings, labels, ref_emb, ref_labels)
        # no negative pair at all (one label throughout): 0 with a zero gradient, decided on
        # the device (no synchronisation, no graph break)
        has_negative = self.gather or _has_negative(s.labels, s.y_labels)
        if self.reduction != "mean":
            losses = _anchor_losses(s)
            losses = torch.where(torch.as_tensor(has_negative), losses, 0.0)
            return _reduce(losses, self.reduction).to(embeddings.dtype)
        nce = reductions.nce_loss(s)  # one process: formed row by row
        if nce is not None:
            nce = torch.where(torch.as_tensor(has_negative), nce, 0.0)
            return nce.to(embeddings.dtype)
        value = infonce(s)
        # the mean over the anchors with a positive of log|C_a| - I_a, or 0 if there is none
        st = batch_statistics(s, s.gather)
        assert st is not None
        counted = (st.n_terms() > 0) if isinstance(st.n_terms(), Tensor) else True
        if isinstance(st, SeparableBatch):  # candidates per anchor: N - 1, or M references
            log_c = (st.w_joint * torch.log(st.ncand)).sum(-1)
        else:
            log_c = torch.log(_global_rows(s) - 1)
        loss = torch.where(torch.as_tensor(counted), log_c, 0.0) - value
        loss = torch.where(torch.as_tensor(has_negative), loss, 0.0)
        return loss.to(embeddings.dtype)

    def _without_negatives(
        self, embeddings: Any, labels: Any, ref_emb: Any, ref_labels: Any
    ) -> Tensor | dict | None:
        """pytorch-metric-learning's 0 (zero gradient) for labels that leave no negative
        pair; ``None`` otherwise."""
        z, lab, _, rl = _pml_reference(embeddings, labels, ref_emb, ref_labels)
        assert lab is not None and rl is not None
        if not bool(_has_negative(lab, None if ref_emb is None else rl)):
            return _cast(_no_pairs(self.reducer, z), z.dtype)
        return None

    def _pml_path(
        self, embeddings: Any, labels: Any, ref_emb: Any, ref_labels: Any
    ) -> Tensor | dict:
        """Per-anchor losses (a pytorch-metric-learning distance, a reducer, or fewer
        references than anchors), reduced as the library reduces them."""
        z, lab, r, rl = _pml_reference(embeddings, labels, ref_emb, ref_labels)
        assert lab is not None and rl is not None
        own = ref_emb is None
        losses = _supcon_anchor_losses(self.distance, z, r, self.temperature, lab, rl, own)
        if self.reducer is None:
            if self.reduction == "mean":  # the library's AvgNonZeroReducer
                kept = losses[_as_computed(losses) > 0]
                return _cast(kept.mean() if kept.numel() else _zero(z), z.dtype)
            return _reduce(losses, self.reduction).to(z.dtype)
        n = z.shape[0]
        return _cast(_pml_reduce(self.reducer, losses, _arange(losses), None, n, z), z.dtype)

    def mi(
        self,
        embeddings: Tensor,
        labels: Tensor,
        ref_emb: Tensor | None = None,
        ref_labels: Tensor | None = None,
    ) -> Tensor:
        r"""The InfoNCE estimate :math:`\log(N-1) - \mathcal{L}` in nats.

        A lower bound on the MI between the two views' representations, for monitoring:
        it is negative early in training (before the critic beats chance) and capped by the
        log of the number of candidates; it carries a gradient, so ``.detach()`` (or
        ``.item()``) it for logging.
        """
        return infonce(self._scores(embeddings, labels, ref_emb, ref_labels))


class PMLNTXentLoss(nn.Module):
    r"""pytorch-metric-learning's ``NTXentLoss``: NT-Xent over labelled embeddings, one loss
    per positive pair, the negatives streamed.

    Called as pytorch-metric-learning's losses are,
    ``loss(embeddings, labels, indices_tuple=None, ref_emb=None, ref_labels=None)``. On cosine
    similarities over a temperature, :math:`s_{ak} = \cos(z_a, r_k)/\tau` with
    :math:`r = z` unless ``ref_emb`` is given, every positive pair :math:`(a, p)` (equal
    labels, :math:`p \ne a` when the references are the embeddings) has the loss

    .. math::

        \ell_{ap} = -\log\frac{e^{s_{ap}}}{e^{s_{ap}} + \sum_{k \in N(a)} e^{s_{ak}}},

    over the negatives :math:`N(a)` of the anchor (different labels): the other positives of
    :math:`a` are not in the denominator, unlike :class:`NTXentLoss` (lightly's, two views,
    where each anchor has one positive and the two agree). The loss is the mean over the
    positive pairs, as the library's default ``MeanReducer`` returns it; 0 when there is no
    positive pair or no negative pair at all. The per-anchor log-sum-exp over the negatives is
    streamed (never ``N x M`` scores); the positive pairs are listed, so memory grows with
    their number (``N`` for two views per label).

    With ``indices_tuple`` (a miner's ``(a, p, n)`` or ``(a1, p, a2, n)``), the positive pairs
    are the listed ones and the negatives of :math:`a` the listed pairs ``(a, n)``.

    Args:
        temperature: :math:`\tau > 0` (default 0.07, as pytorch-metric-learning's).
        reduction: ``"mean"`` (the loss), ``"sum"``, or ``"none"``: the losses of the positive
            pairs, in the order of ``torch.nonzero`` over (anchor, reference) (the listed
            order with ``indices_tuple``), as pytorch-metric-learning's ``DoNothingReducer``
            returns them.

    Example:
        >>> z = torch.randn(8, 4)
        >>> labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
        >>> PMLNTXentLoss(0.07)(z, labels).shape
        torch.Size([])

    References:
        Chen, Kornblith, Norouzi, Hinton. "A Simple Framework for Contrastive Learning of Visual
        Representations." ICML 2020. Sohn. "Improved Deep Metric Learning with Multi-class
        N-pair Loss Objective." NeurIPS 2016.
    """

    def __init__(
        self,
        temperature: float | Tensor = 0.07,
        *,
        reduction: str = "mean",
        distance: Any = None,
        reducer: Any = None,
    ) -> None:
        super().__init__()
        options = _pml_options(type(self).__name__, temperature, reduction, distance, reducer)
        self.temperature, self.reduction, self.distance, self.reducer = options

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor | None = None,
        indices_tuple: Sequence[Tensor] | None = None,
        ref_emb: Tensor | None = None,
        ref_labels: Tensor | None = None,
    ) -> Any:
        """The loss (to minimise), in the embeddings' dtype (with
        ``reducer=DoNothingReducer()``, pytorch-metric-learning's dictionary of per-pair
        losses).

        Args:
            embeddings: ``(N, d)`` embeddings (the anchors).
            labels: ``(N,)`` integer labels (optional with ``indices_tuple``).
            indices_tuple: a miner's ``(a, p, n)`` or ``(a1, p, a2, n)`` index tensors.
            ref_emb: ``(M, d)`` reference embeddings (a cross-batch memory).
            ref_labels: ``(M,)`` labels of ``ref_emb``.
        """
        listed = indices_tuple is not None
        z, lab, r, rl = _pml_reference(embeddings, labels, ref_emb, ref_labels, not listed)
        dist = self.distance
        zn = _prepared(dist, z)
        rn = zn if ref_emb is None else _prepared(dist, r)
        n, m, tau = z.shape[0], r.shape[0], self.temperature
        if listed:
            a, p, a2, neg = _listed_pairs(indices_tuple, n, m)
            log_neg = _scatter_logsumexp(_pair_scores(zn, rn, a2, neg, tau, dist), a2, n)
            any_negative = a2.numel() > 0
        else:
            assert lab is not None and rl is not None
            own = ref_emb is None
            if dist.kind == "lp":
                sd, pos, cand = _dense_terms(dist, z, r, tau, lab, rl, own)
                log_neg = torch.logsumexp(sd.masked_fill(~cand | pos, -math.inf), dim=-1)
            else:
                layout = PairLayout(lab, rl, 0, 1 if own else 0, n)
                log_neg = row_terms(zn, rn, tau, "dot", layout=layout, keep="neg")
            a, p = _label_pairs(lab, rl, own)
            any_negative = bool(torch.isfinite(log_neg).any())
        if a.numel() == 0 or not any_negative:  # no pair to learn from: 0, a zero gradient
            if self.reducer is not None:
                return _cast(_no_pairs(self.reducer, z), z.dtype)
            zero = _zero(z)
            loss = zero.new_zeros((0,)) if self.reduction == "none" else zero
            return loss.to(z.dtype)
        s_pos = _pair_scores(zn, rn, a, p, tau, dist)
        losses = F.softplus(log_neg.index_select(0, a) - s_pos)  # log(e^s + sum_neg e^t) - s
        if self.reducer is not None:
            return _cast(_pml_reduce(self.reducer, losses, a, p, n, z), z.dtype)
        loss = losses.mean() if self.reduction == "mean" else _reduce(losses, self.reduction)
        return loss.to(z.dtype)


class NTXentLoss(PMLNTXentLoss):
    r"""pytorch-metric-learning's ``NTXentLoss`` under its own class name:
    :class:`PMLNTXentLoss`, so that the library's wrappers, which accept a loss by its class
    name (``CrossBatchMemory(loss=NTXentLoss(0.1), ...)``, ``SelfSupervisedLoss(NTXentLoss())``),
    and a user's ``from mibounds.contrastive.pml import NTXentLoss`` both work.

    Example:
        >>> z = torch.randn(8, 4)
        >>> labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
        >>> NTXentLoss(0.07)(z, labels).shape
        torch.Size([])
    """
