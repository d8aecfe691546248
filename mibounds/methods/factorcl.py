r"""FactorCL: shared and unique representations from MI lower and upper bounds.

Liang et al. (2023) split the task-relevant information of two modalities into a part shared
by both and parts unique to each. Shared heads :math:`Z_{S1}, Z_{S2}` and unique heads
:math:`Z_{U1}, Z_{U2}` sit on top of two encoders; every MI term has its own concat critic.

**FactorCL-SUP** maximises

.. math::

    \underbrace{I_\mathrm{NCE}(Z_{S1}; Z_{S2}) - I_\mathrm{NCE\text{-}CLUB}(Z_{S1}; Z_{S2} | Y)}
        _\text{shared}
    + \underbrace{I_\mathrm{NCE}(Z_{U1}; Y) + I_\mathrm{NCE}(Z_{U2}; Y)
      - I_\mathrm{NCE\text{-}CLUB}(Z_{U1}; Z_{U2}) + I_\mathrm{NCE}(Z_{U1}; Z_{U2} | Y)}
        _\text{unique},

conditioning on :math:`Y` by concatenating its one-hot code to both sides. **FactorCL-SSL**
replaces :math:`Y` by augmented views: :math:`I(X_i; Y)` becomes
:math:`I_\mathrm{NCE}(h(x_i); h(x_i'))` with the same head on both sides, and the conditional
terms use :math:`[h(x_1), h(x_1')]` against :math:`[h(x_2), h(x_2')]`.

Training alternates (:meth:`FactorCL.step`): the main step minimises the negated objective and
updates the encoders, heads and InfoNCE critics, **not** the NCE-CLUB critics (they are
evaluated with detached parameters, so they receive no gradient); then the NCE-CLUB critics
alone take one InfoNCE step on detached features, which keeps them near the InfoNCE optimum
where NCE-CLUB is an upper bound.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from mibounds import _checks
from mibounds.bounds.lower import infonce
from mibounds.bounds.upper import nce_club
from mibounds.nn.critics import MLP, ConcatCritic

__all__ = ["FactorCL", "FactorCLSSL", "FactorCLSUP"]

#: the InfoNCE (lower-bound) terms and the NCE-CLUB (upper-bound) terms of the objective
LOWER_TERMS = ("shared", "x1_y", "x2_y", "unique_given_y")
UPPER_TERMS = ("shared_given_y", "unique")


def _frozen(critic: nn.Module, a: Tensor, b: Tensor) -> Tensor:
    """``critic(a, b)`` with detached parameters: gradients reach the inputs only."""
    params = {k: v.detach() for k, v in critic.named_parameters()}
    return functional_call(critic, params, (a, b))


class FactorCL(nn.Module, ABC):
    r"""The FactorCL objective over two encoders (use :class:`FactorCLSUP` or
    :class:`FactorCLSSL`).

    Args:
        encoder1: maps modality 1 to ``(N, feature_dim)``.
        encoder2: maps modality 2 to ``(N, feature_dim)``.
        feature_dim: encoder output size.
        head_dim: size of each of the four heads' outputs.
        cond_dim: size of what the conditional terms concatenate (one-hot label size, or
            ``head_dim`` for the augmented views of the SSL variant).
        critic_hidden: hidden sizes of every concat critic (the official code: ``(512, 512)``).

    Example:
        >>> issubclass(FactorCLSUP, FactorCL) and issubclass(FactorCLSSL, FactorCL)
        True
    """

    def __init__(
        self,
        encoder1: nn.Module,
        encoder2: nn.Module,
        feature_dim: int,
        *,
        head_dim: int,
        cond_dim: int,
        y_dim: int,
        critic_hidden: tuple[int, ...] = (512, 512),
    ) -> None:
        super().__init__()
        fd = _checks.check_positive_int("feature_dim", feature_dim)
        hd = _checks.check_positive_int("head_dim", head_dim)
        self.encoder1, self.encoder2 = encoder1, encoder2
        self.heads = nn.ModuleDict(
            {k: MLP(fd, hd, hidden=(fd,)) for k in ("shared1", "shared2", "unique1", "unique2")}
        )

        def critic(a: int, b: int) -> ConcatCritic:
            return ConcatCritic(a, b, hidden=critic_hidden)

        self.critics = nn.ModuleDict(
            {
                "shared": critic(hd, hd),
                "x1_y": critic(hd, y_dim),
                "x2_y": critic(hd, y_dim),
                "unique_given_y": critic(hd + cond_dim, hd + cond_dim),
            }
        )
        self.club_critics = nn.ModuleDict(
            {"shared_given_y": critic(hd + cond_dim, hd + cond_dim), "unique": critic(hd, hd)}
        )

    # -- pieces ----------------------------------------------------------------------------

    def heads_of(self, x1: Tensor, x2: Tensor) -> dict[str, Tensor]:
        """``{"shared1", "shared2", "unique1", "unique2"}`` head outputs of a batch."""
        f1, f2 = self.encoder1(x1), self.encoder2(x2)
        return {
            "shared1": self.heads["shared1"](f1),
            "shared2": self.heads["shared2"](f2),
            "unique1": self.heads["unique1"](f1),
            "unique2": self.heads["unique2"](f2),
        }

    def embed(self, x1: Tensor, x2: Tensor) -> Tensor:
        """The representation for downstream tasks: ``[Z_S1, Z_S2, Z_U1, Z_U2]``."""
        h = self.heads_of(x1, x2)
        return torch.cat([h["shared1"], h["shared2"], h["unique1"], h["unique2"]], dim=-1)

    @abstractmethod
    def _pairs(self, h: dict[str, Tensor], cond: Any) -> dict[str, tuple[Tensor, Tensor]]:
        """The two sides of every MI term (defined by the SUP and SSL variants)."""

    @abstractmethod
    def _cond_args(self, x1: Tensor, x2: Tensor, y: Any) -> Any:
        """What the conditional terms condition on (defined by the SUP and SSL variants)."""

    # -- objective -------------------------------------------------------------------------

    def terms(self, x1: Tensor, x2: Tensor, y: Any = None) -> dict[str, Tensor]:
        """Every term's estimate (InfoNCE terms with gradients for the InfoNCE critics;
        NCE-CLUB terms with detached critic parameters)."""
        pairs = self._pairs(self.heads_of(x1, x2), self._cond_args(x1, x2, y))
        out = {k: infonce(self.critics[k](*pairs[k])) for k in LOWER_TERMS}
        for k in UPPER_TERMS:
            out[k] = nce_club(_frozen(self.club_critics[k], *pairs[k]))
        return out

    def loss(self, x1: Tensor, x2: Tensor, y: Any = None) -> tuple[Tensor, dict[str, Tensor]]:
        """``(loss, terms)``: the negated objective to minimise and the detached terms."""
        t = self.terms(x1, x2, y)
        loss = sum(t[k] for k in UPPER_TERMS) - sum(t[k] for k in LOWER_TERMS)
        assert isinstance(loss, Tensor)
        return loss, {k: v.detach() for k, v in t.items()}

    def club_critic_loss(self, x1: Tensor, x2: Tensor, y: Any = None) -> Tensor:
        """InfoNCE loss of the NCE-CLUB critics on detached features (trains only them)."""
        with torch.no_grad():
            pairs = self._pairs(self.heads_of(x1, x2), self._cond_args(x1, x2, y))
        total = -sum(infonce(self.club_critics[k](*pairs[k])) for k in UPPER_TERMS)
        assert isinstance(total, Tensor)
        return total

    def main_parameters(self) -> list[nn.Parameter]:
        """Encoders, heads and InfoNCE critics: what the main step updates."""
        club = {id(p) for p in self.club_critics.parameters()}
        return [p for p in self.parameters() if id(p) not in club]

    def step(
        self,
        batch: tuple[Any, ...],
        critic_batch: tuple[Any, ...],
        main_optimizer: torch.optim.Optimizer,
        critic_optimizer: torch.optim.Optimizer,
        critic_steps: int = 1,
    ) -> dict[str, Tensor]:
        """One alternating update: the main step on ``batch``, then ``critic_steps`` NCE-CLUB
        critic steps on ``critic_batch`` (the official code: one step; its synthetic version
        on a fresh batch). Batches are the arguments of :meth:`loss`: ``(x1, x2, y)`` (SUP) or
        ``(x1, x2, (x1_aug, x2_aug))`` (SSL). Returns the terms."""
        steps = _checks.check_positive_int("critic_steps", critic_steps)
        main_optimizer.zero_grad(set_to_none=True)
        loss, terms = self.loss(*batch)
        loss.backward()
        main_optimizer.step()
        for _ in range(steps):
            critic_optimizer.zero_grad(set_to_none=True)
            self.club_critic_loss(*critic_batch).backward()
            critic_optimizer.step()
        return terms


class FactorCLSUP(FactorCL):
    r"""FactorCL-SUP: conditional terms given the label (one-hot, concatenated to both sides).

    Args:
        encoder1, encoder2, feature_dim: as :class:`FactorCL`.
        num_classes: number of label classes.
        head_dim: size of each head's output.
        critic_hidden: hidden sizes of the concat critics.

    Example:
        >>> import torch
        >>> m = FactorCLSUP(torch.nn.Linear(5, 8), torch.nn.Linear(4, 8), 8, num_classes=2,
        ...                 head_dim=4, critic_hidden=(16,))
        >>> loss, terms = m.loss(torch.randn(6, 5), torch.randn(6, 4), torch.tensor([0, 1] * 3))
        >>> sorted(terms)
        ['shared', 'shared_given_y', 'unique', 'unique_given_y', 'x1_y', 'x2_y']

    References:
        Liang, Deng, Ma, Zou, Morency, Salakhutdinov. "Factorized Contrastive Learning: Going
        Beyond Multi-view Redundancy." NeurIPS 2023.
    """

    def __init__(
        self,
        encoder1: nn.Module,
        encoder2: nn.Module,
        feature_dim: int,
        *,
        num_classes: int,
        head_dim: int = 64,
        critic_hidden: tuple[int, ...] = (512, 512),
    ) -> None:
        self.num_classes = _checks.check_positive_int("num_classes", num_classes, minimum=2)
        super().__init__(
            encoder1,
            encoder2,
            feature_dim,
            head_dim=head_dim,
            cond_dim=num_classes,
            y_dim=num_classes,
            critic_hidden=critic_hidden,
        )

    def _cond_args(self, x1: Tensor, x2: Tensor, y: Any) -> Tensor:
        if not isinstance(y, Tensor) or y.dtype != torch.long or y.shape != x1.shape[:1]:
            raise ValueError(
                f"FactorCLSUP needs integer labels y of shape ({x1.shape[0]},), got "
                f"{getattr(y, 'shape', type(y).__name__)} {getattr(y, 'dtype', '')}"
            )
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise ValueError(f"labels y must lie in [0, {self.num_classes - 1}]")
        return F.one_hot(y, self.num_classes).to(x1.dtype)

    def _pairs(self, h: dict[str, Tensor], cond: Any) -> dict[str, tuple[Tensor, Tensor]]:
        s1, s2, u1, u2 = h["shared1"], h["shared2"], h["unique1"], h["unique2"]
        c = cond.to(s1.dtype)
        return {
            "shared": (s1, s2),
            "shared_given_y": (torch.cat([s1, c], -1), torch.cat([s2, c], -1)),
            "x1_y": (u1, c),
            "x2_y": (u2, c),
            "unique": (u1, u2),
            "unique_given_y": (torch.cat([u1, c], -1), torch.cat([u2, c], -1)),
        }


class FactorCLSSL(FactorCL):
    r"""FactorCL-SSL: the label is replaced by augmented views ``x1_aug``, ``x2_aug``.

    Call :meth:`loss` and :meth:`club_critic_loss` as ``(x1, x2, (x1_aug, x2_aug))``.

    Args:
        encoder1, encoder2, feature_dim: as :class:`FactorCL`.
        head_dim: size of each head's output.
        critic_hidden: hidden sizes of the concat critics.

    Example:
        >>> import torch
        >>> m = FactorCLSSL(torch.nn.Linear(5, 8), torch.nn.Linear(4, 8), 8, head_dim=4,
        ...                 critic_hidden=(16,))
        >>> x1, x2 = torch.randn(6, 5), torch.randn(6, 4)
        >>> loss, terms = m.loss(x1, x2, (x1 + 0.1, x2 - 0.1))
        >>> loss.shape
        torch.Size([])
    """

    def __init__(
        self,
        encoder1: nn.Module,
        encoder2: nn.Module,
        feature_dim: int,
        *,
        head_dim: int = 64,
        critic_hidden: tuple[int, ...] = (512, 512),
    ) -> None:
        super().__init__(
            encoder1,
            encoder2,
            feature_dim,
            head_dim=head_dim,
            cond_dim=head_dim,
            y_dim=head_dim,
            critic_hidden=critic_hidden,
        )

    def _cond_args(self, x1: Tensor, x2: Tensor, y: Any) -> dict[str, Tensor]:
        if not (isinstance(y, (tuple, list)) and len(y) == 2):
            raise ValueError(
                "FactorCLSSL needs the augmented views as its third argument: (x1_aug, x2_aug)"
            )
        x1a, x2a = y
        if x1a.shape != x1.shape or x2a.shape != x2.shape:
            raise ValueError(
                f"augmented views must match the views' shapes {tuple(x1.shape)} and "
                f"{tuple(x2.shape)}, got {tuple(x1a.shape)} and {tuple(x2a.shape)}"
            )
        return self.heads_of(x1a, x2a)

    def _pairs(self, h: dict[str, Tensor], cond: Any) -> dict[str, tuple[Tensor, Tensor]]:
        s1, s2, u1, u2 = h["shared1"], h["shared2"], h["unique1"], h["unique2"]
        a = cond  # the heads of the augmented views
        return {
            "shared": (s1, s2),
            "shared_given_y": (
                torch.cat([s1, a["shared1"]], -1),
                torch.cat([s2, a["shared2"]], -1),
            ),
            "x1_y": (u1, a["unique1"]),
            "x2_y": (u2, a["unique2"]),
            "unique": (u1, u2),
            "unique_given_y": (
                torch.cat([u1, a["unique1"]], -1),
                torch.cat([u2, a["unique2"]], -1),
            ),
        }
