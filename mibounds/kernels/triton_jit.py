"""The Triton device functions and kernels of :mod:`mibounds.kernels.triton_kernels` (see
its documentation for what each computes); imported there, and only when Triton is installed.

* ``_stats_kernel``: per row, an online log-sum-exp or the sums of elementwise functions over a
  set of columns;
* ``_grad_kernel``: one block of ``dX`` (or ``dY``) from recomputed tiles of the scores;
* the device functions they share: the elementwise functions and their derivatives, the
  pairing's mask of a tile (``_keep``), the tile's scores and the gradient of a score.
"""

from __future__ import annotations

import triton
import triton.language as tl

#: The largest finite bfloat16: a gradient entry is clamped to it before the bfloat16
#: product (beyond it the product would be infinite, and infinity times 0 is NaN).
_BF16_MAX = tl.constexpr(3.3895313892515355e38)


@triton.jit
def _softplus(t):
    return tl.maximum(t, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(t)))


@triton.jit
def _sigmoid(t):
    return 1.0 / (1.0 + tl.exp(-t))


@triton.jit
def _tanh(t):
    return 2.0 * _sigmoid(2.0 * t) - 1.0


@triton.jit
def _fn(t, param, FN: tl.constexpr):
    if FN == 1:
        out = tl.exp(t)
    elif FN == 2:
        out = _softplus(t)
    elif FN == 3:
        out = tl.exp(tl.minimum(tl.maximum(t, -param), param) - param)
    elif FN == 4:
        out = _softplus(-t)
    elif FN == 5:
        out = t
    elif FN == 10:
        out = tl.exp(t - 1.0)
    elif FN == 11:
        out = t - 1.0
    elif FN == 12:
        out = 0.25 * t * t + t
    elif FN == 13:
        out = 2.0 - 2.0 * tl.exp(-0.5 * t)
    elif FN == 14:
        out = tl.exp(t) - 1.0
    elif FN == 15:
        out = _softplus(t) - 0.6931471805599453
    elif FN == 16:
        out = _softplus(t) - 1.3862943611198906
    elif FN == 17:
        out = 0.5 * _tanh(t)
    elif FN == 18:
        out = _tanh(0.5 * t) * (3.0 - 2.0 * _sigmoid(-t))
    elif FN == 19:
        out = tl.exp(param * t)
    else:
        out = t * 0.0
    return out


@triton.jit
def _dfn(t, param, FN: tl.constexpr):
    if FN == 1:
        out = tl.exp(t)
    elif FN == 2:
        out = _sigmoid(t)
    elif FN == 3:
        inside = tl.abs(t) < param
        out = tl.where(inside, tl.exp(tl.minimum(tl.maximum(t, -param), param) - param), 0.0)
    elif FN == 4:
        out = -_sigmoid(-t)
    elif FN == 5:
        out = t * 0.0 + 1.0
    elif FN == 10:
        out = tl.exp(t - 1.0)
    elif FN == 11:
        out = t * 0.0 + 1.0
    elif FN == 12:
        out = 0.5 * t + 1.0
    elif FN == 13:
        out = tl.exp(-0.5 * t)
    elif FN == 14:
        out = tl.exp(t)
    elif FN == 15 or FN == 16:
        out = _sigmoid(t)
    elif FN == 17:
        th = _tanh(t)
        out = 0.5 * (1.0 - th * th)
    elif FN == 18:
        th = _tanh(0.5 * t)
        out = 0.5 * (1.0 - th * th) * (3.0 - 2.0 * _sigmoid(-t))
        out += th * 2.0 * _sigmoid(t) * _sigmoid(-t)
    else:
        out = param * tl.exp(param * t)
    # a derivative that overflowed is 0 (the overflow rule; NaN fails the test too)
    return tl.where(tl.abs(out) <= 3.4028234663852886e38, out, 0.0)


@triton.jit
def _score_grad(s, keep, c, w, c2, w2, shift, param, MODE: tl.constexpr, FN: tl.constexpr):
    # G on a tile (rows x columns), 0 outside the set: MODE 0, w_i e^{S_ij - c_i}; MODE 1,
    # w_i FN'(S_ij + shift); MODE 2, MODE 0's term plus w2_j e^{S_ij - c2_j} (the column
    # direction of the symmetric loss). c, w are per row; c2, w2 per column (MODE 2 only).
    if MODE == 1:
        g = _dfn(s + shift, param, FN) * w[:, None]
    else:
        g = tl.exp(s - c[:, None]) * w[:, None]
        if MODE == 2:
            g += tl.where(w2[None, :] != 0.0, w2[None, :] * tl.exp(s - c2[None, :]), 0.0)
    return tl.where(keep, g, 0.0)


@triton.jit
def _grad_mma(
    g, other, acc, PREC: tl.constexpr, GPREC: tl.constexpr, HALF_G: tl.constexpr,
    EMU: tl.constexpr,
):  # fmt: skip
    # acc + g other: g in bfloat16, clamped to its range, for bfloat16 features; otherwise
    # in float32 at GPREC (float16 cannot hold every g)
    if HALF_G:
        g = tl.minimum(tl.maximum(g, -_BF16_MAX), _BF16_MAX)
        out = _mma(g.to(other.dtype), other, acc, PREC, EMU)
    else:
        out = tl.dot(g, other.to(tl.float32), acc, input_precision=GPREC)
    return out


@triton.jit
def _mma(a, b, acc, PREC: tl.constexpr, EMU: tl.constexpr):
    # acc + a b; EMU: half-precision operands widened first (Triton's CPU interpreter
    # multiplies bfloat16 operands wrongly; the values are the same, the speed is not)
    if EMU:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc, input_precision=PREC)


@triton.jit
def _tile_scores(
    x_ptr, y_ptr, rows, cols, n, m, d,
    PREC: tl.constexpr, EMU: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr,
    BK: tl.constexpr,
):  # fmt: skip
    # X[rows] Y[cols]^T over chunks of BK features, float32 accumulation: (BR, BC)
    acc = tl.zeros((BR, BC), tl.float32)
    xrow = x_ptr + rows[:, None].to(tl.int64) * d
    ycol = y_ptr + cols[:, None].to(tl.int64) * d
    rin = rows[:, None] < n
    cin = cols[:, None] < m
    for k0 in range(0, d, BK):
        dims = k0 + tl.arange(0, BK)
        din = dims[None, :] < d
        a = tl.load(xrow + dims[None, :], mask=rin & din, other=0.0)
        b = tl.load(ycol + dims[None, :], mask=cin & din, other=0.0)
        acc = _mma(a, tl.trans(b), acc, PREC, EMU)
    return acc


@triton.jit
def _resident_scores(
    a, y_ptr, cols, m, d, PREC: tl.constexpr, EMU: tl.constexpr, BC: tl.constexpr,
    BK: tl.constexpr,
):  # fmt: skip
    # a Y[cols]^T for a row block ``a`` (BR, BK) loaded once (d <= BK): (BR, BC)
    dims = tl.arange(0, BK)
    b = tl.load(
        y_ptr + cols[:, None].to(tl.int64) * d + dims[None, :],
        mask=(cols[:, None] < m) & (dims[None, :] < d),
        other=0.0,
    )
    acc = tl.zeros((a.shape[0], BC), tl.float32)
    return _mma(a, tl.trans(b), acc, PREC, EMU)


@triton.jit
def _keep(
    rows, cols, n, m, rl_ptr, cl_ptr, offset, n_paired,
    LABELS: tl.constexpr, EXCLUDE: tl.constexpr, SET: tl.constexpr,
):  # fmt: skip
    # which entries (rows x cols) belong to the set: 0 candidates, 1 negatives, 2 positives
    inside = (rows[:, None] < n) & (cols[None, :] < m)
    own = cols[None, :] == rows[:, None] + offset
    if LABELS:
        rlab = tl.load(rl_ptr + rows, mask=rows < n, other=-1)
        clab = tl.load(cl_ptr + cols, mask=cols < m, other=-2)
        pos = rlab[:, None] == clab[None, :]
    else:
        pos = own
    if EXCLUDE == 1:
        excl = own
    elif EXCLUDE == 2:
        excl = (cols[None, :] < n_paired) & (cols[None, :] != rows[:, None] + offset)
    else:
        excl = own & (cols[None, :] < 0)
    if SET == 0:
        keep = inside & (excl == 0)
    elif SET == 1:
        keep = inside & (pos == 0) & (excl == 0)
    else:
        keep = inside & pos & (excl == 0)
    return keep


@triton.jit
def _stats_kernel(
    x_ptr, y_ptr, out1_ptr, out2_ptr, n, m, d, tau_ptr, bias_ptr, shift, param,
    rl_ptr, cl_ptr, offset, n_paired,
    MODE: tl.constexpr, FN1: tl.constexpr, FN2: tl.constexpr, BIAS: tl.constexpr,
    LABELS: tl.constexpr, EXCLUDE: tl.constexpr, SET: tl.constexpr, PREC: tl.constexpr,
    EMU: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    RESIDENT: tl.constexpr, MINUS_POS: tl.constexpr,
):  # fmt: skip
    # Per row i of batch index program_id(1), over the columns j of the set: MODE 0,
    # out1[i] = log sum_j e^{S_ij} (-inf for an empty set); MODE 1, out1[i], out2[i] =
    # sum_j FN1, FN2 of S_ij + shift. RESIDENT (d <= BK): the row block is loaded once,
    # before the sweep over the columns, and stays on chip. MINUS_POS (MODE 0): out2[i] =
    # (max_i - mean of the row's positive scores) + log sum_j e^{S_ij - max_i}.
    batch = tl.program_id(1).to(tl.int64)
    x_ptr += batch * n * d
    y_ptr += batch * m * d
    out1_ptr += batch * n
    out2_ptr += batch * n
    inv_tau = 1.0 / tl.load(tau_ptr)
    b = 0.0
    if BIAS:
        b = tl.load(bias_ptr)
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    rmask = rows < n
    mx = tl.full((BM,), float("-inf"), tl.float32)
    z = tl.zeros((BM,), tl.float32)
    z2 = tl.zeros((BM,), tl.float32)
    npos = tl.zeros((BM,), tl.float32)
    if RESIDENT:
        kdims = tl.arange(0, BK)
        xa = tl.load(
            x_ptr + rows[:, None].to(tl.int64) * d + kdims[None, :],
            mask=rmask[:, None] & (kdims[None, :] < d),
            other=0.0,
        )
    for c0 in range(0, m, BN):
        cols = c0 + tl.arange(0, BN)
        if RESIDENT:
            s = _resident_scores(xa, y_ptr, cols, m, d, PREC, EMU, BN, BK)
        else:
            s = _tile_scores(x_ptr, y_ptr, rows, cols, n, m, d, PREC, EMU, BM, BN, BK)
        s = s * inv_tau + b
        keep = _keep(rows, cols, n, m, rl_ptr, cl_ptr, offset, n_paired, LABELS, EXCLUDE, SET)
        if MINUS_POS:
            pos = _keep(rows, cols, n, m, rl_ptr, cl_ptr, offset, n_paired, LABELS, EXCLUDE, 2)
            z2 += tl.sum(tl.where(pos, s, 0.0), axis=1)
            npos += tl.sum(pos.to(tl.float32), axis=1)
        if MODE == 0:
            s = tl.where(keep, s, float("-inf"))
            m_new = tl.maximum(mx, tl.max(s, axis=1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            z = z * tl.exp(mx - m_safe) + tl.sum(tl.exp(s - m_safe[:, None]), axis=1)
            mx = m_new
        else:
            t = s + shift
            z += tl.sum(tl.where(keep, _fn(t, param, FN1), 0.0), axis=1)
            z2 += tl.sum(tl.where(keep, _fn(t, param, FN2), 0.0), axis=1)
    if MODE == 0:
        log_z = tl.log(tl.where(z > 0.0, z, 1.0))
        lse = tl.where(z > 0.0, mx + log_z, float("-inf"))
        tl.store(out1_ptr + rows, lse, mask=rmask)
        if MINUS_POS:
            below = tl.where(npos > 0.0, mx - z2 / tl.maximum(npos, 1.0), mx)
            tl.store(out2_ptr + rows, tl.where(z > 0.0, below + log_z, lse), mask=rmask)
    else:
        tl.store(out1_ptr + rows, z, mask=rmask)
        tl.store(out2_ptr + rows, z2, mask=rmask)


@triton.jit
def _grad_kernel(
    x_ptr, y_ptr, c_ptr, w_ptr, c2_ptr, w2_ptr, out_ptr, rowsum_ptr, xdx_ptr,
    n, m, d, tau_ptr, bias_ptr, shift, param, rl_ptr, cl_ptr, offset, n_paired,
    MODE: tl.constexpr, FN: tl.constexpr, BIAS: tl.constexpr, LABELS: tl.constexpr,
    EXCLUDE: tl.constexpr, SET: tl.constexpr, COLS: tl.constexpr, PREC: tl.constexpr,
    GPREC: tl.constexpr, HALF_G: tl.constexpr, EMU: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BDO: tl.constexpr,
):  # fmt: skip
    # G_ij on the set, 0 elsewhere: MODE 0, w_i e^{S_ij - c_i}; MODE 1, w_i FN'(S_ij +
    # shift); MODE 2, w_i e^{S_ij - c_i} + w2_j e^{S_ij - c2_j}. COLS = 0: out = G Y / tau
    # for a block of rows and output features program_id(1), rowsum = G's row sums and
    # xdx = the rows' x . out (for the temperature's gradient); COLS = 1: out = G^T X / tau
    # for a block of columns.
    batch = tl.program_id(2).to(tl.int64)
    x_ptr += batch * n * d
    y_ptr += batch * m * d
    out_ptr += batch * (m if COLS else n) * d
    c_ptr += batch * n
    c2_ptr += batch * m
    rowsum_ptr += batch * n
    xdx_ptr += (batch * tl.num_programs(1) + tl.program_id(1)) * n
    inv_tau = 1.0 / tl.load(tau_ptr)
    b = 0.0
    if BIAS:
        b = tl.load(bias_ptr)
    own = tl.program_id(0) * BM + tl.arange(0, BM)
    dout = tl.program_id(1) * BDO + tl.arange(0, BDO)
    acc = tl.zeros((BM, BDO), tl.float32)
    gs = tl.zeros((BM,), tl.float32)
    if COLS:
        omask = own < m
        c2 = tl.zeros((BM,), tl.float32)
        w2 = c2
        if MODE == 2:
            c2 = tl.load(c2_ptr + own, mask=omask, other=0.0)
            w2 = tl.load(w2_ptr + own, mask=omask, other=0.0)
        for o0 in range(0, n, BN):
            rows = o0 + tl.arange(0, BN)
            rin = rows < n
            s = _tile_scores(x_ptr, y_ptr, rows, own, n, m, d, PREC, EMU, BN, BM, BK)
            s = s * inv_tau + b
            keep = _keep(rows, own, n, m, rl_ptr, cl_ptr, offset, n_paired, LABELS, EXCLUDE, SET)
            w = tl.load(w_ptr + rows, mask=rin, other=0.0)
            c = w
            if MODE != 1:
                c = tl.load(c_ptr + rows, mask=rin, other=0.0)
            g = _score_grad(s, keep, c, w, c2, w2, shift, param, MODE, FN)
            xs = tl.load(
                x_ptr + rows[:, None].to(tl.int64) * d + dout[None, :],
                mask=rin[:, None] & (dout[None, :] < d),
                other=0.0,
            )
            acc = _grad_mma(tl.trans(g), xs, acc, PREC, GPREC, HALF_G, EMU)
    else:
        omask = own < n
        w = tl.load(w_ptr + own, mask=omask, other=0.0)
        c = w
        if MODE != 1:
            c = tl.load(c_ptr + own, mask=omask, other=0.0)
        for o0 in range(0, m, BN):
            cols = o0 + tl.arange(0, BN)
            cin = cols < m
            s = _tile_scores(x_ptr, y_ptr, own, cols, n, m, d, PREC, EMU, BM, BN, BK)
            s = s * inv_tau + b
            keep = _keep(own, cols, n, m, rl_ptr, cl_ptr, offset, n_paired, LABELS, EXCLUDE, SET)
            c2 = tl.zeros((BN,), tl.float32)
            w2 = c2
            if MODE == 2:
                c2 = tl.load(c2_ptr + cols, mask=cin, other=0.0)
                w2 = tl.load(w2_ptr + cols, mask=cin, other=0.0)
            g = _score_grad(s, keep, c, w, c2, w2, shift, param, MODE, FN)
            gs += tl.sum(g, axis=1)
            ys = tl.load(
                y_ptr + cols[:, None].to(tl.int64) * d + dout[None, :],
                mask=cin[:, None] & (dout[None, :] < d),
                other=0.0,
            )
            acc = _grad_mma(g, ys, acc, PREC, GPREC, HALF_G, EMU)
        if tl.program_id(1) == 0:
            tl.store(rowsum_ptr + own, gs, mask=omask)
    acc = acc * inv_tau
    omask2 = omask[:, None] & (dout[None, :] < d)
    if COLS == 0:
        mine = tl.load(
            x_ptr + own[:, None].to(tl.int64) * d + dout[None, :], mask=omask2, other=0.0
        )
        tl.store(xdx_ptr + own, tl.sum(mine.to(tl.float32) * acc, axis=1), mask=omask)
    tl.store(
        out_ptr + own[:, None].to(tl.int64) * d + dout[None, :],
        acc.to(out_ptr.dtype.element_ty),
        mask=omask2,
    )
