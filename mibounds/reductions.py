r"""The few pairwise reductions every bound is made of.

Each bound in :mod:`mibounds.bounds` is algebra over these reductions of a score matrix
``S[..., i, j] = T(x_i, y_j)``:

* the positive scores :math:`S_{ii}` (:func:`diagonal`),
* row and column log-sum-exp (:func:`row_logsumexp`, :func:`col_logsumexp`),
* the off-diagonal log-mean-exp :math:`\log \frac{1}{N(N-1)}\sum_{i\ne j} e^{S_{ij}}`
  (:func:`offdiag_logmeanexp`),
* the off-diagonal mean of an elementwise function, per row or overall
  (:func:`offdiag_row_mean`, :func:`offdiag_mean`).

Scores arrive as a dense tensor or a :class:`~mibounds.scores.SeparableScores`. The kernel is
chosen here from the representation, never by the bound. float16/bfloat16 scores are
accumulated in float32.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from typing import Any, TypeAlias

import torch
import torch.nn.functional as F
from torch import Tensor

from mibounds import _checks, distributed
from mibounds._dtypes import (
    accumulation_dtype,
    cuda_autocast_dtype,
    dense_scores,
    finite_derivatives_,
    upcast,
)
from mibounds.kernels import streaming
from mibounds.kernels.rows import row_terms
from mibounds.pairing import Pairing, PairLayout
from mibounds.scores import DenseScores, SeparableScores

Scores: TypeAlias = Tensor | SeparableScores | DenseScores

__all__ = [
    "BatchStatistics",
    "GlobalBatch",
    "DenseBatch",
    "is_plain",
    "Scores",
    "SeparableBatch",
    "all_pairs_from_means",
    "batch_statistics",
    "col_logsumexp",
    "diagonal",
    "log_count",
    "offdiag_logmeanexp",
    "offdiag_mean",
    "offdiag_row_mean",
    "offdiag_row_sum",
    "positive_mask",
    "prepare",
    "reduce_terms",
    "sep_diagonal",
    "separable_rows",
    "row_logsumexp",
]


def prepare(scores: Scores, name: str = "scores") -> tuple[Tensor, torch.dtype]:
    """Validate plain square ``scores`` and return the dense float matrix to reduce and the
    output dtype.

    Half-precision scores are upcast to float32; the caller casts its result back to the
    returned dtype.
    """
    if isinstance(scores, SeparableScores):
        if scores.gather:
            raise ValueError(
                f"{name}: SeparableScores with gather are only reduced over the global batch "
                "(the bounds listed in mibounds.distributed, with reduction 'mean' or 'sum'); "
                "this bound or reduction would see this rank's pairs only"
            )
        if not is_plain(scores):
            raise ValueError(
                f"{name}: this bound or reduction needs square scores with the positives on the "
                "diagonal (no labels, exclusions, bias or extra columns); got "
                f"{_describe(scores)}"
            )
        dense = scores.dense()
        _check_dense_range(name, dense, scores.temperature)
    elif isinstance(scores, DenseScores):
        if not is_plain(scores):
            raise ValueError(
                f"{name}: this bound or reduction needs square scores with the positives on the "
                f"diagonal; got {_describe(scores)}"
            )
        dense = scores.scores
        _check_dense_range(name, dense)
    else:
        dense = _checks.check_scores(name, scores)
        _check_dense_range(name, dense)
    return dense_scores(dense), dense.dtype


def is_plain(scores: Scores) -> bool:
    """Square scores whose positives are the diagonal: no labels, no excluded pairs, no extra
    columns (and, for separable scores, no bias)."""
    if isinstance(scores, Tensor):
        return scores.shape[-1] == scores.shape[-2]
    square = scores.shape[-1] == scores.shape[-2]
    bias = getattr(scores, "bias", None)
    return square and scores.pairing.plain and bias is None


def _describe(scores: Scores) -> str:
    parts = [f"shape {tuple(scores.shape)}"]
    if not isinstance(scores, Tensor):
        if scores.labels is not None:
            parts.append("labels")
        if scores.exclude != "none":
            parts.append(f"exclude={scores.exclude!r}")
        if getattr(scores, "bias", None) is not None:
            parts.append("a bias")
    return ", ".join(parts)


class _InverseSqrtScale(torch.autograd.Function):
    """``(x / sqrt(tau), y / sqrt(tau))`` with a backward that cannot give NaN: the temperature
    gradient is formed from the summed feature gradients (finite) and only then divided by
    ``tau``, so terms that cancel in the bound cancel before any overflow."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, y: Tensor, tau: Tensor) -> tuple[Tensor, Tensor]:
        r = torch.rsqrt(tau)
        ctx.save_for_backward(x, y, tau, r)
        return x * r, y * r

    @staticmethod
    def backward(ctx: Any, gx: Tensor, gy: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        x, y, tau, r = ctx.saved_tensors
        gx, gy = finite_derivatives_(gx.clone()), finite_derivatives_(gy.clone())
        dtau = None
        if ctx.needs_input_grad[2]:
            total = (x * gx).sum() + (y * gy).sum()
            dtau = finite_derivatives_((total * r / tau * -0.5).reshape(tau.shape))
        return finite_derivatives_(gx * r), finite_derivatives_(gy * r), dtau


def unit_temperature(scores: SeparableScores) -> SeparableScores:
    """The same scores with the temperature folded into the features (``x`` and ``y`` divided
    by ``sqrt(tau)``, in the accumulation dtype; cosine scores as dot scores of normalised
    features), so every streamed piece of a bound sees ``tau = 1`` and their gradients add up
    before the one division by ``tau``. Scores that overflow the accumulation dtype raise a
    ``ValueError`` naming the temperature (while values are validated)."""
    t = scores.temperature
    half = _fused_dtype(scores)
    if half is not None:
        return _half_features(scores, half)
    x, y = upcast(scores.x), upcast(scores.y)
    unchanged = x is scores.x and y is scores.y
    if unchanged and scores.similarity != "cosine" and not isinstance(t, Tensor) and t == 1.0:
        return scores
    acc = x.dtype
    if acc == torch.float32 and x.device.type != "mps":
        # normalised and scaled in float64, then rounded once: the float32 products then
        # carry no more error than the dense scores' own product does
        x, y = x.double(), y.double()
    if scores.similarity == "cosine":
        x, y = F.normalize(x, dim=-1), F.normalize(y, dim=-1)
    if isinstance(t, Tensor):
        x, y = _InverseSqrtScale.apply(x, y, t.to(x.dtype).reshape(()))
    elif t != 1.0:
        r = 1.0 / math.sqrt(t)
        x, y = x * r, y * r
    x, y = x.to(acc), y.to(acc)
    sim = "dot" if scores.similarity == "cosine" else scores.similarity
    out = SeparableScores._trusted(scores, x=x, y=y, similarity=sim, temperature=1.0)
    if _checks.validating():
        _check_no_overflow(out, t)
    return out


def _fused_dtype(scores: SeparableScores) -> torch.dtype | None:
    """The half-precision dtype in which the fused kernels will multiply these features
    (bfloat16 or float16 features, or float32 ones under CUDA autocast), or ``None`` where the
    features are upcast and the temperature folded into them."""
    x, y = scores.x, scores.y
    if scores.similarity not in ("dot", "cosine") or not streaming.triton_on(x.device):
        return None
    dt = cuda_autocast_dtype(x.device)
    if dt is not None and x.dtype in (torch.float32, dt) and y.dtype in (torch.float32, dt):
        return dt
    if x.dtype == y.dtype and x.dtype in (torch.float16, torch.bfloat16):
        return x.dtype
    return None


def _half_features(scores: SeparableScores, half: torch.dtype) -> SeparableScores:
    """Dot scores of half-precision features with the temperature kept apart (the fused
    kernels multiply the features on tensor cores and divide the float32 products by it, so
    the features are rounded once, as given); cosine features are normalised in float32."""
    x, y = scores.x, scores.y
    if scores.similarity == "cosine":
        x = F.normalize(x.float(), dim=-1)
        y = F.normalize(y.float(), dim=-1)
    x, y = x.to(half), y.to(half)
    out = SeparableScores._trusted(scores, x=x, y=y, similarity="dot")
    if _checks.validating():
        _check_no_overflow(out, scores.temperature)
    return out


def _check_no_overflow(scores: SeparableScores, temperature: float | Tensor) -> None:
    """Raise if the scores ``sim(x, y) / temperature`` break the range rule
    (:func:`_within_range`) in the accumulation dtype; ``scores`` holds the features as the
    kernels take them (the temperature folded in, or kept apart for half-precision features).
    A bound on the largest score decides in O(N d); only if it is too large are the scores
    themselves swept (no gradient)."""
    x, y = scores.x.detach(), scores.y.detach()
    dtype = accumulation_dtype(torch.promote_types(x.dtype, y.dtype))
    t = scores.temperature
    tau = float(t.detach()) if isinstance(t, Tensor) else float(t)
    m = y.shape[-2]
    nx, ny = x.to(dtype).norm(dim=-1).amax(), y.to(dtype).norm(dim=-1).amax()
    bound = (nx + ny) ** 2 if scores.similarity == "gaussian" else nx * ny
    if _within_range(float(bound) / tau, m, dtype):
        return
    largest = math.inf
    with torch.no_grad():
        if bool(torch.isfinite(x).all()) and bool(torch.isfinite(y).all()):
            sim = scores.similarity
            top = streaming.row_logsumexp_mean(x, y, tau, sim)
            bottom = streaming.row_logsumexp_mean(-x, y, tau, sim) if sim == "dot" else top
            # each row's log-sum-exp is within log M of its largest score
            largest = float(torch.maximum(top.abs(), bottom.abs()).amax())
    if not _within_range(largest, m, dtype):
        raise ValueError(_overflow_message(temperature, dtype, largest, m))


def _within_range(largest: float, m: int, dtype: torch.dtype) -> bool:
    """The range rule, the same on the dense, the streamed and the fused paths: scores of
    magnitude up to ``largest`` are accepted if every sum a bound forms over a row of ``m`` of
    them (and its mean over the rows) stays within ``dtype``'s range."""
    return math.isfinite(largest) and largest * max(m, 1) < 0.5 * torch.finfo(dtype).max


def _score_limit(dtype: torch.dtype, m: int) -> float:
    """The largest score magnitude :func:`_within_range` accepts."""
    return 0.5 * torch.finfo(dtype).max / max(m, 1)


def _overflow_message(temperature: Any, dtype: torch.dtype, largest: float, m: int) -> str:
    t = float(temperature.detach()) if isinstance(temperature, Tensor) else float(temperature)
    return (
        f"temperature={t:g} makes the scores sim(x, y) / temperature overflow {dtype} in "
        f"a bound's sums: the largest is about {largest:.3g} (accepted: below "
        f"{_score_limit(dtype, m):.3g} with {m} columns); use a larger temperature or smaller "
        "features"
    )


def _check_dense_range(name: str, dense: Tensor, temperature: Any = None) -> None:
    """The overflow rule for dense scores (while values are validated): refused, naming the
    temperature (separable scores) or the scores, where a bound's sums would overflow."""
    if not _checks.validating():
        return
    m = dense.shape[-1]
    dtype = accumulation_dtype(dense.dtype)
    largest = float(dense.detach().abs().amax()) if dense.numel() else 0.0
    if _within_range(largest, m, dtype):
        return
    if temperature is not None:
        raise ValueError(_overflow_message(temperature, dtype, largest, m))
    raise ValueError(
        f"{name} overflow {dtype} in a bound's sums: the largest |score| is {largest:.3g} "
        f"(accepted: below {_score_limit(dtype, m):.3g} with {m} columns); scale them down"
    )


def streaming_operands(scores: SeparableScores) -> tuple[Tensor, Tensor, float | Tensor, str]:
    """``(x, y, temperature, similarity)`` for the streaming kernels: cosine scores become dot
    scores of normalised features (normalised with differentiable torch ops)."""
    if scores.similarity == "cosine":
        x = torch.nn.functional.normalize(scores.x, dim=-1)
        y = torch.nn.functional.normalize(scores.y, dim=-1)
        return x, y, scores.temperature, "dot"
    return scores.x, scores.y, scores.temperature, scores.similarity


def sep_diagonal(scores: SeparableScores) -> Tensor:
    """Positive scores ``S[..., i, i]`` in O(N d), in the accumulation dtype, with the overflow
    rule on their gradient (as for dense scores)."""
    return dense_scores(scores.diagonal())


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

    def _setup(self, total: Callable[[Tensor], Tensor] | None = None) -> None:
        """Per-row weights from the counts; ``total`` sums a count over every rank (the rows of
        one rank are then weighted within the global batch)."""
        self._columns: tuple[Tensor, Tensor, Tensor] | None = None
        npos, ncand = self.layout.counts(self.n, self.m, self._acc.device)
        dt = self._acc.dtype
        self.npos, self.ncand = npos.to(dt), ncand.to(dt)
        nneg = (ncand - npos).to(dt)
        joint_rows = (npos > 0).to(dt)
        marginal_rows = (nneg > 0).to(dt)
        rows, marginal = joint_rows.sum(), marginal_rows.sum()
        if total is not None:
            rows, marginal = total(rows), total(marginal)
        #: the number of rows that count, as a tensor (the ``sum`` reduction's factor)
        self.rows = rows
        #: the number of rows with at least one negative (over every rank)
        self.marginal_rows = marginal
        # no row with a positive (or a negative): weights 0, so the terms are 0, not NaN
        self.w_joint = joint_rows / self.rows.clamp_min(1)
        self.w_pos = self.w_joint / npos.clamp_min(1).to(dt)
        self.w_neg = marginal_rows / (marginal.clamp_min(1) * nneg.clamp_min(1))

    def n_terms(self) -> Tensor | int:
        """How many per-row terms a mean is over (``reduction="sum"`` multiplies by it)."""
        return self.n if self.plain else self.rows

    # -- the statistics the bounds use ------------------------------------------------------

    def joint(self, fn: str = "identity") -> Tensor:
        r"""Mean over the rows with positives of the mean of ``fn(S)`` over their positives;
        ``fn`` is a name registered with :func:`mibounds.kernels.streaming.elementwise`."""
        if self.plain:
            return self.positives_fn(fn).mean(-1)
        if self.layout.row_labels is None and isinstance(self, SeparableBatch):
            # the own pairs are the positives (none if excluded, then the weights are 0)
            return (self.positives_fn(fn) * self.w_pos).sum(-1)
        if fn == "identity":
            return (self.positive_sums() * self.w_pos).sum(-1)
        return self._sums(True, self.w_pos, fn)[1]

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
        if self.plain or not _checks.validating():
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


class SeparableBatch(_PairedBatch):
    """The mean-reduced statistics of one process's :class:`SeparableScores`, streamed."""

    def __init__(
        self,
        scores: SeparableScores,
        offset: int = 0,
        n_paired: int | None = None,
        total: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        self.dtype = scores.dtype
        scores = unit_temperature(scores)
        self.scores = scores
        self.x, self.y, self.tau, self.sim = streaming_operands(scores)
        self.n, self.m = scores.x.shape[-2], scores.y.shape[-2]
        bias = scores.bias
        self.bias = None if bias is None else torch.as_tensor(bias, device=self.x.device)
        self._acc = upcast(self.x.new_zeros(()))
        layout = scores.pairing.layout(self.n, self.m, offset, n_paired)
        self.layout = layout.to(self.x.device)
        self.plain = self.layout.plain and self.m == self.n and self.bias is None and not offset
        self._setup(total)

    def positives(self) -> Tensor:
        return sep_diagonal(self.scores)

    def positive_sums(self, columns: bool = False) -> Tensor:
        r""":math:`\sum_{j \in P_i} S_{ij}` per row (or per column), in O((N + M) d) from
        per-label sums of the features, with gradient."""
        x, y = upcast(self.x), upcast(self.y)
        rl, cl = self.layout.row_labels, self.layout.col_labels
        offset = self.layout.offset
        if columns:
            x, y, rl, cl, offset = y, x, cl, rl, -offset
        if rl is None:
            # no labels: the own pair, unless it is excluded
            if self.layout.exclude == 1:
                return upcast(self.x.new_zeros(x.shape[:-1]))
            if self.layout.offset:
                raise ValueError("the own pairs of a gathered batch need labels")
            diag = sep_diagonal(self.scores)
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
            s, pairing = scores.scores, scores.pairing
        else:
            s, pairing = _checks.check_scores("scores", scores, rectangular=True), Pairing()
        _checks.check_values("scores", s)
        self.dtype = s.dtype
        self.s = dense_scores(s)
        self.n, self.m = s.shape[-2], s.shape[-1]
        self._acc = self.s.new_zeros(())
        self.layout = pairing.layout(self.n, self.m).to(s.device)
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


BatchStatistics: TypeAlias = "SeparableBatch | DenseBatch | GlobalBatch"


def batch_statistics(
    scores: Scores, gather: distributed.GroupArg = False, reduction: str = "mean"
) -> BatchStatistics | None:
    """The mean-reduced statistics a bound should use, or ``None`` for the dense per-row path.

    Gathering (``gather`` here or on the :class:`SeparableScores`) gives a
    :class:`GlobalBatch`; separable scores with a mean or sum reduction
    give a :class:`SeparableBatch`; dense scores with a pairing, or rectangular ones, a
    :class:`DenseBatch`.

    Raises:
        ValueError: ``reduction="none"`` while gathering (per-sample terms are per rank), or
            with scores that are not plain square scores.
    """
    if isinstance(scores, SeparableScores) and not gather:
        gather = scores.gather
    group = distributed.resolve_group(gather)
    if group is not None:
        if reduction == "none":
            raise ValueError(
                "reduction='none' is not supported with gather: the per-sample terms of the "
                "global batch are split over ranks; use 'mean' or 'sum'"
            )
        return GlobalBatch(scores, group)
    if reduction == "none":
        return None  # prepare() raises for scores that are not plain
    if isinstance(scores, SeparableScores):
        return SeparableBatch(scores)
    if isinstance(scores, DenseScores) or (
        isinstance(scores, Tensor) and scores.dim() >= 2 and scores.shape[-1] != scores.shape[-2]
    ):
        return DenseBatch(scores)
    return None


def separable_rows(
    scores: Scores, gather: distributed.GroupArg = False
) -> SeparableBatch | DenseBatch | None:
    """The statistics of one process's scores for per-row (``reduction="none"``) terms:
    streamed for separable scores, from the matrix for dense scores with a pairing (or
    rectangular ones); ``None`` for plain square dense scores (the bounds' own per-row path)."""
    if isinstance(scores, SeparableScores):
        batch_statistics(scores, gather, "none")  # refuses per-sample terms while gathering
        return SeparableBatch(scores)
    if isinstance(scores, DenseScores) and not is_plain(scores):
        batch_statistics(scores, gather, "none")
        return DenseBatch(scores)
    if isinstance(scores, Tensor) and scores.dim() >= 2 and scores.shape[-1] != scores.shape[-2]:
        batch_statistics(scores, gather, "none")
        return DenseBatch(scores)
    return None


def log_count(n: int, like: Tensor) -> Tensor:
    """``log(n)`` as a 0-d tensor built from ``n``: unlike ``math.log`` it keeps a symbolic size
    symbolic under ``torch.compile`` (no recompile per batch size)."""
    return torch.log(like.new_full((), n))


def reduce_terms(terms: Tensor, reduction: str) -> Tensor:
    """Apply a (validated) ``reduction`` over the last dimension of per-sample terms."""
    if reduction == "mean":
        return terms.mean(-1)
    if reduction == "sum":
        return terms.sum(-1)
    return terms


def all_pairs_from_means(
    mean_x: Tensor, mean_y: Tensor, mean_sq: Tensor | None, tau: float | Tensor
) -> Tensor:
    r""":math:`\frac{1}{NM}\sum_{i,j} S_{ij}` of separable scores from feature means: dot
    scores (``mean_sq`` None) :math:`\bar x\cdot\bar y/\tau`; Gaussian scores
    :math:`-(\overline{|x|^2} + \overline{|y|^2} - 2\bar x\cdot\bar y)/\tau`, with
    ``mean_sq`` the sum of the two mean squared norms."""
    cross = (mean_x * mean_y).sum(-1)
    if mean_sq is None:
        return cross / tau
    return -(mean_sq - 2 * cross) / tau


def positive_mask(s: Tensor, offset: int = 0) -> Tensor:
    """``(n, m)`` mask of the positive pairs of ``(..., n, m)`` scores: row ``i``'s positive is
    column ``offset + i`` (the diagonal of a square batch; one rank's rows of the global
    batch otherwise)."""
    rows = torch.arange(s.shape[-2], device=s.device)
    cols = torch.arange(s.shape[-1], device=s.device)
    return cols[None, :] == rows[:, None] + offset


def offdiag_row_sum(s: Tensor, fn: Callable[[Tensor], Tensor], offset: int = 0) -> Tensor:
    r""":math:`\sum_{j} \mathrm{fn}(S_{ij})` over each row's negatives, shape ``(..., n)``.

    ``fn`` is never evaluated on the positives, so an overflowing ``fn(S_ii)`` cannot leak a NaN
    into the gradient.
    """
    mask = positive_mask(s, offset)
    return fn(s.masked_fill(mask, 0.0)).masked_fill(mask, 0.0).sum(-1)


def diagonal(s: Tensor) -> Tensor:
    """Positive scores ``S[..., i, i]``, shape ``(..., N)``."""
    return torch.diagonal(s, dim1=-2, dim2=-1)


def row_logsumexp(s: Tensor) -> Tensor:
    r""":math:`\log\sum_j e^{S_{ij}}` for every row, shape ``(..., N)``."""
    return torch.logsumexp(s, dim=-1)


def col_logsumexp(s: Tensor) -> Tensor:
    r""":math:`\log\sum_i e^{S_{ij}}` for every column, shape ``(..., N)``."""
    return torch.logsumexp(s, dim=-2)


def offdiag_logmeanexp(s: Tensor) -> Tensor:
    r""":math:`\log \frac{1}{N(N-1)}\sum_{i\ne j} e^{S_{ij}}`, shape ``(...)``."""
    n = s.shape[-1]
    masked = s.masked_fill(positive_mask(s), -math.inf)
    # two stages (rows, then their results) rather than one flat N^2 reduction: under
    # torch.compile, inductor's CPU code guards on the reduction size, and an N^2 one would add
    # a recompile once N^2 > 4096
    return torch.logsumexp(torch.logsumexp(masked, dim=-1), dim=-1) - log_count(n * (n - 1), s)


def offdiag_row_mean(s: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
    r""":math:`\frac{1}{N-1}\sum_{j\ne i} \mathrm{fn}(S_{ij})` for every row, shape ``(..., N)``
    (see :func:`offdiag_row_sum`)."""
    return offdiag_row_sum(s, fn) / (s.shape[-1] - 1)


def offdiag_mean(s: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
    r""":math:`\frac{1}{N(N-1)}\sum_{i\ne j} \mathrm{fn}(S_{ij})`, shape ``(...)``."""
    return offdiag_row_mean(s, fn).mean(-1)


class GlobalBatch:
    r"""The reductions of this module over the concatenated batch of all ranks.

    Built from this rank's scores: a dense ``(..., n_local, N)`` tensor (local rows against
    every rank's columns, in rank order) or a :class:`~mibounds.scores.SeparableScores` of the
    local pairs, whose ``y`` (and, for symmetric bounds, ``x``) are gathered here. Every method
    returns the global statistic, the same on every rank, in the accumulation dtype.
    """

    def __init__(self, scores: Any, group: Any) -> None:
        self.group = group
        self.rank, self.world = distributed._world(group)
        self.plain = isinstance(scores, Tensor) or (
            scores.pairing.plain and getattr(scores, "bias", None) is None
            and scores.shape[-1] == scores.shape[-2]
        )  # fmt: skip
        if not self.plain and not isinstance(scores, SeparableScores):
            raise ValueError(
                "with gather, dense scores support the plain pairing only (positives on the "
                "diagonal); use SeparableScores for labels, exclusions or extra columns"
            )
        self.separable = isinstance(scores, SeparableScores)
        if isinstance(scores, SeparableScores):
            self.dtype = scores.dtype
            scores = unit_temperature(scores)
            self.scores = scores
            self.x, self.y, self.tau, self.sim = streaming_operands(scores)
            sizes = distributed._sizes_along("scores (gathered x and y)", self.x, -2, group)
            # gathered features, cached per grad mode (a copy gathered under no_grad has no
            # gradient to give back)
            self._gathered: dict[tuple[str, bool], Tensor] = {}
        else:
            _checks.check_tensor("scores", scores, min_dim=2)
            _checks.check_values("scores", scores)
            sizes = distributed._sizes_along("scores (gathered rows)", scores[..., 0], -1, group)
            if sum(sizes) != scores.shape[-1]:
                raise ValueError(
                    "with gather, dense scores must be (..., N_local, N_global): this rank's rows "
                    f"against the columns of all ranks; the ranks hold {sizes} rows (N = "
                    f"{sum(sizes)}), but scores has shape {tuple(scores.shape)}"
                )
            self.dtype = scores.dtype
            self.s = dense_scores(scores)
        if min(sizes) < 1:
            raise ValueError(f"gather: every rank needs at least one sample, got sizes {sizes}")
        self.sizes = sizes
        self.n_local = sizes[self.rank]
        self.offset = sum(sizes[: self.rank])
        self.n = sum(sizes)
        if self.n < 2:
            raise ValueError(f"gather: the global batch needs N >= 2 samples, got {self.n}")
        if not self.plain:
            self.local = self._local_batch(self.scores)

    def _local_batch(self, scores: Any) -> Any:
        """This rank's rows against the gathered paired columns (then this rank's extra
        columns, which every rank should hold alike, e.g. a shared queue), with the pairing
        expressed by global labels and the rows weighted within the global batch."""
        n_loc = self.n_local
        y_paired, y_extra = scores.y[..., :n_loc, :], scores.y[..., n_loc:, :]
        cols = torch.cat([self._gather_rows(y_paired), y_extra], dim=-2)
        k = y_extra.shape[-2]
        device = scores.x.device
        if scores.labels is None:
            # every pair is its own class; the extra columns get labels no row has
            rl = torch.arange(n_loc, device=device) + self.offset
            cl = torch.cat(
                [torch.arange(self.n, device=device), -1 - torch.arange(k, device=device)]
            )
        else:
            rl = scores.labels.to(device)
            local_cl = rl if scores.y_labels is None else scores.y_labels.to(device)
            gathered = distributed._AllGather.apply(local_cl[:n_loc], self.sizes, self.group)
            cl = torch.cat([gathered, local_cl[n_loc:]])
        local = SeparableScores(
            scores.x, cols, scores.similarity, scores.temperature, bias=scores.bias,
            labels=rl, y_labels=cl, exclude=scores.exclude,
        )  # fmt: skip

        def total(t: Tensor) -> Tensor:
            return distributed._AllReduce.apply(t.detach(), self.group)

        return SeparableBatch(local, self.offset, self.n, total)

    def _not_symmetric(self) -> None:
        if not self.plain:
            raise ValueError(
                "gather with labels, exclusions, a bias or extra columns supports the one-way "
                "(row) bounds only, not symmetric=True"
            )

    # -- helpers ----------------------------------------------------------------------------

    def _sum(self, t: Tensor) -> Tensor:
        return distributed._AllReduce.apply(t, self.group)

    def _gather_rows(self, t: Tensor) -> Tensor:
        return distributed._AllGather.apply(t.movedim(-2, 0), self.sizes, self.group).movedim(0, -2)

    def _stack(self, t: Tensor) -> Tensor:
        """``(world, ...)``: every rank's ``t``, with gradient."""
        return distributed._AllGather.apply(t.unsqueeze(0), [1] * self.world, self.group)

    def _gathered_features(self, which: str) -> Tensor:
        key = (which, torch.is_grad_enabled())
        if key not in self._gathered:
            self._gathered[key] = self._gather_rows(self.y if which == "y" else self.x)
        return self._gathered[key]

    def y_all(self) -> Tensor:
        """Every rank's ``y`` features, ``(..., N, d)``."""
        return self._gathered_features("y")

    def x_all(self) -> Tensor:
        """Every rank's ``x`` features, ``(..., N, d)``."""
        return self._gathered_features("x")

    # -- the reductions ---------------------------------------------------------------------

    def positives(self) -> Tensor:
        """This rank's positive scores, ``(..., n_local)``."""
        if self.separable:
            return sep_diagonal(self.scores)
        return torch.diagonal(self.s, offset=self.offset, dim1=-2, dim2=-1)

    def n_terms(self) -> Tensor | int:
        """The global number of rows that count."""
        return self.n if self.plain else self.local.rows

    def joint(self, fn: str = "identity") -> Tensor:
        """Global mean of ``fn`` of the positive scores."""
        if not self.plain:
            return self._sum(self.local.joint(fn))
        pos = self.positives()
        if fn != "identity":
            pos = streaming.elementwise_function(fn)(pos, 0.0)
        return self.row_mean(pos)

    def joint_columns(self) -> Tensor:
        """The column version of :meth:`joint` (the same with one positive per row)."""
        self._not_symmetric()
        return self.joint()

    def lse_term(self, symmetric: bool = False) -> Tensor:
        """Global mean row log-mean-exp (averaged with the column one if ``symmetric``)."""
        if symmetric:
            self._not_symmetric()
        if not self.plain:
            return self._sum(self.local.lse_term())
        return self.lse_mean(symmetric) - math.log(self.n)

    def row_mean(self, terms: Tensor) -> Tensor:
        """Global mean of per-row terms given this rank's ``(..., n_local)``."""
        return self._sum(terms.sum(-1)) / self.n

    def lse_mean(self, symmetric: bool = False) -> Tensor:
        r"""Mean row log-sum-exp (averaged with the column one if ``symmetric``)."""
        if self.separable:
            total = streaming.row_logsumexp_mean(self.x, self.y_all(), self.tau, self.sim)
            if symmetric:
                cols = streaming.row_logsumexp_mean(self.y, self.x_all(), self.tau, self.sim)
                total = 0.5 * (total + cols)
            return self._sum(total * self.n_local) / self.n
        total = torch.logsumexp(self.s, dim=-1).sum(-1)
        if symmetric:
            # every rank's column log-sum-exp over its rows, combined over ranks; this rank
            # keeps the columns of its own samples
            col = torch.logsumexp(self._stack(torch.logsumexp(self.s, dim=-2)), dim=0)
            own = col[..., self.offset : self.offset + self.n_local]
            total = 0.5 * (total + own.sum(-1))
        return self._sum(total) / self.n

    def offdiag_means(
        self,
        grad_fn: str,
        value_fn: str | None = None,
        shift: float = 0.0,
        param: float = 0.0,
        grad_value: bool = True,
    ) -> tuple[Tensor | None, Tensor]:
        """As :func:`mibounds.kernels.streaming.offdiag_means`, over the global batch."""
        if not self.plain:
            v, g = self.local.offdiag_means(grad_fn, value_fn, shift, param, grad_value)
            return (None if v is None else self._sum(v)), self._sum(g)
        local = self.n_local * (self.n - 1)
        if self.separable:
            v, g = streaming.offdiag_means(
                self.x,
                self.y_all(),
                self.tau,
                self.sim,
                grad_fn,
                value_fn,
                shift,
                param,
                grad_value,
                offset=self.offset,
            )
            v_sum = None if v is None else v * local
            g_sum = g * local
        else:
            t = self.s + shift if shift else self.s

            def total(name: str) -> Tensor:
                fn = streaming.elementwise_function(name)
                return offdiag_row_sum(t, lambda v: fn(v, param), self.offset).sum(-1)

            v_sum = None
            if value_fn is not None:
                with torch.no_grad():
                    v_sum = total(value_fn)
            g_sum = total(grad_fn)
            if not grad_value:
                g_sum = g_sum - g_sum.detach()
        count = self.n * (self.n - 1)
        v_mean = None if v_sum is None else self._sum(v_sum) / count
        return v_mean, self._sum(g_sum) / count

    def offdiag_logmeanexp(self) -> Tensor:
        r""":math:`\log\frac{1}{N(N-1)}\sum_{i\ne j} e^{S_{ij}}` over the global batch."""
        if not self.plain:
            return torch.logsumexp(self._stack(self.local.offdiag_logmeanexp()), dim=0)
        local = self.n_local * (self.n - 1)
        if self.separable:
            lse = streaming.offdiag_logmeanexp(
                self.x, self.y_all(), self.tau, self.sim, offset=self.offset
            ) + math.log(local)
        else:
            masked = self.s.masked_fill(positive_mask(self.s, self.offset), -math.inf)
            lse = torch.logsumexp(torch.logsumexp(masked, dim=-1), dim=-1)
        return torch.logsumexp(self._stack(lse), dim=0) - math.log(self.n * (self.n - 1))

    def all_pairs_mean(self) -> Tensor:
        r""":math:`\frac{1}{N^2}\sum_{i,j} S_{ij}` (the diagonal included)."""
        if not self.separable:
            return self._sum(self.s.sum((-2, -1))) / (self.n * self.n)
        x, y = upcast(self.x), upcast(self.y)
        mx, my = self._sum(x.sum(-2)) / self.n, self._sum(y.sum(-2)) / self.n
        sq = None
        if self.sim == "gaussian":
            sq = self._sum((x * x).sum(-1).sum(-1) + (y * y).sum(-1).sum(-1)) / self.n
        return all_pairs_from_means(mx, my, sq, self.tau)
