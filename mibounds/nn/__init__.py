"""The ``nn.Module`` side of mibounds: critics and loss modules (values to minimise)."""

from mibounds.nn.critics import (
    MLP,
    BilinearCritic,
    ConcatCritic,
    GaussianKernelCritic,
    SeparableCritic,
)
from mibounds.nn.losses import DV, FMI, JS, MINE, NWJ, SMILE, TUBA, InfoNCE, Interpolated

__all__ = [
    "BilinearCritic",
    "ConcatCritic",
    "DV",
    "FMI",
    "GaussianKernelCritic",
    "InfoNCE",
    "Interpolated",
    "JS",
    "MINE",
    "MLP",
    "NWJ",
    "SMILE",
    "SeparableCritic",
    "TUBA",
]
