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
import os
import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from mibounds._dtypes import accumulation_dtype as _acc
from mibounds._dtypes import finite_derivatives_
from mibounds.kernels import triton_kernels
from mibounds.pairing import PairLayout

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "ELEMENTWISE",
    "elementwise",
    "elementwise_function",
    "forward_derivative",
    "get_backend",
    "get_memory_budget",
    "interpolated_terms",
    "mark_triton",
    "offdiag_logmeanexp",
    "offdiag_means",
    "panel_rows",
    "row_logsumexp_mean",
    "set_backend",
    "set_memory_budget",
    "set_triton",
    "symmetric_logsumexp_mean",
    "triton_enabled",
    "triton_status",
]

#: Bytes of panel workspace per sweep (about four ``P x N`` float32 buffers live at once).
DEFAULT_MEMORY_BUDGET = 32 * 2**20
_BUDGET = [DEFAULT_MEMORY_BUDGET]


def set_memory_budget(nbytes: int | None) -> None:
    """Set the panel workspace of the streaming kernels in bytes (``None``: the default, 32 MiB).

    Smaller budgets mean more, thinner panels (less memory, more Python overhead).

    Raises:
        ValueError: if ``nbytes`` is not a positive int.

    Example:
        >>> set_memory_budget(1 << 20)
        >>> get_memory_budget()
        1048576
        >>> set_memory_budget(None)
    """
    if nbytes is None:
        _BUDGET[0] = DEFAULT_MEMORY_BUDGET
        return
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes <= 0:
        raise ValueError(f"nbytes must be a positive int or None, got {nbytes!r}")
    _BUDGET[0] = nbytes


_BACKEND = ["eager"]
_COMPILED: dict[str, object] = {}


def set_backend(name: str) -> None:
    """Choose how the panel bodies run: ``"eager"`` (default) or ``"compiled"``.

    ``"compiled"`` runs the per-panel score and softmax steps through
    ``torch.compile(dynamic=True)`` (compiled once, on first use, for any panel shape). It needs
    a working inductor toolchain (a C++ compiler on the CPU; Triton on CUDA). The first call
    pays the compilation.

    Raises:
        ValueError: for another name.

    Example:
        >>> set_backend("eager")
        >>> get_backend()
        'eager'
    """
    if name not in ("eager", "compiled"):
        raise ValueError(f"backend must be 'eager' or 'compiled', got {name!r}")
    _BACKEND[0] = name


def get_backend() -> str:
    """The current panel-body backend, ``"eager"`` or ``"compiled"``.

    Example:
        >>> get_backend()
        'eager'
    """
    return _BACKEND[0]


def _kernel(fn):
    """``fn`` itself, or its ``torch.compile(dynamic=True)`` version with the compiled backend."""
    if _BACKEND[0] == "eager":
        return fn
    key = fn.__name__
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(fn, dynamic=True)
    return _COMPILED[key]


def get_memory_budget() -> int:
    """The current panel workspace of the streaming kernels, in bytes.

    Example:
        >>> get_memory_budget() == DEFAULT_MEMORY_BUDGET
        True
    """
    return _BUDGET[0]


_SIMS = {"dot": 0, "gaussian": 1}


def panel_rows(n: int, budget: int | None = None, buffers: int = 4) -> int:
    """Rows per panel so that ``buffers`` float32 ``P x N`` panels fit in ``budget`` bytes.

    Example:
        >>> panel_rows(16384, budget=32 * 2**20)
        128
    """
    b = _BUDGET[0] if budget is None else budget
    return max(1, min(n, b // (buffers * 4 * max(n, 1))))


class _Sweep:
    r"""One sweep over panels of rows of ``S = sim(x, y) / tau + bias``.

    Holds the operands (in the accumulation dtype), the pairing of rows and columns
    (:class:`~mibounds.pairing.PairLayout`) and, when a gradient is needed, the unscaled
    accumulators ``G Y`` (per row), ``G^T X`` (per column) and the row and column sums of
    ``G = dL/dS``, from which :meth:`finish` forms the gradients with respect to ``x``, ``y``,
    ``tau`` and ``bias`` in O(N d): for dot scores :math:`\partial L/\partial\tau =
    -\tau^{-2}\sum_i x_i \cdot (GY)_i`, so no extra pass over the scores is needed.
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        tau: Tensor,
        sim: int,
        need_grad: bool,
        layout: PairLayout | None = None,
        bias: Tensor | None = None,
    ) -> None:
        # mixed x and y dtypes are promoted, as torch promotes them
        dt = _acc(torch.promote_types(x.dtype, y.dtype))
        self.x_dtype, self.y_dtype = x.dtype, y.dtype
        self.x, self.y = x.to(dt), y.to(dt)
        self.b, self.n, _ = self.x.shape
        self.m = self.y.shape[1]  # columns: N, the global N, or N plus extra candidates
        self.layout = PairLayout(n_paired=self.n) if layout is None else layout
        self.plain = self.layout.plain
        self.sim, self.need_grad = sim, need_grad
        self.inv = (1.0 / tau.to(dt)).reshape(1, 1, 1)
        self.bias = None if bias is None else bias.to(dt).reshape(())
        self.panel = panel_rows(self.m)
        if sim == 1:
            self.sqx = (self.x * self.x).sum(-1)
            self.sqy = (self.y * self.y).sum(-1)
        if need_grad:
            self.gy = torch.zeros_like(self.x)  # rows of G Y
            self.gtx = torch.zeros_like(self.y)  # rows of G^T X
            self.rowsum = self.x.new_zeros(self.b, self.n)
            self.colsum = self.x.new_zeros(self.b, self.m)
            self.total = self.x.new_zeros(self.b)  # sum of G (the bias gradient)
            # the accumulators hold the gradient times 2^-exp2 (see accumulate_scaled)
            self.exp2 = self.x.new_zeros(self.b)

    def panels(self):
        for r0 in range(0, self.n, self.panel):
            yield r0, min(self.n, r0 + self.panel)

    def scores(self, r0: int, r1: int) -> Tensor:
        """``S`` for rows ``r0:r1``, ``(B, P, M)``, a fresh buffer the caller may overwrite."""
        xp = self.x[:, r0:r1]
        if self.sim == 0:
            s = _kernel(_dot_scores)(xp, self.y, self.inv)
        else:
            s = _kernel(_gaussian_scores)(xp, self.y, self.sqx[:, r0:r1], self.sqy, self.inv)
        if self.bias is not None:
            s.add_(self.bias)
        return s

    def drop(self, s: Tensor, r0: int, r1: int, keep: str, fill: float) -> object:
        """Overwrite with ``fill`` the entries of the panel ``s`` (rows ``r0:r1``) outside the
        set ``keep`` (``"cand"``, ``"neg"`` or ``"pos"``, see
        :meth:`~mibounds.pairing.PairLayout.drop_mask`); returns what was dropped, for
        :meth:`zero` (``None`` if nothing)."""
        if self.plain and keep != "pos":
            if keep == "cand":
                return None
            rows, cols = self.diag(r0, r1)
            s[:, rows, cols] = fill
            return _PLAIN
        lay = self.layout
        if keep == "cand" and lay.exclude == 1:
            # the self-pairs only: index them (labels do not matter for the candidates)
            rows, cols = self.diag(r0, r1)
            inside = cols < self.m
            s[:, rows[inside], cols[inside]] = fill
            return _Own(rows[inside], cols[inside])
        if keep == "cand" and lay.exclude == 0:
            return None
        if lay.row_labels is None and lay.exclude == 2 and keep != "pos":
            # own key plus extra columns: only the paired block [0, n_paired) has exclusions
            block = s[:, :, : lay.n_paired]
            if keep == "neg":
                block.fill_(fill)
                mask = None
            else:
                rows = torch.arange(r0, r1, device=s.device)[:, None] + lay.offset
                mask = torch.arange(lay.n_paired, device=s.device)[None, :] != rows
                block.masked_fill_(mask, fill)
            return _Block(lay.n_paired, mask)
        mask = lay.drop_mask(r0, r1, self.m, keep, s.device)
        if mask is not None:
            s.masked_fill_(mask, fill)
        return mask

    def zero(self, t: Tensor, dropped: object, r0: int, r1: int) -> Tensor:
        """Zero the entries of a panel-shaped ``t`` that :meth:`drop` dropped."""
        if dropped is _PLAIN:
            rows, cols = self.diag(r0, r1)
            t[:, rows, cols] = 0.0
        elif isinstance(dropped, _Own):
            t[:, dropped.rows, dropped.cols] = 0.0
        elif isinstance(dropped, _Block):
            block = t[:, :, : dropped.width]
            if dropped.mask is None:
                block.fill_(0.0)
            else:
                block.masked_fill_(dropped.mask, 0.0)
        elif isinstance(dropped, Tensor):
            t.masked_fill_(dropped, 0.0)
        return t

    def accumulate(self, g: Tensor, r0: int, r1: int) -> None:
        """Add a panel of ``G = dL/dS`` (rows ``r0:r1``) to the accumulators."""
        self.gy[:, r0:r1] = torch.bmm(g, self.y)
        self.gtx.baddbmm_(g.transpose(1, 2), self.x[:, r0:r1])
        if self.sim == 1 or self.bias is not None:
            rs = g.sum(-1)
            self.rowsum[:, r0:r1] = rs
            self.total += rs.sum(-1)
            if self.sim == 1:
                self.colsum += g.sum(1)

    def accumulate_scaled(self, g: Tensor, r0: int, r1: int) -> None:
        """:meth:`accumulate` for a panel whose entries may be as large as the dtype allows
        (derivatives of :math:`e^S`): the accumulators are kept at a power-of-two scale
        :math:`2^{-e}` with every entry so far at most 1 in magnitude, so the products with
        ``x`` and ``y`` cannot overflow; :meth:`finish` scales back, which gives +-inf (never
        NaN) where the true gradient is beyond the dtype's range. Powers of two are exact."""
        top = torch.frexp(g.abs().amax((1, 2)))[1].to(g.dtype).clamp_(min=0.0)
        new = torch.maximum(self.exp2, top)
        # on the CPU reading the flag costs nothing; elsewhere rescale unconditionally
        if g.device.type != "cpu" or bool((new != self.exp2).any()):
            self.rescale(torch.exp2(self.exp2 - new), r0)
            self.exp2 = new
        self.accumulate(g.mul_(torch.exp2(-new)[:, None, None]), r0, r1)

    def rescale(self, factor: Tensor, upto: int) -> None:
        """Multiply what was accumulated so far (rows ``< upto``) by ``factor`` ``(B,)``."""
        f = factor[:, None, None]
        self.gy[:, :upto] *= f
        self.gtx *= f
        self.rowsum[:, :upto] *= factor[:, None]
        self.colsum *= factor[:, None]
        self.total *= factor

    def finish(self, scale: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(dx, dy, dtau, dbias)`` from the accumulators, times ``scale`` ``(B,)`` if given."""
        inv = self.inv[:, 0, 0]
        cross = (self.x * self.gy).sum((1, 2))
        if self.sim == 0:
            dx, dy = self.gy * inv, self.gtx * inv
            sum_gs = cross * inv
        else:
            dx = (2 * self.gy - 2 * self.x * self.rowsum[:, :, None]) * inv
            dy = (2 * self.gtx - 2 * self.y * self.colsum[:, :, None]) * inv
            sum_gs = (
                2 * cross - (self.sqx * self.rowsum).sum(-1) - (self.sqy * self.colsum).sum(-1)
            ) * inv
        # undo the scale of accumulate_scaled in two exact halves (2^e alone may overflow)
        half = torch.floor(self.exp2 * 0.5)
        up1, up2 = torch.exp2(half), torch.exp2(self.exp2 - half)
        dx = dx * up1[:, None, None] * up2[:, None, None]
        dy = dy * up1[:, None, None] * up2[:, None, None]
        dtau = -sum_gs * up1 * up2 * inv  # dS/dtau = -(S - bias) / tau
        dbias = self.total * up1 * up2
        if scale is not None:
            dx, dy = dx * scale[:, None, None], dy * scale[:, None, None]
            dtau, dbias = dtau * scale, dbias * scale
        # a gradient beyond the dtype's range is 0, as a derivative in a score that overflows
        dx, dy, dtau, dbias = (finite_derivatives_(t) for t in (dx, dy, dtau, dbias))
        return dx.to(self.x_dtype), dy.to(self.y_dtype), dtau, dbias

    def no_grads(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Empty gradient outputs (distinct tensors: custom-op outputs must not alias)."""
        empty = (self.x.new_zeros(0, dtype=self.x_dtype), self.x.new_zeros(0, dtype=self.y_dtype))
        return (*empty, self.x.new_zeros(self.b), self.x.new_zeros(self.b))

    def diag(self, r0: int, r1: int) -> tuple[Tensor, Tensor]:
        """Local row and global column indices of the own pairs in rows ``r0:r1``."""
        rows = torch.arange(r1 - r0, device=self.x.device)
        return rows, rows + (r0 + self.layout.offset)


#: What :meth:`_Sweep.drop` returns after dropping the own pairs of the plain pairing.
_PLAIN = torch.empty(0, dtype=torch.bool)


class _Own(NamedTuple):
    """What :meth:`_Sweep.drop` dropped: the entries ``(rows, cols)`` of the panel."""

    rows: Tensor
    cols: Tensor


class _Block(NamedTuple):
    """What :meth:`_Sweep.drop` dropped in the first ``width`` columns only (``mask`` over
    them, or ``None`` for all of them)."""

    width: int
    mask: Tensor | None


def _dot_scores(xp: Tensor, y: Tensor, inv: Tensor) -> Tensor:
    return torch.bmm(xp * inv, y.transpose(1, 2))


def _gaussian_scores(xp: Tensor, y: Tensor, sqx: Tensor, sqy: Tensor, inv: Tensor) -> Tensor:
    s = torch.bmm(xp * (2 * inv), y.transpose(1, 2))
    s = s - (sqx * inv[:, 0])[:, :, None] - (sqy * inv[:, 0])[:, None, :]
    return s.clamp_max(0)


def _softmax_lse(s: Tensor) -> tuple[Tensor, Tensor]:
    r"""Row softmax ``p`` and row log-sum-exp of a panel ``(B, P, N)``.

    ``torch.softmax`` has a much faster vectorised exponential than ``torch.exp`` (about 8x on
    the CPUs we measured), so the log-sum-exp is read back from it: at the row maximum
    :math:`m`, :math:`p_{max} = e^{m - \mathrm{lse}} \ge 1/N`, hence
    :math:`\mathrm{lse} = m - \log p_{max}` without underflow.
    """
    m = s.amax(-1)
    p = torch.softmax(s, dim=-1)
    return p, m - torch.log(p.amax(-1))


def _softmax_lse_empty(s: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """:func:`_softmax_lse` along ``dim`` where whole lines may be ``-inf`` (a row without
    negatives, a column without candidates in a panel): those get ``p = 0`` and ``-inf``."""
    m = s.amax(dim)
    empty = torch.isneginf(m)
    p = torch.softmax(s, dim=dim).masked_fill_(empty.unsqueeze(dim), 0.0)
    pmax = p.amax(dim).masked_fill_(empty, 1.0)
    return p, (m - torch.log(pmax)).masked_fill_(empty, -math.inf)


def _exp_diff(a: Tensor, b: Tensor) -> Tensor:
    """``exp(a - b)``, and 0 where both are ``-inf``."""
    return torch.exp(a - b).nan_to_num_(nan=0.0, posinf=math.inf)


def _weights(w: Tensor | None, like: Tensor, default: float) -> Tensor:
    """Per-row weights in the accumulation dtype, or ``default`` for every row."""
    if w is None:
        return like.new_full((like.shape[1],), default)
    return w.to(like.dtype)


def _layout(rl, cl, offset: int, exclude: int, n_paired: int) -> PairLayout:
    return PairLayout(rl, cl, offset, exclude, n_paired)


# --- weighted row (and column) log-sum-exp over the candidates --------------------------------


def _row_lse_mean_sweep(
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
    need_grad: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    r""":math:`\sum_i w_i \log\sum_{j \in C_i} e^{S_{ij}}` over each row's candidates
    :math:`C_i`; ``row_w=None`` is the plain mean (:math:`w_i = 1/n`)."""
    sw = _Sweep(x, y, tau, sim, need_grad, _layout(rl, cl, offset, exclude, n_paired), bias)
    w = _weights(row_w, sw.x, 1.0 / sw.n)
    value = sw.x.new_zeros(sw.b)
    for r0, r1 in sw.panels():
        s = sw.scores(r0, r1)
        sw.drop(s, r0, r1, "cand", -math.inf)
        p, lse = _kernel(_softmax_lse)(s)
        wp = w[r0:r1]
        value += lse.sum(-1) if row_w is None else (lse * wp).sum(-1)
        if need_grad:
            sw.accumulate(p.mul_(wp[:, None]), r0, r1)  # d(sum w lse)/dS = w softmax
    grads = sw.finish() if need_grad else sw.no_grads()
    return (value / sw.n if row_w is None else value, *grads)


_row_lse_mean = torch.library.custom_op("mibounds::row_lse_mean", mutates_args=())(
    _row_lse_mean_sweep
)


@_row_lse_mean.register_fake
def _(x, y, tau, bias, sim, rl, cl, offset, exclude, n_paired, row_w, need_grad):
    return _fake_outputs(x, y, need_grad, 1)


#: Elementwise functions with a Triton implementation: id -> (Triton name, parameter); see
#: :func:`mark_triton`.
_TRITON_OF: dict[int, tuple[str, float]] = {}


def mark_triton(name: str, triton_name: str, param: float = 0.0) -> None:
    """Declare that the registered elementwise function ``name`` is computed by the Triton
    function ``triton_name`` (a key of :data:`triton_kernels.TRITON_FUNCTIONS`) with ``param``.

    Example:
        >>> mark_triton("exp", "exp")
    """
    _TRITON_OF[ELEMENTWISE[name]] = (triton_name, float(param))


def _triton_of(fid: int) -> tuple[str, float]:
    """The Triton name and parameter of function ``fid`` (its own name if none was marked)."""
    return _TRITON_OF.get(fid, (_FNS[fid][0], 0.0))


def _triton_ok(x: Tensor, y: Tensor, sim: int) -> bool:
    """Whether the Triton kernels cover this call: Triton on, dot scores, float32 or half
    features, ``0 < B`` and ``d <= MAX_DIM`` (any pairing, bias and weights)."""
    dtype_ok = x.dtype in _TRITON_DTYPES and y.dtype in _TRITON_DTYPES
    return (
        triton_enabled()
        and sim == 0
        and dtype_ok
        and x.shape[0] > 0
        and x.shape[-1] <= triton_kernels.MAX_DIM
    )


_TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _per_batch(fn, x: Tensor, y: Tensor, tau: Tensor, need_grad: bool, n_values: int):
    """Run a Triton entry point ``fn(x_b, y_b, tau, need_grad)`` on every batch index and stack
    its ``(*values, dx, dy, dtau[, dbias])`` into the custom op's outputs (no host
    synchronisation). The gradients take the layout of ``x`` and ``y`` (as the fake kernel
    promises)."""
    if x.shape[0] == 0:  # an empty leading batch: nothing to launch
        empty = x.new_zeros(0, dtype=torch.float32)
        grads = (torch.empty_like(x), torch.empty_like(y)) if need_grad else (
            x.new_zeros(0), y.new_zeros(0))  # fmt: skip
        return (*[empty.clone() for _ in range(n_values)], *grads, empty.clone(), empty.clone())
    t = tau.float().reshape(1)  # passed to the kernels by pointer: never read back
    with torch.cuda.device(x.device) if x.device.type == "cuda" else _nullcontext():
        outs = [
            fn(xb.float().contiguous(), yb.float().contiguous(), t, need_grad)
            for xb, yb in zip(x, y, strict=True)
        ]
    values = [torch.stack([o[k] for o in outs]) for k in range(n_values)]
    dtau = torch.stack([o[n_values + 2] for o in outs])
    if len(outs[0]) > n_values + 3:
        dbias = torch.stack([o[n_values + 3] for o in outs])
    else:
        dbias = torch.zeros_like(dtau)
    if not need_grad:
        return (*values, x.new_zeros(0), y.new_zeros(0), dtau, dbias)
    dx = torch.empty_like(x).copy_(torch.stack([o[n_values] for o in outs]))
    dy = torch.empty_like(y).copy_(torch.stack([o[n_values + 1] for o in outs]))
    return (*values, dx, dy, dtau, dbias)


def _pairs(rl, cl, offset: int, exclude: int, n_paired: int, device) -> triton_kernels.Pairs:
    """The op's pairing arguments for the Triton kernels (labels as int64 on the device)."""

    def on(t):
        return None if t is None else t.to(device=device, dtype=torch.int64).contiguous()

    return triton_kernels.Pairs(on(rl), on(cl), offset, exclude, n_paired)


def _bias_ptr(bias: Tensor | None) -> Tensor | None:
    return None if bias is None else bias.detach().float().reshape(1)


def _weights_arg(w: Tensor | None) -> Tensor | None:
    return None if w is None else w.float().contiguous()


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


# --- the safety net: a Triton kernel is used only after it matched the sweep once ------------

_TRITON_SETTING: list[bool | None] = [None]
#: (op, dtype, similarity, feature size, functions) -> whether its Triton kernel passed
_TRITON_CHECKED: dict[tuple, bool] = {}
#: the size of the self-check problem (not a multiple of any block size)
_CHECK_ROWS = 67


def set_triton(enabled: bool | None) -> None:
    """Turn the Triton kernels on or off for this process (``None``: back to the environment
    variable ``MIBOUNDS_TRITON``, where ``0`` means off). Off, CUDA runs the PyTorch sweep.

    Raises:
        TypeError: if ``enabled`` is not a bool or None.

    Example:
        >>> set_triton(False)
        >>> triton_enabled()
        False
        >>> set_triton(None)
    """
    if enabled is not None and not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool or None, got {type(enabled).__name__}")
    _TRITON_SETTING[0] = enabled


def triton_enabled() -> bool:
    """Whether the Triton kernels may be used (Triton installed, not turned off by
    :func:`set_triton` or ``MIBOUNDS_TRITON=0``).

    Example:
        >>> isinstance(triton_enabled(), bool)
        True
    """
    if not triton_kernels.HAS_TRITON:
        return False
    if _TRITON_SETTING[0] is not None:
        return _TRITON_SETTING[0]
    return os.environ.get("MIBOUNDS_TRITON", "1").strip() != "0"


def triton_status() -> dict[tuple, bool]:
    """The self-checked Triton kernels of this process: ``(op, dtype, similarity, d,
    functions) -> passed``.

    Example:
        >>> isinstance(triton_status(), dict)
        True
    """
    return dict(_TRITON_CHECKED)


def _close(got, want) -> str | None:
    """``None`` if every output matches (float32 tolerances), else what differs."""
    for k, (g, w) in enumerate(zip(got, want, strict=True)):
        if g.shape != w.shape:
            return f"output {k} has shape {tuple(g.shape)}, expected {tuple(w.shape)}"
        if g.numel() and not torch.allclose(g.float(), w.float(), rtol=1e-4, atol=1e-5):
            err = float((g.float() - w.float()).abs().max())
            return f"output {k} differs from the sweep by up to {err:.3g}"
    return None


def _warn_triton(key: tuple, reason: str) -> None:
    warnings.warn(
        f"mibounds: the Triton kernel for {key[0]} ({', '.join(map(str, key[1:]))}) failed "
        f"its check on this device ({reason}); it is disabled for this process and the "
        "PyTorch sweep is used instead (correct, slower). Please report this warning with "
        "your GPU, driver, torch and triton versions; MIBOUNDS_TRITON=0 turns Triton off.",
        RuntimeWarning,
        stacklevel=3,
    )


def _checked_triton(key: tuple, triton_fn, sweep_fn, args: tuple):
    """``triton_fn(*args)`` if that kernel passed its one-time check against ``sweep_fn`` on a
    small problem like ``args`` (same dtype, device and feature size), else ``sweep_fn(*args)``.
    A compile or launch error, here or on the real call, disables the kernel with one warning.
    """
    ok = _TRITON_CHECKED.get(key)
    if ok is None:
        small = _small_args(args)
        try:
            reason = _close(triton_fn(*small), sweep_fn(*small))
        except Exception as err:  # a compile or launch failure: the sweep takes over
            reason = f"{type(err).__name__}: {err}"
        ok = reason is None
        _TRITON_CHECKED[key] = ok
        if not ok:
            _warn_triton(key, str(reason))
    if not ok:
        return sweep_fn(*args)
    try:
        return triton_fn(*args)
    except Exception as err:
        _TRITON_CHECKED[key] = False
        _warn_triton(key, f"{type(err).__name__}: {err}")
        return sweep_fn(*args)


def _small_args(args: tuple) -> tuple:
    """The op arguments ``(x, y, tau, bias, sim, ...)`` with ``x`` and ``y`` replaced by a
    small random problem of the same dtype, device and feature size, a fixed temperature, and
    ``n_paired`` (argument 9) to match."""
    x, y = args[0], args[1]
    gen = torch.Generator(device="cpu").manual_seed(0)
    shape = (1, _CHECK_ROWS, x.shape[-1])
    xs = torch.randn(shape, generator=gen).to(x.device, x.dtype)
    ys = (0.5 * xs.float() + torch.randn(shape, generator=gen).to(x.device)).to(y.dtype)
    scale = x.shape[-1] ** -0.5
    tau = torch.tensor(scale / 0.5, device=x.device, dtype=args[2].dtype)
    return (xs, ys, tau, *args[3:9], _CHECK_ROWS, *args[10:])


def _fake_outputs(x: Tensor, y: Tensor, need_grad: bool, n_values: int):
    b = x.shape[0]
    acc = _acc(torch.promote_types(x.dtype, y.dtype))
    dx = torch.empty_like(x) if need_grad else x.new_empty(0)
    dy = torch.empty_like(y) if need_grad else y.new_empty(0)
    values = [x.new_empty(b, dtype=acc) for _ in range(n_values)]
    return (*values, dx, dy, x.new_empty(b, dtype=acc), x.new_empty(b, dtype=acc))


# --- symmetric: the row and the column log-sum-exp ------------------------------------------


def _sym_lse_mean_impl(
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
    need_grad: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    r""":math:`\sum_i u_i \log\sum_{j\in C_i} e^{S_{ij}} + \sum_j v_j \log\sum_{i \in C^j}
    e^{S_{ij}}` in two sweeps and four matrix products: the first gathers the row and the
    (online) column log-sum-exp, the second forms the gradient of both terms at once. Without
    weights, :math:`u = v = 1/(2n)` (CLIP's average of the two directions).

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
    v = _weights(col_w, sw.x, 0.5 / n)
    # with exclusions a panel may hold a column without candidates
    col_softmax = _col_softmax_lse if sw.plain else _col_softmax_lse_empty
    row_lse = sw.x.new_empty(sw.b, n)
    col_lse = sw.x.new_full((sw.b, m), -math.inf)
    shared: list[bool] = []
    for r0, r1 in sw.panels():
        s = sw.scores(r0, r1)
        sw.drop(s, r0, r1, "cand", -math.inf)
        c = _shared_shift(s)
        shared.append(c is not None)
        if c is not None:
            p, lse = _kernel(_softmax_lse)(s)
            row_lse[:, r0:r1] = lse
            scale = torch.exp(lse - c[:, None])  # (B, P), e^{l_i - c}
            col_sums = torch.bmm(scale[:, None, :], p)[:, 0]  # sum_i e^{S_ij - c}
            panel_col_lse = c[:, None] + torch.log(col_sums)
        else:
            row_lse[:, r0:r1] = _kernel(_softmax_lse)(s)[1]
            panel_col_lse = _kernel(col_softmax)(s)[1]
        col_lse = torch.logaddexp(col_lse, panel_col_lse)
    counted = v != 0
    value = (row_lse * u).sum(-1) + torch.where(counted, col_lse * v, 0.0).sum(-1)
    if not need_grad:
        return (value, *sw.no_grads())
    for k, (r0, r1) in enumerate(sw.panels()):
        s = sw.scores(r0, r1)
        sw.drop(s, r0, r1, "cand", -math.inf)
        if shared[k]:
            p = torch.softmax(s, dim=-1)
            c = row_lse[:, r0:r1].amax(-1)  # any shift works: alpha and beta cancel it
            alpha = torch.exp(row_lse[:, r0:r1] - c[:, None])  # (B, P)
            beta = torch.where(counted, v * torch.exp(c[:, None] - col_lse), 0.0)  # (B, M)
            outer = torch.baddbmm(
                u[r0:r1].expand(sw.b, -1)[:, :, None], alpha[:, :, None], beta[:, None, :]
            )
            g = p.mul_(outer)
        else:
            p_col, panel_col_lse = _kernel(col_softmax)(s)
            # exp(S_ij - L_j) = column softmax within the panel times exp(panel lse_j - L_j)
            g = p_col.mul_((_exp_diff(panel_col_lse, col_lse) * v)[:, None, :])
            g.add_(torch.softmax(s, dim=-1).mul_(u[r0:r1, None]))
        sw.accumulate(g, r0, r1)
    return (value, *sw.finish())


#: How far below a panel's maximum every column's maximum may lie for the row softmax to
#: give the column sums without underflow (e^-60 is far inside float32's range).
_SHARED_RANGE = 60.0


def _shared_shift(s: Tensor) -> Tensor | None:
    """The panel maximum ``c`` ``(B,)`` if every column's maximum lies within
    :data:`_SHARED_RANGE` of it (columns without candidates aside), else ``None``. CPU only: on
    accelerators the answer would need a device synchronisation, so they always take the
    softmax route."""
    if s.device.type != "cpu":
        return None
    col_max = s.amax(1)
    c = col_max.amax(-1)
    low = torch.where(torch.isneginf(col_max), c[:, None], col_max).amin(-1)
    if bool((c - low <= _SHARED_RANGE).all()):
        return c
    return None


def _col_softmax_lse(s: Tensor) -> tuple[Tensor, Tensor]:
    """Column softmax within a panel and the panel's column log-sum-exp ``(B, M)``."""
    m = s.amax(1)
    p = torch.softmax(s, dim=1)
    return p, m - torch.log(p.amax(1))


def _col_softmax_lse_empty(s: Tensor) -> tuple[Tensor, Tensor]:
    return _softmax_lse_empty(s, 1)


_sym_lse_mean = torch.library.custom_op("mibounds::sym_lse_mean", mutates_args=())(
    _sym_lse_mean_impl
)


@_sym_lse_mean.register_fake
def _(x, y, tau, bias, sim, rl, cl, offset, exclude, n_paired, row_w, col_w, need_grad):
    return _fake_outputs(x, y, need_grad, 1)


# --- log-mean-exp over the negatives ---------------------------------------------------------


def _offdiag_lme_impl(
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


def _row_softmax_lse_empty(s: Tensor) -> tuple[Tensor, Tensor]:
    return _softmax_lse_empty(s, -1)


_offdiag_lme = torch.library.custom_op("mibounds::offdiag_lme", mutates_args=())(_offdiag_lme_impl)


@_offdiag_lme.register_fake
def _(x, y, tau, bias, sim, rl, cl, offset, exclude, n_paired, log_w, need_grad):
    return _fake_outputs(x, y, need_grad, 1)


# --- weighted sums of elementwise functions over the negatives (or the positives) ------------

#: Elementwise functions the streaming off-diagonal mean knows: name -> id. Each has a value
#: function and an explicit derivative (autograd is not available inside a custom op).
ELEMENTWISE: dict[str, int] = {}
_FNS: list[tuple[str, object, object]] = []


def _register_fn(name: str, fn, dfn) -> None:
    ELEMENTWISE[name] = len(_FNS)
    _FNS.append((name, fn, dfn))


def elementwise(name: str, fn, dfn) -> str:
    """Make an elementwise function ``fn`` with derivative ``dfn`` available to
    :func:`offdiag_means` under ``name`` (the first registration of a name wins).

    Example:
        >>> name = elementwise("doc-square", lambda t, p: t * t, lambda t, p: 2 * t)
        >>> name in ELEMENTWISE
        True
    """
    if name not in ELEMENTWISE:
        _register_fn(name, fn, dfn)
    return name


def forward_derivative(fn):
    """The elementwise derivative ``dfn(t, param)`` of an elementwise ``fn(t)``, by forward-mode
    automatic differentiation (it runs inside the custom ops, where reverse mode does not).

    Example:
        >>> d = forward_derivative(torch.sin)
        >>> torch.allclose(d(torch.tensor([0.5]), 0.0), torch.cos(torch.tensor([0.5])))
        True
    """

    def dfn(t: Tensor, param: float) -> Tensor:
        return torch.func.jvp(fn, (t,), (torch.ones_like(t),))[1]

    return dfn


def elementwise_function(name: str):
    """The value function ``fn(t, param)`` registered under ``name``.

    Example:
        >>> elementwise_function("softplus")(torch.tensor(0.0), 0.0)
        tensor(0.6931)
    """
    return _FNS[ELEMENTWISE[name]][1]


def _offdiag_means_impl(
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
    w = _weights(weight, sw.x, 1.0 / (sw.n * (sw.m - 1)))
    keep = "pos" if positives else "neg"
    vsum = sw.x.new_zeros(sw.b)
    gsum = sw.x.new_zeros(sw.b)
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
            sw.accumulate_scaled(g.mul_(wp[:, None]), r0, r1)
    grads = sw.finish() if need_grad else sw.no_grads()
    return (vsum, gsum, *grads)


_offdiag_means = torch.library.custom_op("mibounds::offdiag_means", mutates_args=())(
    _offdiag_means_impl
)


@_offdiag_means.register_fake
def _(
    x, y, tau, bias, sim, rl, cl, offset, exclude, n_paired, weight, value_fn, grad_fn, shift,
    param, positives, need_grad, grad_value,
):  # fmt: skip
    return _fake_outputs(x, y, need_grad, 2)


if triton_kernels.HAS_TRITON:  # pragma: no cover - needs CUDA

    @_row_lse_mean.register_kernel("cuda")
    def _(*args):
        """Triton on CUDA where it covers the call and passed its check; the sweep otherwise."""
        x, y, _, _, sim, rl, cl, offset, exclude, n_paired, _, _ = args
        if not _triton_ok(x, y, sim):
            return _row_lse_mean_sweep(*args)
        pairs = _pairs(rl, cl, offset, exclude, n_paired, x.device)

        def run(*a):
            def one(xb, yb, t, ng):
                return triton_kernels.lse_triton(
                    xb, yb, t, ng, pairs=pairs, weight=_weights_arg(a[10]), bias=_bias_ptr(a[3])
                )

            return _per_batch(one, a[0], a[1], a[2], a[-1], 1)

        key = ("row_lse_mean", x.dtype, "dot", x.shape[-1], _pairing_kind(args))
        return _checked_triton(key, run, _row_lse_mean_sweep, args)

    @_sym_lse_mean.register_kernel("cuda")
    def _(*args):
        x, y, _, _, sim, rl, cl, offset, exclude, n_paired, _, _, _ = args
        if not _triton_ok(x, y, sim) or exclude == 2:
            return _sym_lse_mean_impl(*args)
        pairs = _pairs(rl, cl, offset, exclude, n_paired, x.device)

        def run(*a):
            def one(xb, yb, t, ng):
                return triton_kernels.symmetric_lse_triton(
                    xb, yb, t, ng, pairs=pairs, row_weight=_weights_arg(a[10]),
                    col_weight=_weights_arg(a[11]), bias=_bias_ptr(a[3]),
                )  # fmt: skip

            return _per_batch(one, a[0], a[1], a[2], a[-1], 1)

        key = ("sym_lse_mean", x.dtype, "dot", x.shape[-1], _pairing_kind(args))
        return _checked_triton(key, run, _sym_lse_mean_impl, args)

    @_offdiag_lme.register_kernel("cuda")
    def _(*args):
        x, y, _, _, sim, rl, cl, offset, exclude, n_paired, _, _ = args
        if not _triton_ok(x, y, sim):
            return _offdiag_lme_impl(*args)
        pairs = _pairs(rl, cl, offset, exclude, n_paired, x.device)

        def run(*a):
            def one(xb, yb, t, ng):
                return triton_kernels.neg_lme_triton(
                    xb, yb, t, ng, pairs=pairs, log_weight=_weights_arg(a[10]),
                    bias=_bias_ptr(a[3]),
                )  # fmt: skip

            return _per_batch(one, a[0], a[1], a[2], a[-1], 1)

        key = ("offdiag_lme", x.dtype, "dot", x.shape[-1], _pairing_kind(args))
        return _checked_triton(key, run, _offdiag_lme_impl, args)

    @_offdiag_means.register_kernel("cuda")
    def _(*args):
        (x, y, _, _, sim, rl, cl, offset, exclude, n_paired, _, value_fn, grad_fn,
         shift, param, positives, need_grad, grad_value) = args  # fmt: skip
        grad_name, grad_param = _triton_of(grad_fn)
        names = (None if value_fn < 0 else _FNS[value_fn][0], grad_name)
        if grad_fn in _TRITON_OF:
            param = grad_param
        covered = all(n is None or n in triton_kernels.TRITON_FUNCTIONS for n in names)
        if not (covered and _triton_ok(x, y, sim)):
            return _offdiag_means_impl(*args)
        pairs = _pairs(rl, cl, offset, exclude, n_paired, x.device)

        def run(*a):
            def one(xb, yb, t, ng):
                return triton_kernels.means_triton(
                    xb, yb, t, names[0], names[1], shift, param, ng, grad_value, pairs=pairs,
                    weight=_weights_arg(a[10]), positives=positives, bias=_bias_ptr(a[3]),
                )  # fmt: skip

            return _per_batch(one, a[0], a[1], a[2], need_grad, 2)

        key = (
            "offdiag_means", x.dtype, "dot", x.shape[-1], _pairing_kind(args), *names, shift,
            param, grad_value, positives,
        )  # fmt: skip
        return _checked_triton(key, run, _offdiag_means_impl, args)


def _pairing_kind(args: tuple) -> str:
    """What the pairing of an op call uses (part of the self-check key: each combination is
    a different kernel variant)."""
    bias, rl, exclude = args[3], args[5], args[8]
    return f"labels={rl is not None} exclude={exclude} bias={bias is not None}"


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


@torch.library.custom_op("mibounds::interpolated_terms", mutates_args=())
def _interpolated_terms(
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


@_interpolated_terms.register_fake
def _(x, y, tau, log_baseline, sim, alpha, need_grad):
    value, dx, dy, dtau, _ = _fake_outputs(x, y, need_grad, 1)
    db = torch.empty_like(log_baseline) if need_grad else log_baseline.new_empty(0)
    return value, dx, dy, dtau, db


def _setup_interpolated(ctx, inputs, output) -> None:
    ctx.save_for_backward(*output[1:])
    ctx.tau_shape, ctx.tau_dtype = inputs[2].shape, inputs[2].dtype


def _backward_interpolated(ctx, grad_value, *_):
    gx, gy, gt = _backward_scalar(ctx, grad_value)
    db = ctx.saved_tensors[3]
    gb = (db.to(grad_value.dtype) * grad_value[:, None]).to(db.dtype)
    return gx, gy, gt, gb, None, None, None


_interpolated_terms.register_autograd(_backward_interpolated, setup_context=_setup_interpolated)


def interpolated_terms(
    x: Tensor,
    y: Tensor,
    tau: float | Tensor,
    sim: str,
    log_baseline: Tensor,
    alpha: float,
) -> Tensor:
    r"""The terms of :func:`mibounds.interpolated` beyond :math:`1 + \frac1N\sum_j S_{jj}`,
    streamed: :math:`-\frac{1}{N(N-1)}\sum_{i\ne j} A_{ij} - \frac1N\sum_j e^{L_{jj}-A_{jj}}`,
    shape ``(...)``; ``log_baseline`` is ``(..., N)`` and receives a gradient too.

    Example:
        >>> import mibounds
        >>> x, y = torch.randn(6, 3), torch.randn(6, 3)
        >>> rest = interpolated_terms(x, y, 1.0, "dot", torch.zeros(6), 0.5)
        >>> value = 1 + (x * y).sum(-1).mean() + rest
        >>> torch.allclose(value, mibounds.interpolated(x @ y.T, alpha=0.5), atol=1e-5)
        True
    """
    xf, yf, lead = _flatten(x, y)
    t = _tau(tau, x)
    bf = log_baseline.reshape(-1, log_baseline.shape[-1])
    value, *_ = _interpolated_terms(
        xf, yf, t, bf, _SIMS[sim], float(alpha), _need_grad(x, y, t, log_baseline)
    )
    return value.reshape(lead)


# --- autograd: backward scales the gradients stored by the forward sweep --------------------


def _setup_scalar(ctx, inputs, output) -> None:
    tau, bias = inputs[2], inputs[3]
    ctx.save_for_backward(*output[-4:])
    ctx.tau_shape, ctx.tau_dtype = tau.shape, tau.dtype
    ctx.bias_shape = None if bias is None else bias.shape
    ctx.bias_dtype = None if bias is None else bias.dtype
    ctx.n_inputs = len(inputs)


def _backward_scalar(ctx, grad_value):
    """The stored ``(dx, dy, dtau)`` (the first three saved tensors) times the incoming
    per-batch gradient."""
    dx, dy, dtau = ctx.saved_tensors[:3]
    if dx.numel() == 0:
        raise RuntimeError(
            "mibounds streaming op: no gradient was computed in the forward pass "
            "(it ran with need_grad=False); call it with gradients enabled"
        )
    g = grad_value.to(dtau.dtype)
    gx = _times(dx.to(g.dtype), g[:, None, None]).to(dx.dtype)
    gy = _times(dy.to(g.dtype), g[:, None, None]).to(dy.dtype)
    gt = _times(dtau, g).sum().reshape(ctx.tau_shape).to(ctx.tau_dtype)
    return gx, gy, gt


def _times(stored: Tensor, g: Tensor) -> Tensor:
    """``stored * g`` with the overflow rule: a product beyond the dtype's range is 0, and a
    zero incoming gradient gives 0 (an output that does not reach the loss adds nothing)."""
    return finite_derivatives_(torch.where(g == 0, 0.0, stored * g))


def _backward_op(ctx, grad_value):
    """Gradients of every input of an op whose inputs start ``(x, y, tau, bias)`` and whose
    outputs end with the stored ``(dx, dy, dtau, dbias)``."""
    gx, gy, gt = _backward_scalar(ctx, grad_value)
    gb = None
    if ctx.bias_shape is not None:
        dbias = ctx.saved_tensors[3]
        gb = _times(dbias, grad_value.to(dbias.dtype)).sum().reshape(ctx.bias_shape)
        gb = gb.to(ctx.bias_dtype)
    return (gx, gy, gt, gb, *([None] * (ctx.n_inputs - 4)))


def _backward_one(ctx, grad_value, *_):
    return _backward_op(ctx, grad_value)


def _backward_means(ctx, grad_vvalue, grad_gvalue, *_):
    return _backward_op(ctx, grad_gvalue)


_row_lse_mean.register_autograd(_backward_one, setup_context=_setup_scalar)
_sym_lse_mean.register_autograd(_backward_one, setup_context=_setup_scalar)
_offdiag_lme.register_autograd(_backward_one, setup_context=_setup_scalar)
_offdiag_means.register_autograd(_backward_means, setup_context=_setup_scalar)

# Under torch.autocast the ops run with autocast off and their inputs in float32 (they
# accumulate in float32 anyway; inside, the panel products must not be recast to half).
for _op in (
    "mibounds::row_lse_mean",
    "mibounds::sym_lse_mean",
    "mibounds::offdiag_lme",
    "mibounds::offdiag_means",
    "mibounds::interpolated_terms",
):
    for _device in ("cpu", "cuda"):
        torch.library.register_autocast(_op, _device, torch.float32)
del _op, _device


# --- public entry points (flatten leading dims, choose panels, decide need_grad) -------------


def _flatten(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, torch.Size]:
    lead = x.shape[:-2]
    return x.reshape(-1, *x.shape[-2:]), y.reshape(-1, *y.shape[-2:]), lead


def _need_grad(*ts: Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in ts)


def _tau(tau: float | Tensor, like: Tensor) -> Tensor:
    if isinstance(tau, Tensor):
        return tau.reshape(())
    return torch.tensor(float(tau), dtype=_acc(like.dtype), device=like.device)


def _bias(bias: Tensor | None) -> Tensor | None:
    return None if bias is None else bias.reshape(())


def _pair_args(layout: PairLayout | None, x: Tensor, offset: int = 0) -> tuple:
    """The pairing arguments of the ops: ``(row labels, column labels, offset, exclude,
    n_paired)``; without a layout, the plain pairing with the own columns from ``offset``."""
    if layout is None:
        return (None, None, offset, 0, x.shape[-2])
    return tuple(layout)


def row_logsumexp_mean(
    x: Tensor,
    y: Tensor,
    tau: float | Tensor,
    sim: str,
    *,
    layout: PairLayout | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
) -> Tensor:
    r""":math:`\sum_i w_i \log\sum_{j\in C_i} e^{S_{ij}}` for ``S = sim(x, y) / tau + bias``,
    shape ``(...)``: without ``weight`` the mean over rows; without ``layout`` every column is
    a candidate (:math:`C_i` are the candidates of :class:`~mibounds.pairing.PairLayout`).

    The column version is ``row_logsumexp_mean(y, x, ...)`` (the similarities are symmetric).

    Example:
        >>> x, y = torch.randn(5, 3), torch.randn(5, 3)
        >>> dense = torch.logsumexp(x @ y.T / 0.5, dim=-1).mean()
        >>> torch.allclose(row_logsumexp_mean(x, y, 0.5, "dot"), dense)
        True
    """
    xf, yf, lead = _flatten(x, y)
    t, b = _tau(tau, x), _bias(bias)
    value, *_ = _row_lse_mean(
        xf, yf, t, b, _SIMS[sim], *_pair_args(layout, x), weight, _need_grad(x, y, t, b)
    )
    return value.reshape(lead)


def symmetric_logsumexp_mean(
    x: Tensor,
    y: Tensor,
    tau: float | Tensor,
    sim: str,
    *,
    layout: PairLayout | None = None,
    row_weight: Tensor | None = None,
    col_weight: Tensor | None = None,
    bias: Tensor | None = None,
) -> Tensor:
    r"""Weighted row plus column log-sum-exp over the candidates, ``(...)``: two sweeps, four
    matrix products (the symmetric InfoNCE partition terms). Without weights, the average of
    the row and the column :math:`\frac1N\sum \log\sum e^{S}`.

    Example:
        >>> x, y = torch.randn(5, 3), torch.randn(5, 3)
        >>> s = x @ y.T
        >>> dense = 0.5 * (torch.logsumexp(s, -1).mean() + torch.logsumexp(s, -2).mean())
        >>> torch.allclose(symmetric_logsumexp_mean(x, y, 1.0, "dot"), dense)
        True
    """
    xf, yf, lead = _flatten(x, y)
    t, b = _tau(tau, x), _bias(bias)
    args = _pair_args(layout, x)
    value, *_ = _sym_lse_mean(
        xf, yf, t, b, _SIMS[sim], *args, row_weight, col_weight, _need_grad(x, y, t, b)
    )
    return value.reshape(lead)


def offdiag_logmeanexp(
    x: Tensor,
    y: Tensor,
    tau: float | Tensor,
    sim: str,
    offset: int = 0,
    *,
    layout: PairLayout | None = None,
    log_weight: Tensor | None = None,
    bias: Tensor | None = None,
) -> Tensor:
    r""":math:`\log\frac1{N(N-1)}\sum_{i\ne j} e^{S_{ij}}`, shape ``(...)``.

    With ``n`` rows of ``x`` against ``m`` columns of ``y`` (one rank's rows against the global
    batch), the positive of row ``i`` is column ``offset + i`` and the mean is over the
    ``n (m - 1)`` other pairs. With a ``layout`` the sum is over each row's negatives, weighted
    by ``exp(log_weight)`` per row.

    Example:
        >>> x, y = torch.randn(6, 3), torch.randn(6, 3)
        >>> s = x @ y.T
        >>> dense = torch.logsumexp(s[~torch.eye(6, dtype=torch.bool)], 0) - math.log(30)
        >>> torch.allclose(offdiag_logmeanexp(x, y, 1.0, "dot"), dense)
        True
    """
    xf, yf, lead = _flatten(x, y)
    t, b = _tau(tau, x), _bias(bias)
    args = _pair_args(layout, x, offset)
    value, *_ = _offdiag_lme(xf, yf, t, b, _SIMS[sim], *args, log_weight, _need_grad(x, y, t, b))
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
    grad_value: bool = True,
    offset: int = 0,
    *,
    layout: PairLayout | None = None,
    weight: Tensor | None = None,
    positives: bool = False,
    bias: Tensor | None = None,
) -> tuple[Tensor | None, Tensor]:
    r"""Off-diagonal means of ``value_fn(S + shift)`` (no gradient) and ``grad_fn(S + shift)``
    (differentiable), in one sweep; ``param`` is passed to both registered functions. ``offset``
    places the positives as in :func:`offdiag_logmeanexp`. With a ``layout``, sums over each
    row's negatives (or its positives) weighted by ``weight`` per row.
    Returns ``(value_mean or None, grad_mean)``, each ``(...)``; with ``grad_value=False`` the
    second is 0 with the right gradient (for an objective whose value cancels).

    Example:
        >>> x, y = torch.randn(6, 3), torch.randn(6, 3)
        >>> off = (x @ y.T)[~torch.eye(6, dtype=torch.bool)]
        >>> _, mean_exp = offdiag_means(x, y, 1.0, "dot", "exp")
        >>> torch.allclose(mean_exp, off.exp().mean())
        True
    """
    xf, yf, lead = _flatten(x, y)
    t, b = _tau(tau, x), _bias(bias)
    vid = -1 if value_fn is None else ELEMENTWISE[value_fn]
    vmean, gmean, *_ = _offdiag_means(
        xf,
        yf,
        t,
        b,
        _SIMS[sim],
        *_pair_args(layout, x, int(offset)),
        weight,
        vid,
        ELEMENTWISE[grad_fn],
        float(shift),
        float(param),
        positives,
        _need_grad(x, y, t, b),
        grad_value,
    )
    return (None if value_fn is None else vmean.reshape(lead)), gmean.reshape(lead)


def _exp_clip(t: Tensor, c: float) -> Tensor:
    # exp(clip(t, -c, c) - c) <= 1: the SMILE partition term without overflow
    return torch.exp(t.clamp(-c, c) - c)


def _exp(t: Tensor, p: float) -> Tensor:
    return torch.exp(t)


_register_fn("exp", _exp, _exp)
_register_fn("softplus", lambda t, p: F.softplus(t), lambda t, p: torch.sigmoid(t))
_register_fn("exp-clip", _exp_clip, lambda t, c: _exp_clip(t, c) * (t.abs() < c))
_register_fn("identity", lambda t, p: t, lambda t, p: torch.ones_like(t))
_register_fn("softplus-neg", lambda t, p: F.softplus(-t), lambda t, p: -torch.sigmoid(-t))
