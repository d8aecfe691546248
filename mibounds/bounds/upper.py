r"""Functional upper bounds on mutual information.

Upper bounds are how information is *removed* (disentanglement, fairness, FactorCL). Each holds
only when its variational model is good: CLUB and L1Out need a conditional :math:`q(y|x)` close
to :math:`p(y|x)`, NCE-CLUB a critic trained to optimality by InfoNCE. With a poor model they can
fall below the true MI. Functions return the **estimate** (the bound's value); the loss modules
in :mod:`mibounds.nn` return the same value, to be minimised.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mibounds import _checks
from mibounds._dtypes import accumulation_dtype
from mibounds.distributed import GroupArg
from mibounds.reductions import (
    Scores,
    batch_statistics,
    diagonal,
    log_count,
    prepare,
    reduce_terms,
)

__all__ = ["club", "club_sample", "l1out", "nce_club", "variational_upper_bound"]


def _check_gaussian(mu: Tensor, logvar: Tensor, y: Tensor) -> None:
    _checks.check_pair("mu", mu, "y", y)
    if mu.shape != y.shape:
        raise ValueError(
            f"mu and y must have the same shape (..., N, d), got mu {tuple(mu.shape)} and "
            f"y {tuple(y.shape)}"
        )
    _checks.check_tensor("logvar", logvar)
    try:
        shape = torch.broadcast_shapes(logvar.shape, mu.shape)
    except RuntimeError:
        shape = None
    if shape != mu.shape:
        raise ValueError(
            f"logvar must broadcast to the shape of mu {tuple(mu.shape)}, got {tuple(logvar.shape)}"
        )
    for name, t in (("mu", mu), ("logvar", logvar), ("y", y)):
        _checks.check_values(name, t)
    # exp(-logvar) must be finite in the accumulation dtype, or the bound is inf - inf
    limit = -math.log(torch.finfo(accumulation_dtype(logvar.dtype)).max)
    if _checks.get_validate_args() and not torch.compiler.is_compiling() and logvar.numel():
        low = float(logvar.detach().min())
        if low <= limit:
            raise ValueError(
                f"logvar must be > {limit:.1f} for {logvar.dtype} (a variance of exp(logvar) "
                f"underflows and the bound is not defined), got a minimum of {low:g}"
            )


def _upcast(*ts: Tensor) -> tuple[list[Tensor], torch.dtype]:
    """The tensors in the accumulation dtype of the first one, and that first dtype."""
    dtype = ts[0].dtype
    acc = accumulation_dtype(dtype)
    return ([t.to(acc) for t in ts] if acc != dtype else list(ts)), dtype


def club(mu: Tensor, logvar: Tensor, y: Tensor, *, reduction: str = "mean") -> Tensor:
    r"""CLUB: contrastive log-ratio upper bound with a Gaussian :math:`q(y|x)`.

    With :math:`q(y|x_i) = \mathcal N(\mu_i, \mathrm{diag}\,e^{\ell_i})`:

    .. math::

        I_\mathrm{CLUB} = \frac1N\sum_i \log q(y_i|x_i)
        - \frac1{N^2}\sum_{i,j}\log q(y_j|x_i),

    all pairs (the positive included) in the second term. It is computed from the moments of y
    in :math:`O(Nd)` time and memory, using
    :math:`\frac1N\sum_j (y_j - \mu_i)^2 = \mathrm{Var}(y) + (\bar y - \mu_i)^2` per coordinate,
    so it equals the :math:`O(N^2 d)` definition without forming the pairs. The normalising
    constants cancel, so per sample

    .. math::

        t_i = \tfrac12 \sum_k e^{-\ell_{ik}}\big[\mathrm{Var}(y_k) + (\bar y_k - \mu_{ik})^2
        - (y_{ik} - \mu_{ik})^2\big].

    :math:`I \le I_\mathrm{CLUB}` when :math:`q = p(y|x)`; there its population value is
    :math:`I + D_\mathrm{KL}(p(x)p(y)\,\|\,p(x,y))` (for the correlated Gaussian,
    :math:`d\rho^2/(1-\rho^2)`), and its expectation over a batch of N is :math:`1 - 1/N`
    times that, because the all-pairs term counts the N positive pairs too. With a poor
    :math:`q` it can fall below :math:`I`.

    Args:
        mu: ``(..., N, d)`` means of :math:`q(y|x_i)`.
        logvar: log-variances :math:`\ell`, broadcastable to ``mu`` (a scalar for a fixed
            variance).
        y: ``(..., N, d)`` samples paired with the rows of ``mu``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over the per-sample terms.

    Returns:
        The upper-bound estimate in nats, shape ``(...)`` (``(..., N)`` with ``"none"``).

    Raises:
        TypeError, ValueError: non-float tensors, mismatched shapes, ``N < 2``, NaN/Inf values.

    Example:
        >>> import torch, mibounds
        >>> y = torch.tensor([[0.0], [2.0]])
        >>> mibounds.club(y, torch.zeros(1), y)  # perfect means, unit variance: Var(y) = 1
        tensor(1.)

    References:
        Cheng, Hao, Dai, Liu, Gan, Carin. "CLUB: A Contrastive Log-ratio Upper Bound of Mutual
        Information." ICML 2020.
    """
    reduction = _checks.check_reduction(reduction)
    _check_gaussian(mu, logvar, y)
    (mu, logvar, y), out_dtype = _upcast(mu, logvar, y)
    mean_y = y.mean(-2, keepdim=True)
    var_y = ((y - mean_y) ** 2).mean(-2, keepdim=True)
    inner = var_y + (mean_y - mu) ** 2 - (y - mu) ** 2
    terms = 0.5 * (inner * torch.exp(-logvar)).sum(-1)
    return reduce_terms(terms, reduction).to(out_dtype)


def club_sample(
    mu: Tensor,
    logvar: Tensor,
    y: Tensor,
    *,
    permutation: Tensor | None = None,
    generator: torch.Generator | None = None,
    reduction: str = "mean",
) -> Tensor:
    r"""CLUB with one random negative per row (CLUB-S of Cheng et al. 2020).

    .. math::

        I_\mathrm{CLUB\text{-}S} = \frac1N\sum_i\big[\log q(y_i|x_i) - \log q(y_{\pi(i)}|x_i)\big]

    for a random permutation :math:`\pi` (drawn with ``generator`` unless ``permutation`` is
    given). Its expectation over :math:`\pi` matches :func:`club` except that :func:`club` also
    counts the positive pair among its negatives.

    Args:
        mu: ``(..., N, d)`` means of :math:`q(y|x_i)`.
        logvar: log-variances, broadcastable to ``mu``.
        y: ``(..., N, d)`` samples.
        permutation: optional ``(N,)`` integer permutation of the negatives.
        generator: random generator for the permutation.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Returns:
        The estimate in nats, shape ``(...)`` (``(..., N)`` with ``"none"``).

    Raises:
        TypeError, ValueError: as :func:`club`; a ``permutation`` that is not a permutation of
            ``range(N)``.

    Example:
        >>> import torch, mibounds
        >>> y = torch.tensor([[0.0], [2.0]])
        >>> mibounds.club_sample(y, torch.zeros(1), y, permutation=torch.tensor([1, 0]))
        tensor(2.)

    References:
        Cheng et al. "CLUB." ICML 2020.
    """
    reduction = _checks.check_reduction(reduction)
    _check_gaussian(mu, logvar, y)
    n = y.shape[-2]
    if permutation is None:
        _checks.check_generator("generator", generator)
        permutation = torch.randperm(n, generator=generator).to(y.device)
    else:
        if not isinstance(permutation, Tensor) or permutation.dtype not in (
            torch.int64,
            torch.int32,
        ):
            raise TypeError("permutation must be an integer tensor")
        if permutation.shape != (n,) or not torch.equal(
            torch.sort(permutation.cpu()).values, torch.arange(n)
        ):
            raise ValueError(
                f"permutation must be a permutation of range({n}), got shape "
                f"{tuple(permutation.shape)}"
            )
        permutation = permutation.to(y.device)
    (mu, logvar, y), out_dtype = _upcast(mu, logvar, y)
    y_neg = y.index_select(-2, permutation)
    terms = 0.5 * (((y_neg - mu) ** 2 - (y - mu) ** 2) * torch.exp(-logvar)).sum(-1)
    return reduce_terms(terms, reduction).to(out_dtype)


def l1out(log_q: Scores, *, reduction: str = "mean") -> Tensor:
    r"""Leave-one-out upper bound on a matrix ``log_q[..., i, j] = log q(y_j | x_i)``.

    .. math::

        I_\mathrm{L1Out} = \frac1N\sum_j\Big[\log q(y_j|x_j)
        - \log\frac1{N-1}\sum_{i\ne j} q(y_j|x_i)\Big]

    The marginal :math:`p(y_j)` is replaced by the mixture of the other rows' conditionals (the
    positive row left out exactly, not by a large negative offset). With the true conditional it
    is :math:`\ge I` in expectation and tends to :math:`I` as N grows. Any per-column constant
    (e.g. a Gaussian normaliser) cancels, so a :class:`~mibounds.scores.SeparableScores` with
    ``similarity="gaussian"`` (an isotropic Gaussian :math:`q`) is accepted too.

    Args:
        log_q: ``(..., N, N)`` log-conditionals, rows indexing x and columns y.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over the N samples.

    Returns:
        The estimate in nats, shape ``(...)`` (``(..., N)`` with ``"none"``).

    Raises:
        TypeError, ValueError: as :func:`mibounds.infonce`.

    Example:
        >>> import torch, mibounds
        >>> mibounds.l1out(torch.zeros(3, 3))
        tensor(0.)

    References:
        Poole et al. "On Variational Bounds of Mutual Information." ICML 2019. Cheng et al.
        "CLUB." ICML 2020.
    """
    reduction = _checks.check_reduction(reduction)
    s, out_dtype = prepare(log_q, "log_q")
    n = s.shape[-1]
    eye = torch.eye(n, dtype=torch.bool, device=s.device)
    marginal = torch.logsumexp(s.masked_fill(eye, -math.inf), dim=-2) - log_count(n - 1, s)
    return reduce_terms(diagonal(s) - marginal, reduction).to(out_dtype)


def nce_club(scores: Scores, *, gather: GroupArg = False) -> Tensor:
    r"""NCE-CLUB (FactorCL): an upper bound from a critic trained to optimality by InfoNCE.

    .. math::

        I_\mathrm{NCE\text{-}CLUB} = \frac1N\sum_i S_{ii} - \frac1{N^2}\sum_{i,j} S_{ij},

    all pairs (the diagonal included) in the second term. At the InfoNCE optimum
    :math:`S = \log p(y|x)/p(y) + c(x)` the row constants cancel and the value is
    :math:`I + D_\mathrm{KL}(p(x)p(y)\,\|\,p(x,y)) \ge I` (times :math:`1 - 1/N` in
    expectation over a batch, as for :func:`club`); with a sub-optimal critic it can fall below
    :math:`I`. Train the critic with :func:`mibounds.infonce` (see
    :class:`mibounds.nn.NCEClub`). For :class:`~mibounds.scores.SeparableScores` the all-pairs
    mean is computed from the feature means in :math:`O(Nd)`, without the N x N matrix.

    Args:
        scores: ``(..., N, N)`` scores or :class:`~mibounds.scores.SeparableScores`.
        gather: ``True`` or a process group: the value of the batch of every rank (see
            :mod:`mibounds.distributed`); dense scores are then ``(..., N_local, N)``.

    Returns:
        The estimate in nats, shape ``(...)``.

    Raises:
        TypeError, ValueError: as :func:`mibounds.infonce`.

    Example:
        >>> import torch, mibounds
        >>> mibounds.nce_club(torch.eye(4) * 4.0)
        tensor(3.)

    References:
        Liang, Deng, Ma, Zou, Morency, Salakhutdinov. "Factorized Contrastive Learning: Going
        Beyond Multi-view Redundancy." NeurIPS 2023.
    """
    st = batch_statistics(scores, gather)
    if st is not None and not st.plain:
        prepare(scores)  # raises: square scores with the positives on the diagonal only
    if st is not None:
        value = st.row_mean(st.positives()) - st.all_pairs_mean()
        return value.to(st.dtype)
    s, out_dtype = prepare(scores)
    return (diagonal(s).mean(-1) - s.mean(-1).mean(-1)).to(out_dtype)  # two stages: see reductions


def variational_upper_bound(
    log_conditional: Tensor, log_marginal: Tensor, *, reduction: str = "mean"
) -> Tensor:
    r"""Upper bound with a known conditional and a variational marginal (Poole et al. 2019).

    .. math::

        I(X;Y) \le \frac1N\sum_i\big[\log p(y_i|x_i) - \log q(y_i)\big],

    tight when :math:`q(y) = p(y)`: the gap is :math:`D_\mathrm{KL}(p(y)\,\|\,q(y))`.

    Args:
        log_conditional: ``(..., N)`` values :math:`\log p(y_i|x_i)` on joint samples.
        log_marginal: ``(..., N)`` values :math:`\log q(y_i)`.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Returns:
        The estimate in nats, shape ``(...)`` (``(..., N)`` with ``"none"``).

    Raises:
        TypeError, ValueError: non-float tensors, mismatched shapes, NaN/Inf.

    Example:
        >>> import torch, mibounds
        >>> mibounds.variational_upper_bound(torch.tensor([0.0, -1.0]), torch.tensor([-1.0, -1.0]))
        tensor(0.5000)

    References:
        Poole, Ozair, van den Oord, Alemi, Tucker. "On Variational Bounds of Mutual
        Information." ICML 2019.
    """
    reduction = _checks.check_reduction(reduction)
    _checks.check_tensor("log_conditional", log_conditional, min_dim=1)
    _checks.check_tensor("log_marginal", log_marginal, min_dim=1)
    if log_conditional.shape != log_marginal.shape:
        raise ValueError(
            "log_conditional and log_marginal must have the same shape (..., N), got "
            f"{tuple(log_conditional.shape)} and {tuple(log_marginal.shape)}"
        )
    if log_conditional.shape[-1] == 0:
        raise ValueError(
            "log_conditional and log_marginal need N >= 1 samples, got shape "
            f"{tuple(log_conditional.shape)}"
        )
    _checks.check_values("log_conditional", log_conditional)
    _checks.check_values("log_marginal", log_marginal)
    (lc, lm), out_dtype = _upcast(log_conditional, log_marginal)
    return reduce_terms(lc - lm, reduction).to(out_dtype)
