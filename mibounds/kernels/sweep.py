r"""The streamed reductions as PyTorch panel sweeps (see :mod:`mibounds.kernels.panels`).

Each function here is the body of one ``mibounds::`` custom op when no fused kernel runs: it
returns a **scalar per leading batch index** and, when a gradient is needed, the gradient with
respect to ``x``, ``y``, ``tau`` (and the bias) accumulated during the same sweep; the backward
pass only scales the stored gradients by the incoming one.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mibounds._dtypes import finite_derivatives_
from mibounds.kernels.elementwise import _FNS, _exp
from mibounds.kernels.panels import (
    _col_softmax_lse,
    _col_softmax_lse_empty,
    _eager,
    _exp_diff,
    _kernel,
    _layout,
    _row_softmax_lse_empty,
    _shared_shift,
    _softmax_lse,
    _Sweep,
    _weights,
)

__all__ = [
    "interpolated_terms_sweep",
    "offdiag_lme_sweep",
    "offdiag_means_sweep",
    "row_lse_mean_sweep",
    "sym_lse_mean_sweep",
]


# --- weighted row (and column) log-sum-exp over the candidates --------------------------------


def row_lse_mean_sweep(
    x: Tensor,
    y: Tensor,
    tau: Tensor,
    bias: Tensor | None,
    sim: int,
    rl: Tensor | None,
    cl: Tensor | None,
    offset: int,
    exclude: int,
    n_paired: int,
    row_w: Tensor | None,
    minus_pos: bool,
    need_grad: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    r""":math:`\sum_i w_i \log\sum_{j \in C_i} e^{S_{ij}}` over each row's candidates
    :math:`C_i`; ``row_w=None`` is the plain mean (:math:`w_i = 1/n`).

    With ``minus_pos`` the value is :math:`\sum_i w_i (\log\sum_{j \in C_i} e^{S_{ij}} -
    \bar S_{i,P_i})`, each row's log-sum-exp less the mean of its positives' scores (a row
    without a positive keeps its log-sum-exp), formed per row as :math:`(m_i - \bar S_{i,P_i})
    + \log\sum_j e^{S_{ij} - m_i}` from the row maximum :math:`m_i`, so the scores' magnitude
    does not round it (the cross-entropy of the InfoNCE family, as accurate as
    ``torch.nn.functional.cross_entropy``); the gradient is still that of the log-sum-exp."""
    sw = _Sweep(x, y, tau, sim, need_grad, _layout(rl, cl, offset, exclude, n_paired), bias)
    w = _weights(row_w, sw.x, 1.0 / sw.n)
    value = sw.x.new_zeros(sw.b)
    for r0, r1 in sw.panels():
        s = sw.scores(r0, r1)
        sw.drop(s, r0, r1, "cand", -math.inf)
        p, lse = _kernel(_softmax_lse)(s)
        if minus_pos:  # (max - positives) + log sum e^{S - max}, never the sum of both
            lse = _gap_to_positives(sw, s, r0, r1) + _log_sum_from_max(p, -1)
        wp = w[r0:r1]
        value += lse.sum(-1) if row_w is None else (lse * wp).sum(-1)
        if need_grad:
            sw.accumulate(p.mul_(wp[:, None]), r0, r1)  # d(sum w lse)/dS = w softmax
    grads = sw.finish() if need_grad else sw.no_grads()
    return (value / sw.n if row_w is None else value, *grads)


def _log_sum_from_max(p: Tensor, dim: int) -> Tensor:
    r""":math:`\log\sum_j e^{S_j - m}` from the softmax ``p`` along ``dim``, as
    :math:`\log(1 + r / p_{max})` with :math:`r` the sum of the other entries (``log1p``: exact
    to the last bits when the maximum dominates, where ``-log(p_max)`` is not)."""
    top = p.amax(dim).double()
    # float64: the subtraction leaves r exact. On the CPU the copy first and then the sum (the
    # same sum, about twice as fast as summing with a dtype); elsewhere no float64 copy
    total = p.double().sum(dim) if p.device.type == "cpu" else p.sum(dim, dtype=torch.float64)
    rest = total - top
    return torch.log1p(rest / top).to(p.dtype)


def _gap_to_positives(sw: _Sweep, s: Tensor, r0: int, r1: int) -> Tensor:
    """Per row of the candidates' scores ``s`` (rows ``r0:r1``, ``-inf`` elsewhere), the mean
    over its positives of (row maximum - score), each difference exact where they are close,
    ``(B, P)``; the row maximum for a row without a positive (its term is then the
    log-sum-exp)."""
    top = s.amax(-1)
    if sw.plain:
        rows, cols = sw.diag(r0, r1)
        return top - s[:, rows, cols]
    drop = sw.layout.drop_mask(r0, r1, sw.m, "pos", s.device)
    if drop is None:  # every candidate is a positive
        return (top[..., None] - s).masked_fill_(torch.isinf(s), 0.0).mean(-1)
    kept = ~drop.expand_as(s)
    count = kept.sum(-1)
    mean = torch.where(kept, top[..., None] - s, 0.0).sum(-1) / count.clamp_min(1)
    return torch.where(count > 0, mean, top)


# --- symmetric: the row and the column log-sum-exp ------------------------------------------


def sym_lse_mean_sweep(
    x: Tensor,
    y: Tensor,
    tau: Tensor,
    bias: Tensor | None,
    sim: int,
    rl: Tensor | None,
    cl: Tensor | None,
    offset: int,
    exclude: int,
    n_paired: int,
    row_w: Tensor | None,
    col_w: Tensor | None,
    minus_pos: bool,
    need_grad: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    r""":math:`\sum_i u_i \log\sum_{j\in C_i} e^{S_{ij}} + \sum_j v_j \log\sum_{i \in C^j}
    e^{S_{ij}}` (with ``minus_pos``, each row's and column's term less the mean score of its
    positives, formed from its own maximum as in :func:`row_lse_mean_sweep`; the gradient is
    the log-sum-exps') in two sweeps and four matrix products: the first gathers the row and the
    (online) column log-sum-exp, the second forms the gradient of both terms at once. A batch
    that fits one panel keeps its scores and row softmax for the second sweep: three products.
    Without weights, :math:`u = v = 1/(2n)` (CLIP's average of the two directions).

    Where every column of a panel has its maximum within :data:`_SHARED_RANGE` of the panel's
    maximum :math:`c` (always, for cosine scores at usual temperatures), the row softmax
    :math:`p` serves both directions: with the row log-sum-exps :math:`\ell_i`,
    :math:`e^{S_{ij} - c} = p_{ij} e^{\ell_i - c}`, so the column sums are one
    matrix-vector product, and the gradient is
    :math:`p_{ij}\,(u_i + v_j e^{\ell_i - L_j})`, every factor finite. Other panels take a
    row and a column softmax."""
    sw = _Sweep(x, y, tau, sim, need_grad, _layout(rl, cl, offset, exclude, n_paired), bias)
    n, m = sw.n, sw.m
    u = _weights(row_w, sw.x, 0.5 / n)
    # unweighted, the columns share the rows' weights (the same 1 / (2n))
    v = u if col_w is None and m == n else _weights(col_w, sw.x, 0.5 / n)
    # with exclusions a panel may hold a column without candidates
    col_softmax = _col_softmax_lse if sw.plain else _col_softmax_lse_empty
    # one panel of every row forms the row log-sum-exps whole; more fill them in
    row_lse: Tensor | None = None if sw.whole else sw.x.new_empty(sw.b, n)
    below = _Below(sw) if minus_pos else None
    col_lse = sw.x.new_full((sw.b, m), -math.inf) if below is None else None
    shared: list[bool] = []
    # one panel: its scores (and, eager, its row softmax) serve the gradient pass as they are
    kept: tuple[Tensor, Tensor | None] | None = None
    for r0, r1 in sw.panels():
        s = sw.scores(r0, r1)
        if below is not None:
            below.positives(s, r0, r1)
        sw.drop(s, r0, r1, "cand", -math.inf)
        p, lse = _kernel(_softmax_lse)(s)
        if need_grad and sw.whole:
            kept = (s, p if _eager() else None)
        if row_lse is None:
            row_lse = lse
        else:
            row_lse[:, r0:r1] = lse
        if below is not None:  # the column statistics come from each column's own softmax
            col_max = below.panel(s, r0, r1, p, _kernel(col_softmax)(s)[0])
            shared.append(_shared_shift(s, col_max) is not None)
            continue
        c = _shared_shift(s)
        shared.append(c is not None)
        if c is not None:
            scale = torch.exp(lse - c[:, None])  # (B, P), e^{l_i - c}
            col_sums = torch.bmm(scale[:, None, :], p)[:, 0]  # sum_i e^{S_ij - c}
            panel_col_lse = c[:, None] + torch.log(col_sums)
        else:
            panel_col_lse = _kernel(col_softmax)(s)[1]
        assert col_lse is not None
        col_lse = torch.logaddexp(col_lse, panel_col_lse)
    if below is not None:
        col_lse = below.col_lse()
    assert col_lse is not None and row_lse is not None
    # columns of weight 0 add nothing (not even a NaN from an empty column); without column
    # weights every one counts
    counted = None if col_w is None else v != 0
    rows, cols = (row_lse, col_lse) if below is None else below.terms()
    value = (rows * u).sum(-1) + _where_counted(counted, cols * v).sum(-1)
    if not need_grad:
        return (value, *sw.no_grads())
    for k, (r0, r1) in enumerate(sw.panels()):
        if kept is None:
            s, p_row = sw.scores(r0, r1), None
            sw.drop(s, r0, r1, "cand", -math.inf)
        else:
            s, p_row = kept
        if shared[k]:
            p = torch.softmax(s, dim=-1) if p_row is None else p_row
            c = row_lse[:, r0:r1].amax(-1)  # any shift works: alpha and beta cancel it
            alpha = torch.exp(row_lse[:, r0:r1] - c[:, None])  # (B, P)
            beta = _where_counted(counted, v * torch.exp(c[:, None] - col_lse))  # (B, M)
            outer = torch.baddbmm(
                u[r0:r1].expand(sw.b, -1)[:, :, None], alpha[:, :, None], beta[:, None, :]
            )
            g = p.mul_(outer)
        else:
            p_col, panel_col_lse = _kernel(col_softmax)(s)
            # exp(S_ij - L_j) = column softmax within the panel times exp(panel lse_j - L_j)
            g = p_col.mul_((_exp_diff(panel_col_lse, col_lse) * v)[:, None, :])
            p = torch.softmax(s, dim=-1) if p_row is None else p_row
            g.add_(p.mul_(u[r0:r1, None]))
        sw.accumulate(g, r0, r1)
    return (value, *sw.finish())


def _where_counted(counted: Tensor | None, t: Tensor) -> Tensor:
    """``t``, 0 where ``counted`` is False."""
    return t if counted is None else torch.where(counted, t, 0.0)


class _Below:
    """The row and column log-sum-exps less their positives' mean scores, each formed from
    its own maximum (no rounding of a large log-sum-exp before the subtraction): per row
    :math:`(m_i - \bar S_{i,P_i}) + \\log\\sum_j e^{S_{ij} - m_i}`, per column the same with
    the column's running maximum and sum merged over the panels."""

    def __init__(self, sw: _Sweep) -> None:
        self.sw = sw
        b, n, m = sw.b, sw.n, sw.m
        # each row's term; one panel of every row forms them whole
        self.rows: Tensor | None = None if sw.whole else sw.x.new_empty(b, n)
        # the running column maximum and log sum e^{S - col_max}; None before the first panel
        self.col_max: Tensor | None = None
        self.col_log: Tensor | None = None
        # one panel of the plain square pairing: each column's one positive is on the diagonal
        self.square = sw.plain and sw.whole and n == m and sw.layout.offset == 0
        self.diagonal: Tensor | None = None
        if not self.square:  # the sum and count of each column's positives
            self.col_pos = sw.x.new_zeros(b, m)
            self.col_npos = sw.x.new_zeros(m)

    def positives(self, s: Tensor, r0: int, r1: int) -> None:
        """The columns' positive scores of a panel (before the non-candidates are dropped)."""
        sw = self.sw
        if self.square:
            self.diagonal = s.diagonal(dim1=1, dim2=2).clone()
            return
        if sw.plain:
            rows, cols = sw.diag(r0, r1)
            self.col_pos[:, cols] += s[:, rows, cols]
            self.col_npos[cols] += 1
            return
        drop = sw.layout.drop_mask(r0, r1, sw.m, "pos", s.device)
        kept = torch.ones_like(s[0]) if drop is None else (~drop).to(s.dtype).expand_as(s[0])
        self.col_pos += (s * kept).sum(1)
        self.col_npos += kept.sum(0)

    def panel(self, s: Tensor, r0: int, r1: int, p: Tensor, p_col: Tensor) -> Tensor:
        """Rows ``r0:r1`` of the candidates' scores ``s`` (``-inf`` elsewhere), with their
        row softmax ``p`` and column softmax ``p_col``; returns the panel's column maxima."""
        rows = _gap_to_positives(self.sw, s, r0, r1) + _log_sum_from_max(p, -1)
        if self.rows is None:
            self.rows = rows
        else:
            self.rows[:, r0:r1] = rows
        m_p = s.amax(1)
        # log sum_i e^{S_ij - m_p}; -inf for an empty column (no candidate in this panel)
        l_p = torch.where(torch.isneginf(m_p), -math.inf, _log_sum_from_max(p_col, 1))
        if self.col_max is None or self.col_log is None:  # the first panel: nothing to merge
            self.col_max, self.col_log = m_p, l_p
            return m_p
        new = torch.maximum(self.col_max, m_p)
        safe = torch.where(torch.isneginf(new), 0.0, new)
        self.col_log = torch.logaddexp(
            self.col_log + torch.where(torch.isneginf(self.col_max), 0.0, self.col_max - safe),
            l_p + torch.where(torch.isneginf(m_p), 0.0, m_p - safe),
        )
        self.col_max = new
        return m_p

    def col_lse(self) -> Tensor:
        """Per column, the log-sum-exp over its candidates (``-inf`` for none)."""
        assert self.col_max is not None and self.col_log is not None
        empty = torch.isneginf(self.col_max)
        return torch.where(empty, -math.inf, self.col_max + self.col_log)

    def terms(self) -> tuple[Tensor, Tensor]:
        """Per row and per column, the log-sum-exp less the positives' mean (a line without
        a positive keeps its log-sum-exp)."""
        assert self.rows is not None and self.col_max is not None and self.col_log is not None
        if self.diagonal is not None:  # every column has its one positive
            return self.rows, (self.col_max - self.diagonal) + self.col_log
        mean = self.col_pos / self.col_npos.clamp_min(1)
        has = self.col_npos > 0
        cols = torch.where(has, self.col_max - mean, self.col_max) + self.col_log
        return self.rows, cols


# --- log-mean-exp over the negatives ---------------------------------------------------------


def offdiag_lme_sweep(
    x: Tensor,
    y: Tensor,
    tau: Tensor,
    bias: Tensor | None,
    sim: int,
    rl: Tensor | None,
    cl: Tensor | None,
    offset: int,
    exclude: int,
    n_paired: int,
    log_w: Tensor | None,
    need_grad: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    r""":math:`\log\sum_i w_i \sum_{j \in N_i} e^{S_{ij}}` over each row's negatives
    :math:`N_i`, with ``log_w`` :math:`= \log w`; ``None``: the plain mean over the
    ``n (m - 1)`` pairs ``(i, j != offset + i)``."""
    sw = _Sweep(x, y, tau, sim, need_grad, _layout(rl, cl, offset, exclude, n_paired), bias)
    lw = _weights(log_w, sw.x, -math.log(sw.n * (sw.m - 1)))
    softmax = _kernel(_softmax_lse) if sw.plain else _row_softmax_lse_empty
    run_max = sw.x.new_full((sw.b,), -math.inf)
    run_sum = sw.x.new_zeros(sw.b)
    for r0, r1 in sw.panels():
        s = sw.scores(r0, r1)
        sw.drop(s, r0, r1, "neg", -math.inf)
        p, lse = softmax(s)  # per-row softmax and log-sum-exp over the negatives
        lse = lse + lw[r0:r1]
        new_max = torch.maximum(run_max, lse.amax(-1))
        rescale = _exp_diff(run_max, new_max)  # 0 on the first panel
        weight = _exp_diff(lse, new_max[:, None])  # (B, P): each row's share, <= 1
        run_sum = run_sum * rescale + weight.sum(-1)
        if need_grad:
            # unnormalised gradients w e^{S - max} = p * weight, in the running-max frame
            sw.rescale(rescale, r0)
            sw.accumulate(p.mul_(weight[..., None]), r0, r1)
        run_max = new_max
    value = run_max + torch.log(run_sum)
    grads = sw.finish(1.0 / run_sum) if need_grad else sw.no_grads()
    return (value, *grads)


def offdiag_means_sweep(
    x: Tensor,
    y: Tensor,
    tau: Tensor,
    bias: Tensor | None,
    sim: int,
    rl: Tensor | None,
    cl: Tensor | None,
    offset: int,
    exclude: int,
    n_paired: int,
    weight: Tensor | None,
    value_fn: int,
    grad_fn: int,
    shift: float,
    param: float,
    positives: bool,
    need_grad: bool,
    grad_value: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    r"""Weighted sums :math:`\sum_i w_i \sum_{j} \mathrm{fn}(S_{ij} + \mathrm{shift})` over each
    row's negatives (or, with ``positives``, its positives) of ``value_fn`` (no gradient) and
    ``grad_fn`` (with gradient); ``value_fn = -1`` skips the first. ``weight=None``: the plain
    mean over the ``n (m - 1)`` pairs ``(i, j != offset + i)``. ``param`` is passed to both
    functions. With ``grad_value=False`` the second sum is returned as 0 but keeps its gradient
    (for objectives whose value cancels, as in :func:`mibounds.js`), and ``grad_fn`` itself is
    never evaluated, only its derivative."""
    sw = _Sweep(x, y, tau, sim, need_grad, _layout(rl, cl, offset, exclude, n_paired), bias)
    # the row sums are weighted and added in float64 (O(n) work): the mean of n (m - 1)
    # terms then carries the rounding of the row sums only
    w = _weights(weight, sw.x, 1.0 / (sw.n * (sw.m - 1)), torch.float64)
    keep = "pos" if positives else "neg"
    vsum = w.new_zeros(sw.b)
    gsum = w.new_zeros(sw.b)
    _, gfn, gdfn = _FNS[grad_fn]
    vfn = _FNS[value_fn][1] if value_fn >= 0 else None
    # exp goes through the softmax: sum_j e^{S_ij} = e^{lse_i} (the fast exponential)
    value_exp, grad_exp = vfn is _exp, gfn is _exp
    for r0, r1 in sw.panels():
        s = sw.scores(r0, r1)
        if shift != 0.0:
            s.add_(shift)
        wp = w[r0:r1]
        dropped = sw.drop(s, r0, r1, keep, -math.inf)  # every function is zeroed there below
        g = None
        if value_exp or grad_exp:
            softmax = _kernel(_softmax_lse) if sw.plain else _row_softmax_lse_empty
            p, lse = softmax(s)
            row_total = torch.exp(lse)  # sum over the kept j of e^{S_ij}, per row
            if value_exp:
                vsum += (row_total * wp).sum(-1)
            if grad_exp:
                gsum += (row_total * wp).sum(-1)
                if need_grad:
                    # e^S as softmax times the row sums (the fast exponential of the CPU); if a
                    # row sum overflows, the dense e^S, whose overflowing entries get the
                    # derivative 0 (the overflow rule of the dense path). Reading the CPU flag
                    # is no device synchronisation; on accelerators, whose exp is fast anyway,
                    # e^S is computed directly and nothing is read back.
                    if s.device.type == "cpu" and bool(torch.isfinite(row_total).all()):
                        g = p.mul_(row_total[..., None])
                    else:
                        g = finite_derivatives_(torch.exp(s))
        if vfn is not None and not value_exp:
            v = sw.zero(vfn(s, param), dropped, r0, r1)  # type: ignore[operator]
            vsum += (v.sum(-1) * wp).sum(-1)
        if not grad_exp:
            if grad_value:
                gv = sw.zero(gfn(s, param), dropped, r0, r1)  # type: ignore[operator]
                gsum += (gv.sum(-1) * wp).sum(-1)
            if need_grad:
                g = finite_derivatives_(gdfn(s, param))  # type: ignore[operator]
        if need_grad:
            assert g is not None
            sw.zero(g, dropped, r0, r1)
            sw.accumulate_scaled(g.mul_(wp[:, None].to(g.dtype)), r0, r1)
    grads = sw.finish() if need_grad else sw.no_grads()
    return (vsum.to(sw.x.dtype), gsum.to(sw.x.dtype), *grads)


# --- the alpha-interpolated bound: leave-one-out column statistics, three sweeps -----------


def _column_stats(sw: _Sweep) -> tuple[Tensor, Tensor, Tensor]:
    """Per column ``j``: the row index of its maximum, the log-sum-exp of every entry and the
    log-sum-exp of the entries other than the maximum (merged online over the panels)."""
    b, m = sw.b, sw.m
    top = sw.x.new_full((b, m), -math.inf)
    top_row = torch.zeros(b, m, dtype=torch.long, device=sw.x.device)
    rest = sw.x.new_full((b, m), -math.inf)
    for r0, r1 in sw.panels():
        s = sw.scores(r0, r1)
        p_top, p_arg = s.max(dim=1)
        p_rest = torch.logsumexp(s.scatter(1, p_arg[:, None, :], -math.inf), dim=1)
        newer = p_top > top
        rest = torch.where(
            newer,
            torch.logaddexp(torch.logaddexp(rest, top), p_rest),
            torch.logaddexp(torch.logaddexp(rest, p_top), p_rest),
        )
        top_row = torch.where(newer, p_arg + r0, top_row)
        top = torch.where(newer, p_top, top)
    return top_row, torch.logaddexp(top, rest), rest


def _leave_one_out(s: Tensor, is_top: Tensor, lse: Tensor, rest: Tensor) -> Tensor:
    r"""``log sum_{k != i} e^{S_kj}`` for entries ``s`` of rows ``i`` (``is_top``: row ``i`` is
    its column's maximum; ``lse``, ``rest``: the column statistics, broadcast to ``s``). Exact:
    every entry but a column's maximum is at most half of its column's sum, and the maximum's
    own entry is the stored sum of the others."""
    rel = (s - lse).clamp_max(-math.log(2.0))
    return torch.where(is_top, rest, lse + torch.log1p(-torch.exp(rel)))


def interpolated_terms_sweep(
    x: Tensor,
    y: Tensor,
    tau: Tensor,
    log_baseline: Tensor,
    sim: int,
    alpha: float,
    need_grad: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    r"""The part of the interpolated bound beyond :math:`1 + \frac1N\sum_j S_{jj}`:
    :math:`-\frac{1}{N(N-1)}\sum_{i\ne j} A_{ij} - \frac1N\sum_j e^{L_{jj} - A_{jj}}` (see
    :func:`mibounds.interpolated`), in three sweeps: column statistics; the sum of
    :math:`A` with per-column sums for the gradient; the gradient."""
    sw = _Sweep(x, y, tau, sim, need_grad)
    n = sw.n
    b = log_baseline.to(sw.x.dtype)
    log_a, log_1ma = math.log(alpha), math.log1p(-alpha)
    log_k = math.log(n - 1)
    top_row, lse, rest = _column_stats(sw)
    # the diagonal's leave-one-out statistics, O(N d)
    if sim == 0:
        diag = (sw.x * sw.y).sum(-1) * sw.inv[:, 0]
    else:
        diag = -((sw.x - sw.y) ** 2).sum(-1) * sw.inv[:, 0]
    cols = torch.arange(n, device=sw.x.device)
    l_diag = _leave_one_out(diag, top_row == cols, lse, rest) - log_k
    a_diag = torch.logaddexp(log_a + l_diag, log_1ma + b)
    phi = torch.exp(l_diag - a_diag)  # e^{L_jj - A_jj} <= 1 / alpha

    def panel(r0: int, r1: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Scores of rows ``r0:r1``, their column-maximum mask, ``L`` and ``A``."""
        s = sw.scores(r0, r1)
        rows = torch.arange(r0, r1, device=sw.x.device)
        is_top = rows[None, :, None] == top_row[:, None, :]
        ell = _leave_one_out(s, is_top, lse[:, None, :], rest[:, None, :]) - log_k
        return s, is_top, ell, torch.logaddexp(log_a + ell, log_1ma + b[:, None, :])

    sum_a = sw.x.new_zeros(sw.b)
    log_q = sw.x.new_full((sw.b, n), -math.inf)  # log sum_{i != j} alpha e^{-A_ij}
    log_q_rest = log_q.clone()  # the same without the column's maximum row
    sum_w = sw.x.new_zeros(sw.b, n)  # sum_{i != j} alpha e^{L_ij - A_ij}
    for r0, r1 in sw.panels():
        s, is_top, ell, a = panel(r0, r1)
        prow, pcol = sw.diag(r0, r1)
        a[:, prow, pcol] = 0.0
        sum_a += a.sum((1, 2))
        neg_a = log_a - a
        neg_a[:, prow, pcol] = -math.inf
        log_q = torch.logaddexp(log_q, torch.logsumexp(neg_a, dim=1))
        log_q_rest = torch.logaddexp(
            log_q_rest, torch.logsumexp(neg_a.masked_fill(is_top, -math.inf), dim=1)
        )
        w = torch.exp(neg_a + ell)
        sum_w += w.sum(1)
    value = -sum_a / (n * (n - 1)) - phi.mean(-1)
    if not need_grad:
        return (value, *sw.no_grads()[:3], b.new_zeros(0))
    w_diag = alpha * phi  # alpha e^{L_jj - A_jj}
    coef_f = phi * (1 - w_diag) / (n * (n - 1))  # d/dS_kj of the phi term, per e^{S_kj - L_jj}
    coef_a = 1.0 / (n * (n - 1) * (n - 1))
    for r0, r1 in sw.panels():
        s, is_top, _, a = panel(r0, r1)
        # d/dS_kj of the A terms: e^{S_kj} times the column's sum of alpha e^{-A_ij} over
        # i != j, k. For the column's maximum row that sum is stored without it (subtracting
        # its dominant term would cancel); for the other rows the subtraction is stable.
        g = torch.exp(s + torch.where(is_top, log_q_rest[:, None, :], log_q[:, None, :]))
        own = torch.exp(log_a + s - a).masked_fill(is_top, 0.0)
        own -= coef_f[:, None, :] / coef_a * torch.exp(s - l_diag[:, None, :])
        prow, pcol = sw.diag(r0, r1)
        own[:, prow, pcol] = 0.0
        g = (own - g).mul_(coef_a)
        sw.accumulate_scaled(finite_derivatives_(g), r0, r1)
    db = -((n - 1) - sum_w) / (n * (n - 1)) + phi * (1 - w_diag) / n
    return (value, *sw.finish()[:3], db.to(log_baseline.dtype))
