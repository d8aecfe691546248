"""The batch of all ranks: the reductions over the concatenated batch, from this rank's
scores and the features gathered from the others."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from mibounds import _checks, distributed
from mibounds._dtypes import upcast
from mibounds.kernels import streaming
from mibounds.kernels.operands import operands
from mibounds.reductions.batches import SeparableBatch, own_pair_scores
from mibounds.reductions.dense import (
    all_pairs_from_means,
    dense_scores,
    offdiag_row_sum,
    positive_mask,
)
from mibounds.scores import SeparableScores


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
        self.plain = isinstance(scores, Tensor) or scores._plain
        if not self.plain and not isinstance(scores, SeparableScores):
            raise ValueError(
                "with gather, dense scores support the plain pairing only (positives on the "
                "diagonal); use SeparableScores for labels, exclusions or extra columns"
            )
        self.separable = isinstance(scores, SeparableScores)
        if isinstance(scores, SeparableScores):
            ops = operands(scores.x, scores.y, scores.similarity, scores.temperature)
            self.scores, self.dtype, self._acc = scores, ops.dtype, ops.acc
            self.x, self.y, self.tau, self.sim = ops.x, ops.y, ops.tau, ops.sim
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
        # the operands (temperature folded in), so the local batch folds nothing again
        y_paired, y_extra = self.y[..., :n_loc, :], self.y[..., n_loc:, :]
        cols = torch.cat([self._gather_rows(y_paired), y_extra], dim=-2)
        k = y_extra.shape[-2]
        device = self.x.device
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
            self.x, cols, self.sim, self.tau, bias=scores.bias, labels=rl, y_labels=cl,
            exclude=scores.exclude,
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
            bias = self.scores.bias  # a tensor, once checked
            assert bias is None or isinstance(bias, Tensor)
            return own_pair_scores(self.x, self.y, self.tau, self.sim, bias, self._acc)
        return torch.diagonal(self.s, offset=self.offset, dim1=-2, dim2=-1)

    def n_terms(self) -> Tensor | int:
        """The global number of rows that count."""
        return self.n if self.plain else self.local.rows

    def positive_softplus(self) -> Tensor:
        """:meth:`joint` of ``"softplus-neg"``: SigLIP's term of the positives."""
        return self.joint("softplus-neg")

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
