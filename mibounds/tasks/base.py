r"""The task interface and the MI-preserving transforms.

A task samples pairs ``(x, y)`` and knows their exact mutual information in nats. Invertible
maps applied to x and y separately leave the MI unchanged, which turns an easy task into a hard
one without losing the ground truth (Czyz et al. 2023).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from mibounds import _checks
from mibounds._registry import Registry
from mibounds.scores import SeparableScores

__all__ = [
    "Task",
    "Transform",
    "Transformed",
    "get_transform",
    "list_transforms",
    "register_transform",
]


class Task(ABC):
    r"""A joint distribution of ``(x, y)`` with known mutual information.

    Subclasses set ``dim_x`` and ``dim_y``, implement :meth:`sample` and
    :attr:`mutual_information`, and may implement :meth:`log_density_ratio` (the oracle critic
    :math:`\log p(x, y) / (p(x) p(y))`).

    Example:
        >>> from mibounds.tasks import CorrelatedGaussian
        >>> task = CorrelatedGaussian(dim=2, mi=1.0)
        >>> isinstance(task, Task), task.mutual_information
        (True, 1.0)
    """

    dim_x: int
    dim_y: int

    @property
    @abstractmethod
    def mutual_information(self) -> float:
        """The exact mutual information :math:`I(X; Y)` in nats."""

    @abstractmethod
    def _sample(self, n: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """Draw ``n`` pairs in float64 on the CPU."""

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> tuple[Tensor, Tensor]:
        r"""Draw ``n`` independent pairs.

        Args:
            n: number of pairs (``>= 1``).
            generator: a CPU :class:`torch.Generator` for reproducible draws.
            dtype: floating dtype of the result.
            device: device of the result.

        Returns:
            ``(x, y)`` of shapes ``(n, dim_x)`` and ``(n, dim_y)``.
        """
        _checks.check_positive_int("n", n)
        _checks.check_generator("generator", generator)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        if device is not None:
            _checks.check_device("device", device)
        x, y = self._sample(n, generator)
        return x.to(dtype=dtype, device=device), y.to(dtype=dtype, device=device)

    @property
    def has_oracle(self) -> bool:
        """Whether :meth:`log_density_ratio` is available."""
        return type(self).log_density_ratio is not Task.log_density_ratio

    def log_density_ratio(self, x: Tensor, y: Tensor) -> Tensor:
        r"""The oracle critic :math:`\log p(y|x) / p(y)` for matched pairs, shape ``(..., N)``."""
        raise TypeError(f"{type(self).__name__} has no closed-form density ratio")

    def _check_batch(self, x: Tensor, y: Tensor) -> None:
        _checks.check_pair("x", x, "y", y)
        _checks.check_features("x", x, self.dim_x, repr(self))
        _checks.check_features("y", y, self.dim_y, repr(self))

    def score_matrix(self, x: Tensor, y: Tensor) -> Tensor:
        r"""Oracle scores ``S[..., i, j] = log p(y_j | x_i) / p(y_j)``, shape ``(..., N, N)``."""
        self._check_batch(x, y)
        return self.log_density_ratio(x[..., :, None, :], y[..., None, :, :])

    @property
    def separable_oracle(self) -> bool:
        """Whether :meth:`oracle_scores` is a lazy :class:`~mibounds.scores.SeparableScores`
        (the bounds then stream the oracle in O(N d) memory, at any batch size)."""
        return False

    def oracle_scores(self, x: Tensor, y: Tensor) -> Tensor | SeparableScores:
        r"""The oracle scores of all pairs in the cheapest form the bounds take.

        Where the log density ratio is a dot product of a feature of x and a feature of y
        (:attr:`separable_oracle`), a :class:`~mibounds.scores.SeparableScores` that the
        bounds stream without the ``N x N`` matrix; otherwise :meth:`score_matrix`.

        Example:
            >>> from mibounds.tasks import CorrelatedGaussian, MultivariateStudentT
            >>> x, y = CorrelatedGaussian(3, mi=1.0).sample(4, dtype=torch.float64)
            >>> type(CorrelatedGaussian(3, mi=1.0).oracle_scores(x, y)).__name__
            'SeparableScores'
            >>> MultivariateStudentT(3, 3, df=5.0, rho=0.5).oracle_scores(x, y).shape
            torch.Size([4, 4])
        """
        return self.score_matrix(x, y)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(dim_x={self.dim_x}, dim_y={self.dim_y}, "
            f"mutual_information={self.mutual_information:.4g})"
        )


@dataclass(frozen=True)
class Transform:
    """An elementwise invertible map (applied to every coordinate).

    Example:
        >>> t = get_transform("cubic")
        >>> x = torch.tensor([-2.0, 0.5])
        >>> torch.allclose(t.inverse(t.forward(x)), x)
        True
    """

    name: str
    forward: Callable[[Tensor], Tensor]
    inverse: Callable[[Tensor], Tensor]
    description: str = ""


_TRANSFORMS: Registry[Transform] = Registry("transform", "transforms")


def register_transform(transform: Transform, *, overwrite: bool = False) -> Transform:
    """Register an invertible elementwise transform under its (case-insensitive) name.

    Args:
        transform: the :class:`Transform`.
        overwrite: replace an existing entry instead of raising.

    Returns:
        The transform.

    Raises:
        TypeError: if ``transform`` is not a :class:`Transform`.
        ValueError: if the name is taken and ``overwrite`` is false.

    Example:
        >>> import torch
        >>> t = Transform("double", lambda v: 2 * v, lambda v: v / 2)
        >>> register_transform(t).name
        'double'
    """
    if not isinstance(transform, Transform):
        raise TypeError(f"transform must be a Transform, got {type(transform).__name__}")
    return _TRANSFORMS.add(transform.name, transform, overwrite=overwrite)


def get_transform(name: str | Transform) -> Transform:
    """Look a transform up by name (case-insensitive).

    Raises:
        KeyError: for an unknown name; the message lists the known ones.

    Example:
        >>> get_transform("Cubic").name
        'cubic'
    """
    return _TRANSFORMS.resolve(name, Transform)


def list_transforms() -> list[str]:
    """Names of the registered transforms, sorted.

    Example:
        >>> list_transforms()[:2]
        ['asinh', 'cubic']
    """
    return _TRANSFORMS.names()


def _signed_power(p: float) -> Callable[[Tensor], Tensor]:
    return lambda v: torch.sign(v) * torch.abs(v) ** p


register_transform(Transform("cubic", lambda v: v**3, _signed_power(1 / 3), "x -> x^3"))
register_transform(
    Transform("half-cube", _signed_power(1.5), _signed_power(2 / 3), "x -> sign(x)|x|^1.5")
)
register_transform(Transform("asinh", torch.asinh, torch.sinh, "x -> asinh(x)"))
register_transform(
    Transform(
        "normal-cdf",
        lambda v: 0.5 * torch.erfc(-v / math.sqrt(2)),
        lambda u: math.sqrt(2) * torch.erfinv(2 * u - 1),
        "x -> Phi(x): standard normal margins become uniform on (0, 1)",
    )
)


class Transformed(Task):
    r"""A task with invertible elementwise maps applied to x and/or y; the MI is unchanged.

    The maps are applied in float64 before casting to the requested dtype.

    Args:
        task: the base task.
        transform: a registered name or a :class:`Transform`.
        on: ``"both"``, ``"x"`` or ``"y"``.

    Example:
        >>> from mibounds.tasks import CorrelatedGaussian
        >>> t = Transformed(CorrelatedGaussian(2, mi=1.0), "cubic")
        >>> t.mutual_information
        1.0
        >>> x, y = t.sample(5)
        >>> x.shape
        torch.Size([5, 2])
    """

    def __init__(self, task: Task, transform: str | Transform, on: str = "both") -> None:
        if not isinstance(task, Task):
            raise TypeError(f"task must be a Task, got {type(task).__name__}")
        self.task = task
        self.transform = get_transform(transform)
        self.on = _checks.check_choice("on", on, ("both", "x", "y"))
        self.dim_x, self.dim_y = task.dim_x, task.dim_y

    @property
    def mutual_information(self) -> float:
        return self.task.mutual_information

    def _sample(self, n: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        x, y = self.task._sample(n, generator)
        if self.on in ("both", "x"):
            x = self.transform.forward(x)
        if self.on in ("both", "y"):
            y = self.transform.forward(y)
        return x, y

    @property
    def has_oracle(self) -> bool:
        return self.task.has_oracle

    def log_density_ratio(self, x: Tensor, y: Tensor) -> Tensor:
        # The density ratio is invariant under invertible maps of x and y separately.
        return self.task.log_density_ratio(*self._untransform(x, y))

    def _untransform(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        if self.on in ("both", "x"):
            x = self.transform.inverse(x)
        if self.on in ("both", "y"):
            y = self.transform.inverse(y)
        return x, y

    @property
    def separable_oracle(self) -> bool:
        return self.task.separable_oracle

    def oracle_scores(self, x: Tensor, y: Tensor) -> Tensor | SeparableScores:
        self._check_batch(x, y)
        return self.task.oracle_scores(*self._untransform(x, y))

    def __repr__(self) -> str:
        return f"Transformed({self.task!r}, {self.transform.name!r}, on={self.on!r})"
