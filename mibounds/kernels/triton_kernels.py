r"""Fused Triton kernels for the streaming reductions of dot scores (GPU; optional).

Imported only when Triton is installed. The kernels follow the FlashAttention pattern: a tile of
``S = X Y^T / tau + b`` lives in registers, never in global memory; the forward keeps an online
log-sum-exp (or the sums of elementwise functions) per row; the backward recomputes each tile.
Extra memory is O((N + M) d) whatever N, M and d are:

* ``_stats_kernel``: per row, the log-sum-exp over a set of columns (candidates, negatives or
  positives), or the sums of up to two elementwise functions of ``S + shift`` over it;
* ``_grad_kernel``: ``dX = G Y / tau`` (one block of rows at a time) or ``dY = G^T X / tau``
  (one block of columns), where the gradient of the scores ``G`` is a softmax-like
  :math:`w_i e^{S_{ij} - c_i}`, the symmetric :math:`w_i e^{S_{ij} - c_i} + v_j e^{S_{ij} -
  c_j}` (both directions of CLIP's loss in one pass), or :math:`w_i f'(S_{ij} + \mathrm{shift})`.

Feature sizes are tiled: the products run over chunks of ``BK`` features, and the gradient
kernels write their output in chunks of ``BDO`` features (a second grid axis), so any ``d``
works. The leading batch dimension is the third grid axis.

Precision follows torch: bfloat16 and float16 features are multiplied as they are (tensor
cores, float32 accumulation); float32 features follow :func:`torch.get_float32_matmul_precision`
(``"highest"``: IEEE float32, otherwise TF32), like ``torch.matmul``. All statistics are float32.
The gradient's second product takes ``G`` in bfloat16 for bfloat16 features (as FlashAttention
does) and in float32 with TF32 for float16 features (whose range cannot hold every ``G``).

On the CPU the kernels run only in Triton's interpreter (``TRITON_INTERPRET=1``), which the
tests use with small sizes; :func:`compile_ahead` compiles every variant for sm_80 and sm_90
without a GPU and reports its shared memory and register spills.
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple

import torch
from torch import Tensor

try:  # pragma: no cover - depends on the environment
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover
    HAS_TRITON = False

__all__ = [
    "HAS_TRITON",
    "PLAIN",
    "TRITON_FUNCTIONS",
    "Config",
    "Pairs",
    "config",
    "lse",
    "means",
    "neg_lme",
    "precision",
    "symmetric_lse",
]

#: Elementwise functions the kernels implement: name -> code. The ``fmi:`` entries are
#: :math:`f^*(g_f(v))` of the built-in divergences (``fmi:tsallis`` takes its alpha as the
#: parameter).
TRITON_FUNCTIONS = {
    "exp": 1,
    "softplus": 2,
    "exp-clip": 3,
    "softplus-neg": 4,
    "identity": 5,
    "fmi:kl": 10,
    "fmi:reverse-kl": 11,
    "fmi:pearson": 12,
    "fmi:neyman": 13,
    "fmi:hellinger": 14,
    "fmi:js": 15,
    "fmi:gan": 16,
    "fmi:total-variation": 17,
    "fmi:vincze-le-cam": 18,
    "fmi:tsallis": 19,
}


class Config(NamedTuple):
    """Tile sizes of one launch: ``bm`` rows (or columns) per program, ``bn`` of the other
    side per step, ``bk`` features per product step, ``bdo`` output features per program
    (gradient kernels), and the warps and pipeline stages."""

    bm: int
    bn: int
    bk: int
    bdo: int
    num_warps: int
    num_stages: int


def _pow2(d: int, low: int = 16) -> int:
    return max(low, 1 << (max(d, 1) - 1).bit_length())


def config(
    kernel: str,
    dtype: torch.dtype,
    d: int,
    prec: str | None = None,
    arch: int = 90,
    mode: int = 0,
    minus_pos: bool = False,
) -> Config:
    """The tile sizes of ``kernel`` (``"stats"`` or ``"grad"``) for features of ``dtype`` and
    size ``d`` multiplied at precision ``prec`` (default: :func:`precision`) on compute
    capability ``arch``, for the gradient mode ``mode`` (1: an elementwise function's
    derivative, whose code takes more registers), with ``minus_pos`` for a statistics pass
    that also sums each row's positives (twice the warps for IEEE float32 and TF32). Every
    entry compiles without a spilled
    register and within the shared memory, and on sm_90 every half-precision and TF32 entry
    multiplies with ``wgmma`` (the test suite checks all three ahead of time).

    The statistics kernel takes 64 x 64 tiles of scores (64 x 32 for IEEE float32 summing
    positives on sm_90), in feature steps of 64 (half precision; on sm_90 the whole row block
    up to ``d = 128``, which then stays resident for the whole sweep over the columns), 32
    (TF32) or 16 (IEEE float32, whose products run without tensor cores). The gradient
    kernels hold a ``bm x bdo`` float32 accumulator beside the tile of scores. On sm_90, half
    precision and TF32 take 64 x 64 tiles (a warpgroup's 64 rows on both sides, so both
    products run on ``wgmma``) and ``bdo`` up to 128 (64 for the
    one-way gradients in half precision, 32 for an elementwise function's gradient in
    TF32). On sm_80 ``bdo`` is ``d`` rounded up to a power of two, at most 512 for half
    precision (32-row tiles above 128), 64 for TF32 and 128 for IEEE float32. A feature size
    up to ``bdo`` computes each tile of scores once per gradient and a larger one
    ``ceil(d / bdo)`` times (the price of O((N + M) d) memory;
    :func:`mibounds.kernels.cost.choose_path` sends large ``d`` to the tensor-core panels).

    Example:
        >>> config("stats", torch.bfloat16, 512, arch=80)
        Config(bm=64, bn=64, bk=64, bdo=0, num_warps=8, num_stages=2)
        >>> config("grad", torch.bfloat16, 1024, arch=80).bdo
        512
        >>> config("grad", torch.bfloat16, 1024, arch=90, mode=2)
        Config(bm=64, bn=64, bk=32, bdo=128, num_warps=8, num_stages=2)
    """
    prec = precision(dtype) if prec is None else prec
    half = dtype in (torch.float16, torch.bfloat16)
    p2 = _pow2(d)
    if kernel == "stats":
        if half:  # on sm_90 the whole row block up to d = 128 (resident), else steps of 64
            return Config(64, 64, p2 if arch >= 90 and p2 <= 128 else min(64, p2), 0, 8, 2)
        warps = 8 if arch < 90 or minus_pos else 4
        bn = 32 if minus_pos and arch >= 90 and prec != "tf32" else 64
        return Config(64, bn, min(32 if prec == "tf32" else 16, p2), 0, warps, 2)
    if arch >= 90 and (half or prec == "tf32"):
        cap = 128
        if mode != 2 and half:
            cap = 64
        elif mode == 1 and prec == "tf32" and not half:
            cap = 32
        return Config(64, 64, min(32, p2), min(cap, p2), 8, 2)
    if half:
        if p2 > 128:  # 32-row tiles hold a 32 x 512 accumulator: d <= 512 in one pass
            bn = 32 if dtype == torch.bfloat16 else 16  # float16's G is float32: more registers
            return Config(32, bn, 32, min(512, p2), 8, 2)
        if arch < 90 and p2 < 128:
            return Config(32, 32, min(32, p2), p2, 4, 2)
        return Config(64, 32, min(32, p2), p2, 8, 2)
    if prec == "tf32":
        bdo = min(64, p2)
        return Config(64, 32, min(32, p2), bdo, 8 if bdo == 32 or arch < 90 else 4, 2)
    bdo = min(128, p2)
    if arch < 90 and bdo < 128:
        return Config(32, 32, min(16, p2), bdo, 8, 2)
    return Config(32, 32, min(16, p2), bdo, 4, 2)


def _arch(device: torch.device) -> int:
    """The compute capability of a CUDA device as ``10 * major + minor`` (90 elsewhere: the
    interpreter ignores tile shapes' resources)."""
    if device.type != "cuda":
        return 90
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor


def precision(dtype: torch.dtype) -> str:
    """``tl.dot``'s input precision for features of ``dtype``: float32 follows
    :func:`torch.get_float32_matmul_precision` (``"highest"`` -> ``"ieee"``, else
    ``"tf32"``); half precision multiplies as it is (``"ieee"`` is the exact product).

    Example:
        >>> precision(torch.bfloat16)
        'ieee'
    """
    if dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest":
        return "tf32"
    return "ieee"


if HAS_TRITON:
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
                keep = _keep(
                    rows, own, n, m, rl_ptr, cl_ptr, offset, n_paired, LABELS, EXCLUDE, SET
                )
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
                keep = _keep(
                    own, cols, n, m, rl_ptr, cl_ptr, offset, n_paired, LABELS, EXCLUDE, SET
                )
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


def _require() -> None:
    if not HAS_TRITON:  # pragma: no cover
        raise RuntimeError("the Triton kernels need Triton: pip install triton")


class Pairs(NamedTuple):
    """The pairing of one call, as the kernels take it: row and column labels (``None``: the
    own column ``offset + i`` is the positive), ``offset``, ``exclude`` (0 none, 1 the own
    column, 2 the other paired columns ``[0, n_paired)``) and ``n_paired``."""

    row_labels: Tensor | None = None
    col_labels: Tensor | None = None
    offset: int = 0
    exclude: int = 0
    n_paired: int = -1

    def swapped(self) -> Pairs:
        """The same pairing seen from the columns (exclude 0 or 1 only)."""
        return Pairs(self.col_labels, self.row_labels, -self.offset, self.exclude, -1)


#: The default pairing: the own column of each row is its positive, nothing excluded.
PLAIN = Pairs()


class _Launch(NamedTuple):
    """What every launch of one call shares: sizes, the temperature and bias pointers, the
    pairing pointers and flags."""

    b: int
    n: int
    m: int
    d: int
    tau: Tensor
    bias: Tensor
    rl: Tensor
    cl: Tensor
    offset: int
    n_paired: int
    flags: dict


def _launch(x: Tensor, y: Tensor, tau: Tensor, pairs: Pairs, bias: Tensor | None) -> _Launch:
    b, n, d = x.shape
    m = y.shape[1]
    dummy = torch.zeros(1, dtype=torch.int64, device=x.device)
    rl = dummy if pairs.row_labels is None else pairs.row_labels
    cl = dummy if pairs.col_labels is None else pairs.col_labels
    n_paired = n if pairs.n_paired < 0 else pairs.n_paired
    flags = dict(
        BIAS=bias is not None,
        LABELS=pairs.row_labels is not None,
        EXCLUDE=pairs.exclude,
        PREC=precision(x.dtype),
        EMU=os.environ.get("TRITON_INTERPRET", "0") == "1",
    )
    bias_t = tau if bias is None else bias
    return _Launch(b, n, m, d, tau, bias_t, rl, cl, pairs.offset, n_paired, flags)


def _row_stats(
    x: Tensor, y: Tensor, la: _Launch, which: int, mode: int, fn1: int = 0, fn2: int = 0,
    shift: float = 0.0, param: float = 0.0, minus_pos: bool = False,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Per row over the set ``which`` ``(B, n)``: the log-sum-exp (mode 0; with
    ``minus_pos`` also, second, the log-sum-exp less the mean positive score), or the sums of
    two functions (mode 1)."""
    cfg = config("stats", x.dtype, la.d, arch=_arch(x.device), minus_pos=minus_pos)
    out1 = torch.empty(la.b, la.n, dtype=torch.float32, device=x.device)
    out2 = torch.empty_like(out1) if mode == 1 or minus_pos else out1
    _stats_kernel[(triton.cdiv(la.n, cfg.bm), la.b)](
        x, y, out1, out2, la.n, la.m, la.d, la.tau, la.bias, shift, param, la.rl, la.cl,
        la.offset, la.n_paired,
        MODE=mode, FN1=fn1, FN2=fn2, SET=which, BM=cfg.bm, BN=cfg.bn, BK=cfg.bk,
        RESIDENT=cfg.bk >= la.d, MINUS_POS=minus_pos, num_warps=cfg.num_warps,
        num_stages=cfg.num_stages, **la.flags,
    )  # fmt: skip
    return out1, out2


def _grads(
    x: Tensor, y: Tensor, la: _Launch, which: int, mode: int, c: Tensor, w: Tensor,
    c2: Tensor | None = None, w2: Tensor | None = None, fn: int = 0, shift: float = 0.0,
    param: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """``(dx, dy, dtau, dbias)`` (the last two ``(B,)``) for the gradient ``G`` of the scores
    described by ``mode``: per-row shifts ``c`` ``(B, n)`` and weights ``w`` ``(n,)``, and
    for the symmetric mode the per-column ``c2`` ``(B, m)`` and ``w2`` ``(m,)``."""
    cfg = config("grad", x.dtype, la.d, arch=_arch(x.device), mode=mode)
    dx = torch.empty_like(x)
    dy = torch.empty_like(y)
    rowsum = torch.empty(la.b, la.n, dtype=torch.float32, device=x.device)
    chunks = triton.cdiv(la.d, cfg.bdo)
    xdx = torch.empty(la.b, chunks, la.n, dtype=torch.float32, device=x.device)
    c2 = c if c2 is None else c2
    w2 = w if w2 is None else w2
    half_g = x.dtype == torch.bfloat16
    gprec = "tf32" if x.dtype == torch.float16 else la.flags["PREC"]
    for out, cols, size in ((dx, 0, la.n), (dy, 1, la.m)):
        _grad_kernel[(triton.cdiv(size, cfg.bm), chunks, la.b)](
            x, y, c, w, c2, w2, out, rowsum, xdx, la.n, la.m, la.d, la.tau, la.bias, shift,
            param, la.rl, la.cl, la.offset, la.n_paired,
            MODE=mode, FN=fn, SET=which, COLS=cols, GPREC=gprec, HALF_G=half_g,
            BM=cfg.bm, BN=cfg.bn, BK=cfg.bk, BDO=cfg.bdo,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages, **la.flags,
        )  # fmt: skip
    # d/dtau = -sum_ij G_ij (S_ij - b) / tau = -sum_i x_i . dx_i / tau; d/db = sum_ij G_ij
    dtau = -xdx.sum((1, 2)) / la.tau.reshape(())
    return dx, dy, dtau, rowsum.sum(-1)


def _empty(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    b = x.shape[0]
    zeros = torch.zeros(b, dtype=torch.float32, device=x.device)
    return x.new_empty(0), y.new_empty(0), zeros, zeros.clone()


def _row_weights(w: Tensor | None, n: int, default: float, like: Tensor) -> Tensor:
    if w is None:
        return torch.full((n,), default, dtype=torch.float32, device=like.device)
    return w.to(device=like.device, dtype=torch.float32).contiguous()


def lse(
    x: Tensor, y: Tensor, tau: Tensor, need_grad: bool, *, pairs: Pairs = PLAIN,
    weight: Tensor | None = None, bias: Tensor | None = None, minus_pos: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    r"""``(value, dx, dy, dtau, dbias)`` of :math:`\sum_i w_i \log\sum_{j \in C_i} e^{S_{ij}}`
    over each row's candidates (``weight=None``: the mean over rows), per leading batch index;
    with ``minus_pos`` each row's value term is less its mean positive score (the gradient is
    the log-sum-exp's).
    ``x`` ``(B, n, d)``, ``y`` ``(B, m, d)`` contiguous, of one dtype (float32, float16 or
    bfloat16); ``tau`` and ``bias`` one-element float32 tensors on the device (never read
    back). The value and ``dtau``, ``dbias`` are float32 ``(B,)``; ``dx``, ``dy`` have the
    features' dtype (empty without ``need_grad``).

    Example:
        >>> HAS_TRITON in (True, False)
        True
    """
    _require()
    la = _launch(x, y, tau, pairs, bias)
    w = _row_weights(weight, la.n, 1.0 / la.n, x)
    row_lse, below = _row_stats(x, y, la, 0, 0, minus_pos=minus_pos)
    value = torch.where(w > 0, w * below, 0.0).sum(-1)
    if not need_grad:
        return (value, *_empty(x, y))
    return (value, *_grads(x, y, la, 0, 0, row_lse, w))


def symmetric_lse(
    x: Tensor, y: Tensor, tau: Tensor, need_grad: bool, *, pairs: Pairs = PLAIN,
    row_weight: Tensor | None = None, col_weight: Tensor | None = None,
    bias: Tensor | None = None, minus_pos: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    r"""``(value, dx, dy, dtau, dbias)`` of the weighted row plus column log-sum-exp over the
    candidates (without weights, the average of the two means; with ``minus_pos``, each term
    less its positives' mean score). The column statistics are the
    row statistics of ``Y X^T`` with the pairing seen from the columns; the gradient of both
    directions is formed in one pass (two launches, one per side): four products in all, the
    bare count of the symmetric loss plus the two statistics passes.

    Example:
        >>> TRITON_FUNCTIONS["exp"], TRITON_FUNCTIONS["fmi:js"]
        (1, 15)
    """
    _require()
    la = _launch(x, y, tau, pairs, bias)
    u = _row_weights(row_weight, la.n, 0.5 / la.n, x)
    v = _row_weights(col_weight, la.m, 0.5 / la.n, x)
    row_lse, rows = _row_stats(x, y, la, 0, 0, minus_pos=minus_pos)
    swapped = _launch(y, x, tau, pairs.swapped(), bias)
    col_lse, cols = _row_stats(y, x, swapped, 0, 0, minus_pos=minus_pos)
    value = torch.where(u > 0, u * rows, 0.0).sum(-1) + torch.where(v > 0, v * cols, 0.0).sum(-1)
    if not need_grad:
        return (value, *_empty(x, y))
    return (value, *_grads(x, y, la, 0, 2, row_lse, u, col_lse.contiguous(), v))


def neg_lme(
    x: Tensor, y: Tensor, tau: Tensor, need_grad: bool, *, pairs: Pairs = PLAIN,
    log_weight: Tensor | None = None, bias: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    r"""``(value, dx, dy, dtau, dbias)`` of :math:`\log\sum_i w_i\sum_{j\in N_i} e^{S_{ij}}` over
    each row's negatives (``log_weight=None``: the mean over the ``n (m-1)`` off-diagonal pairs).

    Example:
        >>> callable(neg_lme)
        True
    """
    _require()
    la = _launch(x, y, tau, pairs, bias)
    lw = _row_weights(log_weight, la.n, -math.log(la.n * (la.m - 1)), x)
    row_lse, _ = _row_stats(x, y, la, 1, 0)
    value = torch.logsumexp(row_lse + lw, -1)
    if not need_grad:
        return (value, *_empty(x, y))
    c = (value[:, None] - lw).contiguous()  # G_ij = e^{S_ij + log w_i - value}
    ones = torch.ones(la.n, dtype=torch.float32, device=x.device)
    return (value, *_grads(x, y, la, 1, 0, c, ones))


def means(
    x: Tensor, y: Tensor, tau: Tensor, value_fn: str | None, grad_fn: str, shift: float,
    param: float, need_grad: bool, grad_value: bool = True, *, pairs: Pairs = PLAIN,
    weight: Tensor | None = None, positives: bool = False, bias: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    r"""``(value_sum, grad_sum, dx, dy, dtau, dbias)``: the sums
    :math:`\sum_i w_i \sum_j \mathrm{fn}(S_{ij} + \mathrm{shift})` over each row's negatives (or
    positives) of ``value_fn`` and ``grad_fn`` (names in :data:`TRITON_FUNCTIONS`;
    ``value_fn=None`` gives 0; ``weight=None``: the mean over the off-diagonal pairs), and the
    gradient of the second (``grad_value=False`` returns 0 for the second value).

    Example:
        >>> TRITON_FUNCTIONS["softplus"]
        2
    """
    _require()
    la = _launch(x, y, tau, pairs, bias)
    w = _row_weights(weight, la.n, 1.0 / (la.n * (la.m - 1)), x)
    f1 = 0 if value_fn is None else TRITON_FUNCTIONS[value_fn]
    f2 = TRITON_FUNCTIONS[grad_fn] if grad_value else 0
    which = 2 if positives else 1
    s1, s2 = _row_stats(x, y, la, which, 1, f1, f2, shift, param)
    vsum, gsum = (s1 * w).sum(-1), (s2 * w).sum(-1)
    if not need_grad:
        return (vsum, gsum, *_empty(x, y))
    fn = TRITON_FUNCTIONS[grad_fn]
    grads = _grads(x, y, la, which, 1, w, w, fn=fn, shift=shift, param=param)
    return (vsum, gsum, *grads)
