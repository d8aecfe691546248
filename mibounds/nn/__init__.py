"""The ``nn.Module`` side of mibounds: critics, loss modules (values to minimise) and upper-bound
estimators with their variational models."""

from mibounds.nn.critics import (
    MLP,
    BilinearCritic,
    ConcatCritic,
    GaussianKernelCritic,
    SeparableCritic,
)
from mibounds.nn.losses import DV, FMI, JS, MINE, NWJ, SMILE, TUBA, InfoNCE, Interpolated
from mibounds.nn.upper import (
    CLUB,
    CLUBSample,
    GaussianConditional,
    L1Out,
    NCEClub,
    update_variational,
)

__all__ = [
    "BilinearCritic",
    "CLUB",
    "CLUBSample",
    "ConcatCritic",
    "DV",
    "FMI",
    "GaussianConditional",
    "GaussianKernelCritic",
    "InfoNCE",
    "Interpolated",
    "JS",
    "L1Out",
    "MINE",
    "MLP",
    "NCEClub",
    "NWJ",
    "SMILE",
    "SeparableCritic",
    "TUBA",
    "update_variational",
]
