r"""Train a critic on samples and report an MI estimate with an interval; the staircase protocol.

* :func:`estimate_mi` trains an estimator on a fixed set of samples (cross-fitted folds, early
  stopping) and evaluates it on the held-out folds.
* :func:`run_staircase` trains several estimators side by side on fresh samples from a
  :class:`~mibounds.tasks.Staircase` (Poole et al. 2019); :func:`staircase_table` and
  :func:`plot_staircase` summarise it. ``mibounds validate`` is built on these.

Estimators are looked up in a registry (:func:`register_estimator`, :func:`get_estimator`): each
builds a small module whose ``forward(x, y)`` returns ``(training_loss, estimate)``.

The pieces live in one module each: :mod:`~mibounds.estimate.factory` (critics),
:mod:`~mibounds.estimate.registry` (estimators), :mod:`~mibounds.estimate.fit`
(:func:`estimate_mi`), :mod:`~mibounds.estimate.staircase`,
:mod:`~mibounds.estimate.oracle` (bounds with the exact critic) and
:mod:`~mibounds.estimate.plotting`.
"""

from __future__ import annotations

from mibounds.estimate.factory import (
    StackedConcatCritic,
    StackedLinear,
    StackedMLP,
    StackedSeparableCritic,
    make_critic,
)
from mibounds.estimate.fit import MIEstimate, estimate_mi
from mibounds.estimate.oracle import oracle_bound
from mibounds.estimate.plotting import plot_staircase
from mibounds.estimate.registry import (
    CriticEstimator,
    EstimatorSpec,
    VariationalUpperEstimator,
    get_estimator,
    list_estimators,
    register_estimator,
)
from mibounds.estimate.staircase import (
    StaircaseResult,
    StairRow,
    default_oracle_batches,
    run_staircase,
    staircase_table,
)

__all__ = [
    "CriticEstimator",
    "EstimatorSpec",
    "MIEstimate",
    "StackedConcatCritic",
    "StackedLinear",
    "StackedMLP",
    "StackedSeparableCritic",
    "StairRow",
    "StaircaseResult",
    "VariationalUpperEstimator",
    "default_oracle_batches",
    "estimate_mi",
    "get_estimator",
    "list_estimators",
    "make_critic",
    "oracle_bound",
    "plot_staircase",
    "register_estimator",
    "run_staircase",
    "staircase_table",
]
