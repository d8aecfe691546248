"""The operands of the streaming kernels: what separable scores become before a kernel
multiplies them, decided once per call. Here the precision is chosen (half-precision features
kept for the fused kernels, or features upcast to the accumulation dtype), the temperature is
folded into the features (cosine scores become dot scores of normalised features), and the
range rule is checked: scores that would overflow a bound's sums in the accumulation dtype are
refused, naming the temperature."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from mibounds import _checks
from mibounds._dtypes import (
    accumulation_dtype,
    cuda_autocast_dtype,
    finite_derivatives,
    finite_derivatives_,
    promoted,
)
from mibounds.kernels.entry import row_logsumexp_mean
from mibounds.kernels.selfcheck import triton_on

__all__ = ["Operands", "operands"]


class Operands(NamedTuple):
    """Separable scores as the kernels take them: every streamed piece of a bound reads its
    features, temperature and similarity from here, and its dtypes."""

    #: ``(..., N, d)`` row features (the temperature folded in, or kept apart in ``tau``)
    x: Tensor
    #: ``(..., M, d)`` column features
    y: Tensor
    #: the temperature left to divide the products by (1.0 once folded into the features)
    tau: float | Tensor
    #: ``"dot"`` or ``"gaussian"``
    sim: str
    #: the dtype of the scores (``x`` and ``y`` as given, promoted): the results' dtype
    dtype: torch.dtype
    #: the dtype sums are accumulated in (float32 for half precision)
    acc: torch.dtype
    #: whether values are validated on this call (see :func:`mibounds.set_validate_args`)
    validated: bool


def operands(x: Tensor, y: Tensor, similarity: str, temperature: float | Tensor) -> Operands:
    """The operands of the scores ``similarity(x, y) / temperature``.

    Half-precision features (or float32 ones under CUDA autocast) stay in half precision where
    the fused kernels run, with the temperature kept apart (they multiply the features on
    tensor cores and divide the float32 products by it, so the features are rounded once, as
    given); cosine features are then normalised in float32. Elsewhere the features are upcast
    to the accumulation dtype and the temperature folded into them (``x`` and ``y`` divided by
    ``sqrt(tau)``), so every streamed piece of a bound sees ``tau = 1`` and their gradients
    add up before the one division by ``tau``. While values are validated, scores that
    overflow the accumulation dtype raise a ``ValueError`` naming the temperature.
    """
    dtype = promoted(x.dtype, y.dtype)
    validated = _checks.validating()
    half = _fused_dtype(x, y, similarity)
    if half is not None:
        x, y = _half_features(x, y, similarity, half)
        sim, tau = "dot", temperature
    else:
        xa, ya = x.to(accumulation_dtype(x.dtype)), y.to(accumulation_dtype(y.dtype))
        t = temperature
        if xa is x and ya is y and similarity != "cosine" and not isinstance(t, Tensor) and t == 1:
            x, y, sim = xa, ya, similarity  # nothing to fold: the scores as given
        else:
            x, y, sim = _folded(xa, ya, similarity, t)
        tau = 1.0
    if validated:
        _check_no_overflow(x, y, sim, tau, temperature)
    return Operands(x, y, tau, sim, dtype, accumulation_dtype(x.dtype), validated)


class _InverseSqrtScale(torch.autograd.Function):
    """``(x / sqrt(tau), y / sqrt(tau))`` with a backward that cannot give NaN: the temperature
    gradient is formed from the summed feature gradients (finite) and only then divided by
    ``tau``, so terms that cancel in the bound cancel before any overflow."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, y: Tensor, tau: Tensor) -> tuple[Tensor, Tensor]:
        r = torch.rsqrt(tau)
        ctx.save_for_backward(x, y, tau, r)
        return x * r, y * r

    @staticmethod
    def backward(ctx: Any, gx: Tensor, gy: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        x, y, tau, r = ctx.saved_tensors
        gx, gy = finite_derivatives(gx), finite_derivatives(gy)
        dtau = None
        if ctx.needs_input_grad[2]:
            total = (x * gx).sum() + (y * gy).sum()
            dtau = finite_derivatives_((total * r / tau * -0.5).reshape(tau.shape))
        return finite_derivatives_(gx * r), finite_derivatives_(gy * r), dtau


class _Folded(torch.autograd.Function):
    """float32 features ``x`` (normalised along the last dimension with ``normalize``) times
    ``r``, formed in float64 a block of rows at a time and rounded to float32 once; nothing in
    float64 is kept for the backward pass, which is formed in float32 from the result."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, r: float, normalize: bool) -> Tensor:
        flat = x.reshape(-1, x.shape[-1])
        if torch.compiler.is_compiling():
            # the whole at once: a loop over a symbolic row count would specialise the graph
            out, norms = _fold(flat, r, normalize)
        else:  # blocks bound the float64 copy
            out = torch.empty_like(flat)
            norms = flat.new_empty(flat.shape[0], 1) if normalize else None
            step = max(1, _FOLD_ELEMENTS // flat.shape[-1])
            for i in range(0, flat.shape[0], step):
                block, norm = _fold(flat[i : i + step], r, normalize)
                out[i : i + step] = block
                if norms is not None and norm is not None:
                    norms[i : i + step] = norm
        out = out.reshape(x.shape)
        ctx.r, ctx.normalize = r, normalize
        if normalize:
            assert norms is not None
            ctx.save_for_backward(out, norms.reshape(*x.shape[:-1], 1))
        return out

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None, None]:
        r = ctx.r
        if not ctx.normalize:
            return g * r, None, None
        out, norm = ctx.saved_tensors
        unit = out / r
        # d(r x / |x|)/dx applied to g: r (g - u (u . g)) / |x|
        return r * (g - unit * (unit * g).sum(-1, keepdim=True)) / norm, None, None


def _fold(rows: Tensor, r: float, normalize: bool) -> tuple[Tensor, Tensor | None]:
    """``rows`` normalised (with ``normalize``) and times ``r`` in float64, rounded to their
    own dtype; and their norms."""
    block = rows.double()
    norm = None
    if normalize:
        norm = block.norm(dim=-1, keepdim=True).clamp_min(_NORM_EPS)
        block = block / norm
    return (block * r).to(rows.dtype), None if norm is None else norm.to(rows.dtype)


#: float64 elements of a block of :class:`_Folded` (16 MiB)
_FOLD_ELEMENTS = 1 << 21
#: the smallest norm a feature is divided by (``F.normalize``'s ``eps``)
_NORM_EPS = 1e-12


def _folded(x: Tensor, y: Tensor, similarity: str, t: float | Tensor) -> tuple[Tensor, Tensor, str]:
    """Features in their accumulation dtype with the temperature folded in (``x`` and ``y``
    divided by ``sqrt(t)``; cosine features normalised), and the similarity that is left."""
    cosine = similarity == "cosine"
    r = 1.0 if isinstance(t, Tensor) else 1.0 / math.sqrt(t)
    if (cosine or r != 1.0) and x.dtype == torch.float32 and x.device.type != "mps":
        # normalised and scaled in float64, then rounded once: the float32 products then
        # carry no more error than the dense scores' own product does
        x, y = _Folded.apply(x, r, cosine), _Folded.apply(y, r, cosine)
    else:
        if cosine:
            x, y = F.normalize(x, dim=-1), F.normalize(y, dim=-1)
        if r != 1.0:
            x, y = x * r, y * r
    if isinstance(t, Tensor):
        x, y = _InverseSqrtScale.apply(x, y, t.to(x.dtype).reshape(()))
    return x, y, "dot" if cosine else similarity


def _fused_dtype(x: Tensor, y: Tensor, similarity: str) -> torch.dtype | None:
    """The half-precision dtype in which the fused kernels will multiply these features
    (bfloat16 or float16 features, or float32 ones under CUDA autocast), or ``None`` where the
    features are upcast and the temperature folded into them."""
    if similarity not in ("dot", "cosine") or not triton_on(x.device):
        return None
    dt = cuda_autocast_dtype(x.device)
    if dt is not None and x.dtype in (torch.float32, dt) and y.dtype in (torch.float32, dt):
        return dt
    if x.dtype == y.dtype and x.dtype in (torch.float16, torch.bfloat16):
        return x.dtype
    return None


def _half_features(
    x: Tensor, y: Tensor, similarity: str, half: torch.dtype
) -> tuple[Tensor, Tensor]:
    """The features in ``half`` for dot scores (cosine features normalised in float32)."""
    if similarity == "cosine":
        x = F.normalize(x.float(), dim=-1)
        y = F.normalize(y.float(), dim=-1)
    return x.to(half), y.to(half)


def _check_no_overflow(
    x: Tensor, y: Tensor, sim: str, tau: float | Tensor, temperature: float | Tensor
) -> None:
    """Raise if the scores ``sim(x, y) / tau`` break the range rule (:func:`_within_range`)
    in the accumulation dtype; ``x`` and ``y`` are the features as the kernels take them (the
    temperature folded in, or kept apart in ``tau`` for half-precision features), and the
    message names ``temperature``, as given. A bound on the largest score decides in O(N d);
    only if it is too large are the scores themselves swept (no gradient)."""
    x, y = x.detach(), y.detach()
    dtype = accumulation_dtype(promoted(x.dtype, y.dtype))
    t = float(tau.detach()) if isinstance(tau, Tensor) else float(tau)
    m = y.shape[-2]
    nx, ny = x.to(dtype).norm(dim=-1).amax(), y.to(dtype).norm(dim=-1).amax()
    bound = (nx + ny) ** 2 if sim == "gaussian" else nx * ny
    if _within_range(float(bound) / t, m, dtype):
        return
    largest = math.inf
    with torch.no_grad():
        if bool(torch.isfinite(x).all()) and bool(torch.isfinite(y).all()):
            top = row_logsumexp_mean(x, y, t, sim)
            bottom = row_logsumexp_mean(-x, y, t, sim) if sim == "dot" else top
            # each row's log-sum-exp is within log M of its largest score
            largest = float(torch.maximum(top.abs(), bottom.abs()).amax())
    if math.isnan(largest):  # the scores themselves overflow: inf - inf in the sums
        largest = math.inf
    if not _within_range(largest, m, dtype):
        raise ValueError(_overflow_message(temperature, dtype, largest, m))


def _within_range(largest: float, m: int, dtype: torch.dtype) -> bool:
    """The range rule, the same on the dense, the streamed and the fused paths: scores of
    magnitude up to ``largest`` are accepted if every sum a bound forms over a row of ``m`` of
    them (and its mean over the rows) stays within ``dtype``'s range."""
    return math.isfinite(largest) and largest * max(m, 1) < 0.5 * _checks._LARGEST[dtype]


def _score_limit(dtype: torch.dtype, m: int) -> float:
    """The largest score magnitude :func:`_within_range` accepts."""
    return 0.5 * _checks._LARGEST[dtype] / max(m, 1)


def _overflow_message(temperature: Any, dtype: torch.dtype, largest: float, m: int) -> str:
    t = float(temperature.detach()) if isinstance(temperature, Tensor) else float(temperature)
    about = f"about {largest:.3g}" if math.isfinite(largest) else f"beyond {dtype}'s range"
    return (
        f"temperature={t:g} makes the scores sim(x, y) / temperature overflow {dtype} in "
        f"a bound's sums: the largest is {about} (accepted: below "
        f"{_score_limit(dtype, m):.3g} with {m} columns); use a larger temperature or smaller "
        "features"
    )
