"""What :func:`~mibounds.estimate.estimate_mi` does to the samples before any critic sees
them: float tensors checked, columns standardised or replaced by their normal scores (maps of
single coordinates, which leave the MI unchanged)."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mibounds import _checks


def _as_samples(name: str, value: Any) -> Tensor:
    if isinstance(value, np.ndarray):
        if not np.issubdtype(value.dtype, np.floating):
            raise TypeError(f"{name} must hold floating-point values, got dtype {value.dtype}")
        value = torch.from_numpy(value)
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(value).__name__}")
    _checks.check_tensor(name, value, min_dim=1)
    if value.dim() == 1:
        value = value[:, None]
    if value.dim() != 2:
        raise ValueError(f"{name} must have shape (n,) or (n, d), got {tuple(value.shape)}")
    if value.shape[1] == 0:
        raise ValueError(
            f"{name} has no features: shape {tuple(value.shape)}; pass (n,) or (n, d) samples "
            "with d >= 1"
        )
    _checks.check_values(name, value)
    return value


def _standardize(
    name: str, values: Tensor, dtype: torch.dtype, ranks: bool = False
) -> tuple[Tensor, list[int]]:
    """Centre and scale each column by its mean and standard deviation (float64), leaving out
    columns that are constant up to the rounding of ``dtype`` (with a warning; they carry no
    information) and passing heavy-tailed columns through ``asinh`` after a robust scaling
    (median and inter-quartile range); with ``ranks``, each column becomes its normal scores
    instead. Every map is invertible per column, so the MI is unchanged."""
    mean, std = values.mean(0), values.std(0)
    # constant: no spread beyond the rounding of the values themselves in their own dtype
    eps = torch.finfo(dtype).eps if dtype.is_floating_point else torch.finfo(torch.float32).eps
    tol = 4 * eps * mean.abs().clamp_min(torch.finfo(torch.float64).tiny)
    constant = ~(std > tol)
    dropped = [int(i) for i in torch.nonzero(constant).flatten()]
    if len(dropped) == values.shape[1]:
        raise ValueError(
            f"every column of {name} is constant (standard deviation {std.tolist()}): it "
            "carries no information; the MI with a constant is 0"
        )
    if dropped:
        warnings.warn(
            f"estimate_mi: column(s) {dropped} of {name} are constant; they carry no "
            "information and are left out",
            UserWarning,
            stacklevel=3,
        )
        keep = ~constant
        values, mean, std = values[:, keep], mean[keep], std[keep]
    if ranks:
        return _normal_scores(values), dropped
    z = (values - mean) / std
    # heavy tails (Student-t with few degrees of freedom): a few points far out would dominate
    # the critic's inputs; asinh of a robust z-score keeps them in range
    q = torch.quantile(values, torch.tensor([0.25, 0.5, 0.75], dtype=values.dtype), dim=0)
    iqr = (q[2] - q[0]).clamp_min(1e-12 * std)
    heavy = (z**4).mean(0) - 3.0 > _HEAVY_TAIL_KURTOSIS
    if bool(heavy.any()):
        z = torch.where(heavy, torch.asinh((values - q[1]) / (iqr / 1.349)), z)
    return z, dropped


def _normal_scores(values: Tensor) -> Tensor:
    """Per column, the standard normal quantile of each value's mid-rank,
    ``Phi^-1((r - 1/2)/n)`` (float64); tied values share the mean of their ranks, so the map
    is strictly increasing in the value."""
    n = values.shape[0]
    out = torch.empty_like(values, dtype=torch.float64)
    for j in range(values.shape[1]):
        _, inverse, counts = torch.unique(values[:, j], return_inverse=True, return_counts=True)
        last = counts.cumsum(0).to(torch.float64)  # rank (from 1) of each distinct value's last
        mid = last - (counts.to(torch.float64) - 1) / 2  # the mean rank of its ties
        out[:, j] = mid[inverse]
    return math.sqrt(2.0) * torch.erfinv(2.0 * (out - 0.5) / n - 1.0)


#: excess kurtosis above which a column counts as heavy-tailed (a Gaussian has 0, Student-t
#: with 5 degrees of freedom 6, and with 4 or fewer it is infinite)
_HEAVY_TAIL_KURTOSIS = 6.0
