"""The one precision rule: float16/bfloat16 inputs are accumulated in float32."""

from __future__ import annotations

import torch

_HALF = (torch.float16, torch.bfloat16)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half-precision dtypes, the dtype itself otherwise."""
    return torch.float32 if dtype in _HALF else dtype


def upcast(t: torch.Tensor) -> torch.Tensor:
    """``t`` in its accumulation dtype (a no-op unless ``t`` is half precision)."""
    return t.to(accumulation_dtype(t.dtype))
