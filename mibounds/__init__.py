"""mibounds: differentiable lower and upper bounds on mutual information for PyTorch.

Scores follow one convention: ``S[..., i, j] = T(x_i, y_j)``, positives on the diagonal, in nats.
Functional bounds return the estimate; loss modules in :mod:`mibounds.nn` return the value to
minimise.
"""

from mibounds import contrastive, distributed, methods, nn, tasks
from mibounds._checks import get_validate_args, set_validate_args
from mibounds._version import __version__
from mibounds.bounds.lower import dv, fmi, infonce, interpolated, js, mine, nwj, smile, tuba
from mibounds.bounds.upper import club, club_sample, l1out, nce_club, variational_upper_bound
from mibounds.divergences import (
    Domain,
    FDivergence,
    get_divergence,
    list_divergences,
    register_divergence,
    tsallis,
)
from mibounds.estimate import MIEstimate, estimate_mi
from mibounds.pairing import Pairing
from mibounds.scores import DenseScores, SeparableScores, pairwise_similarity

__all__ = [
    "DenseScores",
    "Domain",
    "FDivergence",
    "MIEstimate",
    "Pairing",
    "SeparableScores",
    "__version__",
    "club",
    "club_sample",
    "contrastive",
    "distributed",
    "dv",
    "estimate_mi",
    "fmi",
    "get_divergence",
    "get_validate_args",
    "infonce",
    "interpolated",
    "js",
    "l1out",
    "list_divergences",
    "methods",
    "mine",
    "nce_club",
    "nn",
    "nwj",
    "pairwise_similarity",
    "register_divergence",
    "set_validate_args",
    "smile",
    "tasks",
    "tsallis",
    "tuba",
    "variational_upper_bound",
]
