"""What scores become before they are reduced: validated once, their range checked against
the accumulation dtype (the range rule), and separable scores turned into the operands of the
streaming kernels (the temperature folded into the features, cosine scores normalised)."""

from __future__ import annotations

import math
from typing import Any, TypeAlias

import torch
import torch.nn.functional as F
from torch import Tensor

from mibounds import _checks
from mibounds._dtypes import (
    accumulation_dtype,
    cuda_autocast_dtype,
    dense_scores,
    finite_derivatives_,
    upcast,
)
from mibounds.kernels import streaming
from mibounds.scores import DenseScores, SeparableScores

Scores: TypeAlias = Tensor | SeparableScores | DenseScores


def prepare(scores: Scores, name: str = "scores") -> tuple[Tensor, torch.dtype]:
    """Validate plain square ``scores`` and return the dense float matrix to reduce and the
    output dtype.

    Half-precision scores are upcast to float32; the caller casts its result back to the
    returned dtype.
    """
    if isinstance(scores, SeparableScores):
        if scores.gather:
            raise ValueError(
                f"{name}: SeparableScores with gather are only reduced over the global batch "
                "(the bounds listed in mibounds.distributed, with reduction 'mean' or 'sum'); "
                "this bound or reduction would see this rank's pairs only"
            )
        if not is_plain(scores):
            raise ValueError(
                f"{name}: this bound or reduction needs square scores with the positives on the "
                "diagonal (no labels, exclusions, bias or extra columns); got "
                f"{_describe(scores)}"
            )
        dense = scores.dense()
        _check_dense_range(name, dense, scores.temperature)
    elif isinstance(scores, DenseScores):
        if not is_plain(scores):
            raise ValueError(
                f"{name}: this bound or reduction needs square scores with the positives on the "
                f"diagonal; got {_describe(scores)}"
            )
        dense = scores.scores
        _check_dense_range(name, dense)
    else:
        dense = _checks.check_scores(name, scores)
        _check_dense_range(name, dense)
    return dense_scores(dense), dense.dtype


def is_plain(scores: Scores) -> bool:
    """Square scores whose positives are the diagonal: no labels, no excluded pairs, no extra
    columns (and, for separable scores, no bias)."""
    if isinstance(scores, Tensor):
        return scores.shape[-1] == scores.shape[-2]
    square = scores.shape[-1] == scores.shape[-2]
    bias = getattr(scores, "bias", None)
    return square and scores.pairing.plain and bias is None


def _describe(scores: Scores) -> str:
    parts = [f"shape {tuple(scores.shape)}"]
    if not isinstance(scores, Tensor):
        if scores.labels is not None:
            parts.append("labels")
        if scores.exclude != "none":
            parts.append(f"exclude={scores.exclude!r}")
        if getattr(scores, "bias", None) is not None:
            parts.append("a bias")
    return ", ".join(parts)


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
        gx, gy = finite_derivatives_(gx.clone()), finite_derivatives_(gy.clone())
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


def unit_temperature(scores: SeparableScores) -> SeparableScores:
    """The same scores with the temperature folded into the features (``x`` and ``y`` divided
    by ``sqrt(tau)``, in the accumulation dtype; cosine scores as dot scores of normalised
    features), so every streamed piece of a bound sees ``tau = 1`` and their gradients add up
    before the one division by ``tau``. Scores that overflow the accumulation dtype raise a
    ``ValueError`` naming the temperature (while values are validated)."""
    t = scores.temperature
    half = _fused_dtype(scores)
    if half is not None:
        return _half_features(scores, half)
    x, y = upcast(scores.x), upcast(scores.y)
    unchanged = x is scores.x and y is scores.y
    if unchanged and scores.similarity != "cosine" and not isinstance(t, Tensor) and t == 1.0:
        return scores
    cosine = scores.similarity == "cosine"
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
    sim = "dot" if cosine else scores.similarity
    out = SeparableScores._trusted(scores, x=x, y=y, similarity=sim, temperature=1.0)
    if _checks.validating():
        _check_no_overflow(out, t)
    return out


def _fused_dtype(scores: SeparableScores) -> torch.dtype | None:
    """The half-precision dtype in which the fused kernels will multiply these features
    (bfloat16 or float16 features, or float32 ones under CUDA autocast), or ``None`` where the
    features are upcast and the temperature folded into them."""
    x, y = scores.x, scores.y
    if scores.similarity not in ("dot", "cosine") or not streaming.triton_on(x.device):
        return None
    dt = cuda_autocast_dtype(x.device)
    if dt is not None and x.dtype in (torch.float32, dt) and y.dtype in (torch.float32, dt):
        return dt
    if x.dtype == y.dtype and x.dtype in (torch.float16, torch.bfloat16):
        return x.dtype
    return None


def _half_features(scores: SeparableScores, half: torch.dtype) -> SeparableScores:
    """Dot scores of half-precision features with the temperature kept apart (the fused
    kernels multiply the features on tensor cores and divide the float32 products by it, so
    the features are rounded once, as given); cosine features are normalised in float32."""
    x, y = scores.x, scores.y
    if scores.similarity == "cosine":
        x = F.normalize(x.float(), dim=-1)
        y = F.normalize(y.float(), dim=-1)
    x, y = x.to(half), y.to(half)
    out = SeparableScores._trusted(scores, x=x, y=y, similarity="dot")
    if _checks.validating():
        _check_no_overflow(out, scores.temperature)
    return out


def _check_no_overflow(scores: SeparableScores, temperature: float | Tensor) -> None:
    """Raise if the scores ``sim(x, y) / temperature`` break the range rule
    (:func:`_within_range`) in the accumulation dtype; ``scores`` holds the features as the
    kernels take them (the temperature folded in, or kept apart for half-precision features).
    A bound on the largest score decides in O(N d); only if it is too large are the scores
    themselves swept (no gradient)."""
    x, y = scores.x.detach(), scores.y.detach()
    dtype = accumulation_dtype(torch.promote_types(x.dtype, y.dtype))
    t = scores.temperature
    tau = float(t.detach()) if isinstance(t, Tensor) else float(t)
    m = y.shape[-2]
    nx, ny = x.to(dtype).norm(dim=-1).amax(), y.to(dtype).norm(dim=-1).amax()
    bound = (nx + ny) ** 2 if scores.similarity == "gaussian" else nx * ny
    if _within_range(float(bound) / tau, m, dtype):
        return
    largest = math.inf
    with torch.no_grad():
        if bool(torch.isfinite(x).all()) and bool(torch.isfinite(y).all()):
            sim = scores.similarity
            top = streaming.row_logsumexp_mean(x, y, tau, sim)
            bottom = streaming.row_logsumexp_mean(-x, y, tau, sim) if sim == "dot" else top
            # each row's log-sum-exp is within log M of its largest score
            largest = float(torch.maximum(top.abs(), bottom.abs()).amax())
    if not _within_range(largest, m, dtype):
        raise ValueError(_overflow_message(temperature, dtype, largest, m))


def _within_range(largest: float, m: int, dtype: torch.dtype) -> bool:
    """The range rule, the same on the dense, the streamed and the fused paths: scores of
    magnitude up to ``largest`` are accepted if every sum a bound forms over a row of ``m`` of
    them (and its mean over the rows) stays within ``dtype``'s range."""
    return math.isfinite(largest) and largest * max(m, 1) < 0.5 * torch.finfo(dtype).max


def _score_limit(dtype: torch.dtype, m: int) -> float:
    """The largest score magnitude :func:`_within_range` accepts."""
    return 0.5 * torch.finfo(dtype).max / max(m, 1)


def _overflow_message(temperature: Any, dtype: torch.dtype, largest: float, m: int) -> str:
    t = float(temperature.detach()) if isinstance(temperature, Tensor) else float(temperature)
    return (
        f"temperature={t:g} makes the scores sim(x, y) / temperature overflow {dtype} in "
        f"a bound's sums: the largest is about {largest:.3g} (accepted: below "
        f"{_score_limit(dtype, m):.3g} with {m} columns); use a larger temperature or smaller "
        "features"
    )


def _check_dense_range(name: str, dense: Tensor, temperature: Any = None) -> None:
    """The overflow rule for dense scores (while values are validated): refused, naming the
    temperature (separable scores) or the scores, where a bound's sums would overflow."""
    if not _checks.validating():
        return
    m = dense.shape[-1]
    dtype = accumulation_dtype(dense.dtype)
    largest = float(dense.detach().abs().amax()) if dense.numel() else 0.0
    if _within_range(largest, m, dtype):
        return
    if temperature is not None:
        raise ValueError(_overflow_message(temperature, dtype, largest, m))
    raise ValueError(
        f"{name} overflow {dtype} in a bound's sums: the largest |score| is {largest:.3g} "
        f"(accepted: below {_score_limit(dtype, m):.3g} with {m} columns); scale them down"
    )


def streaming_operands(scores: SeparableScores) -> tuple[Tensor, Tensor, float | Tensor, str]:
    """``(x, y, temperature, similarity)`` for the streaming kernels: cosine scores become dot
    scores of normalised features (normalised with differentiable torch ops)."""
    if scores.similarity == "cosine":
        x = torch.nn.functional.normalize(scores.x, dim=-1)
        y = torch.nn.functional.normalize(scores.y, dim=-1)
        return x, y, scores.temperature, "dot"
    return scores.x, scores.y, scores.temperature, scores.similarity


def sep_diagonal(scores: SeparableScores) -> Tensor:
    """Positive scores ``S[..., i, i]`` in O(N d), in the accumulation dtype, with the overflow
    rule on their gradient (as for dense scores)."""
    return dense_scores(scores.diagonal())
