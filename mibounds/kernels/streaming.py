r"""Streaming reductions of separable scores: O(N) memory, gradient computed in the forward sweep.

The score matrix ``S = sim(x, y) / tau`` of a separable critic is never materialised. Rows are
processed in panels of ``P`` rows (``P x N`` scores at a time, ``P`` sized from a memory
budget). Each reduction returns a **scalar per leading batch index** and, when a gradient is
needed, accumulates the gradient with respect to ``x``, ``y`` and ``tau`` during the same sweep,
with the same three matrix products a plain implementation needs
(``S_p = X_p Y^T``, ``dX_p = G_p Y``, ``dY += G_p^T X_p``); the backward pass only scales the
stored gradients by the incoming one. Under ``torch.no_grad()`` only the statistics are computed.

Similarities handled here are ``"dot"`` and ``"gaussian"`` (:math:`-\|x - y\|^2`); cosine
scores are dot scores of normalised features, normalised by the caller with ordinary
(differentiable) torch ops.

Every op is a ``torch.library.custom_op`` with a fake (meta) implementation and an autograd
registration, so an outer ``torch.compile`` treats it as one node.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "ELEMENTWISE",
    "elementwise",
    "get_memory_budget",
    "offdiag_logmeanexp",
    "offdiag_means",
    "panel_rows",
    "row_logsumexp_mean",
    "set_memory_budget",
]

#: Bytes of panel workspace per sweep (about four ``P x N`` float32 buffers live at once).
DEFAULT_MEMORY_BUDGET = 32 * 2**20
_BUDGET = [DEFAULT_MEMORY_BUDGET]


def set_memory_budget(nbytes: int | None) -> None:
    """Set the panel workspace of the streaming kernels in bytes (``None``: the default, 32 MiB).

    Smaller budgets mean more, thinner panels (less memory, more Python overhead).

    Raises:
        ValueError: if ``nbytes`` is not a positive int.
    """
    if nbytes is None:
        _BUDGET[0] = DEFAULT_MEMORY_BUDGET
        return
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes <= 0:
        raise ValueError(f"nbytes must be a positive int or None, got {nbytes!r}")
    _BUDGET[0] = nbytes


def get_memory_budget() -> int:
    """The current panel workspace of the streaming kernels, in bytes."""
    return _BUDGET[0]


_SIMS = {"dot": 0, "gaussian": 1}


def panel_rows(n: int, budget: int | None = None, buffers: int = 4) -> int:
    """Rows per panel so that ``buffers`` float32 ``P x N`` panels fit in ``budget`` bytes."""
    b = _BUDGET[0] if budget is None else budget
    return max(1, min(n, b // (buffers * 4 * max(n, 1))))


def _panel_scores(
    xp: Tensor, y: Tensor, sqx: Tensor | None, sqy: Tensor | None, sim: int, inv_tau: Tensor
) -> Tensor:
    """Scores of a panel of rows: ``(B, P, N)``."""
    s = torch.bmm(xp, y.transpose(1, 2))
    if sim == 1:
        assert sqx is not None and sqy is not None
        s = (2 * s - sqx[:, :, None] - sqy[:, None, :]).clamp_max_(0)
    return s * inv_tau[:, None, None]


def _apply_grad(
    g: Tensor,
    xp: Tensor,
    y: Tensor,
    s: Tensor,
    sim: int,
    inv_tau: Tensor,
    dy: Tensor,
    colsum: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """Given ``g = dL/dS`` on a panel, return ``(dL/dx_panel, dL/dtau contribution)`` and add the
    panel's share of ``dL/dy`` into ``dy`` (and column sums of ``g`` into ``colsum``)."""
    scale = inv_tau[:, None, None]
    dxp = torch.bmm(g, y)
    dy.baddbmm_(g.transpose(1, 2), xp)
    if sim == 1:
        assert colsum is not None
        dxp = 2 * dxp - 2 * xp * g.sum(-1, keepdim=True)
        colsum += g.sum(1)
    # dS/dtau = -S / tau for both similarities
    dtau = -(g * s).sum((1, 2)) * inv_tau
    return dxp * scale, dtau


def _finish_dy(dy: Tensor, y: Tensor, colsum: Tensor | None, sim: int, inv_tau: Tensor) -> Tensor:
    if sim == 1:
        assert colsum is not None
        dy = 2 * dy - 2 * y * colsum[:, :, None]
    return dy * inv_tau[:, None, None]


def _acc(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float32 for half inputs, the input dtype otherwise."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _prep(x: Tensor, y: Tensor, tau: Tensor, sim: int):
    dt = _acc(x.dtype)
    x32, y32 = x.to(dt), y.to(dt)
    b = x32.shape[0]
    inv_tau = (1.0 / tau.to(dt)).reshape(1).expand(b).contiguous()
    sqx = (x32 * x32).sum(-1) if sim == 1 else None
    sqy = (y32 * y32).sum(-1) if sim == 1 else None
    return x32, y32, inv_tau, sqx, sqy


# --- mean over rows of the row log-sum-exp ---------------------------------------------------


@torch.library.custom_op("mibounds::row_lse_mean", mutates_args=())
def _row_lse_mean(
    x: Tensor, y: Tensor, tau: Tensor, sim: int, need_grad: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    x32, y32, inv_tau, sqx, sqy = _prep(x, y, tau, sim)
    b, n, _ = x32.shape
    panel = panel_rows(n)
    value = x32.new_zeros(b)
    dx = torch.zeros_like(x32) if need_grad else x32.new_zeros(0)
    dy = torch.zeros_like(y32) if need_grad else y32.new_zeros(0)
    dtau = x32.new_zeros(b)
    colsum = x32.new_zeros(b, n) if (need_grad and sim == 1) else None
    for r0 in range(0, n, panel):
        r1 = min(n, r0 + panel)
        xp = x32[:, r0:r1]
        s = _panel_scores(xp, y32, None if sqx is None else sqx[:, r0:r1], sqy, sim, inv_tau)
        lse = torch.logsumexp(s, dim=-1)
        value += lse.sum(-1)
        if need_grad:
            g = torch.exp(s - lse[:, :, None]).div_(n)
            dxp, dt = _apply_grad(g, xp, y32, s, sim, inv_tau, dy, colsum)
            dx[:, r0:r1] = dxp
            dtau += dt
    if need_grad:
        dy = _finish_dy(dy, y32, colsum, sim, inv_tau)
    return value / n, dx.to(x.dtype), dy.to(y.dtype), dtau


@_row_lse_mean.register_fake
def _(x, y, tau, sim, need_grad):
    b = x.shape[0]
    dx = torch.empty_like(x) if need_grad else x.new_empty(0)
    dy = torch.empty_like(y) if need_grad else y.new_empty(0)
    return x.new_empty(b, dtype=_acc(x.dtype)), dx, dy, x.new_empty(b, dtype=_acc(x.dtype))


# --- off-diagonal log-mean-exp ---------------------------------------------------------------


@torch.library.custom_op("mibounds::offdiag_lme", mutates_args=())
def _offdiag_lme(
    x: Tensor, y: Tensor, tau: Tensor, sim: int, need_grad: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    x32, y32, inv_tau, sqx, sqy = _prep(x, y, tau, sim)
    b, n, _ = x32.shape
    panel = panel_rows(n)
    run_max = x32.new_full((b,), -math.inf)
    run_sum = x32.new_zeros(b)
    dx = torch.zeros_like(x32) if need_grad else x32.new_zeros(0)
    dy = torch.zeros_like(y32) if need_grad else y32.new_zeros(0)
    dtau = x32.new_zeros(b)
    colsum = x32.new_zeros(b, n) if (need_grad and sim == 1) else None
    ar = torch.arange(n, device=x32.device)
    for r0 in range(0, n, panel):
        r1 = min(n, r0 + panel)
        xp = x32[:, r0:r1]
        s = _panel_scores(xp, y32, None if sqx is None else sqx[:, r0:r1], sqy, sim, inv_tau)
        diag = ar[r0:r1]
        s_masked = s.clone()
        s_masked[:, diag - r0, diag] = -math.inf
        new_max = torch.maximum(run_max, s_masked.amax((1, 2)))
        rescale = torch.exp(run_max - new_max)  # 0 on the first panel (exp(-inf))
        w = torch.exp(s_masked - new_max[:, None, None])
        run_sum = run_sum * rescale + w.sum((1, 2))
        if need_grad:
            # Accumulate unnormalised gradients in the running-max frame; rescale the past.
            dx[:, :r0] *= rescale[:, None, None]
            dy *= rescale[:, None, None]
            dtau *= rescale
            if colsum is not None:
                colsum *= rescale[:, None]
            dxp, dt = _apply_grad(w, xp, y32, torch.where(w > 0, s, 0), sim, inv_tau, dy, colsum)
            dx[:, r0:r1] = dxp
            dtau += dt
        run_max = new_max
    value = run_max + torch.log(run_sum) - math.log(n * (n - 1))
    if need_grad:
        dy = _finish_dy(dy, y32, colsum, sim, inv_tau) / run_sum[:, None, None]
        dx = dx / run_sum[:, None, None]
        dtau = dtau / run_sum
    return value, dx.to(x.dtype), dy.to(y.dtype), dtau


@_offdiag_lme.register_fake
def _(x, y, tau, sim, need_grad):
    b = x.shape[0]
    dx = torch.empty_like(x) if need_grad else x.new_empty(0)
    dy = torch.empty_like(y) if need_grad else y.new_empty(0)
    return x.new_empty(b, dtype=_acc(x.dtype)), dx, dy, x.new_empty(b, dtype=_acc(x.dtype))


# --- off-diagonal means of elementwise functions ---------------------------------------------

#: Elementwise functions the streaming off-diagonal mean knows: name -> id. Each has a value
#: function and an explicit derivative (autograd is not available inside a custom op).
ELEMENTWISE: dict[str, int] = {}
_FNS: list[tuple[str, object, object]] = []


def _register_fn(name: str, fn, dfn) -> None:
    ELEMENTWISE[name] = len(_FNS)
    _FNS.append((name, fn, dfn))


def elementwise(name: str, fn, dfn) -> str:
    """Make an elementwise function ``fn`` with derivative ``dfn`` available to
    :func:`offdiag_means` under ``name`` (the first registration of a name wins)."""
    if name not in ELEMENTWISE:
        _register_fn(name, fn, dfn)
    return name


def _fn_value_grad(
    fid: int, s: Tensor, param: float, need_grad: bool
) -> tuple[Tensor, Tensor | None]:
    _, fn, dfn = _FNS[fid]
    value = fn(s, param)  # type: ignore[operator]
    return value, (dfn(s, param) if need_grad else None)  # type: ignore[operator]


@torch.library.custom_op("mibounds::offdiag_means", mutates_args=())
def _offdiag_means(
    x: Tensor,
    y: Tensor,
    tau: Tensor,
    sim: int,
    value_fn: int,
    grad_fn: int,
    shift: float,
    param: float,
    need_grad: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Means over i != j of ``value_fn(S + shift)`` (no gradient) and ``grad_fn(S + shift)``
    (with gradient); ``value_fn = -1`` skips the first. ``param`` is passed to both functions."""
    x32, y32, inv_tau, sqx, sqy = _prep(x, y, tau, sim)
    b, n, _ = x32.shape
    panel = panel_rows(n)
    vsum = x32.new_zeros(b)
    gsum = x32.new_zeros(b)
    dx = torch.zeros_like(x32) if need_grad else x32.new_zeros(0)
    dy = torch.zeros_like(y32) if need_grad else y32.new_zeros(0)
    dtau = x32.new_zeros(b)
    colsum = x32.new_zeros(b, n) if (need_grad and sim == 1) else None
    ar = torch.arange(n, device=x32.device)
    count = n * (n - 1)
    for r0 in range(0, n, panel):
        r1 = min(n, r0 + panel)
        xp = x32[:, r0:r1]
        s = _panel_scores(xp, y32, None if sqx is None else sqx[:, r0:r1], sqy, sim, inv_tau)
        diag = ar[r0:r1]
        keep = torch.ones_like(s, dtype=torch.bool)
        keep[:, diag - r0, diag] = False
        s_safe = torch.where(keep, s, 0.0) + shift
        if value_fn >= 0:
            v, _ = _fn_value_grad(value_fn, s_safe, param, False)
            vsum += torch.where(keep, v, 0.0).sum((1, 2))
        gv, g = _fn_value_grad(grad_fn, s_safe, param, need_grad)
        gsum += torch.where(keep, gv, 0.0).sum((1, 2))
        if need_grad:
            assert g is not None
            g = torch.where(keep, g, 0.0) / count
            dxp, dt = _apply_grad(g, xp, y32, s, sim, inv_tau, dy, colsum)
            dx[:, r0:r1] = dxp
            dtau += dt
    if need_grad:
        dy = _finish_dy(dy, y32, colsum, sim, inv_tau)
    return vsum / count, gsum / count, dx.to(x.dtype), dy.to(y.dtype), dtau


@_offdiag_means.register_fake
def _(x, y, tau, sim, value_fn, grad_fn, shift, param, need_grad):
    b = x.shape[0]
    dx = torch.empty_like(x) if need_grad else x.new_empty(0)
    dy = torch.empty_like(y) if need_grad else y.new_empty(0)
    acc = _acc(x.dtype)
    f = x.new_empty(b, dtype=acc)
    return f, x.new_empty(b, dtype=acc), dx, dy, x.new_empty(b, dtype=acc)


# --- autograd: backward scales the gradients stored by the forward sweep --------------------


def _setup_scalar(ctx, inputs, output) -> None:
    tau = inputs[2]
    grads = output[-3:]
    ctx.save_for_backward(*grads)
    ctx.tau_shape = tau.shape
    ctx.tau_dtype = tau.dtype


def _backward_scalar(ctx, grad_value):
    dx, dy, dtau = ctx.saved_tensors
    if dx.numel() == 0:
        raise RuntimeError(
            "mibounds streaming op: no gradient was computed in the forward pass "
            "(it ran with need_grad=False); call it with gradients enabled"
        )
    g = grad_value.to(dtau.dtype)
    gx = (dx.to(g.dtype) * g[:, None, None]).to(dx.dtype)
    gy = (dy.to(g.dtype) * g[:, None, None]).to(dy.dtype)
    gt = (dtau * g).sum().reshape(ctx.tau_shape).to(ctx.tau_dtype)
    return gx, gy, gt


def _backward_row(ctx, grad_value, *_):
    return (*_backward_scalar(ctx, grad_value), None, None, None)


def _backward_means(ctx, grad_vvalue, grad_gvalue, *_):
    return (*_backward_scalar(ctx, grad_gvalue), None, None, None, None, None, None)


_row_lse_mean.register_autograd(_backward_row, setup_context=_setup_scalar)
_offdiag_lme.register_autograd(_backward_row, setup_context=_setup_scalar)
_offdiag_means.register_autograd(_backward_means, setup_context=_setup_scalar)


# --- public entry points (flatten leading dims, choose panels, decide need_grad) -------------


def _flatten(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, torch.Size]:
    lead = x.shape[:-2]
    return x.reshape(-1, *x.shape[-2:]), y.reshape(-1, *y.shape[-2:]), lead


def _need_grad(*ts: Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in ts)


def _tau(tau: float | Tensor, like: Tensor) -> Tensor:
    if isinstance(tau, Tensor):
        return tau.reshape(())
    return torch.tensor(float(tau), dtype=_acc(like.dtype), device=like.device)


def row_logsumexp_mean(x: Tensor, y: Tensor, tau: float | Tensor, sim: str) -> Tensor:
    r""":math:`\frac1N\sum_i \log\sum_j e^{S_{ij}}` for ``S = sim(x, y) / tau``, shape ``(...)``.

    The column version is ``row_logsumexp_mean(y, x, ...)`` (the similarities are symmetric).
    """
    xf, yf, lead = _flatten(x, y)
    t = _tau(tau, x)
    value, *_ = _row_lse_mean(xf, yf, t, _SIMS[sim], _need_grad(x, y, t))
    return value.reshape(lead)


def offdiag_logmeanexp(x: Tensor, y: Tensor, tau: float | Tensor, sim: str) -> Tensor:
    r""":math:`\log\frac1{N(N-1)}\sum_{i\ne j} e^{S_{ij}}`, shape ``(...)``."""
    xf, yf, lead = _flatten(x, y)
    t = _tau(tau, x)
    value, *_ = _offdiag_lme(xf, yf, t, _SIMS[sim], _need_grad(x, y, t))
    return value.reshape(lead)


def offdiag_means(
    x: Tensor,
    y: Tensor,
    tau: float | Tensor,
    sim: str,
    grad_fn: str,
    value_fn: str | None = None,
    shift: float = 0.0,
    param: float = 0.0,
) -> tuple[Tensor | None, Tensor]:
    r"""Off-diagonal means of ``value_fn(S + shift)`` (no gradient) and ``grad_fn(S + shift)``
    (differentiable), in one sweep; ``param`` is passed to both registered functions.
    Returns ``(value_mean or None, grad_mean)``, each ``(...)``.
    """
    xf, yf, lead = _flatten(x, y)
    t = _tau(tau, x)
    vid = -1 if value_fn is None else ELEMENTWISE[value_fn]
    vmean, gmean, *_ = _offdiag_means(
        xf,
        yf,
        t,
        _SIMS[sim],
        vid,
        ELEMENTWISE[grad_fn],
        float(shift),
        float(param),
        _need_grad(x, y, t),
    )
    return (None if value_fn is None else vmean.reshape(lead)), gmean.reshape(lead)


def _exp_clip(t: Tensor, c: float) -> Tensor:
    # exp(clip(t, -c, c) - c) <= 1: the SMILE partition term without overflow
    return torch.exp(t.clamp(-c, c) - c)


_register_fn("exp", lambda t, p: torch.exp(t), lambda t, p: torch.exp(t))
_register_fn("softplus", lambda t, p: F.softplus(t), lambda t, p: torch.sigmoid(t))
_register_fn("exp-clip", _exp_clip, lambda t, c: _exp_clip(t, c) * (t.abs() < c))
