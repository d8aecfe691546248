r"""The tensor-core panel path: cuBLAS products, one fused elementwise kernel per panel pass.

For large feature sizes the four matrix products of an exact loss dominate, and cuBLAS runs
them near the tensor cores' peak. This path sweeps panels of ``P`` rows (``P`` sized from the
free memory, so a panel holds gigabytes of scores on a GPU):

1. ``X_p Y^T`` by cuBLAS, with the features in their own dtype (bfloat16, float16 or float32
   at the matmul precision torch is set to) and **float32 results**
   (``torch.bmm(..., out_dtype=torch.float32)``), never on upcast operands;
2. one Triton kernel that reads the panel once and applies the temperature, the bias and the
   pairing (from the label vectors): per-row log-sum-exp (or sums of elementwise functions)
   and, for the symmetric loss, per-column partial log-sum-exps;
3. for the gradient, one Triton kernel that reads the panel once more and writes the score
   gradient ``G`` in the features' dtype, then ``dX_p = G Y`` and ``dY += G^T X_p`` by cuBLAS.

One-way reductions (InfoNCE, NT-Xent, SupCon, the elementwise sums of NWJ, JS, SigLIP) need a
single sweep and three products (the scores, ``G Y``, ``G^T X``); the symmetric log-sum-exp
(CLIP) and the log-mean-exp over the negatives need the row and column statistics of every
panel before any gradient, so they sweep twice and recompute the scores: four products.

The functions here take and return what the fused kernels of
:mod:`mibounds.kernels.triton_kernels` do, so the dispatch can use either. Where Triton runs
in its interpreter (the CPU, ``TRITON_INTERPRET=1``) the products are ``torch.bmm`` on float32
copies, which is exactly the float32 result of a tensor-core product of the same operands.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from mibounds.kernels import triton_kernels as tk
from mibounds.kernels.panels import HALF_MAX as _HALF_MAX
from mibounds.kernels.panels import get_memory_budget
from mibounds.kernels.panels import product as _product

__all__ = [
    "lse",
    "means",
    "neg_lme",
    "panel_rows",
    "symmetric_lse",
]

#: Rows and columns of one step of the elementwise kernels, and their warps.
_BR, _BC, _WARPS = 32, 128, 8


def panel_rows(n: int, m: int, g_bytes: int, device: torch.device) -> int:
    """Rows per panel: the float32 scores and the gradient ``G`` (``g_bytes`` per entry) of
    ``P x m`` entries within the sweep's memory budget
    (:func:`~mibounds.kernels.panels.get_memory_budget`), a multiple of the kernels' row block.

    Example:
        >>> panel_rows(65536, 65536, 2, torch.device("cpu"))
        64
    """
    budget = get_memory_budget(device)
    p = budget // ((4 + g_bytes) * max(m, 1))
    p = max(_BR, (p // _BR) * _BR)
    return min(p, ((n + _BR - 1) // _BR) * _BR)


if tk.HAS_TRITON:
    import triton
    import triton.language as tl

    from mibounds.kernels import triton_jit as tj

    @triton.jit
    def _panel_stats_kernel(
        s_ptr, out1_ptr, out2_ptr, cmax_ptr, csum_ptr, cpos_ptr, cnpos_ptr, r0, p, n, m, tau_ptr,
        bias_ptr, shift, param, rl_ptr, cl_ptr, offset, n_paired,
        MODE: tl.constexpr, FN1: tl.constexpr, FN2: tl.constexpr, BIAS: tl.constexpr,
        LABELS: tl.constexpr, EXCLUDE: tl.constexpr, SET: tl.constexpr,
        COLSTATS: tl.constexpr, MINUS_POS: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr,
    ):  # fmt: skip
        # One read of a panel of raw products (rows r0 .. r0 + p of batch index program_id(1)):
        # S = raw / tau + b on the set; MODE 0, out1[row] = log sum_j e^{S_ij} and, with
        # COLSTATS, this block's column maximum and sum of e^{S - max} per column, and with
        # MINUS_POS out2[row] = (max - mean positive score) + log sum_j e^{S_ij - max}; MODE 1,
        # out1[row], out2[row] = sums of FN1, FN2 of S + shift.
        batch = tl.program_id(1).to(tl.int64)
        block = tl.program_id(0)
        s_ptr += batch * p * m
        out1_ptr += batch * n
        out2_ptr += batch * n
        cmax_ptr += (batch * tl.num_programs(0) + block) * m
        csum_ptr += (batch * tl.num_programs(0) + block) * m
        cpos_ptr += (batch * tl.num_programs(0) + block) * m
        cnpos_ptr += (batch * tl.num_programs(0) + block) * m
        inv_tau = 1.0 / tl.load(tau_ptr)
        b = 0.0
        if BIAS:
            b = tl.load(bias_ptr)
        local = block * BR + tl.arange(0, BR)
        lmask = local < p
        rows = r0 + local
        mx = tl.full((BR,), float("-inf"), tl.float32)
        z = tl.zeros((BR,), tl.float32)
        z2 = tl.zeros((BR,), tl.float32)
        npos = tl.zeros((BR,), tl.float32)
        for c0 in range(0, m, BC):
            cols = c0 + tl.arange(0, BC)
            cmask = cols < m
            raw = tl.load(
                s_ptr + local[:, None].to(tl.int64) * m + cols[None, :],
                mask=lmask[:, None] & cmask[None, :],
                other=0.0,
            )
            s = raw * inv_tau + b
            keep = tj._keep(
                rows, cols, r0 + p, m, rl_ptr, cl_ptr, offset, n_paired, LABELS, EXCLUDE, SET
            )
            if MINUS_POS:
                pos = tj._keep(
                    rows, cols, r0 + p, m, rl_ptr, cl_ptr, offset, n_paired, LABELS, EXCLUDE, 2
                )
                z2 += tl.sum(tl.where(pos, s, 0.0), axis=1)
                npos += tl.sum(pos.to(tl.float32), axis=1)
                if COLSTATS:  # the columns' positives, for their own terms
                    tl.store(cpos_ptr + cols, tl.sum(tl.where(pos, s, 0.0), axis=0), mask=cmask)
                    tl.store(cnpos_ptr + cols, tl.sum(pos.to(tl.float32), axis=0), mask=cmask)
            if MODE == 0:
                s = tl.where(keep, s, float("-inf"))
                m_new = tl.maximum(mx, tl.max(s, axis=1))
                m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
                z = z * tl.exp(mx - m_safe) + tl.sum(tl.exp(s - m_safe[:, None]), axis=1)
                mx = m_new
                if COLSTATS:
                    cm = tl.max(s, axis=0)
                    cm_safe = tl.where(cm == float("-inf"), 0.0, cm)
                    cs = tl.sum(tl.exp(s - cm_safe[None, :]), axis=0)
                    tl.store(cmax_ptr + cols, cm, mask=cmask)
                    tl.store(csum_ptr + cols, cs, mask=cmask)
            else:
                t = s + shift
                z += tl.sum(tl.where(keep, tj._fn(t, param, FN1), 0.0), axis=1)
                z2 += tl.sum(tl.where(keep, tj._fn(t, param, FN2), 0.0), axis=1)
        if MODE == 0:
            log_z = tl.log(tl.where(z > 0.0, z, 1.0))
            lse = tl.where(z > 0.0, mx + log_z, float("-inf"))
            tl.store(out1_ptr + rows, lse, mask=lmask)
            if MINUS_POS:
                below = tl.where(npos > 0.0, mx - z2 / tl.maximum(npos, 1.0), mx)
                tl.store(out2_ptr + rows, tl.where(z > 0.0, below + log_z, lse), mask=lmask)
        else:
            tl.store(out1_ptr + rows, z, mask=lmask)
            tl.store(out2_ptr + rows, z2, mask=lmask)

    @triton.jit
    def _panel_grad_kernel(
        s_ptr, g_ptr, c_ptr, w_ptr, c2_ptr, w2_ptr, rowsum_ptr, r0, p, n, m, tau_ptr, bias_ptr,
        shift, param, rl_ptr, cl_ptr, offset, n_paired, limit,
        MODE: tl.constexpr, FN: tl.constexpr, BIAS: tl.constexpr, LABELS: tl.constexpr,
        EXCLUDE: tl.constexpr, SET: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr,
    ):  # fmt: skip
        # One read of a panel of raw products, one write of G in g_ptr's dtype (clamped to
        # +-limit): MODE 0, w_i e^{S_ij - c_i}; MODE 1, w_i FN'(S_ij + shift); MODE 2, MODE 0's
        # term plus w2_j e^{S_ij - c2_j}; c, w per row (global index), c2, w2 per column.
        # rowsum[row] = sum_j G_ij (the bias gradient).
        batch = tl.program_id(1).to(tl.int64)
        s_ptr += batch * p * m
        g_ptr += batch * p * m
        c_ptr += batch * n
        c2_ptr += batch * m
        rowsum_ptr += batch * n
        inv_tau = 1.0 / tl.load(tau_ptr)
        b = 0.0
        if BIAS:
            b = tl.load(bias_ptr)
        local = tl.program_id(0) * BR + tl.arange(0, BR)
        lmask = local < p
        rows = r0 + local
        w = tl.load(w_ptr + rows, mask=lmask, other=0.0)
        c = w
        if MODE != 1:
            c = tl.load(c_ptr + rows, mask=lmask, other=0.0)
        gs = tl.zeros((BR,), tl.float32)
        for c0 in range(0, m, BC):
            cols = c0 + tl.arange(0, BC)
            cmask = cols < m
            inside = lmask[:, None] & cmask[None, :]
            offs = local[:, None].to(tl.int64) * m + cols[None, :]
            s = tl.load(s_ptr + offs, mask=inside, other=0.0) * inv_tau + b
            keep = tj._keep(
                rows, cols, r0 + p, m, rl_ptr, cl_ptr, offset, n_paired, LABELS, EXCLUDE, SET
            )
            c2 = tl.zeros((BC,), tl.float32)
            w2 = c2
            if MODE == 2:
                c2 = tl.load(c2_ptr + cols, mask=cmask, other=0.0)
                w2 = tl.load(w2_ptr + cols, mask=cmask, other=0.0)
            g = tj._score_grad(s, keep, c, w, c2, w2, shift, param, MODE, FN)
            gs += tl.sum(g, axis=1)
            g = tl.minimum(tl.maximum(g, -limit), limit)
            tl.store(g_ptr + offs, g.to(g_ptr.dtype.element_ty), mask=inside)
        tl.store(rowsum_ptr + rows, gs, mask=lmask)


class _Panels:
    """One call's operands, pairing and panel layout, and the two kernels' launches."""

    def __init__(self, x: Tensor, y: Tensor, tau: Tensor, pairs: tk.Pairs, bias: Tensor | None):
        self.x, self.y = x, y
        self.la = tk._launch(x, y, tau, pairs, bias)
        self.b, self.n, self.m = self.la.b, self.la.n, self.la.m
        self.yt = y.transpose(1, 2)
        self.flags = {k: self.la.flags[k] for k in ("BIAS", "LABELS", "EXCLUDE")}

    def g_dtype(self, mode: int) -> torch.dtype:
        """``G`` in the features' dtype; float32 for float16 features' elementwise
        derivatives (their range exceeds float16's)."""
        if self.x.dtype == torch.float16 and mode == 1:
            return torch.float32
        return self.x.dtype

    def panels(self, g_dtype: torch.dtype):
        rows = panel_rows(self.n, self.m, torch.finfo(g_dtype).bits // 8, self.x.device)
        for r0 in range(0, self.n, rows):
            yield r0, min(self.n, r0 + rows)

    def scores(self, r0: int, r1: int) -> Tensor:
        """The raw products ``X_p Y^T`` ``(B, P, m)``, float32."""
        return _product(self.x[:, r0:r1], self.yt)

    def stats(
        self, raw: Tensor, r0: int, which: int, mode: int, out1: Tensor, out2: Tensor,
        colstats: bool = False, fn1: int = 0, fn2: int = 0, shift: float = 0.0,
        param: float = 0.0, minus_pos: bool = False,
    ) -> tuple[Tensor, Tensor, Tensor | None] | None:  # fmt: skip
        """Row statistics of a panel into ``out1``/``out2`` ``(B, n)``; with ``colstats``
        the panel's column maximum and sum of ``e^{S - max}`` ``(B, m)``, and with
        ``minus_pos`` too the columns' positive scores' sums and counts ``(B, 2, m)``."""
        la, p = self.la, raw.shape[1]
        blocks = triton.cdiv(p, _BR)
        shape = (self.b, blocks, self.m) if colstats else (1,)
        cmax = torch.empty(shape, dtype=torch.float32, device=raw.device)
        csum = torch.empty_like(cmax)
        # the columns' positives only where their terms are asked for
        pos_shape = shape if colstats and minus_pos else (1,)
        cpos = torch.empty(pos_shape, dtype=torch.float32, device=raw.device)
        cnpos = torch.empty_like(cpos)
        _panel_stats_kernel[(blocks, self.b)](
            raw, out1, out2, cmax, csum, cpos, cnpos, r0, p, self.n, self.m, la.tau, la.bias,
            shift, param,
            la.rl, la.cl, la.offset, la.n_paired,
            MODE=mode, FN1=fn1, FN2=fn2, SET=which, COLSTATS=colstats, MINUS_POS=minus_pos,
            BR=_BR, BC=_BC, num_warps=_WARPS, **self.flags,
        )  # fmt: skip
        if not colstats:
            return None
        top = cmax.amax(1)
        top_safe = torch.where(torch.isneginf(top), 0.0, top)
        total = (csum * torch.exp(cmax - top_safe[:, None, :])).sum(1)
        positives = torch.stack([cpos.sum(1), cnpos.sum(1)], 1) if minus_pos else None
        return top, total, positives

    def grad_panel(
        self, raw: Tensor, r0: int, which: int, mode: int, c: Tensor, w: Tensor,
        c2: Tensor, w2: Tensor, rowsum: Tensor, dx: Tensor, dy: Tensor, fn: int = 0,
        shift: float = 0.0, param: float = 0.0,
    ) -> None:  # fmt: skip
        """``G`` of a panel, then ``dx[:, rows] = G Y`` and ``dy += G^T X_p`` (float32,
        unscaled by the temperature)."""
        la, p = self.la, raw.shape[1]
        gdt = self.g_dtype(mode)
        g = torch.empty(raw.shape, dtype=gdt, device=raw.device)
        limit = _HALF_MAX.get(gdt, torch.finfo(torch.float32).max)
        _panel_grad_kernel[(triton.cdiv(p, _BR), self.b)](
            raw, g, c, w, c2, w2, rowsum, r0, p, self.n, self.m, la.tau, la.bias, shift, param,
            la.rl, la.cl, la.offset, la.n_paired, limit,
            MODE=mode, FN=fn, SET=which, BR=_BR, BC=_BC, num_warps=_WARPS, **self.flags,
        )  # fmt: skip
        xp = self.x[:, r0 : r0 + p]
        y = self.y
        if gdt != self.x.dtype:  # float32 G of float16 features: float32 products
            xp, y = xp.float(), y.float()
        dx[:, r0 : r0 + p] = _product(g, y)
        dy.add_(_product(g.transpose(1, 2), xp))

    def finish(
        self, dx: Tensor, dy: Tensor, rowsum: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(dx, dy, dtau, dbias)`` from the unscaled float32 ``G Y`` and ``G^T X``."""
        inv = 1.0 / self.la.tau.reshape(())
        dx, dy = dx * inv, dy * inv
        # d/dtau = -sum_ij G_ij (S_ij - b) / tau = -sum_i x_i . dx_i / tau; d/db = sum_ij G_ij
        dtau = -(self.x.float() * dx).sum((1, 2)) * inv
        return dx.to(self.x.dtype), dy.to(self.y.dtype), dtau, rowsum.sum(-1)

    def grad_buffers(self) -> tuple[Tensor, Tensor, Tensor]:
        dev = self.x.device
        dx = torch.empty(self.x.shape, dtype=torch.float32, device=dev)
        dy = torch.zeros(self.y.shape, dtype=torch.float32, device=dev)
        rowsum = torch.zeros(self.b, self.n, dtype=torch.float32, device=dev)
        return dx, dy, rowsum

    def rows(self) -> tuple[Tensor, Tensor]:
        out1 = torch.empty(self.b, self.n, dtype=torch.float32, device=self.x.device)
        return out1, torch.empty_like(out1)


def _one_way(
    pp: _Panels, need_grad: bool, which: int, mode: int, w: Tensor, fn1: int = 0, fn2: int = 0,
    fn: int = 0, shift: float = 0.0, param: float = 0.0, minus_pos: bool = False,
) -> tuple[Tensor, Tensor, tuple]:  # fmt: skip
    """One sweep for a reduction whose gradient on a panel needs only that panel's row
    statistics: the row statistics ``(B, n)`` and, with ``need_grad``, the gradients."""
    out1, out2 = pp.rows()
    bufs = pp.grad_buffers() if need_grad else None
    gdt = pp.g_dtype(mode)
    for r0, r1 in pp.panels(gdt):
        raw = pp.scores(r0, r1)
        pp.stats(raw, r0, which, mode, out1, out2, fn1=fn1, fn2=fn2, shift=shift, param=param,
                 minus_pos=minus_pos)  # fmt: skip
        if bufs is not None:
            c = out1 if mode == 0 else w
            pp.grad_panel(raw, r0, which, mode, c, w, c, w, bufs[2], bufs[0], bufs[1],
                          fn=fn, shift=shift, param=param)  # fmt: skip
    grads = pp.finish(*bufs) if bufs is not None else tk._empty(pp.x, pp.y)
    return out1, out2, grads


def lse(
    x: Tensor, y: Tensor, tau: Tensor, need_grad: bool, *, pairs: tk.Pairs = tk.PLAIN,
    weight: Tensor | None = None, bias: Tensor | None = None, minus_pos: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    r""":func:`mibounds.kernels.triton_kernels.lse` on tensor-core panels: one sweep, three
    products.

    Example:
        >>> callable(lse)
        True
    """
    tk._require()
    pp = _Panels(x, y, tau, pairs, bias)
    w = tk._row_weights(weight, pp.n, 1.0 / pp.n, x)
    row_lse, below, grads = _one_way(pp, need_grad, 0, 0, w, minus_pos=minus_pos)
    value = torch.where(w > 0, w * (below if minus_pos else row_lse), 0.0).sum(-1)
    return (value, *grads)


def means(
    x: Tensor, y: Tensor, tau: Tensor, value_fn: str | None, grad_fn: str, shift: float,
    param: float, need_grad: bool, grad_value: bool = True, *, pairs: tk.Pairs = tk.PLAIN,
    weight: Tensor | None = None, positives: bool = False, bias: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    r""":func:`mibounds.kernels.triton_kernels.means` on tensor-core panels: one sweep, three
    products.

    Example:
        >>> callable(means)
        True
    """
    tk._require()
    pp = _Panels(x, y, tau, pairs, bias)
    n, m = pp.n, pp.m
    w = tk._row_weights(weight, n, 1.0 / (n * (m - 1)), x)
    f1 = 0 if value_fn is None else tk.TRITON_FUNCTIONS[value_fn]
    f2 = tk.TRITON_FUNCTIONS[grad_fn] if grad_value else 0
    fn = tk.TRITON_FUNCTIONS[grad_fn]
    which = 2 if positives else 1
    s1, s2, grads = _one_way(pp, need_grad, which, 1, w, f1, f2, fn, shift, param)
    return ((s1 * w).sum(-1), (s2 * w).sum(-1), *grads)


class _Sweep1(NamedTuple):
    """What the first sweep gathers: per row the log-sum-exp and, with ``minus_pos``, the
    same less the positives' mean; per column (``colstats``) the same two; the panels."""

    rows: Tensor
    rows_below: Tensor
    cols: Tensor | None
    cols_below: Tensor | None
    spans: list[tuple[int, int]]


def _two_sweeps(pp: _Panels, which: int, colstats: bool, minus_pos: bool = False) -> _Sweep1:
    """The first sweep of a reduction whose gradient needs every panel's statistics."""
    out1, out2 = pp.rows()
    dev = pp.x.device
    top = torch.full((pp.b, pp.m), -math.inf, device=dev)  # running column maximum
    total = torch.zeros(pp.b, pp.m, device=dev)  # sum of e^{S - top}
    pos = torch.zeros(pp.b, 2, pp.m, device=dev)  # the columns' positive sums and counts
    spans = list(pp.panels(pp.g_dtype(0)))
    for r0, r1 in spans:
        raw = pp.scores(r0, r1)
        got = pp.stats(raw, r0, which, 0, out1, out2, colstats=colstats, minus_pos=minus_pos)
        if got is not None:
            p_top, p_total, p_pos = got
            new = torch.maximum(top, p_top)
            safe = torch.where(torch.isneginf(new), 0.0, new)
            total = total * torch.exp(torch.where(torch.isneginf(top), -math.inf, top - safe))
            total = total + p_total * torch.exp(
                torch.where(torch.isneginf(p_top), -math.inf, p_top - safe)
            )
            top = new
            if p_pos is not None:
                pos = pos + p_pos
    if not colstats:
        return _Sweep1(out1, out2 if minus_pos else out1, None, None, spans)
    has = total > 0
    log_total = torch.log(torch.where(has, total, 1.0))
    cols = torch.where(has, top + log_total, -math.inf)
    cols_below = cols
    if minus_pos:
        mean = pos[:, 0] / pos[:, 1].clamp_min(1)
        shifted = torch.where(pos[:, 1] > 0, top - mean, top)
        cols_below = torch.where(has, shifted + log_total, -math.inf)
    return _Sweep1(out1, out2 if minus_pos else out1, cols, cols_below, spans)


def symmetric_lse(
    x: Tensor, y: Tensor, tau: Tensor, need_grad: bool, *, pairs: tk.Pairs = tk.PLAIN,
    row_weight: Tensor | None = None, col_weight: Tensor | None = None,
    bias: Tensor | None = None, minus_pos: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    r""":func:`mibounds.kernels.triton_kernels.symmetric_lse` on tensor-core panels: a
    statistics sweep (rows and columns from one read of each panel), then a gradient sweep
    forming both directions' share of ``G`` at once; four products.

    Example:
        >>> callable(symmetric_lse)
        True
    """
    tk._require()
    pp = _Panels(x, y, tau, pairs, bias)
    u = tk._row_weights(row_weight, pp.n, 0.5 / pp.n, x)
    v = tk._row_weights(col_weight, pp.m, 0.5 / pp.n, x)
    first = _two_sweeps(pp, 0, True, minus_pos)
    row_lse, col_lse, spans = first.rows, first.cols, first.spans
    assert col_lse is not None and first.cols_below is not None
    value = torch.where(u > 0, u * first.rows_below, 0.0).sum(-1)
    value = value + torch.where(v > 0, v * first.cols_below, 0.0).sum(-1)
    if not need_grad:
        return (value, *tk._empty(x, y))
    dx, dy, rowsum = pp.grad_buffers()
    col_lse = col_lse.contiguous()
    for r0, r1 in spans:
        raw = pp.scores(r0, r1)
        pp.grad_panel(raw, r0, 0, 2, row_lse, u, col_lse, v, rowsum, dx, dy)
    return (value, *pp.finish(dx, dy, rowsum))


def neg_lme(
    x: Tensor, y: Tensor, tau: Tensor, need_grad: bool, *, pairs: tk.Pairs = tk.PLAIN,
    log_weight: Tensor | None = None, bias: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    r""":func:`mibounds.kernels.triton_kernels.neg_lme` on tensor-core panels: a statistics
    sweep, then a gradient sweep; four products.

    Example:
        >>> callable(neg_lme)
        True
    """
    tk._require()
    pp = _Panels(x, y, tau, pairs, bias)
    lw = tk._row_weights(log_weight, pp.n, -math.log(pp.n * (pp.m - 1)), x)
    first = _two_sweeps(pp, 1, False)
    row_lse, spans = first.rows, first.spans
    value = torch.logsumexp(row_lse + lw, -1)
    if not need_grad:
        return (value, *tk._empty(x, y))
    c = (value[:, None] - lw).contiguous()  # G_ij = e^{S_ij + log w_i - value}
    ones = torch.ones(pp.n, dtype=torch.float32, device=x.device)
    dx, dy, rowsum = pp.grad_buffers()
    for r0, r1 in spans:
        raw = pp.scores(r0, r1)
        pp.grad_panel(raw, r0, 1, 0, c, ones, c, ones, rowsum, dx, dy)
    return (value, *pp.finish(dx, dy, rowsum))
