"""Slow, obviously-correct loop implementations of every bound, for tests only.

Each function takes a single ``(N, N)`` score matrix (``S[i][j] = T(x_i, y_j)``) and computes the
definition literally with Python loops over scalar torch ops, so autograd works through it.
Nothing here is clever: no masking tricks, no shared helpers with the library.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _exp(t: Tensor) -> Tensor:
    return torch.exp(t)


def infonce(s: Tensor, symmetric: bool = False) -> Tensor:
    n = s.shape[0]
    rows = []
    for i in range(n):
        denom = sum(_exp(s[i, j]) for j in range(n))
        rows.append(s[i, i] - torch.log(denom) + math.log(n))
    row_bound = sum(rows) / n
    if not symmetric:
        return row_bound
    cols = []
    for j in range(n):
        denom = sum(_exp(s[i, j]) for i in range(n))
        cols.append(s[j, j] - torch.log(denom) + math.log(n))
    return 0.5 * (row_bound + sum(cols) / n)


def _pairs(n: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(n) for j in range(n) if i != j]


def tuba(s: Tensor, log_baseline: Tensor | None = None) -> Tensor:
    n = s.shape[0]
    b = torch.zeros(n, dtype=s.dtype) if log_baseline is None else log_baseline
    joint = sum(s[i, i] - b[i] for i in range(n)) / n
    marg = sum(_exp(s[i, j] - b[j]) for i, j in _pairs(n)) / (n * (n - 1))
    return 1 + joint - marg


def nwj(s: Tensor) -> Tensor:
    n = s.shape[0]
    joint = sum(s[i, i] for i in range(n)) / n
    marg = sum(_exp(s[i, j]) for i, j in _pairs(n)) / (n * (n - 1))
    return joint - marg / math.e


def dv(s: Tensor) -> Tensor:
    n = s.shape[0]
    joint = sum(s[i, i] for i in range(n)) / n
    marg = sum(_exp(s[i, j]) for i, j in _pairs(n)) / (n * (n - 1))
    return joint - torch.log(marg)


def js_objective(s: Tensor) -> Tensor:
    """The f-GAN Jensen-Shannon training objective (gradient of js and smile)."""
    n = s.shape[0]
    sp = torch.nn.functional.softplus
    joint = sum(-sp(-s[i, i]) for i in range(n)) / n
    marg = sum(sp(s[i, j]) for i, j in _pairs(n)) / (n * (n - 1))
    return joint - marg


def smile_value(s: Tensor, clip: float | None) -> Tensor:
    n = s.shape[0]
    joint = sum(s[i, i] for i in range(n)) / n
    c = s if clip is None else torch.clamp(s, -clip, clip)
    marg = sum(_exp(c[i, j]) for i, j in _pairs(n)) / (n * (n - 1))
    return joint - torch.log(marg)


def interpolated(s: Tensor, log_baseline: Tensor | None, alpha: float) -> Tensor:
    """Poole et al. (2019) Eq. 11 with K = N - 1 samples, baselines per y, leave-one-out."""
    n = s.shape[0]
    b = torch.zeros(n, dtype=s.dtype) if log_baseline is None else log_baseline

    def a(y: int, leave_out: int) -> Tensor:
        # alpha * (1/K) sum_{k != leave_out} e^{T(x_k, y)} + (1 - alpha) e^{b(y)}
        m = sum(_exp(s[k, y]) for k in range(n) if k != leave_out) / (n - 1)
        return alpha * m + (1 - alpha) * _exp(b[y])

    joint = sum(s[j, j] - torch.log(a(j, i)) for i, j in _pairs(n)) / (n * (n - 1))
    marg = sum(_exp(s[i, j]) / a(j, j) for i, j in _pairs(n)) / (n * (n - 1))
    return 1 + joint - marg


def fmi(s: Tensor, activation, conjugate) -> Tensor:  # type: ignore[no-untyped-def]
    n = s.shape[0]
    joint = sum(activation(s[i, i]) for i in range(n)) / n
    marg = sum(conjugate(activation(s[i, j])) for i, j in _pairs(n)) / (n * (n - 1))
    return joint - marg


def concat_critic(net: torch.nn.Module, x: Tensor, y: Tensor) -> Tensor:
    n = x.shape[0]
    out = torch.empty(n, n, dtype=x.dtype)
    for i in range(n):
        for j in range(n):
            out[i, j] = net(torch.cat([x[i], y[j]])).squeeze()
    return out


def gaussian_log_q(mu_i: Tensor, logvar_i: Tensor, y_j: Tensor) -> Tensor:
    """log N(y_j; mu_i, diag exp(logvar_i)), written out."""
    total = torch.zeros((), dtype=mu_i.dtype)
    for k in range(mu_i.shape[0]):
        var = torch.exp(logvar_i[k])
        total = total - 0.5 * ((y_j[k] - mu_i[k]) ** 2 / var + logvar_i[k] + math.log(2 * math.pi))
    return total


def club(mu: Tensor, logvar: Tensor, y: Tensor) -> Tensor:
    """The O(N^2 d) definition: mean_i log q(y_i|x_i) - mean_{i,j} log q(y_j|x_i)."""
    n = mu.shape[0]
    logvar = logvar.expand_as(mu)
    pos = sum(gaussian_log_q(mu[i], logvar[i], y[i]) for i in range(n)) / n
    neg = sum(gaussian_log_q(mu[i], logvar[i], y[j]) for i in range(n) for j in range(n)) / n**2
    return pos - neg


def club_sample(mu: Tensor, logvar: Tensor, y: Tensor, perm: list[int]) -> Tensor:
    n = mu.shape[0]
    logvar = logvar.expand_as(mu)
    return (
        sum(
            gaussian_log_q(mu[i], logvar[i], y[i]) - gaussian_log_q(mu[i], logvar[i], y[perm[i]])
            for i in range(n)
        )
        / n
    )


def l1out(log_q: Tensor) -> Tensor:
    n = log_q.shape[0]
    total = torch.zeros((), dtype=log_q.dtype)
    for j in range(n):
        mixture = sum(torch.exp(log_q[i, j]) for i in range(n) if i != j) / (n - 1)
        total = total + log_q[j, j] - torch.log(mixture)
    return total / n


def nce_club(s: Tensor) -> Tensor:
    n = s.shape[0]
    pos = sum(s[i, i] for i in range(n)) / n
    allp = sum(s[i, j] for i in range(n) for j in range(n)) / n**2
    return pos - allp


# --- pairings: explicit positive and candidate sets per row -----------------------------------


def row_sets(
    n: int, m: int, labels=None, y_labels=None, exclude: str = "none"
) -> tuple[list[list[int]], list[list[int]]]:
    """Per row, the list of positive columns and the list of negative columns, spelled out."""
    if labels is not None and y_labels is None:
        y_labels = labels
    positives, negatives = [], []
    for i in range(n):
        pos, neg = [], []
        for j in range(m):
            if exclude == "self" and j == i:
                continue
            if exclude == "batch" and j < n and j != i:
                continue
            same = (int(labels[i]) == int(y_labels[j])) if labels is not None else (j == i)
            (pos if same else neg).append(j)
        positives.append(pos)
        negatives.append(neg)
    return positives, negatives


def _mean(values: list) -> Tensor:
    return sum(values) / len(values)


def paired_infonce(s: Tensor, positives, negatives) -> Tensor:
    """Mean over rows with positives of [mean_p S_ip - log sum_{candidates} e^S + log #cand]."""
    terms = []
    for i, (pos, neg) in enumerate(zip(positives, negatives, strict=True)):
        if not pos:
            continue
        cand = pos + neg
        denom = sum(_exp(s[i, j]) for j in cand)
        terms.append(_mean([s[i, p] for p in pos]) - torch.log(denom) + math.log(len(cand)))
    return _mean(terms)


def _joint(s: Tensor, positives, fn) -> Tensor:
    return _mean([_mean([fn(s[i, p]) for p in pos]) for i, pos in enumerate(positives) if pos])


def _marginal(s: Tensor, negatives, fn) -> Tensor:
    return _mean([_mean([fn(s[i, j]) for j in neg]) for i, neg in enumerate(negatives) if neg])


def paired_nwj(s: Tensor, positives, negatives) -> Tensor:
    return _joint(s, positives, lambda v: v) - _marginal(s, negatives, lambda v: _exp(v - 1))


def paired_dv(s: Tensor, positives, negatives) -> Tensor:
    return _joint(s, positives, lambda v: v) - torch.log(_marginal(s, negatives, _exp))


def paired_js_objective(s: Tensor, positives, negatives) -> Tensor:
    sp = torch.nn.functional.softplus
    return _joint(s, positives, lambda v: -sp(-v)) - _marginal(s, negatives, sp)


def paired_fmi(s: Tensor, positives, negatives, activation, conjugate) -> Tensor:
    joint = _joint(s, positives, activation)
    return joint - _marginal(s, negatives, lambda v: conjugate(activation(v)))


# --- the contrastive losses, written as each library writes them -------------------------------


def openclip_clip_loss(
    u: Tensor,
    v: Tensor,
    logit_scale: Tensor,
    logit_bias: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """OpenCLIP ClipLoss (one process): cross-entropy of both logit directions, averaged; an
    optional bias is added to every logit. ``reduction="none"``: per pair i, the average of
    image i's and text i's cross-entropies."""
    logits = logit_scale * u @ v.T
    if logit_bias is not None:
        logits = logits + logit_bias
    target = torch.arange(u.shape[0])
    ce = torch.nn.functional.cross_entropy
    return (ce(logits, target, reduction=reduction) + ce(logits.T, target, reduction=reduction)) / 2


def openclip_siglip_loss(
    u: Tensor, v: Tensor, logit_scale: Tensor, logit_bias: Tensor | None, per_image: bool = False
) -> Tensor:
    """OpenCLIP SigLipLoss (one process): -sum log sigmoid(labels * logits) / N (no bias when
    ``logit_bias`` is None); ``per_image``: the sum over each image's row."""
    logits = logit_scale * u @ v.T
    if logit_bias is not None:
        logits = logits + logit_bias
    labels = 2 * torch.eye(u.shape[0], dtype=u.dtype) - 1
    rows = -torch.nn.functional.logsigmoid(labels * logits).sum(1)
    return rows if per_image else rows.sum() / u.shape[0]


def lightly_ntxent(out0: Tensor, out1: Tensor, temperature, reduction: str = "mean") -> Tensor:
    """lightly's NTXentLoss without memory bank, one process: blocks of logits without the
    self-similarities, cross-entropy against the other view."""
    b = out0.shape[0]
    out0 = torch.nn.functional.normalize(out0, dim=1)
    out1 = torch.nn.functional.normalize(out1, dim=1)
    l00 = out0 @ out0.T / temperature
    l01 = out0 @ out1.T / temperature
    l10 = out1 @ out0.T / temperature
    l11 = out1 @ out1.T / temperature
    off = ~torch.eye(b, dtype=torch.bool)
    l00 = l00[off].view(b, -1)
    l11 = l11[off].view(b, -1)
    logits = torch.cat([torch.cat([l01, l00], 1), torch.cat([l10, l11], 1)], 0)
    labels = torch.arange(b).repeat(2)
    return torch.nn.functional.cross_entropy(logits, labels, reduction=reduction)


def supcon_loss(
    z: Tensor,
    labels: Tensor,
    temperature,
    ref: Tensor | None = None,
    ref_labels: Tensor | None = None,
    per_anchor: bool = False,
    distance: tuple = ("cosine",),
    normalize: bool = True,
) -> Tensor:
    """Khosla et al.'s L_out, anchor by anchor, on cosine similarities (or ``distance`` as in
    :func:`pair_score`); with ``ref``, every reference is a candidate of every anchor
    (pytorch-metric-learning's ref_emb). ``per_anchor``: the ``(N,)`` losses, 0 for an anchor
    without a positive."""
    own = ref is None
    z, r = _pml_vectors(z, ref, normalize)
    rl = labels if own else ref_labels
    losses = []
    for a in range(z.shape[0]):
        others = [k for k in range(r.shape[0]) if not (own and k == a)]
        pos = [p for p in others if int(rl[p]) == int(labels[a])]
        if not pos:
            losses.append(None)
            continue
        s = [pair_score(z[a], r[k], temperature, distance) for k in others]
        log_denom = torch.logsumexp(torch.stack(s), 0)
        losses.append(
            _mean([-(pair_score(z[a], r[p], temperature, distance) - log_denom) for p in pos])
        )
    if per_anchor:
        return torch.stack([z.sum() * 0 if v is None else v for v in losses])
    counted = [v for v in losses if v is not None]
    return _mean(counted) if counted else z.sum() * 0


def pair_score(a: Tensor, b: Tensor, temperature, distance: tuple = ("cosine",)) -> Tensor:
    """pytorch-metric-learning's score of one pair over the temperature: the cosine or dot
    similarity (of the vectors as given), or minus the Lp distance to a power,
    ``distance = ("lp", p, power)``."""
    if distance[0] == "lp":
        _, p, power = distance
        return -((torch.sum(torch.abs(a - b) ** p) ** (1.0 / p)) ** power) / temperature
    return a @ b / temperature


def _pml_vectors(z: Tensor, ref: Tensor | None, normalize: bool) -> tuple[Tensor, Tensor]:
    if normalize:
        z = torch.nn.functional.normalize(z, dim=1)
        ref = None if ref is None else torch.nn.functional.normalize(ref, dim=1)
    return z, (z if ref is None else ref)


def pml_ntxent(
    z: Tensor,
    labels: Tensor | None,
    temperature,
    ref: Tensor | None = None,
    ref_labels: Tensor | None = None,
    pairs: tuple | None = None,
    distance: tuple = ("cosine",),
    normalize: bool = True,
) -> Tensor:
    """pytorch-metric-learning's NTXentLoss, pair by pair: the losses of the positive pairs
    ``-log(e^{s_ap} / (e^{s_ap} + sum over the anchor's negative pairs e^{s_an}))``, in
    (anchor, reference) order, or of the listed ``pairs = (a1, p, a2, n)``; ``distance`` as
    in :func:`pair_score`, on normalised vectors unless ``normalize`` is False."""
    own = ref is None
    z, r = _pml_vectors(z, ref, normalize)
    if pairs is None:
        rl = labels if own else ref_labels
        pos, neg = [], []
        for a in range(z.shape[0]):
            for k in range(r.shape[0]):
                if int(labels[a]) != int(rl[k]):
                    neg.append((a, k))
                elif not (own and a == k):
                    pos.append((a, k))
    else:
        a1, p, a2, n = (t.tolist() for t in pairs)
        pos, neg = list(zip(a1, p, strict=True)), list(zip(a2, n, strict=True))
    losses = []
    for a, p in pos:
        s_ap = pair_score(z[a], r[p], temperature, distance)
        terms = [s_ap] + [pair_score(z[a], r[k], temperature, distance) for b, k in neg if b == a]
        losses.append(torch.logsumexp(torch.stack(terms), 0) - s_ap)
    return torch.stack(losses) if losses else z.new_zeros(0)


def pml_reduce(losses: Tensor, reducer: str, anchors: list[int] | None = None, n: int = 0):
    """pytorch-metric-learning's reducers, written out: ``"mean"``; ``"avg_non_zero"`` (the
    mean of the positive losses, 0 if none); ``"per_anchor"`` / ``"per_anchor_avg_non_zero"``
    (each anchor's mean pair loss, 0 for an anchor without pairs, ``anchors`` listing the
    anchor of each loss, then the mean or the non-zero mean over the ``n`` anchors)."""
    if reducer.startswith("per_anchor"):
        assert anchors is not None
        per = []
        for a in range(n):
            mine = [losses[k] for k, b in enumerate(anchors) if b == a]
            per.append(_mean(mine) if mine else losses.sum() * 0)
        losses = torch.stack(per)
        reducer = reducer[len("per_anchor_") :] or "mean"
    if reducer == "avg_non_zero":
        kept = [v for v in losses if float(v.detach()) > 0]
        return _mean(kept) if kept else losses.sum() * 0
    return losses.mean()


def pml_supcon_listed(z: Tensor, temperature, pairs: tuple, ref: Tensor | None = None) -> Tensor:
    """pytorch-metric-learning's SupConLoss on a miner's pairs ``(a1, p, a2, n)``: masks of
    the listed positive and negative pairs; per anchor, minus the mean over its positives of
    the log-probability among its listed pairs; ``(N,)``, 0 without a positive."""
    z = torch.nn.functional.normalize(z, dim=1)
    r = z if ref is None else torch.nn.functional.normalize(ref, dim=1)
    a1, p, a2, n = (t.tolist() for t in pairs)
    pos, cand = set(zip(a1, p, strict=True)), set(zip(a2, n, strict=True))
    cand |= pos
    out = []
    for a in range(z.shape[0]):
        mine = sorted(k for b, k in pos if b == a)
        if not mine:
            out.append(z.sum() * 0)
            continue
        log_den = torch.logsumexp(
            torch.stack([z[a] @ r[k] / temperature for b, k in sorted(cand) if b == a]), 0
        )
        out.append(_mean([-(z[a] @ r[k] / temperature - log_den) for k in mine]))
    return torch.stack(out)


def moco_loss(q: Tensor, k: Tensor, queue: Tensor, temperature, reduction: str = "mean") -> Tensor:
    """MoCo's logits: [positive, queue negatives] / T, cross-entropy with label 0."""
    l_pos = (q * k).sum(1, keepdim=True)
    l_neg = q @ queue.T
    logits = torch.cat([l_pos, l_neg], 1) / temperature
    target = torch.zeros(q.shape[0], dtype=torch.long)
    return torch.nn.functional.cross_entropy(logits, target, reduction=reduction)


def lightly_ntxent_bank(out0: Tensor, out1: Tensor, bank: Tensor, temperature) -> Tensor:
    """lightly's NTXentLoss with a memory bank: normalised views; each out0 row against its
    out1 row (label 0) and the ``(K, d)`` bank's entries, cross-entropy averaged over rows."""
    a = torch.nn.functional.normalize(out0, dim=1)
    b = torch.nn.functional.normalize(out1, dim=1)
    total = a.new_zeros(())
    for i in range(a.shape[0]):
        pos = (a[i] * b[i]).sum() / temperature
        negs = [(a[i] * bank[k]).sum() / temperature for k in range(bank.shape[0])]
        logits = torch.stack([pos, *negs])
        total = total - (pos - torch.logsumexp(logits, 0))
    return total / a.shape[0]
