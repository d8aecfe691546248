r"""The oracle: a bound evaluated with the exact critic of a task.

A trained estimator can do no better, at the same batch size, than its own bound evaluated with
the task's exact log density ratio :math:`\log r(x, y) = \log p(y|x)/p(y)` (and, for the
variational upper bounds, the exact conditional :math:`p(y|x)`). The gap between a trained
estimate and this oracle is what training leaves on the table; the gap between the oracle and
the true MI is the bound's own bias at that batch size (InfoNCE's :math:`\log N` cap, for
instance), which no critic can remove.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
from torch import Tensor

from mibounds.bounds import lower, upper
from mibounds.scores import SeparableScores
from mibounds.tasks.base import Task

__all__ = ["oracle_bound", "ORACLE_BOUNDS"]


def _scores(task: Task, x: Tensor, y: Tensor, shift: float = 0.0) -> Tensor | SeparableScores:
    """The exact critic of every pair plus ``shift``, lazy where the task allows it."""
    scores = task.oracle_scores(x, y)
    if not shift:
        return scores
    if isinstance(scores, SeparableScores):  # one more feature pair: shift * 1
        x, y = scores.x, scores.y
        return dataclasses.replace(
            scores,
            x=torch.cat([x, x.new_full((*x.shape[:-1], 1), shift)], dim=-1),
            y=torch.cat([y, y.new_ones((*y.shape[:-1], 1))], dim=-1),
        )
    return scores + shift


def _gaussian_conditional(task: Task, x: Tensor) -> tuple[Tensor, Tensor]:
    mean, var = task.conditional(x)  # type: ignore[attr-defined]
    return mean, torch.log(var)


def _log_q(task: Task, x: Tensor, y: Tensor) -> Tensor:
    """``log q(y_j | x_i)`` for every pair under the exact Gaussian conditional, ``(N, N)``."""
    mean, logvar = _gaussian_conditional(task, x)
    diff = y[None, :, :] - mean[:, None, :]
    var = logvar.exp()[:, None, :]
    return (-0.5 * (diff**2 / var + logvar[:, None, :] + math.log(2 * math.pi))).sum(-1)


#: estimator name -> the bound's value with the exact critic on one batch. The critic is
#: ``log r`` for every lower bound but NWJ, whose optimum is ``1 + log r``.
ORACLE_BOUNDS: dict[str, Callable[[Task, Tensor, Tensor], Tensor]] = {
    "infonce": lambda t, x, y: lower.infonce(_scores(t, x, y)),
    "nwj": lambda t, x, y: lower.nwj(_scores(t, x, y, shift=1.0)),
    "tuba": lambda t, x, y: lower.tuba(_scores(t, x, y)),
    "dv": lambda t, x, y: lower.dv(_scores(t, x, y)),
    "mine": lambda t, x, y: lower.dv(_scores(t, x, y)),
    "js": lambda t, x, y: lower.js(_scores(t, x, y)),
    "smile": lambda t, x, y: lower.smile(_scores(t, x, y), clip=5.0),
    "interpolated": lambda t, x, y: lower.interpolated(_scores(t, x, y), alpha=0.5),
    "nce-club": lambda t, x, y: upper.nce_club(_scores(t, x, y)),
    "club": lambda t, x, y: upper.club(*_gaussian_conditional(t, x), y),
    "l1out": lambda t, x, y: upper.l1out(_log_q(t, x, y)),
}


def oracle_bound(
    estimator: str,
    task: Task,
    batch_size: int,
    n_batches: int,
    generator: torch.Generator,
    *,
    max_dense_batch: int = 1024,
) -> tuple[float, float] | None:
    """Mean and standard deviation over ``n_batches`` fresh batches of the bound of
    ``estimator`` with the exact critic of ``task``, or ``None`` where there is none (a task
    without a closed-form density ratio, an upper bound that needs the exact conditional of a
    task that has none, or an estimator this module does not know).

    Where the task's oracle is separable (:attr:`~mibounds.tasks.Task.separable_oracle`, the
    correlated Gaussian and its transforms) the bounds stream it, at any batch size. Otherwise
    the ``(N, N)`` oracle scores are formed, and batches above ``max_dense_batch`` give
    ``None``; so does L1Out above it, whose exact conditional is evaluated for every pair.

    Example:
        >>> from mibounds.tasks import CorrelatedGaussian
        >>> task = CorrelatedGaussian(5, mi=2.0)
        >>> mean, std = oracle_bound("nwj", task, 64, 50, torch.Generator().manual_seed(0))
        >>> abs(mean - 2.0) < 0.3
        True
    """
    fn = ORACLE_BOUNDS.get(estimator)
    if fn is None or not task.has_oracle:
        return None
    if estimator in ("club", "l1out") and not hasattr(task, "conditional"):
        return None
    streamed = estimator == "club" or (task.separable_oracle and estimator != "l1out")
    if batch_size > max_dense_batch and not streamed:
        return None
    values = []
    with torch.no_grad():
        for _ in range(n_batches):
            x, y = task.sample(batch_size, generator, dtype=torch.float64)
            values.append(float(fn(task, x, y)))
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1)
    return mean, math.sqrt(var)
