"""One process's batch under its pairing: the mean-reduced statistics every bound is algebra
over, streamed from :class:`~mibounds.scores.SeparableScores` (:class:`SeparableBatch`) or
read from a score matrix (:class:`DenseBatch`)."""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from mibounds import _checks
from mibounds._dtypes import upcast
from mibounds.kernels import streaming
from mibounds.kernels.operands import operands
from mibounds.kernels.rows import row_terms
from mibounds.pairing import Pairing, PairLayout
from mibounds.reductions.dense import all_pairs_from_means, dense_scores, finite_grad
from mibounds.scores import DenseScores, SeparableScores


class _Weights(NamedTuple):
    """Per-row counts and weights of a batch under its pairing (see :class:`_PairedBatch`)."""

    npos: Tensor
    ncand: Tensor
    rows: Tensor
    marginal_rows: Tensor
    w_joint: Tensor
    w_pos: Tensor
    w_neg: Tensor


class _PairedBatch(abc.ABC):
    r"""The mean-reduced statistics of one process's scores under their pairing.

    Every statistic averages per-row terms over the rows that count: the **joint** terms over
    the rows with at least one positive (each row's mean over its positives), the **marginal**
    terms over the rows with at least one negative (each row's mean over its negatives). With
    the plain pairing these are the diagonal mean and the mean over the ``N (M - 1)`` other
    pairs. Subclasses provide the weighted primitives, densely (:class:`DenseBatch`) or
    streamed (:class:`SeparableBatch`).

    :class:`GlobalBatch` has the same methods over the batch of all ranks.
    """

    n: int
    m: int
    dtype: torch.dtype
    layout: PairLayout
    plain: bool
    _acc: Tensor  # a tensor in the accumulation dtype and device
    _counts: tuple[Tensor, Tensor] | None = None  # the layout's counts, where known already
    _validated: bool = True  # whether values are validated on this call

    def _setup(self, total: Callable[[Tensor], Tensor] | None = None) -> None:
        """Per-row weights from the counts; ``total`` sums a count over every rank (the rows of
        one rank are then weighted within the global batch). The plain pairing's statistics
        need none, so there they are formed on first use only."""
        self._columns: tuple[Tensor, Tensor, Tensor] | None = None
        self._total = total
        self._w: _Weights | None = None
        if not self.plain:
            self._weights()

    def _weights(self) -> _Weights:
        if self._w is not None:
            return self._w
        if self._counts is None:
            self._counts = self.layout.counts(self.n, self.m, self._acc.device)
        npos, ncand = self._counts
        dt = self._acc.dtype
        nneg = (ncand - npos).to(dt)
        joint_rows = (npos > 0).to(dt)
        marginal_rows = (nneg > 0).to(dt)
        rows, marginal = joint_rows.sum(), marginal_rows.sum()
        if self._total is not None:
            rows, marginal = self._total(rows), self._total(marginal)
        # no row with a positive (or a negative): weights 0, so the terms are 0, not NaN
        w_joint = joint_rows / rows.clamp_min(1)
        self._w = _Weights(
            npos=npos.to(dt),
            ncand=ncand.to(dt),
            rows=rows,
            marginal_rows=marginal,
            w_joint=w_joint,
            w_pos=w_joint / npos.clamp_min(1).to(dt),
            w_neg=marginal_rows / (marginal.clamp_min(1) * nneg.clamp_min(1)),
        )
        return self._w

    @property
    def npos(self) -> Tensor:
        """Per row, the number of its positives (accumulation dtype)."""
        return self._weights().npos

    @property
    def ncand(self) -> Tensor:
        """Per row, the number of its candidates: positives and negatives."""
        return self._weights().ncand

    @property
    def rows(self) -> Tensor:
        """The number of rows that count, as a tensor (the ``sum`` reduction's factor)."""
        return self._weights().rows

    @property
    def marginal_rows(self) -> Tensor:
        """The number of rows with at least one negative (over every rank)."""
        return self._weights().marginal_rows

    @property
    def w_joint(self) -> Tensor:
        """Per row, its weight in a mean over the rows with a positive."""
        return self._weights().w_joint

    @property
    def w_pos(self) -> Tensor:
        """Per row, the weight of each of its positives in :meth:`joint`."""
        return self._weights().w_pos

    @property
    def w_neg(self) -> Tensor:
        """Per row, the weight of each of its negatives in the means over the negatives."""
        return self._weights().w_neg

    def n_terms(self) -> Tensor | int:
        """How many per-row terms a mean is over (``reduction="sum"`` multiplies by it)."""
        return self.n if self.plain else self.rows

    # -- the statistics the bounds use ------------------------------------------------------

    def joint(self, fn: str = "identity") -> Tensor:
        r"""Mean over the rows with positives of the mean of ``fn(S)`` over their positives;
        ``fn`` is a name registered with :func:`mibounds.kernels.streaming.elementwise`."""
        if self.plain or (self.layout.row_labels is None and isinstance(self, SeparableBatch)):
            # the own pairs are the positives (none if excluded, then the weights are 0)
            return self._own_pairs_mean(self.positives_fn(fn))
        if fn == "identity":
            return (self.positive_sums() * self.w_pos).sum(-1)
        return self._sums(True, self.w_pos, fn)[1]

    def _own_pairs_mean(self, terms: Tensor) -> Tensor:
        """:meth:`joint` of per-row terms of the own pairs, where those are the positives."""
        return terms.mean(-1) if self.plain else (terms * self.w_pos).sum(-1)

    def positives_fn(self, fn: str) -> Tensor:
        """``fn`` of the own pairs' scores, ``(..., N)`` (plain pairing)."""
        pos = self.positives()
        return pos if fn == "identity" else streaming.elementwise_function(fn)(pos, 0.0)

    def lse_term(self, symmetric: bool = False) -> Tensor:
        r"""Mean over the rows with positives of :math:`\log\frac{1}{|C_i|}\sum_{j\in C_i}
        e^{S_{ij}}` over each row's candidates (averaged with the column version if
        ``symmetric``)."""
        log_c = torch.log(self.ncand)
        if not symmetric:
            w = None if self.plain else self.w_joint
            return self._lse(w, None) - (self.w_joint * log_c).sum(-1)
        w_row, w_col, ncand_c = self._symmetric_weights()
        consts = (w_row * log_c).sum(-1) + (w_col * torch.log(ncand_c)).sum(-1)
        if self.plain:
            return self._lse(None, None, symmetric=True) - consts
        return self._lse(w_row, w_col, symmetric=True) - consts

    def nce_loss(self, symmetric: bool = False) -> Tensor:
        r"""The InfoNCE family's cross-entropy: the mean over the rows with a positive of
        :math:`\log\sum_{j\in C_i} e^{S_{ij}} - \bar S_{i,P_i}` (each row's
        :math:`\log|C_i| - I_i`; averaged with the columns' if ``symmetric``). Its value is
        formed per row from the row's own scores, not as the difference of two rounded means
        (as accurate as a dense cross-entropy); its gradient is that of the log-sum-exp less
        the positives'."""
        joint = self.joint()
        if symmetric:
            joint = 0.5 * (joint + self.joint_columns())
        return self._lse_minus_positives(symmetric) - (joint - joint.detach())

    def positive_softplus(self) -> Tensor:
        """:meth:`joint` of ``"softplus-neg"``: SigLIP's term of the positives."""
        return self.joint("softplus-neg")

    def nce_log_count(self, symmetric: bool = False) -> Tensor:
        """The mean over the rows with a positive of the log of their candidate counts
        (averaged with the columns' if ``symmetric``): the most an InfoNCE estimate reaches."""
        if not symmetric:
            return (self.w_joint * torch.log(self.ncand)).sum(-1)
        w_row, w_col, ncand_c = self._symmetric_weights()
        return (w_row * torch.log(self.ncand)).sum(-1) + (w_col * torch.log(ncand_c)).sum(-1)

    def _symmetric_weights(self) -> tuple[Tensor, Tensor, Tensor]:
        """The rows' and the columns' weights of a symmetric bound, and the columns'
        candidate counts."""
        cols, _, ncand_c = self._column_counts()
        return 0.5 * self.w_joint, 0.5 * cols / cols.sum().clamp_min(1), ncand_c

    def _lse_minus_positives(self, symmetric: bool = False) -> Tensor:
        """The value of :meth:`nce_loss` with the log-sum-exp's gradient (the difference of
        the means here; streamed batches form it per row)."""
        if not symmetric:
            lse = self._lse(None if self.plain else self.w_joint, None)
            return lse - self.joint().detach()
        joint = 0.5 * (self.joint() + self.joint_columns()).detach()
        if self.plain:
            return self._lse(None, None, symmetric=True) - joint
        w_row, w_col, _ = self._symmetric_weights()
        return self._lse(w_row, w_col, symmetric=True) - joint

    def joint_columns(self) -> Tensor:
        """The column version of :meth:`joint` (identity), for symmetric bounds."""
        if self.plain:
            return self.positives().mean(-1)
        cols, npos_c, _ = self._column_counts()
        w = cols / (cols.sum().clamp_min(1) * npos_c.clamp_min(1))
        return (self.positive_sums(columns=True) * w).sum(-1)

    def _column_counts(self) -> tuple[Tensor, Tensor, Tensor]:
        """Per column: whether it has a positive, its positives and its candidates (the
        pairing seen from the columns), in the accumulation dtype; computed once for the
        joint and the log-sum-exp terms of a symmetric bound."""
        if self._columns is None:
            t = self.layout.transposed(self.n, self.m)
            npos_c, ncand_c = t.counts(self.m, self.n, self._acc.device)
            dt = self._acc.dtype
            self._columns = (npos_c > 0).to(dt), npos_c.to(dt), ncand_c.to(dt)
        return self._columns

    def offdiag_means(
        self,
        grad_fn: str,
        value_fn: str | None = None,
        shift: float = 0.0,
        param: float = 0.0,
        grad_value: bool = True,
    ) -> tuple[Tensor | None, Tensor]:
        """Means over the negatives of ``value_fn(S + shift)`` (no gradient) and
        ``grad_fn(S + shift)`` (see :func:`mibounds.kernels.streaming.offdiag_means`)."""
        self.require_negatives()
        w = None if self.plain else self.w_neg
        return self._sums(False, w, grad_fn, value_fn, shift, param, grad_value)

    def offdiag_logmeanexp(self) -> Tensor:
        r""":math:`\log` of the mean over rows of the mean of :math:`e^{S}` over each row's
        negatives, shape ``(...)``."""
        self.require_negatives()
        return self._lme(None if self.plain else torch.log(self.w_neg))

    def require_negatives(self) -> None:
        """Raise if the pairing leaves no negative pair at all: a bound with a term over the
        negatives (NWJ, TUBA, DV, MINE, JS, SMILE, f-MI, SigLIP) is not defined then. Checked
        while values are validated (it reads the counts)."""
        if self.plain or not self._validated:
            return
        if bool(self.marginal_rows == 0):
            raise ValueError(
                "the pairing leaves no negative pair (every pair is a positive or excluded), "
                "and this bound averages over the negatives: it is not defined without one. "
                "Use labels that differ, exclude fewer pairs, or add extra columns (negatives)"
            )

    def row_mean(self, terms: Tensor) -> Tensor:
        """Mean of per-row terms ``(..., N)``."""
        return terms.mean(-1)

    # -- what the representations provide ---------------------------------------------------

    @abc.abstractmethod
    def positives(self) -> Tensor:
        """The scores of the own pairs ``S[..., i, i]``, ``(..., N)``."""

    @abc.abstractmethod
    def positive_sums(self, columns: bool = False) -> Tensor:
        """Per row (or column), the sum of the scores of its positives."""

    @abc.abstractmethod
    def all_pairs_mean(self) -> Tensor:
        """The mean of every score (the diagonal included)."""

    def nce_rows(self, symmetric: bool = False) -> Tensor:
        r"""Per-row InfoNCE terms :math:`\bar S_{i,P_i} - \log\sum_{j\in C_i} e^{S_{ij}} +
        \log|C_i|` (mean score over the row's positives, log-sum-exp over its candidates), 0
        for a row without a positive; ``(..., N)``. With ``symmetric`` (square scores),
        the average of row ``i``'s and column ``i``'s terms. Their mean over the rows with a
        positive is :func:`mibounds.infonce`; their sum, its ``"sum"`` reduction. Streamed
        for separable scores; dense scores get the same terms from the whole matrix."""
        terms = self._nce_terms(self.npos, self.ncand, False)
        if symmetric:
            if self.m != self.n:
                raise ValueError(
                    "symmetric per-sample terms need square scores (one column per row); got "
                    f"{self.n} rows and {self.m} columns"
                )
            _, npos_c, ncand_c = self._column_counts()
            terms = 0.5 * (terms + self._nce_terms(npos_c, ncand_c, True))
        return terms.to(self.dtype)

    def _nce_terms(self, npos: Tensor, ncand: Tensor, columns: bool) -> Tensor:
        if self.plain:
            joint = self.positives()
        else:
            joint = self.positive_sums(columns) / npos.clamp_min(1)
        terms = joint - self.row_terms(columns=columns) + torch.log(ncand)
        return torch.where(npos > 0, terms, 0.0)

    @abc.abstractmethod
    def row_terms(self, keep: str = "cand", fn: str | None = None, columns: bool = False) -> Tensor:
        """Per row (or per column), the log-sum-exp (``fn=None``) or the sum of ``fn`` over
        its candidates, negatives or positives (``keep``)."""

    @abc.abstractmethod
    def _lse(self, row_w: Tensor | None, col_w: Tensor | None, symmetric: bool = False) -> Tensor:
        """Weighted row (and column) log-sum-exp over the candidates."""

    @abc.abstractmethod
    def _sums(
        self,
        positives: bool,
        weight: Tensor | None,
        grad_fn: str,
        value_fn: str | None = None,
        shift: float = 0.0,
        param: float = 0.0,
        grad_value: bool = True,
    ) -> tuple[Tensor | None, Tensor]:
        """Weighted sums of elementwise functions over the positives or the negatives."""

    @abc.abstractmethod
    def _lme(self, log_w: Tensor | None) -> Tensor:
        """Log of the weighted sum of ``exp`` over the negatives."""


def own_pair_scores(
    x: Tensor, y: Tensor, tau: float | Tensor, sim: str, bias: Tensor | None, acc: torch.dtype
) -> Tensor:
    """The scores of the own pairs ``S[..., i, i]`` from the kernels' operands (see
    :func:`mibounds.kernels.operands.operands`), in O(N d), in the accumulation dtype ``acc``,
    with the overflow rule on their gradient (as for dense scores)."""
    y = y[..., : x.shape[-2], :]
    d = -((x - y) ** 2).sum(-1) if sim == "gaussian" else (x * y).sum(-1)
    if isinstance(tau, Tensor) or tau != 1.0:  # folded into the features: nothing to divide
        d = d / tau
    if bias is not None:
        d = d + bias
    return finite_grad(d.to(acc))


class SeparableBatch(_PairedBatch):
    """The mean-reduced statistics of one process's :class:`SeparableScores`, streamed."""

    def __init__(
        self,
        scores: SeparableScores,
        offset: int = 0,
        n_paired: int | None = None,
        total: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        ops = operands(scores.x, scores.y, scores.similarity, scores.temperature)
        self.x, self.y, self.tau, self.sim = ops.x, ops.y, ops.tau, ops.sim
        self.dtype, self._validated = ops.dtype, ops.validated
        self.n, self.m = scores.x.shape[-2], scores.y.shape[-2]
        bias = scores.bias
        self.bias = None if bias is None else torch.as_tensor(bias, device=self.x.device)
        self._acc = self.x.new_zeros((), dtype=ops.acc)
        if offset or n_paired is not None:  # one rank's rows within the global batch
            self.layout = scores.pairing.layout(self.n, self.m, offset, n_paired).to(self.x.device)
            self.plain = self.layout.plain and self.m == self.n and self.bias is None and not offset
        else:  # laid out when the scores were built
            self.layout, self._counts, self.plain = scores._layout, scores._counts, scores._plain
        self._setup(total)

    def positives(self) -> Tensor:
        return own_pair_scores(self.x, self.y, self.tau, self.sim, self.bias, self._acc.dtype)

    def positive_softplus(self) -> Tensor:
        """:meth:`joint` of ``"softplus-neg"`` (SigLIP's term of the positives); where the
        positives are the own pairs, formed from them directly."""
        if self.layout.row_labels is not None:
            return self.joint("softplus-neg")
        return self._own_pairs_mean(F.softplus(-self.positives()))

    def positive_sums(self, columns: bool = False) -> Tensor:
        r""":math:`\sum_{j \in P_i} S_{ij}` per row (or per column), in O((N + M) d) from
        per-label sums of the features, with gradient."""
        x, y = self.x.to(self._acc.dtype), self.y.to(self._acc.dtype)
        rl, cl = self.layout.row_labels, self.layout.col_labels
        offset = self.layout.offset
        if columns:
            x, y, rl, cl, offset = y, x, cl, rl, -offset
        if rl is None:
            # no labels: the own pair, unless it is excluded
            if self.layout.exclude == 1:
                return x.new_zeros(x.shape[:-1])
            if self.layout.offset:
                raise ValueError("the own pairs of a gathered batch need labels")
            diag = self.positives()
            if columns:
                return torch.nn.functional.pad(diag, (0, self.m - self.n))
            return diag
        assert cl is not None
        srt = torch.sort(cl).values
        col_class = torch.searchsorted(srt, cl)
        row_class = torch.searchsorted(srt, rl).clamp_max(cl.shape[0] - 1)
        match = (srt[row_class] == rl).to(x.dtype)
        ysum = x.new_zeros((*y.shape[:-2], cl.shape[0], y.shape[-1]))
        ysum = ysum.index_add(-2, col_class, y)[..., row_class, :]
        count = (torch.searchsorted(srt, rl, right=True) - torch.searchsorted(srt, rl)).to(x.dtype)
        if self.sim == "gaussian":
            sq = x.new_zeros((*y.shape[:-2], cl.shape[0])).index_add(-1, col_class, (y * y).sum(-1))
            total = -(count * (x * x).sum(-1) + sq[..., row_class] - 2 * (x * ysum).sum(-1))
        else:
            total = (x * ysum).sum(-1)
        total = total * match / self.tau
        if self.bias is not None:
            total = total + self.bias * count * match
        if self.layout.exclude == 1:
            # the own pair is excluded: take it back out where its labels are equal
            own = torch.arange(rl.shape[0], device=x.device) + offset
            valid = (own >= 0) & (own < cl.shape[0])
            own_c = own.clamp(0, cl.shape[0] - 1)
            same = (valid & (cl[own_c] == rl)).to(x.dtype)
            yo = y[..., own_c, :]
            if self.sim == "gaussian":
                s_own = -((x - yo) ** 2).sum(-1)
            else:
                s_own = (x * yo).sum(-1)
            s_own = s_own / self.tau
            if self.bias is not None:
                s_own = s_own + self.bias
            total = total - same * s_own
        return total

    def _lse(self, row_w: Tensor | None, col_w: Tensor | None, symmetric: bool = False) -> Tensor:
        layout = None if self.plain else self.layout
        if symmetric:
            return streaming.symmetric_logsumexp_mean(
                self.x, self.y, self.tau, self.sim, layout=layout, row_weight=row_w,
                col_weight=col_w, bias=self.bias,
            )  # fmt: skip
        return streaming.row_logsumexp_mean(
            self.x, self.y, self.tau, self.sim, layout=layout, weight=row_w, bias=self.bias
        )

    def _lse_minus_positives(self, symmetric: bool = False) -> Tensor:
        layout = None if self.plain else self.layout
        if symmetric:
            w_row, w_col = (None, None) if self.plain else self._symmetric_weights()[:2]
            return streaming.symmetric_logsumexp_mean(
                self.x, self.y, self.tau, self.sim, layout=layout, row_weight=w_row,
                col_weight=w_col, bias=self.bias, minus_positives=True,
            )  # fmt: skip
        if self.plain:
            return streaming.row_logsumexp_mean(
                self.x, self.y, self.tau, self.sim, bias=self.bias, minus_positives=True
            )
        # the rows that count with weight 1, divided once at the end: a rounded 1/rows
        # applied to every row would cost float32 accuracy
        counted = (self.w_joint > 0).to(self.w_joint.dtype)
        total = streaming.row_logsumexp_mean(
            self.x, self.y, self.tau, self.sim, layout=layout, weight=counted, bias=self.bias,
            minus_positives=True,
        )  # fmt: skip
        return total / self.rows.clamp_min(1)

    def lse_mean(self, symmetric: bool = False) -> Tensor:
        r"""Streamed :math:`\frac1N\sum_i \log\sum_j e^{S_{ij}}` (plain pairing), averaged with
        the column version (two sweeps) if ``symmetric``."""
        return self._lse(None, None, symmetric)

    def _sums(
        self,
        positives: bool,
        weight: Tensor | None,
        grad_fn: str,
        value_fn: str | None = None,
        shift: float = 0.0,
        param: float = 0.0,
        grad_value: bool = True,
    ) -> tuple[Tensor | None, Tensor]:
        return streaming.offdiag_means(
            self.x, self.y, self.tau, self.sim, grad_fn, value_fn, shift, param, grad_value,
            layout=None if self.plain else self.layout, weight=weight, positives=positives,
            bias=self.bias,
        )  # fmt: skip

    def _lme(self, log_w: Tensor | None) -> Tensor:
        layout = None if self.plain else self.layout
        return streaming.offdiag_logmeanexp(
            self.x, self.y, self.tau, self.sim, layout=layout, log_weight=log_w, bias=self.bias
        )

    def row_terms(self, keep: str = "cand", fn: str | None = None, columns: bool = False) -> Tensor:
        """Per row (or per column), the log-sum-exp (``fn=None``) or the sum of ``fn`` over
        its candidates, negatives or positives (``keep``), streamed with a gradient (see
        :func:`mibounds.kernels.rows.row_terms`)."""
        x, y, layout = self.x, self.y, self.layout
        if columns:
            x, y, layout = y, x, layout.transposed(self.n, self.m)
        return row_terms(x, y, self.tau, self.sim, layout=layout, keep=keep, fn=fn, bias=self.bias)

    def interpolated_terms(self, log_baseline: Tensor, alpha: float) -> Tensor:
        """The streamed terms of :func:`mibounds.interpolated` beyond its diagonal mean (see
        :func:`mibounds.kernels.streaming.interpolated_terms`)."""
        return streaming.interpolated_terms(self.x, self.y, self.tau, self.sim, log_baseline, alpha)

    def all_pairs_mean(self) -> Tensor:
        """The mean of all N^2 scores (the diagonal included) in O(N d), from feature means."""
        x, y, tau, sim = self.x, self.y, self.tau, self.sim
        x, y = upcast(x), upcast(y)
        sq = (x * x).sum(-1).mean(-1) + (y * y).sum(-1).mean(-1) if sim == "gaussian" else None
        return all_pairs_from_means(x.mean(-2), y.mean(-2), sq, tau)


class DenseBatch(_PairedBatch):
    """The same statistics as :class:`SeparableBatch` on a dense ``(..., N, M)`` matrix with a
    pairing (masks over the whole matrix: the dense reference)."""

    def __init__(self, scores: Tensor | DenseScores) -> None:
        if isinstance(scores, DenseScores):
            s, layout = scores.scores, scores._layout
        else:
            s = _checks.check_scores("scores", scores, rectangular=True)
            layout = Pairing().layout(s.shape[-2], s.shape[-1])
        _checks.check_values("scores", s)
        self._validated = _checks.validating()
        self.dtype = s.dtype
        self.s = dense_scores(s)
        self.n, self.m = s.shape[-2], s.shape[-1]
        self._acc = self.s.new_zeros(())
        self.layout = layout
        self.plain = False  # weighted formulas throughout (this is the reference)
        self._setup()

    def positives(self) -> Tensor:
        return torch.diagonal(self.s[..., : self.n], dim1=-2, dim2=-1)

    def all_pairs_mean(self) -> Tensor:
        return self.s.mean(-1).mean(-1)

    def _mask(self, keep: str) -> Tensor:
        drop = self.layout.drop_mask(0, self.n, self.m, keep, self.s.device)
        return (
            torch.zeros_like(self.s, dtype=torch.bool) if drop is None else drop.expand_as(self.s)
        )

    def positive_sums(self, columns: bool = False) -> Tensor:
        kept = self.s.masked_fill(self._mask("pos"), 0.0)
        return kept.sum(-2 if columns else -1)

    def _lse(self, row_w: Tensor | None, col_w: Tensor | None, symmetric: bool = False) -> Tensor:
        masked = self.s.masked_fill(self._mask("cand"), -math.inf)
        assert row_w is not None
        total = (torch.logsumexp(masked, dim=-1) * row_w).sum(-1)
        if symmetric:
            assert col_w is not None
            col = torch.logsumexp(masked, dim=-2)
            total = total + torch.where(col_w > 0, col * col_w, 0.0).sum(-1)
        return total

    def _sums(
        self,
        positives: bool,
        weight: Tensor | None,
        grad_fn: str,
        value_fn: str | None = None,
        shift: float = 0.0,
        param: float = 0.0,
        grad_value: bool = True,
    ) -> tuple[Tensor | None, Tensor]:
        assert weight is not None
        drop = self._mask("pos" if positives else "neg")
        t = self.s + shift if shift else self.s
        safe = t.masked_fill(drop, 0.0)

        def total(name: str) -> Tensor:
            v = streaming.elementwise_function(name)(safe, param).masked_fill(drop, 0.0)
            return (v.sum(-1) * weight).sum(-1)

        v_sum = None
        if value_fn is not None:
            with torch.no_grad():
                v_sum = total(value_fn)
        g_sum = total(grad_fn)
        if not grad_value:
            g_sum = g_sum - g_sum.detach()
        return v_sum, g_sum

    def row_terms(self, keep: str = "cand", fn: str | None = None, columns: bool = False) -> Tensor:
        drop = self._mask(keep)
        dim = -2 if columns else -1
        if fn is None:
            return torch.logsumexp(self.s.masked_fill(drop, -math.inf), dim=dim)
        safe = self.s.masked_fill(drop, 0.0)
        return streaming.elementwise_function(fn)(safe, 0.0).masked_fill(drop, 0.0).sum(dim)

    def _lme(self, log_w: Tensor | None) -> Tensor:
        assert log_w is not None
        masked = self.s.masked_fill(self._mask("neg"), -math.inf) + log_w[:, None]
        return torch.logsumexp(torch.logsumexp(masked, dim=-1), dim=-1)
