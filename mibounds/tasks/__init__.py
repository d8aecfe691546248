"""Ground-truth tasks: samplers with exact mutual information, oracle critics, transforms."""

from mibounds.tasks.base import (
    Task,
    Transform,
    Transformed,
    get_transform,
    list_transforms,
    register_transform,
)
from mibounds.tasks.digits import load_digits, split_by_class
from mibounds.tasks.factorcl import FactorCLSynthetic
from mibounds.tasks.gaussian import CorrelatedGaussian, FMutualInformation
from mibounds.tasks.staircase import Staircase, staircase
from mibounds.tasks.student import MultivariateStudentT
from mibounds.tasks.uniform import AdditiveUniformNoise

__all__ = [
    "AdditiveUniformNoise",
    "CorrelatedGaussian",
    "FMutualInformation",
    "FactorCLSynthetic",
    "MultivariateStudentT",
    "Staircase",
    "Task",
    "Transform",
    "Transformed",
    "get_transform",
    "list_transforms",
    "load_digits",
    "register_transform",
    "split_by_class",
    "staircase",
]
