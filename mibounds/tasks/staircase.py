r"""The staircase protocol of Poole et al. (2019): the true MI steps up during training."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mibounds import _checks
from mibounds.tasks.base import Task, Transformed
from mibounds.tasks.gaussian import CorrelatedGaussian
from mibounds.tasks.student import MultivariateStudentT

__all__ = ["Staircase", "staircase"]


@dataclass(frozen=True)
class Staircase:
    r"""A piecewise-constant MI schedule: ``levels[k]`` nats for ``steps_per_level`` steps each.

    Attributes:
        levels: the MI of each stair, in nats.
        steps_per_level: training steps spent on each stair.
        make_task: builds the task of a given MI (e.g. a :class:`CorrelatedGaussian`).

    Example:
        >>> s = staircase(levels=(1.0, 2.0), steps_per_level=3, dim=2)
        >>> s.total_steps, s.mi_at(4), s.level_index(4)
        (6, 2.0, 1)
    """

    levels: tuple[float, ...]
    steps_per_level: int
    make_task: Callable[[float], Task]

    @property
    def total_steps(self) -> int:
        """The number of training steps of the whole schedule (levels times steps per
        level)."""
        return len(self.levels) * self.steps_per_level

    def level_index(self, step: int) -> int:
        """Which stair a (0-based) step falls on."""
        if not 0 <= step < self.total_steps:
            raise ValueError(f"step must lie in [0, {self.total_steps}), got {step}")
        return step // self.steps_per_level

    def mi_at(self, step: int) -> float:
        """The true MI at a (0-based) training step."""
        return self.levels[self.level_index(step)]

    def tasks(self) -> list[Task]:
        """One task per stair."""
        return [self.make_task(mi) for mi in self.levels]


def staircase(
    levels: Sequence[float] = (2.0, 4.0, 6.0, 8.0, 10.0),
    *,
    steps_per_level: int = 4000,
    dim: int = 20,
    task: str = "gaussian",
    df: float = 5.0,
    transform: str | None = None,
) -> Staircase:
    r"""The staircase of Poole et al. (2019): correlated Gaussians whose MI steps through
    2, 4, 6, 8 and 10 nats.

    Args:
        levels: MI of each stair in nats (each ``>= 0``).
        steps_per_level: training steps per stair (the paper: 4000).
        dim: dimension of x and y (the paper: 20).
        task: ``"gaussian"`` (:class:`CorrelatedGaussian`) or ``"student-t"``
            (:class:`MultivariateStudentT` with ``df`` degrees of freedom, correlation chosen
            per stair so the MI matches).
        df: degrees of freedom of the Student-t task.
        transform: optional registered transform applied to x and y (e.g. ``"cubic"``).

    Returns:
        A :class:`Staircase`.

    Example:
        >>> s = staircase(steps_per_level=10)
        >>> s.total_steps, s.mi_at(0), s.mi_at(49)
        (50, 2.0, 10.0)

    References:
        Poole, Ozair, van den Oord, Alemi, Tucker. "On Variational Bounds of Mutual
        Information." ICML 2019.
    """
    _checks.check_positive_int("steps_per_level", steps_per_level)
    _checks.check_positive_int("dim", dim)
    if len(levels) == 0:
        raise ValueError("levels must name at least one MI value, got ()")
    values = tuple(_checks.check_real("levels", v) for v in levels)
    if any(v < 0 for v in values):
        raise ValueError(f"levels must be >= 0, got {tuple(levels)}")

    kind = _checks.check_choice("task", task, ("gaussian", "student-t"))

    def make(mi: float) -> Task:
        base: Task
        if kind == "gaussian":
            base = CorrelatedGaussian(dim, mi=mi)
        else:
            base = MultivariateStudentT.with_mi(dim, df, mi)
        return base if transform is None else Transformed(base, transform)

    for v in values:
        make(v)  # fail early on an unknown transform or an unreachable MI
    return Staircase(values, steps_per_level, make)
