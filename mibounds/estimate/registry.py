"""The estimator registry: each estimator builds a module whose ``forward(x, y)`` returns
``(training_loss, estimate)``; the built-in lower and upper bounds are registered here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mibounds import _checks
from mibounds._registry import Registry
from mibounds.nn import losses, upper

__all__ = [
    "Builder",
    "CriticEstimator",
    "EstimatorSpec",
    "VariationalUpperEstimator",
    "get_estimator",
    "list_estimators",
    "register_estimator",
]


class CriticEstimator(nn.Module):
    """A critic trained by minimising a lower-bound loss module; the estimate is ``-loss``.

    Example:
        >>> from mibounds.estimate import make_critic
        >>> est = CriticEstimator(make_critic("separable", 2, 2), losses.InfoNCE())
        >>> loss, value = est(torch.randn(8, 2), torch.randn(8, 2))
        >>> torch.allclose(loss, -value)
        True
    """

    def __init__(self, critic: nn.Module, loss: nn.Module) -> None:
        super().__init__()
        self.critic = critic
        self.loss = loss

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        loss = self.loss(self.critic(x, y))
        return loss, -loss.detach()


Builder = Callable[[int, int, nn.Module], nn.Module]


@dataclass(frozen=True)
class EstimatorSpec:
    """A registered estimator.

    Attributes:
        name: registry name (lower case).
        kind: ``"lower"`` or ``"upper"`` bound.
        build: ``build(dim_x, dim_y, critic)`` returns a module whose ``forward(x, y)`` gives
            ``(training_loss, estimate)``; ``critic`` is a ready critic module.
        description: one line for tables and help.

    Example:
        >>> spec = get_estimator("infonce")
        >>> isinstance(spec, EstimatorSpec), spec.kind
        (True, 'lower')
    """

    name: str
    kind: str
    build: Builder
    description: str = ""


_ESTIMATORS: Registry[EstimatorSpec] = Registry("estimator", "estimators")


def register_estimator(spec: EstimatorSpec, *, overwrite: bool = False) -> EstimatorSpec:
    """Add an estimator to the registry used by :func:`estimate_mi` and ``mibounds validate``.

    Args:
        spec: the :class:`EstimatorSpec`.
        overwrite: replace an existing entry instead of raising.

    Returns:
        The spec.

    Raises:
        TypeError: if ``spec`` is not an :class:`EstimatorSpec`.
        ValueError: if the name is taken (and ``overwrite`` is false) or ``kind`` is unknown.

    Example:
        >>> spec = EstimatorSpec(
        ...     "my-infonce", "lower",
        ...     lambda dx, dy, critic: CriticEstimator(critic, losses.InfoNCE(symmetric=True)))
        >>> register_estimator(spec).name
        'my-infonce'
    """
    if not isinstance(spec, EstimatorSpec):
        raise TypeError(f"spec must be an EstimatorSpec, got {type(spec).__name__}")
    _checks.check_choice("kind", spec.kind, ("lower", "upper"))
    return _ESTIMATORS.add(spec.name, spec, overwrite=overwrite)


def get_estimator(name: str | EstimatorSpec) -> EstimatorSpec:
    """Look an estimator up by name (case-insensitive).

    Raises:
        KeyError: for an unknown name; the message lists the known ones.

    Example:
        >>> get_estimator("SMILE").kind
        'lower'
    """
    return _ESTIMATORS.resolve(name, EstimatorSpec)


def list_estimators() -> list[EstimatorSpec]:
    """All registered estimators, sorted by name.

    Example:
        >>> "nwj" in [e.name for e in list_estimators()]
        True
    """
    return _ESTIMATORS.values()


def _lower(name: str, make_loss: Callable[[], nn.Module], description: str) -> None:
    register_estimator(
        EstimatorSpec(
            name, "lower", lambda dx, dy, critic: CriticEstimator(critic, make_loss()), description
        )
    )


_lower("infonce", losses.InfoNCE, "InfoNCE / CPC (saturates at log N)")
_lower(
    "infonce-sym",
    lambda: losses.InfoNCE(symmetric=True),
    "symmetric InfoNCE, mean of both directions (saturates at log N)",
)
_lower("nwj", losses.NWJ, "Nguyen-Wainwright-Jordan (unbiased, high variance)")
_lower("tuba", losses.TUBA, "TUBA without baseline")
_lower("dv", losses.DV, "Donsker-Varadhan")
_lower("mine", losses.MINE, "MINE: DV with moving-average gradient")
_lower("js", losses.JS, "Jensen-Shannon critic, TUBA value")
_lower("smile", lambda: losses.SMILE(clip=5.0), "SMILE, clip 5")
_lower("interpolated", lambda: losses.Interpolated(alpha=0.5), "alpha-bound, alpha 0.5")


class VariationalUpperEstimator(nn.Module):
    """An upper-bound module trained with its own ``learning_loss``; the estimate is its bound.

    The bound is evaluated on the batch before the update, without gradient.

    Example:
        >>> from mibounds.nn import CLUB
        >>> est = VariationalUpperEstimator(CLUB(2, 2))
        >>> loss, value = est(torch.randn(8, 2), torch.randn(8, 2))
        >>> value.requires_grad, loss.requires_grad
        (False, True)
    """

    def __init__(self, bound: nn.Module) -> None:
        super().__init__()
        self.bound = bound

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            estimate = self.bound(x, y)
        return self.bound.learning_loss(x, y), estimate  # type: ignore[operator]


def _upper(name: str, build: Builder, description: str) -> None:
    register_estimator(EstimatorSpec(name, "upper", build, description))


_upper(
    "club",
    lambda dx, dy, critic: VariationalUpperEstimator(upper.CLUB(dx, dy)),
    "CLUB with a Gaussian q(y|x)",
)
_upper(
    "club-sample",
    lambda dx, dy, critic: VariationalUpperEstimator(upper.CLUBSample(dx, dy)),
    "CLUB, one sampled negative per row",
)
_upper(
    "l1out",
    lambda dx, dy, critic: VariationalUpperEstimator(upper.L1Out(dx, dy)),
    "leave-one-out bound with a Gaussian q(y|x)",
)
_upper(
    "nce-club",
    lambda dx, dy, critic: VariationalUpperEstimator(upper.NCEClub(critic)),
    "NCE-CLUB on an InfoNCE-trained critic",
)
