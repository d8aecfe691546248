r"""Loss modules: one per lower bound, returning the value to **minimise**.

A loss module is called either with scores (a dense ``(..., N, N)`` tensor or
:class:`~mibounds.scores.SeparableScores`) or with a batch ``(x, y)`` of paired samples and a
critic given at construction. It returns **minus** the lower bound, so minimising it maximises
the information; the estimate itself is ``-loss`` (or call the functional bound).
"""

from __future__ import annotations

import abc
from typing import Any

from torch import Tensor, nn

from mibounds import _checks
from mibounds.bounds import lower
from mibounds.divergences import FDivergence, get_divergence
from mibounds.reductions import Scores
from mibounds.scores import SeparableScores

__all__ = ["DV", "FMI", "JS", "MINE", "NWJ", "SMILE", "TUBA", "InfoNCE", "Interpolated"]


class _BoundLoss(nn.Module, abc.ABC):
    """Shared plumbing: resolve ``forward(scores)`` or ``forward(x, y)`` into scores."""

    def __init__(self, critic: nn.Module | None = None) -> None:
        super().__init__()
        if critic is not None and not isinstance(critic, nn.Module):
            raise TypeError(f"critic must be an nn.Module or None, got {type(critic).__name__}")
        self.critic = critic

    def _scores(self, inputs: tuple[Any, ...]) -> Scores:
        name = type(self).__name__
        if len(inputs) == 1:
            return inputs[0]
        if len(inputs) == 2:
            if self.critic is None:
                raise TypeError(
                    f"{name}(x, y) needs a critic: construct it as {name}(critic=...), "
                    "or call it with a score matrix"
                )
            return self.critic(*inputs)
        raise TypeError(f"{name} takes (scores) or (x, y), got {len(inputs)} positional inputs")

    @abc.abstractmethod
    def forward(self, *inputs: Any) -> Tensor:
        """The loss to minimise: minus the bound, in nats.

        Args:
            *inputs: either ``scores`` (a ``(..., N, M)`` tensor with the positives on the
                diagonal, a :class:`~mibounds.DenseScores` or a
                :class:`~mibounds.SeparableScores`), or ``x, y``: ``(N, d_x)`` and
                ``(N, d_y)`` paired samples (row ``i`` of ``x`` with row ``i`` of ``y``) that
                the module's critic turns into scores.
        """

    @staticmethod
    def _y(inputs: tuple[Any, ...]) -> Tensor | None:
        return inputs[1] if len(inputs) == 2 else None


def _baseline_of(
    baseline: nn.Module | None, y: Tensor | None, log_baseline: Tensor | None
) -> Tensor | None:
    if log_baseline is not None or baseline is None:
        return log_baseline
    if y is None:
        raise TypeError(
            "a baseline module needs y: call the loss as loss(x, y), or pass log_baseline= "
            "together with the scores"
        )
    out = baseline(y)
    return out.squeeze(-1) if out.dim() == y.dim() and out.shape[-1] == 1 else out


class InfoNCE(_BoundLoss):
    r"""Loss :math:`-I_\mathrm{NCE}` (see :func:`mibounds.infonce`).

    Args:
        critic: module mapping ``(x, y)`` to scores; optional when called with scores, or when
            a ``temperature`` is given.
        symmetric: average row and column InfoNCE (CLIP-style).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over the N samples.
        temperature: without a critic, ``loss(x, y)`` scores the features themselves:
            ``SeparableScores(x, y, similarity, temperature)`` (streamed).
        similarity: ``"dot"`` or ``"cosine"``, with ``temperature``.

    Example:
        >>> import torch
        >>> from mibounds.nn import InfoNCE, SeparableCritic
        >>> loss = InfoNCE(SeparableCritic(torch.nn.Linear(3, 4), torch.nn.Linear(3, 4)))
        >>> x = torch.randn(8, 3)
        >>> loss(x, x + 0.1 * torch.randn(8, 3)).shape
        torch.Size([])
        >>> InfoNCE(temperature=0.1)(x, x).shape  # cosine scores of the features themselves
        torch.Size([])
    """

    def __init__(
        self,
        critic: nn.Module | None = None,
        *,
        symmetric: bool = False,
        reduction: str = "mean",
        temperature: float | None = None,
        similarity: str = "cosine",
    ) -> None:
        if critic is not None and temperature is not None:
            raise ValueError("give InfoNCE a critic or a temperature, not both")
        super().__init__(critic)
        self.temperature = None
        if temperature is not None:
            self.temperature = _checks.check_positive("temperature", temperature)
            self.similarity = _checks.check_choice("similarity", similarity, ("dot", "cosine"))
        self.symmetric = _checks.check_bool("symmetric", symmetric)
        self.reduction = _checks.check_reduction(reduction)

    def forward(self, *inputs: Any) -> Tensor:
        if self.temperature is not None and len(inputs) == 2:
            scores: Scores = SeparableScores(*inputs, self.similarity, self.temperature)
        else:
            scores = self._scores(inputs)
        return -lower.infonce(scores, symmetric=self.symmetric, reduction=self.reduction)


class NWJ(_BoundLoss):
    r"""Loss :math:`-I_\mathrm{NWJ}` (see :func:`mibounds.nwj`).

    Args:
        critic: module mapping ``(x, y)`` to scores; optional when called with scores.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over the N samples.

    Example:
        >>> import torch
        >>> NWJ()(torch.ones(3, 3))
        tensor(-0.)
    """

    def __init__(self, critic: nn.Module | None = None, *, reduction: str = "mean") -> None:
        super().__init__(critic)
        self.reduction = _checks.check_reduction(reduction)

    def forward(self, *inputs: Any) -> Tensor:
        return -lower.nwj(self._scores(inputs), reduction=self.reduction)


class TUBA(_BoundLoss):
    r"""Loss :math:`-I_\mathrm{TUBA}` (see :func:`mibounds.tuba`).

    Args:
        critic: module mapping ``(x, y)`` to scores; optional when called with scores.
        baseline: optional module mapping ``y`` ``(..., N, d_y)`` to the log-baseline
            :math:`b(y)` ``(..., N)`` (or ``(..., N, 1)``); used when called as ``(x, y)``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over the N samples.

    ``forward(scores, log_baseline=None)`` or ``forward(x, y)``.

    Example:
        >>> import torch
        >>> TUBA()(torch.zeros(3, 3), log_baseline=torch.zeros(3))
        tensor(-0.)
    """

    def __init__(
        self,
        critic: nn.Module | None = None,
        baseline: nn.Module | None = None,
        *,
        reduction: str = "mean",
    ) -> None:
        super().__init__(critic)
        self.baseline = _checks.check_module("baseline", baseline)
        self.reduction = _checks.check_reduction(reduction)

    def forward(self, *inputs: Any, log_baseline: Tensor | None = None) -> Tensor:
        scores = self._scores(inputs)
        b = _baseline_of(self.baseline, self._y(inputs), log_baseline)
        return -lower.tuba(scores, b, reduction=self.reduction)


class DV(_BoundLoss):
    r"""Loss :math:`-I_\mathrm{DV}` (see :func:`mibounds.dv`).

    Args:
        critic: module mapping ``(x, y)`` to scores; optional when called with scores.

    Example:
        >>> import torch
        >>> DV()(torch.eye(3) * 2.0)
        tensor(-2.)
    """

    def forward(self, *inputs: Any) -> Tensor:
        return -lower.dv(self._scores(inputs))


class MINE(_BoundLoss):
    r"""Loss :math:`-I_\mathrm{DV}` with MINE's bias-corrected gradient (see :func:`mibounds.mine`).

    The moving average :math:`\log m` of :math:`\mathbb{E}_{p(x)p(y)}[e^T]` lives in the buffer
    ``log_ema`` (saved in ``state_dict``). It is updated in training mode only; it starts from
    the first training batch.

    Args:
        critic: module mapping ``(x, y)`` to scores; optional when called with scores.
        decay: moving-average decay in ``(0, 1)``.

    Example:
        >>> import torch
        >>> loss = MINE(decay=0.9)
        >>> loss(torch.eye(3) * 2.0)
        tensor(-2.)
        >>> loss.log_ema
        tensor(0.)
    """

    log_ema: Tensor | None

    def __init__(self, critic: nn.Module | None = None, *, decay: float = 0.99) -> None:
        super().__init__(critic)
        self.decay = _checks.check_open_unit("decay", decay)
        self.register_buffer("log_ema", None)

    def forward(self, *inputs: Any) -> Tensor:
        estimate, new_state = lower.mine(self._scores(inputs), self.log_ema, decay=self.decay)
        if self.training:
            self.log_ema = new_state
        return -estimate

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        key = prefix + "log_ema"
        if key in state_dict and self.log_ema is None:
            self.log_ema = state_dict[key].clone()
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


class JS(_BoundLoss):
    r"""Loss with the Jensen-Shannon gradient and value :math:`-I_\mathrm{TUBA}` (see
    :func:`mibounds.js`).

    Args:
        critic: module mapping ``(x, y)`` to scores; optional when called with scores.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over the N samples.

    Example:
        >>> import torch
        >>> JS()(torch.zeros(3, 3))
        tensor(-0.)
    """

    def __init__(self, critic: nn.Module | None = None, *, reduction: str = "mean") -> None:
        super().__init__(critic)
        self.reduction = _checks.check_reduction(reduction)

    def forward(self, *inputs: Any) -> Tensor:
        return -lower.js(self._scores(inputs), reduction=self.reduction)


class SMILE(_BoundLoss):
    r"""Loss with the Jensen-Shannon gradient and value :math:`-I_\mathrm{SMILE}` (see
    :func:`mibounds.smile`).

    Args:
        critic: module mapping ``(x, y)`` to scores; optional when called with scores.
        clip: :math:`\tau > 0` for the partition term, or ``None``.

    Example:
        >>> import torch
        >>> SMILE(clip=1.0)(torch.eye(3) * 10.0)
        tensor(-10.)
    """

    def __init__(self, critic: nn.Module | None = None, *, clip: float | None = 5.0) -> None:
        super().__init__(critic)
        self.clip = None if clip is None else _checks.check_positive("clip", clip)

    def forward(self, *inputs: Any) -> Tensor:
        return -lower.smile(self._scores(inputs), clip=self.clip)


class Interpolated(_BoundLoss):
    r"""Loss :math:`-I_\alpha` (see :func:`mibounds.interpolated`).

    Args:
        critic: module mapping ``(x, y)`` to scores; optional when called with scores.
        baseline: optional module mapping ``y`` to :math:`b(y)` ``(..., N)``.
        alpha: :math:`\alpha \in (0, 1)`.

    ``forward(scores, log_baseline=None)`` or ``forward(x, y)``.

    Example:
        >>> import torch
        >>> Interpolated(alpha=0.5)(torch.zeros(4, 4))
        tensor(-0.)
    """

    def __init__(
        self,
        critic: nn.Module | None = None,
        baseline: nn.Module | None = None,
        *,
        alpha: float = 0.5,
    ) -> None:
        super().__init__(critic)
        self.baseline = baseline
        self.alpha = _checks.check_open_unit("alpha", alpha)

    def forward(self, *inputs: Any, log_baseline: Tensor | None = None) -> Tensor:
        scores = self._scores(inputs)
        b = _baseline_of(self.baseline, self._y(inputs), log_baseline)
        return -lower.interpolated(scores, b, alpha=self.alpha)


class FMI(_BoundLoss):
    r"""Loss :math:`-\hat I_f`, the variational f-MI lower bound (see :func:`mibounds.fmi`).

    Args:
        critic: module mapping ``(x, y)`` to scores; optional when called with scores.
        divergence: registered name or alias, or an
            :class:`~mibounds.divergences.FDivergence`.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over the N samples.

    Example:
        >>> import torch
        >>> FMI(divergence="pearson")(torch.zeros(3, 3))
        tensor(-0.)
    """

    def __init__(
        self,
        critic: nn.Module | None = None,
        *,
        divergence: str | FDivergence = "kl",
        reduction: str = "mean",
    ) -> None:
        super().__init__(critic)
        self.divergence = get_divergence(divergence)
        self.reduction = _checks.check_reduction(reduction)

    def forward(self, *inputs: Any) -> Tensor:
        return -lower.fmi(self._scores(inputs), self.divergence, reduction=self.reduction)
