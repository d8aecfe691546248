r"""The registry of elementwise functions that the streamed sums of
:func:`~mibounds.kernels.streaming.offdiag_means` evaluate (NWJ, TUBA, JS, SMILE, the f-MI
bounds and user functions): a value function and an explicit derivative each (autograd is not
available inside a custom op), and which of them the fused kernels compute."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "ELEMENTWISE",
    "elementwise",
    "elementwise_function",
    "forward_derivative",
    "mark_triton",
]

#: Elementwise functions the streaming off-diagonal mean knows: name -> id. Each has a value
#: function and an explicit derivative (autograd is not available inside a custom op).
ELEMENTWISE: dict[str, int] = {}
_FNS: list[tuple[str, object, object]] = []


def _register_fn(name: str, fn, dfn) -> None:
    ELEMENTWISE[name] = len(_FNS)
    _FNS.append((name, fn, dfn))


def elementwise(name: str, fn, dfn) -> str:
    """Make an elementwise function ``fn`` with derivative ``dfn`` available to
    :func:`~mibounds.kernels.streaming.offdiag_means` under ``name`` (the first registration
    of a name wins).

    Example:
        >>> name = elementwise("doc-square", lambda t, p: t * t, lambda t, p: 2 * t)
        >>> name in ELEMENTWISE
        True
    """
    if name not in ELEMENTWISE:
        _register_fn(name, fn, dfn)
    return name


def forward_derivative(fn):
    """The elementwise derivative ``dfn(t, param)`` of an elementwise ``fn(t)``, by forward-mode
    automatic differentiation (it runs inside the custom ops, where reverse mode does not).

    Example:
        >>> d = forward_derivative(torch.sin)
        >>> torch.allclose(d(torch.tensor([0.5]), 0.0), torch.cos(torch.tensor([0.5])))
        True
    """

    def dfn(t: Tensor, param: float) -> Tensor:
        return torch.func.jvp(fn, (t,), (torch.ones_like(t),))[1]

    return dfn


def elementwise_function(name: str):
    """The value function ``fn(t, param)`` registered under ``name``.

    Example:
        >>> elementwise_function("softplus")(torch.tensor(0.0), 0.0)
        tensor(0.6931)
    """
    return _FNS[ELEMENTWISE[name]][1]


#: Elementwise functions the fused kernels compute: id -> (kernel function name, parameter);
#: see :func:`mark_triton`.
_TRITON_OF: dict[int, tuple[str, float]] = {}


def mark_triton(name: str, triton_name: str, param: float = 0.0) -> None:
    """Declare that the registered elementwise function ``name`` is computed by the fused
    kernels' function ``triton_name`` (a key of
    :data:`mibounds.kernels.triton_kernels.TRITON_FUNCTIONS`) with ``param``.

    Example:
        >>> mark_triton("exp", "exp")
    """
    _TRITON_OF[ELEMENTWISE[name]] = (triton_name, float(param))


def _triton_of(fid: int) -> tuple[str, float]:
    """The Triton name and parameter of function ``fid`` (its own name if none was marked)."""
    return _TRITON_OF.get(fid, (_FNS[fid][0], 0.0))


def _exp_clip(t: Tensor, c: float) -> Tensor:
    # exp(clip(t, -c, c) - c) <= 1: the SMILE partition term without overflow
    return torch.exp(t.clamp(-c, c) - c)


def _exp(t: Tensor, p: float) -> Tensor:
    return torch.exp(t)


_register_fn("exp", _exp, _exp)
_register_fn("softplus", lambda t, p: F.softplus(t), lambda t, p: torch.sigmoid(t))
_register_fn("exp-clip", _exp_clip, lambda t, c: _exp_clip(t, c) * (t.abs() < c))
_register_fn("identity", lambda t, p: t, lambda t, p: torch.ones_like(t))
_register_fn("softplus-neg", lambda t, p: F.softplus(-t), lambda t, p: -torch.sigmoid(-t))
