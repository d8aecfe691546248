r"""f-divergences: the :class:`FDivergence` record, the registry and the built-in divergences.

An f-divergence is :math:`D_f(P\|Q) = \mathbb{E}_Q[f(\mathrm{d}P/\mathrm{d}Q)]` for a convex
generator :math:`f` with :math:`f(1) = 0`. Its variational form
:math:`D_f \ge \mathbb{E}_P[T] - \mathbb{E}_Q[f^*(T)]` (Nguyen, Wainwright and Jordan 2010;
Nowozin, Cseke and Tomioka 2016) is what :func:`mibounds.fmi` evaluates with
:math:`P = p(x, y)` and :math:`Q = p(x)p(y)`.

For the eight divergences of the f-GAN paper (Table 6), the conjugate, its domain and the output
activation are the paper's. f-GAN's GAN generator is shifted by :math:`\log 4` so that
:math:`f(1) = 0` like every other generator (its divergence is then :math:`2\,\mathrm{JSD}`, as
for ``"js"``, whose f-GAN generator is also twice the Jensen-Shannon divergence). For
Tsallis-:math:`\alpha` and Vincze-Le Cam, which f-GAN does not list, the activation is
:math:`g(v) = f'(e^v)`, so that the optimal critic output is the log density ratio, as in the
density-ratio parameterisation used by f-MICL.

References:
    Nowozin, Cseke, Tomioka. "f-GAN: Training Generative Neural Samplers using Variational
    Divergence Minimization." NeurIPS 2016.

    Lu, Zhang, Sun, Guo, Yu. "f-MICL: Understanding and Generalizing InfoNCE-based Contrastive
    Learning." TMLR 2023.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mibounds._checks import check_real
from mibounds._registry import Registry
from mibounds.kernels import streaming

__all__ = [
    "Domain",
    "FDivergence",
    "get_divergence",
    "list_divergences",
    "register_divergence",
    "tsallis",
]

TensorFn = Callable[[Tensor], Tensor]
_LOG2 = math.log(2.0)
_LOG4 = math.log(4.0)


@dataclass(frozen=True)
class Domain:
    r"""An interval of the real line: the domain of a conjugate :math:`f^*`.

    Args:
        low: lower end (may be ``-math.inf``).
        high: upper end (may be ``math.inf``).
        low_closed: whether ``low`` belongs to the interval.
        high_closed: whether ``high`` belongs to the interval.

    Example:
        >>> d = Domain(-math.inf, math.log(2.0))
        >>> 0.5 in d, 1.0 in d
        (True, False)
        >>> str(Domain(-0.5, 0.5, True, True))
        '[-0.5, 0.5]'
    """

    low: float
    high: float
    low_closed: bool = False
    high_closed: bool = False

    def __contains__(self, t: object) -> bool:
        if not isinstance(t, (int, float)):
            return False
        above = t >= self.low if self.low_closed else t > self.low
        below = t <= self.high if self.high_closed else t < self.high
        return bool(above and below)

    def __str__(self) -> str:
        def fmt(v: float) -> str:
            if math.isinf(v):
                return "inf" if v > 0 else "-inf"
            if abs(v - _LOG2) < 1e-12:
                return "log 2"
            return f"{v:g}"

        left = "[" if self.low_closed else "("
        right = "]" if self.high_closed else ")"
        return f"{left}{fmt(self.low)}, {fmt(self.high)}{right}"


@dataclass(frozen=True)
class FDivergence:
    r"""A convex generator :math:`f` and everything the variational bounds need from it.

    All callables take and return tensors elementwise. ``f``, ``f_prime`` and
    ``conjugate_of_derivative`` take density ratios :math:`u > 0`; ``conjugate`` takes
    :math:`t` in ``conjugate_domain``; ``activation`` maps any real critic output :math:`v` into
    that domain (f-GAN's output activation :math:`g_f`).

    Args:
        name: canonical registry name (lower case).
        f: the generator :math:`f(u)`, convex with :math:`f(1) = 0`.
        f_prime: its derivative :math:`f'(u)`.
        conjugate: the convex conjugate :math:`f^*(t) = \sup_u\, u t - f(u)`.
        conjugate_domain: where ``conjugate`` is finite.
        activation: :math:`g_f:\mathbb{R}\to` ``conjugate_domain``.
        conjugate_of_derivative: :math:`f^*(f'(u)) = u f'(u) - f(u)` in closed form.
        conjugate_of_activation: :math:`f^*(g_f(v))` in a numerically stable closed form; when
            ``None`` it is computed as ``conjugate(activation(v))``.
        aliases: other names for lookups (case-insensitive).
        formula: :math:`f` as plain text, for tables.
        conjugate_of_activation_grad: :math:`\frac{d}{dv} f^*(g_f(v))` in closed form; the
            streaming kernels need it (without it :func:`mibounds.fmi` on
            :class:`~mibounds.scores.SeparableScores` falls back to the dense path).

    Example:
        >>> import torch
        >>> kl = get_divergence("kl")
        >>> kl.f(torch.tensor(1.0)).item()
        0.0
        >>> kl.conjugate_of_derivative(torch.tensor(2.0)).item()
        2.0
    """

    name: str
    f: TensorFn
    f_prime: TensorFn
    conjugate: TensorFn
    conjugate_domain: Domain
    activation: TensorFn
    conjugate_of_derivative: TensorFn
    conjugate_of_activation: TensorFn | None = None
    aliases: tuple[str, ...] = ()
    formula: str = field(default="")
    conjugate_of_activation_grad: TensorFn | None = None
    #: ``(function, args)`` that rebuilds this divergence (parametrised families such as
    #: :func:`tsallis`); used to pickle it.
    factory: tuple[Any, tuple[Any, ...]] | None = field(default=None, compare=False, repr=False)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickled by name when registered (the unpickling process must have registered it
        too: the built-ins always are), else by its factory; a divergence made of lambdas that
        is neither cannot be pickled."""
        if self.name in _REGISTRY and _REGISTRY.get(self.name) is self:
            return (get_divergence, (self.name,))
        if self.factory is not None:
            return self.factory
        raise TypeError(
            f"FDivergence {self.name!r} cannot be pickled: its functions may be lambdas. "
            "Register it with mibounds.register_divergence (it is then pickled by name) or set "
            "factory=(function, args) to a module-level function that builds it"
        )

    def conjugate_at_activation(self, v: Tensor) -> Tensor:
        r""":math:`f^*(g_f(v))` for critic outputs ``v``, using the stable closed form if any."""
        if self.conjugate_of_activation is not None:
            return self.conjugate_of_activation(v)
        return self.conjugate(self.activation(v))


def streaming_name(div: FDivergence) -> str | None:
    r"""Name of :math:`f^*(g_f(\cdot))` among the streaming kernels' elementwise functions.

    Registered divergences are made available when registered (so compiled code finds them);
    other :class:`FDivergence` objects on first use in eager mode. ``None`` if the divergence
    has no ``conjugate_of_activation_grad`` (or, while compiling, was never made available):
    then :func:`mibounds.fmi` uses the dense path.
    """
    if div.conjugate_of_activation_grad is None:
        return None
    name = f"fmi:{div.name}:{id(div)}"
    if name not in streaming.ELEMENTWISE:
        if torch.compiler.is_compiling():
            return None
        grad = div.conjugate_of_activation_grad
        streaming.elementwise(
            name, lambda t, p: div.conjugate_at_activation(t), lambda t, p: grad(t)
        )
    return name


_REGISTRY: Registry[FDivergence] = Registry("divergence", "divergences")


def activation_name(div: FDivergence) -> str:
    r"""Name of the output activation :math:`g_f` among the streaming kernels' elementwise
    functions (for the positives of labelled pairings); its derivative comes from forward-mode
    automatic differentiation."""
    name = f"act:{div.name}:{id(div)}"
    if name not in streaming.ELEMENTWISE:
        act = div.activation
        streaming.elementwise(name, lambda t, p: act(t), streaming.forward_derivative(act))
    return name


def register_divergence(divergence: FDivergence, *, overwrite: bool = False) -> FDivergence:
    r"""Add a divergence to the registry under its name and aliases (case-insensitive).

    Args:
        divergence: the :class:`FDivergence` to register.
        overwrite: replace an existing entry with the same name instead of raising.

    Returns:
        The divergence, so the call can be used as an expression.

    Raises:
        TypeError: if ``divergence`` is not an :class:`FDivergence`.
        ValueError: if its name or an alias is taken (and ``overwrite`` is false).

    Example:
        >>> import torch
        >>> half_pearson = FDivergence(
        ...     name="half-pearson", f=lambda u: 0.5 * (u - 1) ** 2, f_prime=lambda u: u - 1,
        ...     conjugate=lambda t: 0.5 * t**2 + t, conjugate_domain=Domain(-math.inf, math.inf),
        ...     activation=lambda v: v, conjugate_of_derivative=lambda u: 0.5 * (u**2 - 1),
        ...     formula="(u - 1)^2 / 2")
        >>> _ = register_divergence(half_pearson)
        >>> get_divergence("Half-Pearson").name
        'half-pearson'
    """
    if not isinstance(divergence, FDivergence):
        raise TypeError(f"divergence must be an FDivergence, got {type(divergence).__name__}")
    _REGISTRY.add(divergence.name, divergence, divergence.aliases, overwrite)
    streaming_name(divergence)
    return divergence


def get_divergence(name: str | FDivergence) -> FDivergence:
    r"""Look a divergence up by name or alias, case-insensitively.

    Args:
        name: a registered name or alias, or an :class:`FDivergence` (returned as is).

    Returns:
        The registered :class:`FDivergence`.

    Raises:
        KeyError: for an unknown name; the message lists the known names.
        TypeError: if ``name`` is neither a string nor an :class:`FDivergence`.

    Example:
        >>> get_divergence("Jensen-Shannon").name
        'js'
    """
    return _REGISTRY.resolve(name, FDivergence)


def list_divergences() -> list[FDivergence]:
    r"""All registered divergences, sorted by name.

    Returns:
        A list of :class:`FDivergence`.

    Example:
        >>> [d.name for d in list_divergences()][:3]
        ['gan', 'hellinger', 'js']
    """
    return _REGISTRY.values()


_R = Domain(-math.inf, math.inf)


def _xlogx(u: Tensor) -> Tensor:
    return torch.xlogy(u, u)


register_divergence(
    FDivergence(
        name="kl",
        aliases=("kullback-leibler", "forward-kl"),
        formula="u log u",
        f=_xlogx,
        f_prime=lambda u: torch.log(u) + 1,
        conjugate=lambda t: torch.exp(t - 1),
        conjugate_domain=_R,
        activation=lambda v: v,
        conjugate_of_derivative=lambda u: u,
        conjugate_of_activation_grad=lambda v: torch.exp(v - 1),
    )
)
register_divergence(
    FDivergence(
        name="reverse-kl",
        aliases=("rkl", "reverse_kl"),
        formula="-log u",
        f=lambda u: -torch.log(u),
        f_prime=lambda u: -1 / u,
        conjugate=lambda t: -1 - torch.log(-t),
        conjugate_domain=Domain(-math.inf, 0.0),
        activation=lambda v: -torch.exp(-v),
        conjugate_of_derivative=lambda u: torch.log(u) - 1,
        conjugate_of_activation=lambda v: v - 1,
        conjugate_of_activation_grad=torch.ones_like,
    )
)
register_divergence(
    FDivergence(
        name="pearson",
        aliases=("pearson-chi2", "chi2", "chi-squared"),
        formula="(u - 1)^2",
        f=lambda u: (u - 1) ** 2,
        f_prime=lambda u: 2 * (u - 1),
        conjugate=lambda t: 0.25 * t**2 + t,
        conjugate_domain=_R,
        activation=lambda v: v,
        conjugate_of_derivative=lambda u: u**2 - 1,
        conjugate_of_activation_grad=lambda v: 0.5 * v + 1,
    )
)
register_divergence(
    FDivergence(
        name="neyman",
        aliases=("neyman-chi2",),
        formula="(1 - u)^2 / u",
        f=lambda u: (1 - u) ** 2 / u,
        f_prime=lambda u: 1 - u.reciprocal() ** 2,
        conjugate=lambda t: 2 - 2 * torch.sqrt(1 - t),
        conjugate_domain=Domain(-math.inf, 1.0),
        activation=lambda v: -torch.expm1(-v),
        conjugate_of_derivative=lambda u: 2 - 2 / u,
        conjugate_of_activation=lambda v: 2 - 2 * torch.exp(-0.5 * v),
        conjugate_of_activation_grad=lambda v: torch.exp(-0.5 * v),
    )
)
register_divergence(
    FDivergence(
        name="hellinger",
        aliases=("squared-hellinger", "sh"),
        formula="(sqrt(u) - 1)^2",
        f=lambda u: (torch.sqrt(u) - 1) ** 2,
        f_prime=lambda u: 1 - torch.rsqrt(u),
        conjugate=lambda t: t / (1 - t),
        conjugate_domain=Domain(-math.inf, 1.0),
        activation=lambda v: -torch.expm1(-v),
        conjugate_of_derivative=lambda u: torch.sqrt(u) - 1,
        conjugate_of_activation=torch.expm1,
        conjugate_of_activation_grad=torch.exp,
    )
)
register_divergence(
    FDivergence(
        name="js",
        aliases=("jensen-shannon", "jensen_shannon", "jsd"),
        formula="u log u - (u + 1) log((u + 1) / 2)",
        f=lambda u: _xlogx(u) - (u + 1) * torch.log((u + 1) / 2),
        f_prime=lambda u: torch.log(u) - torch.log((u + 1) / 2),
        conjugate=lambda t: -torch.log(2 - torch.exp(t)),
        conjugate_domain=Domain(-math.inf, _LOG2),
        activation=lambda v: _LOG2 - F.softplus(-v),
        conjugate_of_derivative=lambda u: torch.log((1 + u) / 2),
        conjugate_of_activation=lambda v: F.softplus(v) - _LOG2,
        conjugate_of_activation_grad=torch.sigmoid,
    )
)
register_divergence(
    FDivergence(
        name="gan",
        aliases=("gan-js",),
        formula="u log u - (u + 1) log(u + 1) + log 4",
        f=lambda u: _xlogx(u) - (u + 1) * torch.log1p(u) + _LOG4,
        f_prime=lambda u: torch.log(u) - torch.log1p(u),
        conjugate=lambda t: -torch.log(-torch.expm1(t)) - _LOG4,
        conjugate_domain=Domain(-math.inf, 0.0),
        activation=lambda v: -F.softplus(-v),
        conjugate_of_derivative=lambda u: torch.log1p(u) - _LOG4,
        conjugate_of_activation=lambda v: F.softplus(v) - _LOG4,
        conjugate_of_activation_grad=torch.sigmoid,
    )
)
register_divergence(
    FDivergence(
        name="total-variation",
        aliases=("tv",),
        formula="|u - 1| / 2",
        f=lambda u: 0.5 * torch.abs(u - 1),
        f_prime=lambda u: 0.5 * torch.sign(u - 1),
        conjugate=lambda t: t,
        conjugate_domain=Domain(-0.5, 0.5, True, True),
        activation=lambda v: 0.5 * torch.tanh(v),
        conjugate_of_derivative=lambda u: 0.5 * torch.sign(u - 1),
        conjugate_of_activation_grad=lambda v: 0.5 / torch.cosh(v) ** 2,
    )
)


def _vlc_activation(v: Tensor) -> Tensor:
    # f'(e^v) = (u - 1)(u + 3)/(u + 1)^2 with u = e^v, written without exp(v).
    return torch.tanh(0.5 * v) * (1 + 2 * torch.sigmoid(-v))


def _vlc_conj_act(v: Tensor) -> Tensor:
    # f*(f'(u)) = (u - 1)(3u + 1)/(u + 1)^2 with u = e^v.
    return torch.tanh(0.5 * v) * (3 - 2 * torch.sigmoid(-v))


def _vlc_conj_act_grad(v: Tensor) -> Tensor:
    th = torch.tanh(0.5 * v)
    return 0.5 * (1 - th**2) * (3 - 2 * torch.sigmoid(-v)) + th * 2 * torch.sigmoid(
        v
    ) * torch.sigmoid(-v)


register_divergence(
    FDivergence(
        name="vincze-le-cam",
        aliases=("vlc", "triangular", "triangular-discrimination"),
        formula="(u - 1)^2 / (u + 1)",
        f=lambda u: (u - 1) ** 2 / (u + 1),
        f_prime=lambda u: (u - 1) * (u + 3) / (u + 1) ** 2,
        conjugate=lambda t: 4 - t - 4 * torch.sqrt(1 - t),
        conjugate_domain=Domain(-3.0, 1.0),
        activation=_vlc_activation,
        conjugate_of_derivative=lambda u: (u - 1) * (3 * u + 1) / (u + 1) ** 2,
        conjugate_of_activation=_vlc_conj_act,
        conjugate_of_activation_grad=_vlc_conj_act_grad,
    )
)


def tsallis(alpha: float) -> FDivergence:
    r"""The Tsallis (alpha-) divergence with generator :math:`f(u) = (u^\alpha - u)/(\alpha - 1)`.

    Convex for :math:`\alpha > 0`, :math:`\alpha \ne 1` (the limit :math:`\alpha \to 1` is KL;
    :math:`\alpha = 2` is Pearson :math:`\chi^2` and :math:`\alpha = 1/2` twice the squared
    Hellinger distance, up to terms linear in :math:`u` that do not change the divergence).
    Closed forms: :math:`f^*(f'(u)) = u^\alpha` and
    :math:`f^*(t) = \big(((\alpha - 1)t + 1)/\alpha\big)^{\alpha/(\alpha - 1)}`.
    The activation is :math:`g(v) = f'(e^v)`, so :math:`f^*(g(v)) = e^{\alpha v}` and the
    optimal critic output is the log density ratio. The instance for ``alpha=1.5`` is
    registered as ``"tsallis"``.

    Args:
        alpha: the order, ``alpha > 0`` and ``alpha != 1``.

    Returns:
        An unregistered :class:`FDivergence` named ``"tsallis-<alpha>"``.

    Raises:
        ValueError: if ``alpha <= 0`` or ``alpha == 1``.

    Example:
        >>> import torch
        >>> d = tsallis(3.0)
        >>> d.conjugate_of_derivative(torch.tensor(2.0)).item()
        8.0
    """
    a = check_real("alpha", alpha)
    if a <= 0 or a == 1:
        raise ValueError(f"alpha must be > 0 and != 1 for a Tsallis divergence, got {alpha!r}")
    am1 = a - 1
    if am1 > 0:
        domain = Domain(-1 / am1, math.inf)
    else:
        domain = Domain(-math.inf, -1 / am1)
    return FDivergence(
        name=f"tsallis-{a:g}",
        formula=f"(u^{a:g} - u) / ({a:g} - 1)",
        f=lambda u: (u**a - u) / am1,
        f_prime=lambda u: (a * u**am1 - 1) / am1,
        conjugate=lambda t: ((am1 * t + 1) / a) ** (a / am1),
        conjugate_domain=domain,
        activation=lambda v: torch.expm1(am1 * v) * (a / am1) + 1,
        conjugate_of_derivative=lambda u: u**a,
        conjugate_of_activation=lambda v: torch.exp(a * v),
        conjugate_of_activation_grad=lambda v: a * torch.exp(a * v),
        factory=(tsallis, (alpha,)),
    )


_default_tsallis = tsallis(1.5)
register_divergence(
    FDivergence(
        **{
            **{k: getattr(_default_tsallis, k) for k in _default_tsallis.__dataclass_fields__},
            "name": "tsallis",
            "aliases": ("tsallis-1.5",),
        }
    )
)


# The built-in divergences' f*(g_f(v)) have Triton implementations (a divergence registered
# later, even under one of these names, does not).
for _div in list_divergences():
    _name = streaming_name(_div)
    if _name is not None:
        _param = (
            math.log(float(_div.conjugate_at_activation(torch.tensor(1.0, dtype=torch.float64))))
            if _div.name == "tsallis"
            else 0.0
        )
        streaming.mark_triton(_name, f"fmi:{_div.name}", _param)
del _div, _name, _param
