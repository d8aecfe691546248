"""What pytorch-metric-learning's losses take besides the embeddings, mapped onto mibounds:
its distance objects (as scores), its reducers (as reductions), the pairs a miner lists, and
the per-anchor terms of SupCon."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from mibounds import _checks
from mibounds._dtypes import upcast
from mibounds.contrastive._common import (
    _anchor_losses,
    _features,
    _reduction,
)
from mibounds.kernels.panels import get_memory_budget, panel_rows
from mibounds.scores import SeparableScores


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


def _pml_reference(
    embeddings: Any, labels: Any, ref_emb: Any, ref_labels: Any, need_labels: bool = True
) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None]:
    """pytorch-metric-learning's anchors and references: ``(z, labels, ref, ref_labels)``,
    ``ref`` the embeddings themselves when ``ref_emb`` is None (``ref_labels`` are then the
    labels)."""
    z = _features("embeddings", embeddings, 1)
    lab = None
    if need_labels or labels is not None:
        lab = _checks.check_labels_of("labels", labels, z.shape[0])
    if ref_emb is None:
        if ref_labels is not None:
            raise ValueError("ref_labels was given without ref_emb: pass both, or neither")
        return z, lab, z, lab
    r = _features("ref_emb", ref_emb, 1)
    _checks.check_same_last_dim("embeddings", z, "ref_emb", r)
    rl = None
    if need_labels or ref_labels is not None:
        rl = _checks.check_labels_of("ref_labels", ref_labels, r.shape[0])
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
    # index_select, not indexing: its gradient is summed in a fixed order (reproducible)
    a, b = upcast(z).index_select(0, rows), upcast(r).index_select(0, cols)
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
