"""The staircase protocol (Poole et al. 2019): several estimators trained side by side on fresh
samples whose MI steps up, and the per-stair summary."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from mibounds import _checks
from mibounds.estimate.factory import make_critic
from mibounds.estimate.oracle import oracle_bound
from mibounds.estimate.registry import EstimatorSpec, get_estimator
from mibounds.estimate.training import _progress
from mibounds.tasks.staircase import Staircase

__all__ = [
    "StairRow",
    "StaircaseResult",
    "default_oracle_batches",
    "run_staircase",
    "staircase_table",
]


@dataclass
class StaircaseResult:
    """Per-step estimates of several estimators trained on a :class:`Staircase`.

    Attributes:
        staircase: the schedule.
        estimates: estimator name -> estimate at every step.
        kinds: estimator name -> ``"lower"`` or ``"upper"``.
        batch_size: training batch size.
        true_mi: the true MI at every step.
        diverged: estimator name -> the step at which its parameters stopped being finite;
            such an estimator is not trained further and reports NaN from the next step on.

    Example:
        >>> from mibounds.tasks import staircase
        >>> schedule = staircase((1.0,), steps_per_level=4, dim=2)
        >>> res = run_staircase(["nwj"], schedule, progress=False)
        >>> len(res.estimates["nwj"]), res.kinds["nwj"]
        (4, 'lower')
    """

    staircase: Staircase
    estimates: dict[str, list[float]]
    kinds: dict[str, str]
    batch_size: int
    true_mi: list[float]
    diverged: dict[str, int] = field(default_factory=dict)


def run_staircase(
    estimators: Sequence[str | EstimatorSpec],
    schedule: Staircase,
    *,
    batch_size: int = 64,
    lr: float = 5e-4,
    critic: str = "separable",
    device: torch.device | str | None = None,
    seed: int = 0,
    progress: bool | None = None,
) -> StaircaseResult:
    r"""Train each estimator on fresh batches while the true MI steps up (Poole et al. 2019).

    Every step draws one batch from the current stair's task and feeds the same batch to every
    estimator (each with its own critic and Adam optimiser), so the estimators are compared on
    identical data. The estimate recorded at a step is the bound on that step's batch, computed
    before the update. An estimator whose parameters become non-finite (heavy-tailed data can
    do this) is recorded in ``diverged`` and reports NaN afterwards; the others go on.

    Args:
        estimators: registered names or :class:`EstimatorSpec` objects.
        schedule: a :class:`~mibounds.tasks.Staircase`.
        batch_size: batch size N.
        lr: Adam learning rate.
        critic: ``"separable"`` or ``"concat"``.
        device: where to train.
        seed: seed of the samples and the initialisations.
        progress: a tqdm progress bar: ``None`` (default) on a terminal only, ``True`` always,
            ``False`` never.

    Returns:
        :class:`StaircaseResult`.

    Example:
        >>> from mibounds.tasks import staircase
        >>> r = run_staircase(["nwj"], staircase([1.0], steps_per_level=5, dim=2),
        ...                   batch_size=16, progress=False)
        >>> len(r.estimates["nwj"])
        5
    """
    specs = [get_estimator(e) for e in estimators]
    if not specs:
        raise ValueError("estimators must name at least one estimator, got []")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"estimators must be distinct, got {names}")
    _checks.check_positive_int("batch_size", batch_size, minimum=2)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    tasks = schedule.tasks()
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    models, opts = {}, {}
    for spec in specs:
        crit = make_critic(critic, tasks[0].dim_x, tasks[0].dim_y)
        models[spec.name] = spec.build(tasks[0].dim_x, tasks[0].dim_y, crit).to(dev).train()
        opts[spec.name] = torch.optim.Adam(models[spec.name].parameters(), lr=lr)
    estimates: dict[str, list[float]] = {s.name: [] for s in specs}
    diverged: dict[str, int] = {}
    true_mi: list[float] = []
    for step in _progress(range(schedule.total_steps), progress, "staircase"):
        task = tasks[schedule.level_index(step)]
        x, y = task.sample(batch_size, gen, device=dev)
        true_mi.append(task.mutual_information)
        for name, model in models.items():
            if name in diverged:
                estimates[name].append(math.nan)
                continue
            loss, est = model(x, y)
            opts[name].zero_grad(set_to_none=True)
            loss.backward()
            opts[name].step()
            estimates[name].append(float(est))
            if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
                diverged[name] = step
    return StaircaseResult(
        schedule, estimates, {s.name: s.kind for s in specs}, batch_size, true_mi, diverged
    )


@dataclass(frozen=True)
class StairRow:
    """One row of :func:`staircase_table`.

    Example:
        >>> from mibounds.tasks import staircase
        >>> schedule = staircase((1.0,), steps_per_level=4, dim=2)
        >>> res = run_staircase(["infonce"], schedule, progress=False)
        >>> row = staircase_table(res)[0]
        >>> row.estimator, row.kind, row.true_mi
        ('infonce', 'lower', 1.0)
    """

    estimator: str
    kind: str
    true_mi: float
    estimate: float
    bias: float
    std: float
    mse: float
    #: the same bound with the task's exact critic at the same batch size: mean and standard
    #: deviation over fresh batches (NaN where there is no oracle, see
    #: :func:`~mibounds.estimate.oracle.oracle_bound`)
    oracle: float = math.nan
    oracle_std: float = math.nan
    #: the number of fresh batches behind ``oracle`` (0 where there is none)
    oracle_batches: int = 0


def default_oracle_batches(batch_size: int) -> int:
    """The oracle batches :func:`staircase_table` draws by default: 200 up to batch 1024, then
    fewer so that the oracle sees at most about 200 000 pairs' worth of rows (at least 20
    batches; the spread of a bound over batches shrinks as the batch grows).

    Example:
        >>> default_oracle_batches(64), default_oracle_batches(4096)
        (200, 50)
    """
    return max(20, min(200, 204_800 // batch_size))


def staircase_table(
    result: StaircaseResult,
    tail: float = 0.5,
    oracle_batches: int | None = None,
    seed: int = 0,
) -> list[StairRow]:
    r"""Summarise each stair by the last ``tail`` share of its steps.

    For every estimator and stair: mean estimate, bias (mean minus truth), standard deviation
    over the steps, and mean squared error (:math:`\mathrm{bias}^2 + \mathrm{var}`); beside
    them the oracle: the same bound with the task's exact critic at the same batch size, mean
    and standard deviation over ``oracle_batches`` fresh batches (NaN where the task or the
    bound has no oracle, and above batch 1024 where the oracle is not streamed, see
    :func:`~mibounds.estimate.oracle.oracle_bound`).

    Args:
        result: a :class:`StaircaseResult`.
        tail: share of each stair's steps used, in (0, 1].
        oracle_batches: batches for the oracle; 0 skips it; ``None`` (default):
            :func:`default_oracle_batches` of the batch size.
        seed: seed of the oracle's batches.

    Returns:
        A list of :class:`StairRow`, estimator-major.

    Example:
        >>> from mibounds.tasks import staircase
        >>> schedule = staircase((1.0, 2.0), steps_per_level=4, dim=2)
        >>> res = run_staircase(["smile"], schedule, progress=False)
        >>> [row.true_mi for row in staircase_table(res)]
        [1.0, 2.0]
    """
    if not 0 < tail <= 1:
        raise ValueError(f"tail must lie in (0, 1], got {tail!r}")
    if oracle_batches is None:
        oracle_batches = default_oracle_batches(result.batch_size)
    _checks.check_positive_int("oracle_batches", oracle_batches, minimum=0)
    sched = result.staircase
    k = max(1, round(sched.steps_per_level * tail))
    tasks = sched.tasks()
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for name, values in result.estimates.items():
        for level, mi in enumerate(sched.levels):
            found = None
            if oracle_batches > 0:
                found = oracle_bound(name, tasks[level], result.batch_size, oracle_batches, gen)
            oracle, oracle_std = found if found is not None else (math.nan, math.nan)
            end = (level + 1) * sched.steps_per_level
            seg = np.asarray(values[end - k : end])
            mean, std = float(seg.mean()), float(seg.std())
            rows.append(
                StairRow(
                    name,
                    result.kinds[name],
                    mi,
                    mean,
                    mean - mi,
                    std,
                    float(((seg - mi) ** 2).mean()),
                    oracle,
                    oracle_std,
                    oracle_batches if found is not None else 0,
                )
            )
    return rows
