r"""The PyTorch panel sweep: the score matrix of separable scores, a panel of rows at a time.

``S = sim(x, y) / tau + bias`` is never materialised: rows are processed in panels of ``P``
rows (``P x M`` scores at a time, ``P`` sized from a memory budget: 32 MiB on the CPU, a share
of the free memory on a GPU). :class:`_Sweep` holds the operands, the pairing and, when a
gradient is needed, the accumulators that :mod:`mibounds.kernels.sweep` fills during the same
sweep, with the three matrix products a plain implementation needs (``S_p = X_p Y^T``,
``dX_p = G_p Y``, ``dY += G_p^T X_p``). This is the reference of the fused kernels, the path of
float64 and of every case they do not cover. On a CUDA device, half-precision features are
multiplied as they are, with float32 results (``torch.bmm(..., out_dtype=torch.float32)``),
and ``G`` is rounded to their dtype for its two products, as on tensor cores; elsewhere the
operands are float32 copies.

Similarities handled here are ``"dot"`` and ``"gaussian"`` (:math:`-\|x - y\|^2`); cosine
scores are dot scores of normalised features, normalised by the caller.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from mibounds._dtypes import accumulation_dtype as _acc
from mibounds._dtypes import finite_derivatives_, promoted
from mibounds.pairing import PairLayout

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "HALF_MAX",
    "get_backend",
    "get_memory_budget",
    "out_dtype_products",
    "panel_rows",
    "product",
    "set_backend",
    "set_memory_budget",
]

#: Bytes of panel workspace per sweep on the CPU (about four ``P x N`` float32 buffers live
#: at once).
DEFAULT_MEMORY_BUDGET = 32 * 2**20
#: ``None``: the default (32 MiB on the CPU, sized from the free memory on a GPU)
_BUDGET: list[int | None] = [None]


def set_memory_budget(nbytes: int | None) -> None:
    """Set the panel workspace of the PyTorch sweep in bytes (``None``: the default, 32 MiB
    on the CPU and a quarter of the free memory, at most 4 GiB, on a GPU).

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
        _BUDGET[0] = None
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


def _eager() -> bool:
    """Whether the sweep runs its panel functions eagerly (the ``"eager"`` backend)."""
    return _BACKEND[0] == "eager"


def _kernel(fn):
    """``fn`` itself, or its ``torch.compile(dynamic=True)`` version with the compiled backend."""
    if _eager():
        return fn
    key = fn.__name__
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(fn, dynamic=True)
    return _COMPILED[key]


def get_memory_budget(device: torch.device | str | None = None) -> int:
    """The panel workspace of the PyTorch sweep on ``device``, in bytes: the one set with
    :func:`set_memory_budget`, else 32 MiB on the CPU and a quarter of the free memory (at
    least 32 MiB, at most :data:`GPU_MEMORY_BUDGET_CAP`) on a GPU, read once per sweep.

    Example:
        >>> get_memory_budget() == DEFAULT_MEMORY_BUDGET
        True
    """
    if _BUDGET[0] is not None:
        return _BUDGET[0]
    dev = torch.device("cpu" if device is None else device)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return int(min(GPU_MEMORY_BUDGET_CAP, max(DEFAULT_MEMORY_BUDGET, free // 4)))
    return DEFAULT_MEMORY_BUDGET


#: The largest panel workspace the sweep takes from a GPU's free memory by default.
GPU_MEMORY_BUDGET_CAP = 4 * 2**30


_SIMS = {"dot": 0, "gaussian": 1}

#: The largest finite value of each half-precision dtype (a gradient of the scores is
#: clamped to it before a half-precision product).
HALF_MAX = {torch.bfloat16: 3.3895313892515355e38, torch.float16: 65504.0}

_OUT_DTYPE: dict[str, bool] = {}


def out_dtype_products(device: torch.device) -> bool:
    """Whether ``torch.bmm(a, b, out_dtype=torch.float32)`` multiplies half-precision operands
    on ``device`` (CUDA builds of recent torch); read once per device type.

    Example:
        >>> out_dtype_products(torch.device("cpu"))
        False
    """
    if device.type != "cuda":
        return False
    if device.type not in _OUT_DTYPE:
        try:
            a = torch.ones(1, 2, 2, dtype=torch.bfloat16, device=device)
            ok = torch.bmm(a, a, out_dtype=torch.float32).dtype == torch.float32
        except (TypeError, RuntimeError, NotImplementedError):
            ok = False
        _OUT_DTYPE[device.type] = ok
    return _OUT_DTYPE[device.type]


def product(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` batched, float32 result: half operands multiplied as they are on CUDA;
    elsewhere (or without ``out_dtype``) on float32 copies, the same float32 result up to the
    order of the sums."""
    if a.dtype == torch.float32 and b.dtype == torch.float32:
        return torch.bmm(a, b)
    if a.dtype == b.dtype and out_dtype_products(a.device):
        return torch.bmm(a, b, out_dtype=torch.float32)
    return torch.bmm(a.float(), b.float())


def half_operands(x: Tensor, y: Tensor) -> bool:
    """Whether the sweep multiplies ``x`` and ``y`` as they are (half precision on a CUDA
    device whose torch has ``out_dtype`` products), not on float32 copies."""
    return (
        x.dtype == y.dtype
        and x.dtype in HALF_MAX
        and x.device.type == "cuda"
        and out_dtype_products(x.device)
    )


def panel_rows(n: int, budget: int | None = None, buffers: int = 4) -> int:
    """Rows per panel so that ``buffers`` float32 ``P x N`` panels fit in ``budget`` bytes.

    Example:
        >>> panel_rows(16384, budget=32 * 2**20)
        128
    """
    b = get_memory_budget() if budget is None else budget
    return max(1, min(n, b // (buffers * 4 * max(n, 1))))


class _Sweep:
    r"""One sweep over panels of rows of ``S = sim(x, y) / tau + bias``.

    Holds the operands (in the accumulation dtype), the pairing of rows and columns
    (:class:`~mibounds.pairing.PairLayout`) and, when a gradient is needed, the unscaled
    accumulators ``G Y`` (per row), ``G^T X`` (per column), the sum of ``G = dL/dS`` and,
    for Gaussian scores, its row and column sums, from which :meth:`finish` forms the
    gradients with respect to ``x``, ``y``, ``tau`` and ``bias`` in O(N d): for dot scores
    :math:`\partial L/\partial\tau = -\tau^{-2}\sum_i x_i \cdot (GY)_i`, so no extra pass
    over the scores is needed.
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
        dt = _acc(promoted(x.dtype, y.dtype))
        self.x_dtype, self.y_dtype = x.dtype, y.dtype
        self.x, self.y = x.to(dt), y.to(dt)
        # half-precision features are multiplied as they are, with float32 results
        self.half = (x, y) if half_operands(x, y) else None
        self.b, self.n, _ = self.x.shape
        self.m = self.y.shape[1]  # columns: N, the global N, or N plus extra candidates
        self.layout = PairLayout(n_paired=self.n) if layout is None else layout
        self.plain = self.layout.plain
        self.sim, self.need_grad = sim, need_grad
        self.inv = tau.to(dt).reciprocal().reshape(1, 1, 1)
        self.bias = None if bias is None else bias.to(dt).reshape(())
        self.panel = panel_rows(self.m, get_memory_budget(self.x.device))
        self.whole = self.panel >= self.n  # one panel holds every row
        self._diag: tuple[tuple[int, int], Tensor, Tensor] | None = None
        if sim == 1:
            self.sqx = (self.x * self.x).sum(-1)
            self.sqy = (self.y * self.y).sum(-1)
        if need_grad:
            self.gy = torch.zeros_like(self.x)  # rows of G Y
            self.gtx = torch.zeros_like(self.y)  # rows of G^T X
            if sim == 1:  # the row and column sums of G (Gaussian scores)
                self.rowsum = self.x.new_zeros(self.b, self.n)
                self.colsum = self.x.new_zeros(self.b, self.m)
            self.total = self.x.new_zeros(self.b)  # sum of G (the bias gradient)
            # the accumulators hold the gradient times 2^-exp2 (see accumulate_scaled)
            self.exp2 = self.x.new_zeros(self.b)
            self.unit = True  # whether the scale is known to be 2^0 (no product needed)

    def panels(self):
        for r0 in range(0, self.n, self.panel):
            yield r0, min(self.n, r0 + self.panel)

    def scores(self, r0: int, r1: int) -> Tensor:
        """``S`` for rows ``r0:r1``, ``(B, P, M)``, a fresh buffer the caller may overwrite."""
        xp = self.x[:, r0:r1]
        if self.half is not None:
            xh, yh = self.half
            s = product(xh[:, r0:r1], yh.transpose(1, 2))
            if self.sim == 0:
                s = s.mul_(self.inv)
            else:
                s = s.mul_(2 * self.inv).sub_((self.sqx[:, r0:r1] * self.inv[:, 0])[:, :, None])
                s = s.sub_((self.sqy * self.inv[:, 0])[:, None, :]).clamp_max_(0)
        elif self.sim == 0:
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
        if self.half is not None:  # G in the features' dtype, float32 results
            xh, yh = self.half
            lim = HALF_MAX[xh.dtype]
            gh = g.clamp(-lim, lim).to(xh.dtype)
            self.gy[:, r0:r1] = product(gh, yh)
            self.gtx.add_(product(gh.transpose(1, 2), xh[:, r0:r1]))
        else:
            self.gy[:, r0:r1] = torch.bmm(g, self.y)
            self.gtx.baddbmm_(g.transpose(1, 2), self.x[:, r0:r1])
        if self.sim == 1 or self.bias is not None:
            rs = g.sum(-1)
            self.total += rs.sum(-1)
            if self.sim == 1:
                self.rowsum[:, r0:r1] = rs
                self.colsum += g.sum(1)

    def accumulate_scaled(self, g: Tensor, r0: int, r1: int) -> None:
        """:meth:`accumulate` for a panel whose entries may be as large as the dtype allows
        (derivatives of :math:`e^S`): the accumulators are kept at a power-of-two scale
        :math:`2^{-e}` with every entry so far at most 1 in magnitude, so the products with
        ``x`` and ``y`` cannot overflow; :meth:`finish` scales back, which gives +-inf (never
        NaN) where the true gradient is beyond the dtype's range. Powers of two are exact."""
        # the largest magnitude, max |g|, without a copy of the panel for its absolute values
        largest = torch.maximum(g.amax((1, 2)), -g.amin((1, 2)))
        top = torch.frexp(largest)[1].to(g.dtype).clamp_(min=0.0)
        new = torch.maximum(self.exp2, top)
        # on the CPU reading the flag costs nothing; elsewhere rescale unconditionally
        if g.device.type != "cpu" or bool((new != self.exp2).any()):
            self.rescale(torch.exp2(self.exp2 - new), r0)
            self.exp2, self.unit = new, False
        if not self.unit:  # at 2^0 (on the CPU, while nothing is large) the product is by 1
            g = g.mul_(torch.exp2(-new)[:, None, None])
        self.accumulate(g, r0, r1)

    def rescale(self, factor: Tensor, upto: int) -> None:
        """Multiply what was accumulated so far (rows ``< upto``) by ``factor`` ``(B,)``."""
        f = factor[:, None, None]
        self.gy[:, :upto] *= f
        self.gtx *= f
        if self.sim == 1:
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
        dtau, dbias = -sum_gs, self.total  # dS/dtau = -(S - bias) / tau
        if not self.unit:
            # undo the scale of accumulate_scaled in two exact halves (2^e alone may overflow)
            half = torch.floor(self.exp2 * 0.5)
            up1, up2 = torch.exp2(half), torch.exp2(self.exp2 - half)
            dx = dx * up1[:, None, None] * up2[:, None, None]
            dy = dy * up1[:, None, None] * up2[:, None, None]
            dtau, dbias = dtau * up1 * up2, dbias * up1 * up2
        dtau = dtau * inv
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
        """Local row and global column indices of the own pairs in rows ``r0:r1`` (formed once
        per panel; the callers only read them)."""
        if self._diag is None or self._diag[0] != (r0, r1):
            rows = torch.arange(r1 - r0, device=self.x.device)
            self._diag = ((r0, r1), rows, rows + (r0 + self.layout.offset))
        return self._diag[1], self._diag[2]


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


def _weights(
    w: Tensor | None, like: Tensor, default: float, dtype: torch.dtype | None = None
) -> Tensor:
    """Per-row weights in the accumulation dtype (or ``dtype``), or ``default`` for every
    row."""
    dtype = like.dtype if dtype is None else dtype
    if w is None:
        return like.new_full((like.shape[1],), default, dtype=dtype)
    return w.to(dtype)


def _layout(rl, cl, offset: int, exclude: int, n_paired: int) -> PairLayout:
    return PairLayout(rl, cl, offset, exclude, n_paired)


#: How far below a panel's maximum every column's maximum may lie for the row softmax to
#: give the column sums without underflow (e^-60 is far inside float32's range).
_SHARED_RANGE = 60.0


def _shared_shift(s: Tensor, col_max: Tensor | None = None) -> Tensor | None:
    """The panel maximum ``c`` ``(B,)`` if every column's maximum (``col_max``, if the caller
    has it) lies within :data:`_SHARED_RANGE` of it (columns without candidates aside), else
    ``None``. CPU only: on accelerators the answer would need a device synchronisation, so
    they always take the softmax route."""
    if s.device.type != "cpu":
        return None
    col_max = s.amax(1) if col_max is None else col_max
    c = col_max.amax(-1)
    low = torch.where(torch.isneginf(col_max), c[:, None], col_max).amin(-1)
    if bool((c - low <= _SHARED_RANGE).all()):
        return c
    return None


def _col_softmax_lse(s: Tensor) -> tuple[Tensor, Tensor]:
    """Column softmax within a panel and the panel's column log-sum-exp ``(B, M)``."""
    if s.device.type != "cpu":
        return _col_exp_lse(s)
    m = s.amax(1)
    p = torch.softmax(s, dim=1)
    return p, m - torch.log(p.amax(1))


def _col_softmax_lse_empty(s: Tensor) -> tuple[Tensor, Tensor]:
    if s.device.type != "cpu":
        return _col_exp_lse(s)
    return _softmax_lse_empty(s, 1)


def _col_exp_lse(s: Tensor) -> tuple[Tensor, Tensor]:
    """The column softmax of a panel without a softmax over its strided dimension (slow on
    GPUs): elementwise ``exp(S - max)`` over the contiguous panel and a sum over its rows;
    columns without candidates (all ``-inf``) get ``p = 0`` and ``-inf``."""
    m = s.amax(1)
    m_safe = torch.where(torch.isneginf(m), 0.0, m)
    e = torch.exp(s - m_safe[:, None, :])
    z = e.sum(1)
    p = e.div_(torch.where(z > 0, z, 1.0)[:, None, :])
    return p, torch.where(z > 0, m_safe + torch.log(z), -math.inf)


def _row_softmax_lse_empty(s: Tensor) -> tuple[Tensor, Tensor]:
    return _softmax_lse_empty(s, -1)
