r"""Triton kernels for the row log-sum-exp of dot scores (CUDA; optional).

Imported only when Triton is installed. :func:`row_lse_mean_triton` computes
:math:`\frac1N\sum_i\log\sum_j e^{S_{ij}}` for ``S = X Y^T / tau`` and, when asked, its gradient
with respect to ``X``, ``Y`` and ``tau``, FlashAttention-style: a statistics kernel (online
maximum and sum per row over blocks of columns), then one kernel for ``dX`` (over blocks of
columns for each block of rows) and one for ``dY`` (over blocks of rows for each block of
columns), recomputing the scores instead of storing them. Memory is O(N d).

On a CUDA device this is the implementation of the ``mibounds::row_lse_mean`` custom op for
dot scores (cosine scores are dot scores of normalised features). On the CPU it runs only in
Triton's interpreter (``TRITON_INTERPRET=1``), which the tests use with small sizes.
"""

from __future__ import annotations

import torch
from torch import Tensor

try:  # pragma: no cover - depends on the environment
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover
    HAS_TRITON = False

__all__ = ["HAS_TRITON", "row_lse_mean_triton"]

if HAS_TRITON:

    @triton.jit
    def _lse_kernel(
        x_ptr, y_ptr, lse_ptr, n, d, inv_tau, BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr
    ):
        rows = tl.program_id(0) * BM + tl.arange(0, BM)
        dims = tl.arange(0, BD)
        rmask = rows < n
        x = tl.load(
            x_ptr + rows[:, None] * d + dims[None, :],
            mask=rmask[:, None] & (dims[None, :] < d),
            other=0.0,
        ).to(tl.float32)
        m = tl.full((BM,), float("-inf"), tl.float32)
        z = tl.zeros((BM,), tl.float32)
        for c0 in range(0, n, BN):
            cols = c0 + tl.arange(0, BN)
            cmask = cols < n
            y = tl.load(
                y_ptr + cols[:, None] * d + dims[None, :],
                mask=cmask[:, None] & (dims[None, :] < d),
                other=0.0,
            ).to(tl.float32)
            s = tl.dot(x, tl.trans(y)) * inv_tau
            s = tl.where(cmask[None, :], s, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, axis=1))
            z = z * tl.exp(m - m_new) + tl.sum(tl.exp(s - m_new[:, None]), axis=1)
            m = m_new
        tl.store(lse_ptr + rows, m + tl.log(z), mask=rmask)

    @triton.jit
    def _dx_kernel(
        x_ptr,
        y_ptr,
        lse_ptr,
        dx_ptr,
        n,
        d,
        inv_tau,
        scale,
        BM: tl.constexpr,
        BN: tl.constexpr,
        BD: tl.constexpr,
    ):
        # dX_i = scale * inv_tau * sum_j softmax_ij y_j
        rows = tl.program_id(0) * BM + tl.arange(0, BM)
        dims = tl.arange(0, BD)
        rmask = rows < n
        dmask = dims[None, :] < d
        x = tl.load(
            x_ptr + rows[:, None] * d + dims[None, :], mask=rmask[:, None] & dmask, other=0.0
        ).to(tl.float32)
        lse = tl.load(lse_ptr + rows, mask=rmask, other=0.0)
        acc = tl.zeros((BM, BD), tl.float32)
        for c0 in range(0, n, BN):
            cols = c0 + tl.arange(0, BN)
            cmask = cols < n
            y = tl.load(
                y_ptr + cols[:, None] * d + dims[None, :], mask=cmask[:, None] & dmask, other=0.0
            ).to(tl.float32)
            p = tl.exp(tl.dot(x, tl.trans(y)) * inv_tau - lse[:, None])
            p = tl.where(cmask[None, :] & rmask[:, None], p, 0.0)
            acc += tl.dot(p, y)
        tl.store(
            dx_ptr + rows[:, None] * d + dims[None, :],
            acc * (scale * inv_tau),
            mask=rmask[:, None] & dmask,
        )

    @triton.jit
    def _dy_kernel(
        x_ptr,
        y_ptr,
        lse_ptr,
        dy_ptr,
        n,
        d,
        inv_tau,
        scale,
        BM: tl.constexpr,
        BN: tl.constexpr,
        BD: tl.constexpr,
    ):
        # dY_j = scale * inv_tau * sum_i softmax_ij x_i
        cols = tl.program_id(0) * BN + tl.arange(0, BN)
        dims = tl.arange(0, BD)
        cmask = cols < n
        dmask = dims[None, :] < d
        y = tl.load(
            y_ptr + cols[:, None] * d + dims[None, :], mask=cmask[:, None] & dmask, other=0.0
        ).to(tl.float32)
        acc = tl.zeros((BN, BD), tl.float32)
        for r0 in range(0, n, BM):
            rows = r0 + tl.arange(0, BM)
            rmask = rows < n
            x = tl.load(
                x_ptr + rows[:, None] * d + dims[None, :], mask=rmask[:, None] & dmask, other=0.0
            ).to(tl.float32)
            lse = tl.load(lse_ptr + rows, mask=rmask, other=0.0)
            p = tl.exp(tl.dot(x, tl.trans(y)) * inv_tau - lse[:, None])
            p = tl.where(rmask[:, None] & cmask[None, :], p, 0.0)
            acc += tl.dot(tl.trans(p), x)
        tl.store(
            dy_ptr + cols[:, None] * d + dims[None, :],
            acc * (scale * inv_tau),
            mask=cmask[:, None] & dmask,
        )


def row_lse_mean_triton(
    x: Tensor, y: Tensor, tau: float, need_grad: bool, block: int = 64
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""``(value, dx, dy, dtau)`` for one ``(N, d)`` pair: the value is
    :math:`\frac1N\sum_i \mathrm{lse}_i`; the gradients are those of the value (empty tensors
    and 0 without ``need_grad``). ``x``, ``y`` contiguous float32."""
    if not HAS_TRITON:  # pragma: no cover
        raise RuntimeError("row_lse_mean_triton needs Triton: pip install triton")
    n, d = x.shape
    bd = max(16, 1 << (d - 1).bit_length())
    inv = 1.0 / tau
    lse = torch.empty(n, dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(n, block),)
    _lse_kernel[grid](x, y, lse, n, d, inv, BM=block, BN=block, BD=bd)
    value = lse.mean()
    if not need_grad:
        empty = x.new_empty(0)
        return value, empty, y.new_empty(0), value.new_zeros(())
    dx = torch.empty_like(x, dtype=torch.float32)
    dy = torch.empty_like(y, dtype=torch.float32)
    _dx_kernel[grid](x, y, lse, dx, n, d, inv, 1.0 / n, BM=block, BN=block, BD=bd)
    _dy_kernel[grid](x, y, lse, dy, n, d, inv, 1.0 / n, BM=block, BN=block, BD=bd)
    # d(value)/d tau = -inv * sum_ij G_ij S_ij = -inv^2 sum_i x_i . (G Y)_i = -inv sum_i x_i . dx_i
    dtau = -inv * (x.float() * dx).sum()
    return value, dx, dy, dtau
