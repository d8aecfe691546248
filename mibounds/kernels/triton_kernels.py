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
from typing import NamedTuple

import torch
from torch import Tensor

from mibounds._environ import setting

try:  # pragma: no cover - depends on the environment
    import triton

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
    from mibounds.kernels.triton_jit import _grad_kernel, _stats_kernel


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
        EMU=setting("TRITON_INTERPRET", "0") == "1",
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
