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
    "PRECISION",
    "SHARED_MEMORY_LIMIT",
    "TRITON_FUNCTIONS",
    "compile_ahead",
    "kernel_variants",
    "offdiag_lme_triton",
    "offdiag_means_triton",
    "row_lse_mean_triton",
    "symmetric_lse_mean_triton",
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
        return out

    @triton.jit
    def _load_rows(ptr, rows, dims, n, d):
        return tl.load(
            ptr + rows[:, None].to(tl.int64) * d + dims[None, :],
            mask=(rows[:, None] < n) & (dims[None, :] < d),
            other=0.0,
        ).to(tl.float32)

    @triton.jit
    def _stats_kernel(
        x_ptr,
        y_ptr,
        out1_ptr,
        out2_ptr,
        n,
        d,
        tau_ptr,
        shift,
        param,
        MODE: tl.constexpr,
        FN1: tl.constexpr,
        FN2: tl.constexpr,
        MASK_DIAG: tl.constexpr,
        BM: tl.constexpr,
        BN: tl.constexpr,
        BD: tl.constexpr,
    ):
        # MODE 0: out1[i] = log sum_j e^{S_ij}; MODE 1: out1[i], out2[i] = sum_j FN1, FN2 of
        # S_ij + shift. With MASK_DIAG the diagonal j = i is left out.
        inv_tau = 1.0 / tl.load(tau_ptr)
        rows = tl.program_id(0) * BM + tl.arange(0, BM)
        dims = tl.arange(0, BD)
        rmask = rows < n
        x = _load_rows(x_ptr, rows, dims, n, d)
        m = tl.full((BM,), float("-inf"), tl.float32)
        z = tl.zeros((BM,), tl.float32)
        z2 = tl.zeros((BM,), tl.float32)
        for c0 in range(0, n, BN):
            cols = c0 + tl.arange(0, BN)
            valid = (cols[None, :] < n) & rmask[:, None]
            if MASK_DIAG:
                valid = valid & (cols[None, :] != rows[:, None])
            y = _load_rows(y_ptr, cols, dims, n, d)
            s = tl.dot(x, tl.trans(y), input_precision=_PRECISION) * inv_tau
            if MODE == 0:
                s = tl.where(valid, s, float("-inf"))
                m_new = tl.maximum(m, tl.max(s, axis=1))
                m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
                z = z * tl.exp(m - m_safe) + tl.sum(tl.exp(s - m_safe[:, None]), axis=1)
                m = m_new
            else:
                t = s + shift
                z += tl.sum(tl.where(valid, _fn(t, param, FN1), 0.0), axis=1)
                z2 += tl.sum(tl.where(valid, _fn(t, param, FN2), 0.0), axis=1)
        if MODE == 0:
            tl.store(out1_ptr + rows, m + tl.log(tl.where(rmask, z, 1.0)), mask=rmask)
        else:
            tl.store(out1_ptr + rows, z, mask=rmask)
            tl.store(out2_ptr + rows, z2, mask=rmask)

    @triton.jit
    def _grad_kernel(
        x_ptr,
        y_ptr,
        c_ptr,
        out_ptr,
        n,
        d,
        tau_ptr,
        scale,
        shift,
        param,
        MODE: tl.constexpr,
        FN: tl.constexpr,
        MASK_DIAG: tl.constexpr,
        COLS: tl.constexpr,
        BM: tl.constexpr,
        BN: tl.constexpr,
        BD: tl.constexpr,
    ):
        # G_ij = exp(S_ij - c_i) (MODE 0) or FN'(S_ij + shift) (MODE 1). COLS = 0:
        # out = scale / tau * G Y for a block of rows; COLS = 1: out = scale / tau * G^T X for a
        # block of columns.
        inv_tau = 1.0 / tl.load(tau_ptr)
        own = tl.program_id(0) * BM + tl.arange(0, BM)
        dims = tl.arange(0, BD)
        omask = own < n
        if COLS:
            mine = _load_rows(y_ptr, own, dims, n, d)
        else:
            mine = _load_rows(x_ptr, own, dims, n, d)
        acc = tl.zeros((BM, BD), tl.float32)
        for o0 in range(0, n, BN):
            other = o0 + tl.arange(0, BN)
            if COLS:
                rows, cols = other, own
                xs = _load_rows(x_ptr, other, dims, n, d)
                s = (
                    tl.dot(xs, tl.trans(mine), input_precision=_PRECISION) * inv_tau
                )  # (BN rows, BM cols)
                valid = (rows[:, None] < n) & omask[None, :]
                if MASK_DIAG:
                    valid = valid & (rows[:, None] != cols[None, :])
                if MODE == 0:
                    c = tl.load(c_ptr + rows, mask=rows < n, other=0.0)
                    g = tl.exp(s - c[:, None])
                else:
                    g = _dfn(s + shift, param, FN)
                g = tl.where(valid, g, 0.0)
                acc += tl.dot(tl.trans(g), xs, input_precision=_PRECISION)
            else:
                rows, cols = own, other
                ys = _load_rows(y_ptr, other, dims, n, d)
                s = (
                    tl.dot(mine, tl.trans(ys), input_precision=_PRECISION) * inv_tau
                )  # (BM rows, BN cols)
                valid = omask[:, None] & (cols[None, :] < n)
                if MASK_DIAG:
                    valid = valid & (rows[:, None] != cols[None, :])
                if MODE == 0:
                    c = tl.load(c_ptr + rows, mask=omask, other=0.0)
                    g = tl.exp(s - c[:, None])
                else:
                    g = _dfn(s + shift, param, FN)
                g = tl.where(valid, g, 0.0)
                acc += tl.dot(g, ys, input_precision=_PRECISION)
        tl.store(
            out_ptr + own[:, None].to(tl.int64) * d + dims[None, :],
            acc * (scale * inv_tau),
            mask=omask[:, None] & (dims[None, :] < d),
        )


def _require() -> None:
    if not HAS_TRITON:  # pragma: no cover
        raise RuntimeError("the Triton kernels need Triton: pip install triton")


def _setup(x: Tensor, block: int) -> tuple[int, int, int, tuple[int]]:
    n, d = x.shape
    return n, d, max(16, 1 << (d - 1).bit_length()), (triton.cdiv(n, block),)


def _grads(
    x: Tensor,
    y: Tensor,
    c: Tensor,
    tau: Tensor,
    scale: float,
    mode: int,
    fn: int = 0,
    shift: float = 0.0,
    param: float = 0.0,
    mask_diag: bool = False,
    block: int = BLOCK,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(dx, dy, dtau)`` for the scores' gradient ``G`` described by ``mode`` and ``fn``."""
    n, d, bd, grid = _setup(x, block)
    dx = torch.empty_like(x, dtype=torch.float32)
    dy = torch.empty_like(y, dtype=torch.float32)
    for out, cols in ((dx, 0), (dy, 1)):
        _grad_kernel[grid](
            x, y, c, out, n, d, tau, scale, shift, param,
            MODE=mode, FN=fn, MASK_DIAG=mask_diag, COLS=cols, BM=block, BN=block, BD=bd,
            num_warps=NUM_WARPS, num_stages=NUM_STAGES,
        )  # fmt: skip
    # d/dtau = -sum_ij G_ij S_ij / tau = -sum_i x_i . dx_i / tau
    return dx, dy, -(x.float() * dx).sum() / tau[0]


def _tau_tensor(tau: float | Tensor, like: Tensor) -> Tensor:
    """``tau`` as a one-element float32 tensor on ``like``'s device (never read back)."""
    return torch.as_tensor(tau, dtype=torch.float32, device=like.device).reshape(1)


def _row_lse(x: Tensor, y: Tensor, tau: Tensor, mask_diag: bool, block: int) -> Tensor:
    n, d, bd, grid = _setup(x, block)
    lse = torch.empty(n, dtype=torch.float32, device=x.device)
    _stats_kernel[grid](
        x, y, lse, lse, n, d, tau, 0.0, 0.0,
        MODE=0, FN1=0, FN2=0, MASK_DIAG=mask_diag, BM=block, BN=block, BD=bd,
        num_warps=NUM_WARPS, num_stages=NUM_STAGES,
    )  # fmt: skip
    return lse


def _empty(x: Tensor, y: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return x.new_empty(0), y.new_empty(0), value.new_zeros(())


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
    _require()
    n = x.shape[0]
    t = _tau_tensor(tau, x)
    lse = _row_lse(x, y, t, False, block)
    value = lse.mean()
    if not need_grad:
        return (value, *_empty(x, y, value))
    return (value, *_grads(x, y, lse, t, 1.0 / n, mode=0, block=block))


def symmetric_lse_mean_triton(
    x: Tensor, y: Tensor, tau: float | Tensor, need_grad: bool, block: int = BLOCK
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""``(value, dx, dy, dtau)`` of the average of the row and the column mean log-sum-exp:
    the column statistics are the row statistics of ``Y X^T``.

    Example:
        >>> TRITON_FUNCTIONS["exp"], TRITON_FUNCTIONS["fmi:js"]
        (1, 15)
    """
    v1, dx1, dy1, dt1 = row_lse_mean_triton(x, y, tau, need_grad, block)
    v2, dy2, dx2, dt2 = row_lse_mean_triton(y, x, tau, need_grad, block)
    value = 0.5 * (v1 + v2)
    if not need_grad:
        return (value, *_empty(x, y, value))
    return value, 0.5 * (dx1 + dx2), 0.5 * (dy1 + dy2), 0.5 * (dt1 + dt2)


def offdiag_lme_triton(
    x: Tensor, y: Tensor, tau: float | Tensor, need_grad: bool, block: int = BLOCK
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""``(value, dx, dy, dtau)`` of :math:`\log\frac{1}{N(N-1)}\sum_{i\ne j} e^{S_{ij}}`.

    Example:
        >>> callable(offdiag_lme_triton)
        True
    """
    _require()
    n = x.shape[0]
    t = _tau_tensor(tau, x)
    total = torch.logsumexp(_row_lse(x, y, t, True, block), 0)
    value = total - math.log(n * (n - 1))
    if not need_grad:
        return (value, *_empty(x, y, value))
    c = total.expand(n).contiguous()  # G_ij = e^{S_ij - total}
    return (value, *_grads(x, y, c, t, 1.0, mode=0, mask_diag=True, block=block))


def offdiag_means_triton(
    x: Tensor,
    y: Tensor,
    tau: float | Tensor,
    value_fn: str | None,
    grad_fn: str,
    shift: float,
    param: float,
    need_grad: bool,
    grad_value: bool = True,
    block: int = BLOCK,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    r"""``(value_mean, grad_mean, dx, dy, dtau)``: the off-diagonal means of ``value_fn`` and
    ``grad_fn`` of ``S + shift`` (names in :data:`TRITON_FUNCTIONS`; ``value_fn`` may be
    ``None``, giving 0), and the gradient of the second (as
    :func:`mibounds.kernels.streaming.offdiag_means`; ``grad_value=False`` returns 0 for the
    second value).

    Example:
        >>> TRITON_FUNCTIONS["softplus"]
        2
    """
    _require()
    n, d, bd, grid = _setup(x, block)
    t = _tau_tensor(tau, x)
    f1 = 0 if value_fn is None else TRITON_FUNCTIONS[value_fn]
    f2 = TRITON_FUNCTIONS[grad_fn] if grad_value else 0
    s1 = torch.empty(n, dtype=torch.float32, device=x.device)
    s2 = torch.empty(n, dtype=torch.float32, device=x.device)
    _stats_kernel[grid](
        x, y, s1, s2, n, d, t, shift, param,
        MODE=1, FN1=f1, FN2=f2, MASK_DIAG=True, BM=block, BN=block, BD=bd,
        num_warps=NUM_WARPS, num_stages=NUM_STAGES,
    )  # fmt: skip
    count = n * (n - 1)
    vmean, gmean = s1.sum() / count, s2.sum() / count
    if not need_grad:
        return (vmean, gmean, *_empty(x, y, gmean))
    grads = _grads(
        x, y, s1, t, 1.0 / count, mode=1, fn=TRITON_FUNCTIONS[grad_fn], shift=shift,
        param=param, mask_diag=True, block=block,
    )  # fmt: skip
    return (vmean, gmean, *grads)


# --- ahead-of-time compilation (no GPU needed) ------------------------------------------------

#: Shared memory a block may use (opt-in maximum), in bytes, per compute capability.
SHARED_MEMORY_LIMIT = {80: 166912, 90: 232448}


def kernel_variants() -> list[tuple[str, dict[str, int]]]:
    """Every ``(kernel, constexprs)`` the dispatcher can launch at the largest tile
    (``BD = 64``), and the log-sum-exp variants at every tile width.

    Example:
        >>> len(kernel_variants()) > 50
        True
    """
    fns = sorted(set(TRITON_FUNCTIONS.values()))
    tile = {"BM": BLOCK, "BN": BLOCK}
    out: list[tuple[str, dict[str, int]]] = []
    for bd in (16, 32, 64):
        for mask in (0, 1):
            out.append(("_stats_kernel", dict(MODE=0, FN1=0, FN2=0, MASK_DIAG=mask, BD=bd, **tile)))
            for cols in (0, 1):
                consts = dict(MODE=0, FN=0, MASK_DIAG=mask, COLS=cols, BD=bd, **tile)
                out.append(("_grad_kernel", consts))
    for f1 in (0, TRITON_FUNCTIONS["exp"], TRITON_FUNCTIONS["exp-clip"]):
        for f2 in (0, *fns):
            if f1 or f2:
                consts = dict(MODE=1, FN1=f1, FN2=f2, MASK_DIAG=1, BD=64, **tile)
                out.append(("_stats_kernel", consts))
    for fn in fns:
        for cols in (0, 1):
            consts = dict(MODE=1, FN=fn, MASK_DIAG=1, COLS=cols, BD=64, **tile)
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
    sig = {
        a: "*fp32" if a.endswith("_ptr") else ("i32" if a in ("n", "d") else "fp32")
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
