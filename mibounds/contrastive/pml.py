"""pytorch-metric-learning's losses, streamed: :class:`NTXentLoss` (exported at the package
level as ``PMLNTXentLoss``) and :class:`SupConLoss`, under the library's own class names, so
its wrappers (``CrossBatchMemory``, ``SelfSupervisedLoss``) and ``from ... import
NTXentLoss`` both work."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mibounds import _checks
from mibounds._dtypes import upcast
from mibounds.bounds.lower import infonce
from mibounds.contrastive._common import (
    _anchor_losses,
    _features,
    _global_rows,
    _labels,
    _min_rows,
    _nce_loss,
    _reduce,
    _reduction,
)
from mibounds.distributed import GroupArg
from mibounds.kernels.panels import get_memory_budget, panel_rows
from mibounds.kernels.rows import row_terms
from mibounds.pairing import PairLayout
from mibounds.reductions import SeparableBatch, batch_statistics
from mibounds.scores import SeparableScores

__all__ = ["NTXentLoss", "PMLNTXentLoss", "SupConLoss"]


class _Distance(NamedTuple):
    """A pytorch-metric-learning distance as scores: ``kind`` ``"dot"`` (a similarity, of
    normalised embeddings when ``normalize``) or ``"lp"`` (minus the ``p``-norm distance to the
    ``power``, as the library's losses negate a distance that is not ``is_inverted``)."""

    kind: str
    normalize: bool = True
    p: float = 2.0
    power: float = 1.0


_COSINE = _Distance("dot")


def _pml_distance(owner: str, distance: Any) -> _Distance:
    """pytorch-metric-learning's ``CosineSimilarity``, ``DotProductSimilarity`` and
    ``LpDistance`` (read by class name and attributes, so the library need not be installed);
    any other distance is refused by name."""
    if distance is None:
        return _COSINE
    name = type(distance).__name__
    normalize = bool(getattr(distance, "normalize_embeddings", True))
    power = float(getattr(distance, "power", 1))
    if name in ("CosineSimilarity", "DotProductSimilarity"):
        if power != 1:
            raise ValueError(
                f"{owner}: distance={name}(power={power:g}) is not supported: a similarity "
                "raised to a power is no score of a separable critic; use power=1"
            )
        return _Distance("dot", normalize or name == "CosineSimilarity")
    if name == "LpDistance":
        return _Distance("lp", normalize, float(getattr(distance, "p", 2)), power)
    raise ValueError(
        f"{owner}: distance={name} is not supported; supported: CosineSimilarity, "
        "DotProductSimilarity, LpDistance (pytorch-metric-learning's)"
    )


def _prepared(dist: _Distance, t: Tensor) -> Tensor:
    return F.normalize(t, dim=-1) if dist.normalize else t


def _dense_terms(
    dist: _Distance, z: Tensor, r: Tensor, tau: Any, labels: Tensor, ref_labels: Tensor,
    own: bool,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """The ``N x M`` scores of an Lp distance (no separable form: the library's own
    computation), with the masks of the positives and of the candidates."""
    zu, ru = upcast(_prepared(dist, z)), upcast(_prepared(dist, r))
    s = -(torch.cdist(zu, ru, p=dist.p) ** dist.power) / tau
    cand = torch.ones_like(s, dtype=torch.bool)
    if own:
        cand.fill_diagonal_(False)
    pos = (labels[:, None] == ref_labels[None, :]) & cand
    return s, pos, cand


def _supcon_anchor_losses(
    dist: _Distance, z: Tensor, r: Tensor, tau: Any, labels: Tensor, ref_labels: Tensor,
    own: bool,
) -> Tensor:  # fmt: skip
    """SupCon's loss per anchor, ``(N,)``, 0 for an anchor without a positive: streamed for a
    similarity (anchors in blocks of at most ``M`` against fewer references), from the
    distances for an Lp distance."""
    if dist.kind == "lp":
        s, pos, cand = _dense_terms(dist, z, r, tau, labels, ref_labels, own)
        npos = pos.sum(-1)
        lse = torch.logsumexp(s.masked_fill(~cand, -math.inf), dim=-1)
        mean_pos = s.masked_fill(~pos, 0.0).sum(-1) / npos.clamp_min(1)
        return torch.where(npos > 0, lse - mean_pos, 0.0)
    zp = _prepared(dist, z)
    if own:
        return _anchor_losses(SeparableScores(zp, zp, "dot", tau, labels=labels, exclude="self"))
    rp, n, m = _prepared(dist, r), z.shape[0], r.shape[0]
    parts = [
        _anchor_losses(
            SeparableScores(zp[a:b], rp, "dot", tau, labels=labels[a:b], y_labels=ref_labels)
        )
        for a, b in ((a, min(n, a + m)) for a in range(0, n, m))
    ]
    return torch.cat(parts)


_REDUCERS = (
    "MeanReducer",
    "AvgNonZeroReducer",
    "ThresholdReducer",
    "PerAnchorReducer",
    "DoNothingReducer",
)


def _check_reducer(owner: str, reducer: Any, reduction: str) -> Any:
    """pytorch-metric-learning's reducers by class name (the library need not be installed);
    any other is refused by name, and so is a ``reduction`` other than the default beside
    one."""
    if reducer is None:
        return None
    name = type(reducer).__name__
    if name not in _REDUCERS:
        raise ValueError(f"{owner}: reducer={name} is not supported; supported: {_REDUCERS}")
    if name == "PerAnchorReducer":
        _check_reducer(owner, getattr(reducer, "reducer", None), "mean")
    if reduction != "mean":
        raise ValueError(
            f"{owner}: pass reducer= or reduction=, not both (got reducer={name}, "
            f"reduction={reduction!r})"
        )
    return reducer


def _pml_options(
    name: str, temperature: Any, reduction: Any, distance: Any, reducer: Any
) -> tuple[Any, str, _Distance, Any]:
    """The temperature, reduction, distance and reducer of the pytorch-metric-learning style
    loss ``name``, each checked and named as the caller passed it."""
    _checks.check_temperature("temperature", temperature)
    checked = _reduction(name, reduction)
    return (
        temperature,
        checked,
        _pml_distance(name, distance),
        _check_reducer(name, reducer, checked),
    )


def _zero(like: Tensor) -> Tensor:
    """0 with a zero gradient (pytorch-metric-learning's loss without pairs)."""
    return upcast(like).sum() * 0


def _pml_reduce(
    reducer: Any, losses: Tensor, anchors: Tensor, others: Tensor | None, n: int, like: Tensor
) -> Tensor | dict:
    """``losses`` (per positive pair ``(anchors, others)``, or per anchor when ``others`` is
    None) reduced as the reducer of that name reduces them."""
    name = type(reducer).__name__
    kind = "element" if others is None else "pos_pair"
    if name == "DoNothingReducer":
        indices = anchors if others is None else (anchors, others)
        return {"loss": {"losses": losses, "indices": indices, "reduction_type": kind}}
    if name == "PerAnchorReducer":
        if others is not None:  # the mean of each anchor's pair losses, 0 for none
            count = losses.new_zeros(n).index_add(0, anchors, torch.ones_like(losses))
            total = losses.new_zeros(n).index_add(0, anchors, losses)
            losses = torch.where(count > 0, total / count.clamp_min(1), 0.0)
        inner = getattr(reducer, "reducer", None)
        if inner is None or type(inner).__name__ == "MeanReducer":
            return losses.mean() if losses.numel() else _zero(like)
        return _pml_reduce(inner, losses, torch.arange(n, device=losses.device), None, n, like)
    if name == "MeanReducer":
        return losses.mean() if losses.numel() else _zero(like)
    low = getattr(reducer, "low", 0 if name == "AvgNonZeroReducer" else None)
    high = getattr(reducer, "high", None)
    losses = _as_computed(losses)
    keep = torch.ones_like(losses, dtype=torch.bool)
    if low is not None:
        keep &= losses > low
    if high is not None:
        keep &= losses < high
    kept = losses[keep]
    return kept.mean() if kept.numel() else _zero(like)


def _as_computed(losses: Tensor) -> Tensor:
    """The losses as the library's dense formula gives them: ``-log(p)`` is exactly 0 where
    ``p`` rounds to 1, that is where the loss is below half an ulp of 1 (a threshold reducer
    then leaves it out)."""
    return losses.masked_fill(losses < torch.finfo(losses.dtype).eps / 2, 0.0)


def _no_pairs(reducer: Any, like: Tensor) -> Tensor | dict:
    """pytorch-metric-learning's result without a positive or a negative pair: 0."""
    zero = _zero(like)
    if reducer is not None and type(reducer).__name__ == "DoNothingReducer":
        return {"loss": {"losses": zero, "indices": None, "reduction_type": "already_reduced"}}
    return zero


def _cast(out: Tensor | dict, dtype: torch.dtype) -> Any:
    """A loss, or the losses of a ``DoNothingReducer`` dictionary, in ``dtype``."""
    if isinstance(out, dict):
        info = dict(out["loss"])
        info["losses"] = info["losses"].to(dtype)
        return {"loss": info}
    return out.to(dtype)


def _arange(like: Tensor) -> Tensor:
    return torch.arange(like.shape[0], device=like.device)


def _has_negative(labels: Tensor | None, ref_labels: Tensor | None) -> Tensor | bool:
    """Whether some anchor has a reference of another label, as a 0-d tensor (``True``
    without labels)."""
    if labels is None:
        return True
    if ref_labels is None:
        return (labels != labels[0]).any()
    return (labels != ref_labels[0]).any() | (ref_labels != ref_labels[0]).any()


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
            z = _features("embeddings", embeddings, _min_rows(self.gather))
            labels = _labels("labels", labels, z.shape[0])
            if ref_labels is not None:
                raise ValueError("ref_labels was given without ref_emb: pass both, or neither")
            return SeparableScores(
                z, z, "cosine", self.temperature, gather=self.gather, labels=labels, exclude="self"
            )
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
            _labels("labels", labels, 1)
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
        nce = _nce_loss(s)  # one process: formed row by row
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


def _pml_reference(
    embeddings: Any, labels: Any, ref_emb: Any, ref_labels: Any, need_labels: bool = True
) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None]:
    """pytorch-metric-learning's anchors and references: ``(z, labels, ref, ref_labels)``,
    ``ref`` the embeddings themselves when ``ref_emb`` is None (``ref_labels`` are then the
    labels)."""
    z = _features("embeddings", embeddings, 1)
    lab = _labels("labels", labels, z.shape[0]) if need_labels or labels is not None else None
    if ref_emb is None:
        if ref_labels is not None:
            raise ValueError("ref_labels was given without ref_emb: pass both, or neither")
        return z, lab, z, lab
    r = _features("ref_emb", ref_emb, 1)
    _checks.check_same_last_dim("embeddings", z, "ref_emb", r)
    rl = None
    if need_labels or ref_labels is not None:
        rl = _labels("ref_labels", ref_labels, r.shape[0])
    return z, lab, r, rl


def _listed_pairs(indices_tuple: Any, n: int, m: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A miner's ``(a, p, n)`` triplets or ``(a1, p, a2, n)`` pairs as ``(a1, p, a2, n)``
    (a triplet lists the pair ``(a, p)`` and the pair ``(a, n)``), checked against ``n``
    anchors and ``m`` references."""
    if not isinstance(indices_tuple, (tuple, list)) or len(indices_tuple) not in (3, 4):
        got = type(indices_tuple).__name__
        if isinstance(indices_tuple, (tuple, list)):
            got += f" of length {len(indices_tuple)}"
        raise ValueError(
            "indices_tuple must be a miner's (anchors, positives, negatives) triplets or "
            f"(anchors1, positives, anchors2, negatives) pairs, got {got}"
        )
    names = ("a", "p", "n") if len(indices_tuple) == 3 else ("a1", "p", "a2", "n")
    out = []
    for k, (name, t) in enumerate(zip(names, indices_tuple, strict=True)):
        label = f"indices_tuple[{k}] ({name})"
        if not isinstance(t, Tensor) or t.dim() != 1 or t.is_floating_point():
            got = type(t).__name__
            if isinstance(t, Tensor):
                got = f"shape {tuple(t.shape)}, {t.dtype}"
            raise TypeError(f"{label} must be a 1-D integer tensor of indices, got {got}")
        size = n if name.startswith("a") else m
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= size):
            raise ValueError(
                f"{label} must hold indices in [0, {size}), got values in "
                f"[{int(t.min())}, {int(t.max())}]"
            )
        out.append(t.long())
    if len(out) == 3:
        out = [out[0], out[1], out[0], out[2]]
    for (x, y), what in (((0, 1), "positive"), ((2, 3), "negative")):
        if out[x].shape != out[y].shape:
            raise ValueError(
                f"indices_tuple: the {what} pairs' anchor and partner index tensors must have "
                f"the same length, got {out[x].shape[0]} and {out[y].shape[0]}"
            )
    a1, p, a2, neg = out
    return a1, p, a2, neg


def _pair_scores(
    z: Tensor, r: Tensor, rows: Tensor, cols: Tensor, tau: Any, dist: _Distance = _COSINE
) -> Tensor:
    """The scores of the listed pairs ``(rows[k], cols[k])`` (``z``, ``r`` prepared for the
    distance), in the accumulation dtype: similarity over ``tau``, or minus an Lp distance."""
    a, b = upcast(z)[rows], upcast(r)[cols]
    if dist.kind == "lp":
        return -(torch.linalg.vector_norm(a - b, ord=dist.p, dim=-1) ** dist.power) / tau
    return (a * b).sum(-1) / tau


def _scatter_logsumexp(values: Tensor, index: Tensor, size: int) -> Tensor:
    r"""Per index ``0..size-1``, the log-sum-exp of the ``values`` listed under it
    (:math:`-\infty` with a zero gradient where none is)."""
    top = values.new_full((size,), -math.inf).scatter_reduce(
        0, index, values.detach(), "amax", include_self=True
    )
    shift = torch.where(torch.isfinite(top), top, 0.0)
    total = values.new_zeros(size).index_add(0, index, torch.exp(values - shift[index]))
    some = total > 0
    return torch.where(some, torch.log(torch.where(some, total, 1.0)) + shift, -math.inf)


def _listed_supcon(
    tau: Any, embeddings: Any, labels: Any, indices_tuple: Any, ref_emb: Any,
    dist: _Distance = _COSINE,
) -> Tensor:  # fmt: skip
    """SupCon's per-anchor losses on a miner's pairs, ``(N,)`` (0 without a positive)."""
    z, _, r, _ = _pml_reference(embeddings, labels, ref_emb, None, need_labels=False)
    a1, p, a2, neg = _listed_pairs(indices_tuple, z.shape[0], r.shape[0])
    n, m = z.shape[0], r.shape[0]
    zn, rn = _prepared(dist, z), _prepared(dist, r)
    pos_key = torch.unique(a1 * m + p)  # each listed pair once (the masks of the dense loss)
    cand_key = torch.unique(torch.cat([pos_key, a2 * m + neg]))
    ca, cc = cand_key // m, cand_key % m
    log_den = _scatter_logsumexp(_pair_scores(zn, rn, ca, cc, tau, dist), ca, n)
    pa, pp = pos_key // m, pos_key % m
    log_prob = _pair_scores(zn, rn, pa, pp, tau, dist) - log_den[pa]
    count = torch.zeros(n, dtype=log_prob.dtype, device=z.device).index_add(
        0, pa, torch.ones_like(log_prob)
    )
    total = torch.zeros_like(count).index_add(0, pa, log_prob)
    return -total / count.clamp_min(1)


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
        losses = F.softplus(log_neg[a] - s_pos)  # log(e^s + sum_neg e^t) - s
        if self.reducer is not None:
            return _cast(_pml_reduce(self.reducer, losses, a, p, n, z), z.dtype)
        loss = losses.mean() if self.reduction == "mean" else _reduce(losses, self.reduction)
        return loss.to(z.dtype)


def _label_pairs(labels: Tensor, ref_labels: Tensor, own: bool) -> tuple[Tensor, Tensor]:
    """The positive pairs ``(a, p)``, equal labels (``p != a`` when ``own``), a panel of
    anchors at a time (no ``N x M`` mask)."""
    n, m = labels.shape[0], ref_labels.shape[0]
    rows = panel_rows(m, get_memory_budget(labels.device), buffers=1)
    anchors, partners = [], []
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        same = labels[r0:r1, None] == ref_labels[None, :]
        if own:
            idx = torch.arange(r0, r1, device=labels.device)
            same[idx - r0, idx] = False
        a, p = same.nonzero(as_tuple=True)
        anchors.append(a + r0)
        partners.append(p)
    return torch.cat(anchors), torch.cat(partners)


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
