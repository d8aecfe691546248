"""The precision rules: float16/bfloat16 inputs are accumulated in float32, and a derivative
with respect to the scores that overflows is zero (see the conventions page)."""

from __future__ import annotations

import torch

_HALF = (torch.float16, torch.bfloat16)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half-precision dtypes, the dtype itself otherwise."""
    return torch.float32 if dtype in _HALF else dtype


def cuda_autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype CUDA autocast multiplies in on ``device`` now, or ``None`` (not a CUDA
    device, or autocast off)."""
    if device.type != "cuda" or not torch.is_autocast_enabled("cuda"):
        return None
    return torch.get_autocast_dtype("cuda")


def upcast(t: torch.Tensor) -> torch.Tensor:
    """``t`` in its accumulation dtype (a no-op unless ``t`` is half precision)."""
    return t.to(accumulation_dtype(t.dtype))


def promoted(a: torch.dtype, b: torch.dtype) -> torch.dtype:
    """``torch.promote_types(a, b)``, without a call when the two are the same."""
    return a if a == b else torch.promote_types(a, b)


def finite_derivatives(g: torch.Tensor) -> torch.Tensor:
    """A copy of ``g`` with every entry that is not finite replaced by 0 (see
    :func:`finite_derivatives_`)."""
    return torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)


def finite_derivatives_(g: torch.Tensor) -> torch.Tensor:
    """``g`` with every entry that is not finite replaced by 0, in place.

    A derivative with respect to one score is infinite only where a term of the bound
    overflowed (an :math:`e^S` beyond the dtype's range); that score then stops contributing
    and the rest of the gradient is exact. The streaming kernels apply the same rule to each
    panel of the score gradient.
    """
    return torch.nan_to_num_(g, nan=0.0, posinf=0.0, neginf=0.0)
