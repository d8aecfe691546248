r"""Functional lower bounds on mutual information.

Every function takes scores ``S[..., i, j] = T(x_i, y_j)`` (a dense ``(..., N, N)`` tensor or a
:class:`~mibounds.scores.SeparableScores`) with the positive pairs on the diagonal, and returns
the **estimate** in nats (higher means more information), one per leading batch index. The
product of marginals :math:`p(x)p(y)` is sampled by the off-diagonal pairs :math:`i \ne j`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mibounds import _checks
from mibounds.distributed import GroupArg
from mibounds.divergences import FDivergence, activation_name, get_divergence, streaming_name
from mibounds.reductions import (
    BatchStatistics,
    Scores,
    SeparableBatch,
    batch_statistics,
    col_logsumexp,
    diagonal,
    is_plain,
    log_count,
    offdiag_logmeanexp,
    offdiag_mean,
    offdiag_row_mean,
    prepare,
    reduce_terms,
    row_logsumexp,
    separable_rows,
)
from mibounds.scores import SeparableScores

__all__ = ["dv", "fmi", "infonce", "interpolated", "js", "mine", "nwj", "smile", "tuba"]


def _finish(value: Tensor, st: BatchStatistics, reduction: str = "mean") -> Tensor:
    if reduction == "sum":
        value = value * st.n_terms()
    return value.to(st.dtype)


def _lower_difference(a: Tensor, b: Tensor) -> Tensor:
    """``a - b`` for the two terms of a lower bound, with -inf where both are infinite with
    the same sign: the terms overflowed and cancel, and -inf is the only value that is
    still a valid lower bound (never NaN)."""
    return torch.where(torch.isinf(a) & (a == b), -math.inf, a - b)


def _with_gradient_of(value: Tensor, objective: Tensor) -> Tensor:
    """A tensor whose value is ``value`` and whose gradient is that of ``objective``."""
    return value.detach() + (objective - objective.detach())


def _log_baseline(log_baseline: Tensor | None, s: Tensor) -> Tensor:
    if log_baseline is None:
        return s.new_zeros(s.shape[:-1])
    target = s.shape[:-2] + s.shape[-1:]
    b = _checks.check_broadcast("log_baseline", log_baseline, target, "the per-y shape (..., N)")
    return b.to(s.dtype).expand(target)


def infonce(
    scores: Scores, *, symmetric: bool = False, reduction: str = "mean", gather: GroupArg = False
) -> Tensor:
    r"""InfoNCE (contrastive predictive coding) lower bound.

    .. math::

        I_\mathrm{NCE} = \frac{1}{N}\sum_{i=1}^N \Big[S_{ii} - \log \sum_{j=1}^N e^{S_{ij}}\Big]
        + \log N \;\le\; \min(I(X;Y), \log N) \text{ in expectation.}

    Each x is classified against all N candidates y (the positive included). With
    ``symmetric=True`` the column version (each y against all x) is averaged in, as in CLIP.

    Args:
        scores: ``(..., N, N)`` scores or :class:`~mibounds.scores.SeparableScores`.
        symmetric: average the row-wise and column-wise bounds.
        reduction: ``"mean"`` (the bound), ``"sum"`` or ``"none"`` (per-sample terms
            ``(..., N)``) over the N samples.
        gather: ``True`` or a process group: negatives from every rank, and the value of the
            concatenated batch (see :mod:`mibounds.distributed`); dense scores are then this
            rank's rows against every rank's columns, ``(..., N_local, N)``.

    Returns:
        The estimate in nats, shape ``(...)`` (or ``(..., N)`` with ``reduction="none"``).

    Raises:
        TypeError: non-tensor or integer scores.
        ValueError: non-square or ``N < 2`` scores, NaN/Inf scores (while validation is on), an
            unknown reduction.

    Example:
        >>> import torch, mibounds
        >>> mibounds.infonce(torch.eye(4) * 100.0)  # perfect critic: saturates at log 4
        tensor(1.3863)

    References:
        van den Oord, Li, Vinyals. "Representation Learning with Contrastive Predictive
        Coding." arXiv 2018. Poole, Ozair, van den Oord, Alemi, Tucker. "On Variational Bounds
        of Mutual Information." ICML 2019.
    """
    reduction = _checks.check_reduction(reduction)
    _checks.check_bool("symmetric", symmetric)
    if reduction == "none" and (rows := separable_rows(scores, gather)) is not None:
        return rows.nce_rows(symmetric)
    st = batch_statistics(scores, gather, reduction)
    if isinstance(st, SeparableBatch):
        # log|C| - (log-sum-exp - positives), the second formed row by row (no cancellation)
        return _finish(st.nce_log_count(symmetric) - st.nce_loss(symmetric), st, reduction)
    if st is not None:
        joint = st.joint()
        if symmetric:
            joint = 0.5 * (joint + st.joint_columns())
        return _finish(joint - st.lse_term(symmetric), st, reduction)
    s, out_dtype = prepare(scores)
    n = s.shape[-1]
    pos = diagonal(s)
    terms = pos - row_logsumexp(s)
    if symmetric:
        terms = 0.5 * (terms + pos - col_logsumexp(s))
    return reduce_terms(terms + log_count(n, terms), reduction).to(out_dtype)


def tuba(
    scores: Scores,
    log_baseline: Tensor | None = None,
    *,
    reduction: str = "mean",
    gather: GroupArg = False,
) -> Tensor:
    r"""Tractable unnormalised Barber-Agakov (TUBA) lower bound.

    With a baseline :math:`a(y) = e^{b(y)}` (``log_baseline`` holds :math:`b(y_j)` per column):

    .. math::

        I_\mathrm{TUBA} = 1 + \frac{1}{N}\sum_i \big[S_{ii} - b(y_i)\big]
        - \frac{1}{N(N-1)}\sum_{i\ne j} e^{S_{ij} - b(y_j)}.

    It is unbiased and tight at :math:`S = \log p(y|x)/p(y) + b(y)`. Contains
    :math:`e^{S}`: very large scores give ``-inf`` (never NaN).

    Args:
        scores: ``(..., N, N)`` scores or :class:`~mibounds.scores.SeparableScores`.
        log_baseline: :math:`b(y_j)`, broadcastable to ``(..., N)``; zero if omitted (not
            supported with ``gather``).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over the per-sample (per-row) terms.
        gather: ``True`` or a process group: negatives from every rank, and the value of the
            concatenated batch (see :mod:`mibounds.distributed`); dense scores are then this
            rank's rows against every rank's columns, ``(..., N_local, N)``.

    Returns:
        The estimate in nats, shape ``(...)`` (``(..., N)`` with ``reduction="none"``).

    Raises:
        TypeError, ValueError: as :func:`infonce`; a ``log_baseline`` of the wrong shape.

    Example:
        >>> import torch, mibounds
        >>> mibounds.tuba(torch.zeros(3, 3))  # independent: 1 + 0 - 1
        tensor(0.)

    References:
        Poole, Ozair, van den Oord, Alemi, Tucker. "On Variational Bounds of Mutual
        Information." ICML 2019.
    """
    reduction = _checks.check_reduction(reduction)
    if log_baseline is not None and gather:
        raise ValueError("tuba: log_baseline is not supported with gather")
    st = batch_statistics(scores, gather, reduction) if log_baseline is None else None
    if st is not None:
        _, marginal = st.offdiag_means("exp")
        return _finish(1 + st.joint() - marginal, st, reduction)
    s, out_dtype = prepare(scores)
    b = _log_baseline(log_baseline, s)
    shifted = s - b[..., None, :]
    terms = 1 + diagonal(shifted) - offdiag_row_mean(shifted, torch.exp)
    return reduce_terms(terms, reduction).to(out_dtype)


def nwj(scores: Scores, *, reduction: str = "mean", gather: GroupArg = False) -> Tensor:
    r"""Nguyen-Wainwright-Jordan (NWJ, f-GAN KL, MINE-f) lower bound.

    .. math::

        I_\mathrm{NWJ} = \frac{1}{N}\sum_i S_{ii}
        - \frac{1}{e}\,\frac{1}{N(N-1)}\sum_{i\ne j} e^{S_{ij}},

    i.e. :func:`tuba` of :math:`S - 1`. Unbiased, tight at :math:`S = 1 + \log p(y|x)/p(y)`,
    high variance. Contains :math:`e^S`: very large scores give ``-inf`` (never NaN).

    Args:
        scores: ``(..., N, N)`` scores or :class:`~mibounds.scores.SeparableScores`.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over the per-sample (per-row) terms.
        gather: ``True`` or a process group: negatives from every rank, and the value of the
            concatenated batch (see :mod:`mibounds.distributed`); dense scores are then this
            rank's rows against every rank's columns, ``(..., N_local, N)``.

    Returns:
        The estimate in nats, shape ``(...)`` (``(..., N)`` with ``reduction="none"``).

    Raises:
        TypeError, ValueError: as :func:`infonce`.

    Example:
        >>> import torch, mibounds
        >>> mibounds.nwj(torch.ones(3, 3))  # 1 - e^1 / e
        tensor(0.)

    References:
        Nguyen, Wainwright, Jordan. "Estimating Divergence Functionals and the Likelihood Ratio
        by Convex Risk Minimization." IEEE Trans. Inf. Theory 2010. Poole et al., ICML 2019.
    """
    reduction = _checks.check_reduction(reduction)
    st = batch_statistics(scores, gather, reduction)
    if st is not None:
        _, marginal = st.offdiag_means("exp", shift=-1.0)
        return _finish(st.joint() - marginal, st, reduction)
    s, out_dtype = prepare(scores)
    terms = diagonal(s) - offdiag_row_mean(s, lambda t: torch.exp(t - 1))
    return reduce_terms(terms, reduction).to(out_dtype)


def dv(scores: Scores, *, gather: GroupArg = False) -> Tensor:
    r"""Donsker-Varadhan lower bound.

    .. math::

        I_\mathrm{DV} = \frac{1}{N}\sum_i S_{ii}
        - \log \frac{1}{N(N-1)}\sum_{i\ne j} e^{S_{ij}}.

    Always :math:`\ge` :func:`nwj` on the same scores (:math:`\log z \le z/e`), invariant to a
    constant shift of the scores. Biased in the batch (the log is outside the mean).

    Args:
        scores: ``(..., N, N)`` scores or :class:`~mibounds.scores.SeparableScores`.
        gather: ``True`` or a process group: negatives from every rank, and the value of the
            concatenated batch (see :mod:`mibounds.distributed`); dense scores are then this
            rank's rows against every rank's columns, ``(..., N_local, N)``.

    Returns:
        The estimate in nats, shape ``(...)``.

    Raises:
        TypeError, ValueError: as :func:`infonce`.

    Example:
        >>> import torch, mibounds
        >>> mibounds.dv(torch.eye(3) * 2.0)
        tensor(2.)

    References:
        Donsker, Varadhan. "Asymptotic evaluation of certain Markov process expectations for
        large time." Comm. Pure Appl. Math. 1983. Belghazi et al. "Mutual Information Neural
        Estimation." ICML 2018.
    """
    st = batch_statistics(scores, gather)
    if st is not None:
        return _finish(st.joint() - st.offdiag_logmeanexp(), st)
    s, out_dtype = prepare(scores)
    return (diagonal(s).mean(-1) - offdiag_logmeanexp(s)).to(out_dtype)


def mine(
    scores: Scores,
    log_ema: Tensor | None = None,
    *,
    decay: float = 0.99,
    gather: GroupArg = False,
) -> tuple[Tensor, Tensor]:
    r"""MINE: the Donsker-Varadhan value with a bias-corrected gradient.

    The value is :func:`dv`. The gradient replaces the biased
    :math:`\nabla \log \mathbb{E}_q[e^T]` by :math:`\nabla \mathbb{E}_q[e^T] / m`, where
    :math:`m` is an exponential moving average of :math:`\mathbb{E}_q[e^T]` over batches,
    updated before use:

    .. math::

        m_t = \gamma\, m_{t-1} + (1-\gamma)\,\frac{1}{N(N-1)}\sum_{i\ne j} e^{S_{ij}}.

    The state is carried in log space (``log_ema`` :math:`= \log m`), so it stays finite for
    any finite scores. Pass ``None`` on the first call (the average starts at the batch value).

    Args:
        scores: ``(..., N, N)`` scores or :class:`~mibounds.scores.SeparableScores`.
        log_ema: previous state :math:`\log m_{t-1}`, shape ``(...)``, or ``None``.
        decay: :math:`\gamma` in ``(0, 1)``.
        gather: ``True`` or a process group: negatives from every rank, and the value of the
            concatenated batch (see :mod:`mibounds.distributed`); dense scores are then this
            rank's rows against every rank's columns, ``(..., N_local, N)``.

    Returns:
        ``(estimate, new_log_ema)``: the DV estimate with the MINE gradient, shape ``(...)``,
        and the detached new state :math:`\log m_t` (float32 or float64) to pass next time.

    Raises:
        TypeError, ValueError: as :func:`infonce`; ``decay`` outside (0, 1); ``log_ema`` of the
            wrong shape.

    Example:
        >>> import torch, mibounds
        >>> est, state = mibounds.mine(torch.eye(3) * 2.0)
        >>> est, state
        (tensor(2.), tensor(0.))

    References:
        Belghazi, Baratin, Rajeswar, Ozair, Bengio, Courville, Hjelm. "Mutual Information Neural
        Estimation." ICML 2018.
    """
    gamma = _checks.check_open_unit("decay", decay)
    st = batch_statistics(scores, gather)
    if st is not None:
        lme, pos_mean, out_dtype = st.offdiag_logmeanexp(), st.joint(), st.dtype
    else:
        s, out_dtype = prepare(scores)
        lme, pos_mean = offdiag_logmeanexp(s), diagonal(s).mean(-1)
    batch_lme = lme.detach()
    if log_ema is None:
        new_log_ema = batch_lme
    else:
        old = _checks.check_broadcast("log_ema", log_ema, lme.shape, "the batch shape (...)")
        new_log_ema = torch.logaddexp(
            math.log(gamma) + old.detach().to(lme.dtype), math.log1p(-gamma) + batch_lme
        )
    # exp(lme - log m) <= 1 / (1 - decay): finite for any finite scores.
    ratio = torch.exp(lme - new_log_ema)
    partition = batch_lme + (ratio - ratio.detach())
    estimate = pos_mean - partition
    return estimate.to(out_dtype), new_log_ema


def _js_training_terms(s: Tensor) -> Tensor:
    r"""Per-row f-GAN Jensen-Shannon objective (its optimal critic is :math:`\log r`)."""
    return -F.softplus(-diagonal(s)) - offdiag_row_mean(s, F.softplus)


def js(scores: Scores, *, reduction: str = "mean", gather: GroupArg = False) -> Tensor:
    r"""Jensen-Shannon-trained critic, reported as a KL lower bound.

    The gradient is that of the f-GAN Jensen-Shannon objective

    .. math::

        J = \frac{1}{N}\sum_i -\mathrm{softplus}(-S_{ii})
            - \frac{1}{N(N-1)}\sum_{i \ne j}\mathrm{softplus}(S_{ij}),

    whose maximiser is :math:`S = \log p(y|x)/p(y)`. The **value** is :func:`tuba` (NWJ at
    :math:`1 + S`), which is unbiased at that optimum:
    :math:`1 + \frac{1}{N}\sum_i S_{ii} - \frac{1}{N(N-1)}\sum_{i\ne j} e^{S_{ij}}`.
    (Evaluating NWJ at :math:`S` itself, as the public reference code does, reports
    :math:`I - 1/e` at the optimum.) The value contains :math:`e^S`: very large scores give
    ``-inf``, never NaN; the gradient stays finite.

    Args:
        scores: ``(..., N, N)`` scores or :class:`~mibounds.scores.SeparableScores`.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over the per-sample (per-row) terms.
        gather: ``True`` or a process group: negatives from every rank, and the value of the
            concatenated batch (see :mod:`mibounds.distributed`); dense scores are then this
            rank's rows against every rank's columns, ``(..., N_local, N)``.

    Returns:
        The TUBA value with the Jensen-Shannon gradient, shape ``(...)``.

    Raises:
        TypeError, ValueError: as :func:`infonce`.

    Example:
        >>> import torch, mibounds
        >>> mibounds.js(torch.zeros(3, 3))
        tensor(0.)

    References:
        Nowozin, Cseke, Tomioka. "f-GAN." NeurIPS 2016. Hjelm et al. "Learning deep
        representations by mutual information estimation and maximization." ICLR 2019.
        Poole et al., ICML 2019.
    """
    reduction = _checks.check_reduction(reduction)
    st = batch_statistics(scores, gather, reduction)
    if st is not None:
        # the objective's value cancels below (value + objective - objective.detach()): only
        # its gradient is needed, so the kernel skips the softplus itself
        exp_mean, softplus_mean = st.offdiag_means("softplus", value_fn="exp", grad_value=False)
        assert exp_mean is not None
        value = 1 + st.joint() - exp_mean
        objective = -st.joint("softplus-neg") - softplus_mean
        return _finish(_with_gradient_of(value, objective), st, reduction)
    s, out_dtype = prepare(scores)
    value = reduce_terms(1 + diagonal(s) - offdiag_row_mean(s, torch.exp), reduction)
    objective = reduce_terms(_js_training_terms(s), reduction)
    return _with_gradient_of(value, objective).to(out_dtype)


def smile(scores: Scores, clip: float | None = 5.0, *, gather: GroupArg = False) -> Tensor:
    r"""SMILE: a clipped Donsker-Varadhan value with the Jensen-Shannon gradient.

    .. math::

        I_\mathrm{SMILE} = \frac{1}{N}\sum_i S_{ii}
        - \log \frac{1}{N(N-1)}\sum_{i\ne j} e^{\mathrm{clip}(S_{ij}, -\tau, \tau)}.

    The partition term uses the clipped scores (Song and Ermon 2020), which bounds its variance
    by :math:`e^{2\tau}`; the positive term is not clipped. The gradient is the Jensen-Shannon
    objective's (see :func:`js`). ``clip=None`` reports plain :func:`dv`.

    SMILE is not a strict lower bound: clipping the upper tail shrinks the partition term, so
    at the optimal critic the value can exceed the true MI (with the oracle critic of a
    20-dimensional Gaussian at 2 nats, N = 128 and ``clip=5``: about +0.03 nats). It trades
    that bias for much lower variance than :func:`dv`.

    Args:
        scores: ``(..., N, N)`` scores or :class:`~mibounds.scores.SeparableScores`.
        clip: :math:`\tau > 0`, or ``None`` for no clipping.
        gather: ``True`` or a process group: negatives from every rank, and the value of the
            concatenated batch (see :mod:`mibounds.distributed`); dense scores are then this
            rank's rows against every rank's columns, ``(..., N_local, N)``.

    Returns:
        The SMILE value with the Jensen-Shannon gradient, shape ``(...)``.

    Raises:
        TypeError, ValueError: as :func:`infonce`; a ``clip`` that is not positive.

    Example:
        >>> import torch, mibounds
        >>> mibounds.smile(torch.eye(3) * 10.0, clip=1.0)
        tensor(10.)

    References:
        Song, Ermon. "Understanding the Limitations of Variational Mutual Information
        Estimators." ICLR 2020.
    """
    tau = None if clip is None else _checks.check_positive("clip", clip)
    st = batch_statistics(scores, gather)
    if st is not None:
        if tau is None:
            with torch.no_grad():
                partition = st.offdiag_logmeanexp()
            _, softplus_mean = st.offdiag_means("softplus", grad_value=False)
        else:
            # mean of exp(clip(S) - tau) <= 1 cannot overflow; add tau back after the log
            clipped_mean, softplus_mean = st.offdiag_means(
                "softplus", value_fn="exp-clip", param=tau, grad_value=False
            )
            assert clipped_mean is not None
            partition = torch.log(clipped_mean) + tau
        value = st.joint() - partition
        objective = -st.joint("softplus-neg") - softplus_mean
        return _finish(_with_gradient_of(value, objective), st)
    s, out_dtype = prepare(scores)
    partition_scores = s if tau is None else s.clamp(-tau, tau)
    value = diagonal(s).mean(-1) - offdiag_logmeanexp(partition_scores)
    objective = _js_training_terms(s).mean(-1)
    return _with_gradient_of(value, objective).to(out_dtype)


def _leave_one_out_logmeanexp(s: Tensor) -> Tensor:
    r""":math:`L_{ij} = \log \frac{1}{N-1}\sum_{k \ne i} e^{S_{kj}}` (row i left out of column j).

    Exact in floating point: for every row but a column's maximum the removed term is at most
    half the column sum; the maximum's entry is recomputed with that row masked.
    """
    n = s.shape[-2]
    lse = torch.logsumexp(s, dim=-2, keepdim=True)
    is_max = torch.zeros_like(s, dtype=torch.bool).scatter(-2, s.argmax(dim=-2, keepdim=True), True)
    without_max = torch.logsumexp(s.masked_fill(is_max, -math.inf), dim=-2, keepdim=True)
    rel = (s - lse).masked_fill(is_max, -1.0)
    loo = torch.where(is_max, without_max, lse + torch.log1p(-torch.exp(rel)))
    return loo - log_count(n - 1, loo)


def interpolated(scores: Scores, log_baseline: Tensor | None = None, alpha: float = 0.5) -> Tensor:
    r"""The :math:`\alpha`-interpolated bound of Poole et al. (2019), between NWJ and InfoNCE.

    The baseline of each :math:`y` mixes the multi-sample InfoNCE baseline with a fixed one,
    :math:`a_\alpha(y; x_{1:K}) = \alpha\,\frac{1}{K}\sum_k e^{T(x_k, y)} + (1-\alpha)\,e^{b(y)}`,
    and :math:`I \ge 1 + \mathbb{E}[\log e^{T(x_1,y)}/a_\alpha] - \mathbb{E}[e^{T(x_1,y)}/a_\alpha]`
    (joint, resp. independent, :math:`x_1`). In a batch, with
    :math:`L_{ij}` the log mean of :math:`e^{S_{kj}}` over the :math:`K = N - 1` rows
    :math:`k \ne i` and :math:`A_{ij} = \log(\alpha e^{L_{ij}} + (1-\alpha) e^{b_j})`:

    .. math::

        I_\alpha = 1 + \frac{1}{N(N-1)}\sum_{i \ne j}\big[S_{jj} - A_{ij}\big]
        - \frac{1}{N(N-1)}\sum_{i\ne j} e^{S_{ij} - A_{jj}}.

    The exponent is at most :math:`\log((N-1)/\alpha)`, so the bound is finite for any finite
    scores; it is at most :math:`1 + \log((N-1)/\alpha)`. On
    :class:`~mibounds.scores.SeparableScores` it is streamed in three sweeps (column
    statistics with the exact leave-one-out sums, the sum of :math:`A`, the gradient), without
    the N x N matrix; gathered scores (``gather``) are not supported.

    Args:
        scores: ``(..., N, N)`` scores or :class:`~mibounds.scores.SeparableScores`, ``N >= 3``
            is typical (``N = 2`` is allowed).
        log_baseline: :math:`b(y_j)` broadcastable to ``(..., N)``; zero if omitted.
        alpha: :math:`\alpha \in (0, 1)`: towards 0 NWJ/TUBA-like (low bias, high variance),
            towards 1 InfoNCE-like.

    Returns:
        The estimate in nats, shape ``(...)``.

    Raises:
        TypeError, ValueError: as :func:`infonce`; ``alpha`` outside (0, 1); a
            ``log_baseline`` of the wrong shape.

    Example:
        >>> import torch, mibounds
        >>> mibounds.interpolated(torch.zeros(4, 4), alpha=0.5)
        tensor(0.)

    References:
        Poole, Ozair, van den Oord, Alemi, Tucker. "On Variational Bounds of Mutual
        Information." ICML 2019 (Eq. 11-12).
    """
    a = _checks.check_open_unit("alpha", alpha)
    if isinstance(scores, SeparableScores) and not scores.gather and is_plain(scores):
        st = SeparableBatch(scores)
        diag = st.positives()
        if log_baseline is None:
            base = diag.new_zeros(diag.shape)
        else:
            what = "the per-y shape (..., N)"
            base = _checks.check_broadcast("log_baseline", log_baseline, diag.shape, what)
            base = base.expand(diag.shape)
        rest = st.interpolated_terms(base, a)
        return (1 + diag.mean(-1) + rest).to(scores.dtype)
    s, out_dtype = prepare(scores)
    b = _log_baseline(log_baseline, s)
    loo = _leave_one_out_logmeanexp(s)
    log_a = torch.logaddexp(math.log(a) + loo, math.log1p(-a) + b[..., None, :])
    joint = diagonal(s).mean(-1) - offdiag_mean(log_a, lambda t: t)
    marginal = offdiag_mean(s - diagonal(log_a)[..., None, :], torch.exp)
    return (1 + joint - marginal).to(out_dtype)


def fmi(
    scores: Scores,
    divergence: str | FDivergence = "kl",
    *,
    reduction: str = "mean",
    gather: GroupArg = False,
) -> Tensor:
    r"""Variational lower bound on the f-mutual information :math:`D_f(p(x,y)\,\|\,p(x)p(y))`.

    .. math::

        I_f \ge \frac{1}{N}\sum_i g_f(S_{ii})
        - \frac{1}{N(N-1)}\sum_{i \ne j} f^*\big(g_f(S_{ij})\big),

    with :math:`g_f` the divergence's output activation and :math:`f^*` its convex conjugate
    (:class:`~mibounds.divergences.FDivergence`). For ``"kl"`` this is :func:`nwj`. Stable closed
    forms of :math:`f^*(g_f(v))` are used where the divergence provides them. Divergences whose
    terms contain :math:`e^{\pm S}` (KL, reverse KL, Neyman, Hellinger, Tsallis) reach
    :math:`-\infty` for very large scores; where both terms overflow at once (Neyman, Tsallis
    with :math:`\alpha > 1`) the value is :math:`-\infty`, never NaN (see "Extreme scores" in
    the conventions).

    Args:
        scores: ``(..., N, N)`` scores or :class:`~mibounds.scores.SeparableScores`.
        divergence: a registered name or alias, or an :class:`~mibounds.divergences.FDivergence`.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over the per-sample (per-row) terms.
        gather: ``True`` or a process group: negatives from every rank, and the value of the
            concatenated batch (see :mod:`mibounds.distributed`); dense scores are then this
            rank's rows against every rank's columns, ``(..., N_local, N)``.

    Returns:
        The estimate (in nats for ``"kl"``), shape ``(...)`` (``(..., N)`` with
        ``reduction="none"``).

    Raises:
        KeyError: unknown divergence (the message lists the known ones).
        TypeError, ValueError: as :func:`infonce`.

    Example:
        >>> import torch, mibounds
        >>> s = torch.randn(5, 5)
        >>> torch.allclose(mibounds.fmi(s, "kl"), mibounds.nwj(s))
        True

    References:
        Nguyen, Wainwright, Jordan. IEEE Trans. Inf. Theory 2010. Nowozin, Cseke, Tomioka.
        "f-GAN." NeurIPS 2016. Lu et al. "f-MICL." TMLR 2023.
    """
    div = get_divergence(divergence)
    reduction = _checks.check_reduction(reduction)
    st = batch_statistics(scores, gather, reduction)
    name = None if st is None else streaming_name(div)
    if st is not None and name is None and not (isinstance(st, SeparableBatch) and st.plain):
        raise ValueError(
            f"fmi with gather needs a divergence with conjugate_of_activation_grad; "
            f"{div.name!r} has none"
        )
    if st is not None and name is not None:
        _, marginal = st.offdiag_means(name)
        if st.plain:
            joint = st.row_mean(div.activation(st.positives()))
        else:
            joint = st.joint(activation_name(div))
        return _finish(_lower_difference(joint, marginal), st, reduction)
    s, out_dtype = prepare(scores)
    terms = _lower_difference(
        div.activation(diagonal(s)), offdiag_row_mean(s, div.conjugate_at_activation)
    )
    value = reduce_terms(terms, reduction)
    if reduction != "none":  # a -inf term wins over a +inf one, as in _lower_difference
        value = torch.where(value.isnan() & (terms == -math.inf).any(-1), -math.inf, value)
    return value.to(out_dtype)
