r"""Triton kernels for the streaming reductions of dot scores (CUDA; optional).

Imported only when Triton is installed. Every kernel recomputes blocks of ``S = X Y^T / tau``
instead of storing them (FlashAttention-style), so memory is O(N d):

* a row-statistics kernel: per row, the log-sum-exp (online maximum and sum over blocks of
  columns), optionally without the diagonal, or the sums of up to two elementwise functions of
  ``S + shift`` over the off-diagonal entries;
* two gradient kernels: ``dX = G Y / tau`` over blocks of columns for each block of rows, and
  ``dY = G^T X / tau`` over blocks of rows for each block of columns, where the gradient of the
  scores ``G`` is a softmax-like ``exp(S - c_i)`` or the derivative of an elementwise function.

On top of them: :func:`row_lse_mean_triton` (one-way InfoNCE), :func:`symmetric_lse_mean_triton`
(the column log-sum-exp is the row log-sum-exp of ``Y X^T``), :func:`offdiag_lme_triton` (DV,
MINE, SMILE without clipping) and :func:`offdiag_means_triton` for the elementwise functions in
:data:`TRITON_FUNCTIONS` (NWJ, TUBA, JS, SMILE, and ``fmi`` for every built-in divergence).
On a CUDA device they implement the matching ``mibounds::`` custom ops for dot scores (cosine
scores are dot scores of normalised features) with ``d <= 256``; everything else uses the
generic sweep. On the CPU they run only in Triton's interpreter (``TRITON_INTERPRET=1``), which
the tests use with small sizes.
"""

from __future__ import annotations

import math
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
    "BLOCK",
    "HAS_TRITON",
    "MAX_DIM",
    "NUM_STAGES",
    "NUM_WARPS",
    "PLAIN",
    "PRECISION",
    "Pairs",
    "SHARED_MEMORY_LIMIT",
    "TRITON_FUNCTIONS",
    "compile_ahead",
    "kernel_variants",
    "lse_triton",
    "means_triton",
    "neg_lme_triton",
    "offdiag_lme_triton",
    "offdiag_means_triton",
    "row_lse_mean_triton",
    "symmetric_lse_mean_triton",
    "symmetric_lse_triton",
]

#: Elementwise functions the Triton kernels implement: name -> code. The ``fmi:`` entries are
#: :math:`f^*(g_f(v))` of the built-in divergences (``fmi:tsallis`` takes its alpha as the
#: parameter).
TRITON_FUNCTIONS = {
    "exp": 1,
    "softplus": 2,
    "exp-clip": 3,
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

#: ``tl.dot``'s precision for float32 operands: three TF32 products (about float32 accuracy at
#: tensor-core speed) rather than the TF32 default, whose 10-bit mantissa gives log-sum-exp
#: errors of 1e-3 and more at small temperatures.
PRECISION = "tf32x3"
#: The largest feature size the kernels take; larger ones use the PyTorch sweep (a 256-wide
#: tile needs more shared memory than an H100 has, and at 128 the gradient kernel spills).
MAX_DIM = 64
#: Rows and columns per tile, warps and pipeline stages of every launch: compiled ahead of time
#: for sm_80 and sm_90, every kernel variant fits the shared memory and spills no register at
#: d <= 64 (the test suite checks this).
BLOCK = 32
NUM_WARPS = 4
NUM_STAGES = 2

if HAS_TRITON:
    _PRECISION: tl.constexpr = tl.constexpr(PRECISION)

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
    def _load_rows(ptr, rows, dims, n, d):
        return tl.load(
            ptr + rows[:, None].to(tl.int64) * d + dims[None, :],
            mask=(rows[:, None] < n) & (dims[None, :] < d),
            other=0.0,
        ).to(tl.float32)

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
        LABELS: tl.constexpr, EXCLUDE: tl.constexpr, SET: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr,
    ):  # fmt: skip
        # Per row i, over the columns j of the set: MODE 0, out1[i] = log sum_j e^{S_ij}
        # (-inf for an empty set); MODE 1, out1[i], out2[i] = sum_j FN1, FN2 of S_ij + shift.
        inv_tau = 1.0 / tl.load(tau_ptr)
        b = 0.0
        if BIAS:
            b = tl.load(bias_ptr)
        rows = tl.program_id(0) * BM + tl.arange(0, BM)
        dims = tl.arange(0, BD)
        rmask = rows < n
        x = _load_rows(x_ptr, rows, dims, n, d)
        mx = tl.full((BM,), float("-inf"), tl.float32)
        z = tl.zeros((BM,), tl.float32)
        z2 = tl.zeros((BM,), tl.float32)
        for c0 in range(0, m, BN):
            cols = c0 + tl.arange(0, BN)
            keep = _keep(rows, cols, n, m, rl_ptr, cl_ptr, offset, n_paired, LABELS, EXCLUDE, SET)
            y = _load_rows(y_ptr, cols, dims, m, d)
            s = tl.dot(x, tl.trans(y), input_precision=_PRECISION) * inv_tau + b
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
            lse = tl.where(z > 0.0, mx + tl.log(tl.where(z > 0.0, z, 1.0)), float("-inf"))
            tl.store(out1_ptr + rows, lse, mask=rmask)
        else:
            tl.store(out1_ptr + rows, z, mask=rmask)
            tl.store(out2_ptr + rows, z2, mask=rmask)

    @triton.jit
    def _grad_kernel(
        x_ptr, y_ptr, c_ptr, w_ptr, out_ptr, rowsum_ptr, n, m, d, tau_ptr, bias_ptr, shift,
        param, rl_ptr, cl_ptr, offset, n_paired,
        MODE: tl.constexpr, FN: tl.constexpr, BIAS: tl.constexpr, LABELS: tl.constexpr,
        EXCLUDE: tl.constexpr, SET: tl.constexpr, COLS: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr,
    ):  # fmt: skip
        # G_ij = w_i e^{S_ij - c_i} (MODE 0) or w_i FN'(S_ij + shift) (MODE 1) on the set, 0
        # elsewhere. COLS = 0: out = G Y / tau for a block of rows, and rowsum = G's row sums;
        # COLS = 1: out = G^T X / tau for a block of columns.
        inv_tau = 1.0 / tl.load(tau_ptr)
        b = 0.0
        if BIAS:
            b = tl.load(bias_ptr)
        own = tl.program_id(0) * BM + tl.arange(0, BM)
        dims = tl.arange(0, BD)
        if COLS:
            omask = own < m
            mine = _load_rows(y_ptr, own, dims, m, d)
        else:
            omask = own < n
            mine = _load_rows(x_ptr, own, dims, n, d)
        acc = tl.zeros((BM, BD), tl.float32)
        gs = tl.zeros((BM,), tl.float32)
        if COLS:
            for o0 in range(0, n, BN):
                rows = o0 + tl.arange(0, BN)
                xs = _load_rows(x_ptr, rows, dims, n, d)
                s = tl.dot(xs, tl.trans(mine), input_precision=_PRECISION) * inv_tau + b
                keep = _keep(
                    rows, own, n, m, rl_ptr, cl_ptr, offset, n_paired, LABELS, EXCLUDE, SET
                )
                w = tl.load(w_ptr + rows, mask=rows < n, other=0.0)
                if MODE == 0:
                    c = tl.load(c_ptr + rows, mask=rows < n, other=0.0)
                    g = tl.exp(s - c[:, None])
                else:
                    g = _dfn(s + shift, param, FN)
                g = tl.where(keep, g * w[:, None], 0.0)
                acc += tl.dot(tl.trans(g), xs, input_precision=_PRECISION)
        else:
            w = tl.load(w_ptr + own, mask=omask, other=0.0)
            if MODE == 0:
                c = tl.load(c_ptr + own, mask=omask, other=0.0)
            for o0 in range(0, m, BN):
                cols = o0 + tl.arange(0, BN)
                ys = _load_rows(y_ptr, cols, dims, m, d)
                s = tl.dot(mine, tl.trans(ys), input_precision=_PRECISION) * inv_tau + b
                keep = _keep(
                    own, cols, n, m, rl_ptr, cl_ptr, offset, n_paired, LABELS, EXCLUDE, SET
                )
                if MODE == 0:
                    g = tl.exp(s - c[:, None])
                else:
                    g = _dfn(s + shift, param, FN)
                g = tl.where(keep, g * w[:, None], 0.0)
                gs += tl.sum(g, axis=1)
                acc += tl.dot(g, ys, input_precision=_PRECISION)
            tl.store(rowsum_ptr + own, gs, mask=omask)
        tl.store(
            out_ptr + own[:, None].to(tl.int64) * d + dims[None, :],
            acc * inv_tau,
            mask=omask[:, None] & (dims[None, :] < d),
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


def _launch_args(x: Tensor, y: Tensor, pairs: Pairs, bias: Tensor | None):
    """The pointer and size arguments every kernel takes after its own outputs."""
    n, d = x.shape
    m = y.shape[0]
    dummy = x.new_zeros(1)
    rl = dummy if pairs.row_labels is None else pairs.row_labels
    cl = dummy if pairs.col_labels is None else pairs.col_labels
    n_paired = n if pairs.n_paired < 0 else pairs.n_paired
    flags = dict(BIAS=bias is not None, LABELS=pairs.row_labels is not None, EXCLUDE=pairs.exclude)
    return n, m, d, (dummy if bias is None else bias), rl, cl, n_paired, flags


def _tile(d: int) -> int:
    return max(16, 1 << (d - 1).bit_length())


def _row_stats(
    x: Tensor, y: Tensor, tau: Tensor, bias: Tensor | None, pairs: Pairs, which: int,
    mode: int, fn1: int = 0, fn2: int = 0, shift: float = 0.0, param: float = 0.0,
    block: int = BLOCK,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Per row over the set ``which``: the log-sum-exp (mode 0), or the sums of two
    functions (mode 1)."""
    n, m, d, bias_t, rl, cl, n_paired, flags = _launch_args(x, y, pairs, bias)
    out1 = torch.empty(n, dtype=torch.float32, device=x.device)
    out2 = torch.empty(n, dtype=torch.float32, device=x.device)
    _stats_kernel[(triton.cdiv(n, block),)](
        x, y, out1, out2, n, m, d, tau, bias_t, shift, param, rl, cl, pairs.offset, n_paired,
        MODE=mode, FN1=fn1, FN2=fn2, SET=which, BM=block, BN=block, BD=_tile(d),
        num_warps=NUM_WARPS, num_stages=NUM_STAGES, **flags,
    )  # fmt: skip
    return out1, out2


def _grads(
    x: Tensor, y: Tensor, tau: Tensor, bias: Tensor | None, pairs: Pairs, which: int,
    mode: int, c: Tensor, w: Tensor, fn: int = 0, shift: float = 0.0, param: float = 0.0,
    block: int = BLOCK,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """``(dx, dy, dtau, dbias)`` for the gradient ``G`` of the scores described by ``mode``,
    the per-row shifts ``c`` (mode 0) and the per-row weights ``w``."""
    n, m, d, bias_t, rl, cl, n_paired, flags = _launch_args(x, y, pairs, bias)
    dx = torch.empty_like(x, dtype=torch.float32)
    dy = torch.empty_like(y, dtype=torch.float32)
    rowsum = torch.empty(n, dtype=torch.float32, device=x.device)
    for out, cols, size in ((dx, 0, n), (dy, 1, m)):
        _grad_kernel[(triton.cdiv(size, block),)](
            x, y, c, w, out, rowsum, n, m, d, tau, bias_t, shift, param, rl, cl,
            pairs.offset, n_paired,
            MODE=mode, FN=fn, SET=which, COLS=cols, BM=block, BN=block, BD=_tile(d),
            num_warps=NUM_WARPS, num_stages=NUM_STAGES, **flags,
        )  # fmt: skip
    # d/dtau = -sum_ij G_ij (S_ij - b) / tau = -sum_i x_i . dx_i / tau; d/db = sum_ij G_ij
    return dx, dy, -(x.float() * dx).sum() / tau[0], rowsum.sum()


def _tau_tensor(tau: float | Tensor, like: Tensor) -> Tensor:
    """``tau`` as a one-element float32 tensor on ``like``'s device (never read back)."""
    return torch.as_tensor(tau, dtype=torch.float32, device=like.device).reshape(1)


def _empty(x: Tensor, y: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return x.new_empty(0), y.new_empty(0), value.new_zeros(()), value.new_zeros(())


def lse_triton(
    x: Tensor, y: Tensor, tau: float | Tensor, need_grad: bool, *, pairs: Pairs = PLAIN,
    weight: Tensor | None = None, bias: Tensor | None = None, block: int = BLOCK,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    r"""``(value, dx, dy, dtau, dbias)`` of :math:`\sum_i w_i \log\sum_{j \in C_i} e^{S_{ij}}`
    over each row's candidates (``weight=None``: the mean over rows). ``x`` ``(n, d)``, ``y``
    ``(m, d)`` contiguous float32.

    Example:
        >>> HAS_TRITON in (True, False)
        True
    """
    _require()
    n = x.shape[0]
    t = _tau_tensor(tau, x)
    w = torch.full((n,), 1.0 / n, device=x.device) if weight is None else weight.float()
    lse, _ = _row_stats(x, y, t, bias, pairs, 0, 0, block=block)
    value = torch.where(w > 0, w * lse, 0.0).sum()
    if not need_grad:
        return (value, *_empty(x, y, value))
    return (value, *_grads(x, y, t, bias, pairs, 0, 0, lse, w, block=block))


def row_lse_mean_triton(
    x: Tensor, y: Tensor, tau: float | Tensor, need_grad: bool, block: int = BLOCK
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""``(value, dx, dy, dtau)`` for one ``(N, d)`` pair: the value is
    :math:`\frac1N\sum_i \mathrm{lse}_i`; the gradients are those of the value (empty tensors
    and 0 without ``need_grad``). ``x``, ``y`` contiguous float32.

    Example:
        >>> HAS_TRITON in (True, False)
        True
    """
    return lse_triton(x, y, tau, need_grad, block=block)[:4]


def symmetric_lse_triton(
    x: Tensor, y: Tensor, tau: float | Tensor, need_grad: bool, *, pairs: Pairs = PLAIN,
    row_weight: Tensor | None = None, col_weight: Tensor | None = None,
    bias: Tensor | None = None, block: int = BLOCK,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    r"""``(value, dx, dy, dtau, dbias)`` of the weighted row plus column log-sum-exp over the
    candidates (without weights, the average of the two means): the column statistics are the
    row statistics of ``Y X^T`` with the pairing seen from the columns.

    Example:
        >>> TRITON_FUNCTIONS["exp"], TRITON_FUNCTIONS["fmi:js"]
        (1, 15)
    """
    n, m = x.shape[0], y.shape[0]
    u = torch.full((n,), 0.5 / n, device=x.device) if row_weight is None else row_weight
    v = torch.full((m,), 0.5 / n, device=x.device) if col_weight is None else col_weight
    r = lse_triton(x, y, tau, need_grad, pairs=pairs, weight=u, bias=bias, block=block)
    c = lse_triton(y, x, tau, need_grad, pairs=pairs.swapped(), weight=v, bias=bias, block=block)
    value = r[0] + c[0]
    if not need_grad:
        return (value, *_empty(x, y, value))
    return value, r[1] + c[2], r[2] + c[1], r[3] + c[3], r[4] + c[4]


def symmetric_lse_mean_triton(
    x: Tensor, y: Tensor, tau: float | Tensor, need_grad: bool, block: int = BLOCK
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""``(value, dx, dy, dtau)`` of the average of the row and the column mean log-sum-exp.

    Example:
        >>> callable(symmetric_lse_mean_triton)
        True
    """
    return symmetric_lse_triton(x, y, tau, need_grad, block=block)[:4]


def neg_lme_triton(
    x: Tensor, y: Tensor, tau: float | Tensor, need_grad: bool, *, pairs: Pairs = PLAIN,
    log_weight: Tensor | None = None, bias: Tensor | None = None, block: int = BLOCK,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    r"""``(value, dx, dy, dtau, dbias)`` of :math:`\log\sum_i w_i\sum_{j\in N_i} e^{S_{ij}}` over
    each row's negatives (``log_weight=None``: the mean over the ``n (m-1)`` off-diagonal pairs).

    Example:
        >>> callable(neg_lme_triton)
        True
    """
    _require()
    n, m = x.shape[0], y.shape[0]
    t = _tau_tensor(tau, x)
    if log_weight is None:
        log_weight = torch.full((n,), -math.log(n * (m - 1)), device=x.device)
    lse, _ = _row_stats(x, y, t, bias, pairs, 1, 0, block=block)
    value = torch.logsumexp(lse + log_weight.float(), 0)
    if not need_grad:
        return (value, *_empty(x, y, value))
    c = (value - log_weight.float()).contiguous()  # G_ij = e^{S_ij + log w_i - value}
    ones = torch.ones(n, device=x.device)
    return (value, *_grads(x, y, t, bias, pairs, 1, 0, c, ones, block=block))


def offdiag_lme_triton(
    x: Tensor, y: Tensor, tau: float | Tensor, need_grad: bool, block: int = BLOCK
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""``(value, dx, dy, dtau)`` of :math:`\log\frac{1}{N(N-1)}\sum_{i\ne j} e^{S_{ij}}`.

    Example:
        >>> callable(offdiag_lme_triton)
        True
    """
    return neg_lme_triton(x, y, tau, need_grad, block=block)[:4]


def means_triton(
    x: Tensor, y: Tensor, tau: float | Tensor, value_fn: str | None, grad_fn: str,
    shift: float, param: float, need_grad: bool, grad_value: bool = True, *,
    pairs: Pairs = PLAIN, weight: Tensor | None = None, positives: bool = False,
    bias: Tensor | None = None, block: int = BLOCK,
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
    n, m = x.shape[0], y.shape[0]
    t = _tau_tensor(tau, x)
    w = torch.full((n,), 1.0 / (n * (m - 1)), device=x.device) if weight is None else weight
    w = w.float().contiguous()
    f1 = 0 if value_fn is None else TRITON_FUNCTIONS[value_fn]
    f2 = TRITON_FUNCTIONS[grad_fn] if grad_value else 0
    which = 2 if positives else 1
    s1, s2 = _row_stats(x, y, t, bias, pairs, which, 1, f1, f2, shift, param, block=block)
    vsum, gsum = (s1 * w).sum(), (s2 * w).sum()
    if not need_grad:
        return (vsum, gsum, *_empty(x, y, gsum))
    fn = TRITON_FUNCTIONS[grad_fn]
    grads = _grads(x, y, t, bias, pairs, which, 1, w, w, fn, shift, param, block=block)
    return (vsum, gsum, *grads)


def offdiag_means_triton(
    x: Tensor, y: Tensor, tau: float | Tensor, value_fn: str | None, grad_fn: str,
    shift: float, param: float, need_grad: bool, grad_value: bool = True, block: int = BLOCK,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    r"""``(value_mean, grad_mean, dx, dy, dtau)``: the off-diagonal means of ``value_fn`` and
    ``grad_fn`` of ``S + shift`` (see :func:`means_triton`).

    Example:
        >>> TRITON_FUNCTIONS["softplus"]
        2
    """
    out = means_triton(
        x, y, tau, value_fn, grad_fn, shift, param, need_grad, grad_value, block=block
    )
    return out[:5]


# --- ahead-of-time compilation (no GPU needed) ------------------------------------------------

#: Shared memory a block may use (opt-in maximum), in bytes, per compute capability.
SHARED_MEMORY_LIMIT = {80: 166912, 90: 232448}


def kernel_variants() -> list[tuple[str, dict[str, int]]]:
    """The ``(kernel, constexprs)`` the dispatcher can launch: the log-sum-exp kernels at every
    tile width, and every elementwise function at the largest (``BD = 64``), each with the
    plain pairing and with every pairing feature on (labels, an exclusion, a bias).

    Example:
        >>> len(kernel_variants()) > 100
        True
    """
    fns = sorted(set(TRITON_FUNCTIONS.values()))
    tile = {"BM": BLOCK, "BN": BLOCK}
    plain = {"BIAS": 0, "LABELS": 0, "EXCLUDE": 0}
    flags = [plain, {"BIAS": 1, "LABELS": 1, "EXCLUDE": 1}, {"BIAS": 1, "LABELS": 0, "EXCLUDE": 2}]
    out: list[tuple[str, dict[str, int]]] = []
    for bd in (16, 32, 64):
        for which in (0, 1):
            for f in flags:
                out.append(
                    ("_stats_kernel", dict(MODE=0, FN1=0, FN2=0, SET=which, BD=bd, **f, **tile))
                )
                for cols in (0, 1):
                    if bd == 64 or f is plain:
                        consts = dict(MODE=0, FN=0, SET=which, COLS=cols, BD=bd, **f, **tile)
                        out.append(("_grad_kernel", consts))
    full = flags[1]
    for f1 in (0, TRITON_FUNCTIONS["exp"], TRITON_FUNCTIONS["exp-clip"]):
        for f2 in (0, *fns):
            if f1 or f2:
                consts = dict(MODE=1, FN1=f1, FN2=f2, SET=1, BD=64, **full, **tile)
                out.append(("_stats_kernel", consts))
    for fn in fns:
        out.append(("_stats_kernel", dict(MODE=1, FN1=0, FN2=fn, SET=2, BD=64, **full, **tile)))
        for which in (1, 2):
            for cols in (0, 1):
                consts = dict(MODE=1, FN=fn, SET=which, COLS=cols, BD=64, **full, **tile)
                out.append(("_grad_kernel", consts))
    return out


def compile_ahead(kernel: str, constexprs: dict[str, int], arch: int) -> dict[str, int]:
    """Compile one kernel variant for ``sm_<arch>`` on this machine (Triton's bundled ptxas; no
    GPU needed) and report its resources: ``shared`` bytes, ``registers`` and ``stack`` bytes
    per thread (a stack frame means spilled registers).

    Raises:
        RuntimeError: without Triton, or if the compilation fails.
    """
    import os
    import subprocess
    import tempfile

    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    _require()
    fn = {"_stats_kernel": _stats_kernel, "_grad_kernel": _grad_kernel}[kernel]
    ints = ("n", "m", "d", "offset", "n_paired")
    sig = {
        a: ("*i64" if a in ("rl_ptr", "cl_ptr") else "*fp32")
        if a.endswith("_ptr")
        else ("i32" if a in ints else "fp32")
        for a in fn.arg_names
    }
    sig.update({k: "constexpr" for k in constexprs})
    compiled = triton.compile(
        ASTSource(fn=fn, signature=sig, constexprs=constexprs),
        target=GPUTarget("cuda", arch, 32),
        options={"num_warps": NUM_WARPS, "num_stages": NUM_STAGES},
    )
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as fh:
            fh.write(compiled.asm["cubin"])
        usage = subprocess.run([tool, "-res-usage", path], capture_output=True, text=True)
    line = [ln for ln in usage.stdout.splitlines() if "REG:" in ln][-1]
    return {
        "shared": int(compiled.metadata.shared),
        "registers": int(line.split("REG:")[1].split()[0]),
        "stack": int(line.split("STACK:")[1].split()[0]),
    }
