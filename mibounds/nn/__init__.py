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
    "DV",
    "FMI",
    "JS",
    "MINE",
    "MLP",
    "NWJ",
    "SMILE",
    "TUBA",
    "BilinearCritic",
    "ConcatCritic",
    "GaussianKernelCritic",
    "InfoNCE",
    "Interpolated",
    "SeparableCritic",
]
