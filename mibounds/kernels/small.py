r"""The small-batch path: a plain batch whose score matrix is small is reduced from that
matrix, held whole.

At a few hundred samples a call costs its number of tensor operations (each a few
microseconds on a CPU, whatever its size), not its arithmetic. The streamed sweep forms its
statistics panel by panel with float64 sums and the gradient in the forward pass: a CLIP loss
call dispatches about 160 operations in all. Here each of the plain pairing's two losses is a
few of PyTorch's own operations, recorded by autograd (so their backward runs in C++ and a
second derivative goes through them), about 20 operations a call with the checks and the
backward pass: the logits ``S = (k x) y^T`` (``k`` the logit scale, or the inverse
temperature) in one product and the loss from them, as OpenCLIP forms it.

* :func:`cross_entropy`: the InfoNCE family's cross-entropy of the rows of ``S`` (and of its
  columns, stacked below them), PyTorch's ``cross_entropy``. Where its value, read back on the
  CPU or while values are validated, is below :data:`_DENSE_FLOOR` (there the dense form's
  rounding, about 6e-8 per line, is a sizable share of it: a row whose positive dominates
  rounds to 0 below about 6e-8), the lines' losses are formed again as ``log1p`` of the other
  entries' sum of :math:`e^{S_{ij} - S_{ii}}`, as the sweep forms them: as they are where the
  extremes of ``S`` show that the sums stay finite, else from each line's own maximum;
* :func:`sigmoid_loss`: SigLIP's :math:`\frac1N\sum_{ij} -\log\sigma(\pm z_{ij})` for the
  logits ``z = S + bias``, OpenCLIP's arithmetic (its value bit for bit on the CPU).

:func:`covers` says whether a call takes this path: dot scores of 2-D features with at most
:data:`MAX_ENTRIES` scores for the loss, whose matrices fit the sweep's panel workspace
(:func:`mibounds.kernels.streaming.get_memory_budget`), called eagerly (not while compiling:
there the custom op is one node of the graph), outside autocast, where no path is forced
(:func:`mibounds.kernels.cost.set_path`), the sweep's panel bodies are not compiled
(:func:`mibounds.kernels.streaming.set_backend`) and the fused kernels are off (on a GPU with
Triton they keep every call). The range rule is the one of the streamed and the dense paths
(:func:`mibounds.kernels.operands._within_range`), checked on the matrix while values are
validated; a loss that names its features (``SeparableScores._of_loss`` decides the path
once, when it builds the scores) has their values checked on the same read-back of
the matrix's extremes.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mibounds import _checks
from mibounds._dtypes import accumulation_dtype, promoted
from mibounds.kernels import cost
from mibounds.kernels.operands import _overflow_message, _within_range
from mibounds.kernels.ops import _PATH_USAGE
from mibounds.kernels.panels import _BACKEND, _BUDGET, DEFAULT_MEMORY_BUDGET
from mibounds.kernels.selfcheck import triton_on, triton_on_cpu

__all__ = ["MAX_ENTRIES", "covers", "cross_entropy", "held_by", "sigmoid_loss"]

#: The most score entries (``N x M``) each loss reduces whole: up to them its matrices (about
#: four of ``N x M`` in the accumulation dtype held at once) cost less time than the sweep's
#: operations do (``benchmarks/overhead.py`` times both): N = 768 for the cross-entropy, 1448
#: (32 MiB of float32 matrices) for the sigmoid loss, whose sweep forms a transcendental per
#: entry more.
MAX_ENTRIES = {"cross_entropy": 768 * 768, "sigmoid": 2**21}

#: the natural log of the largest finite value of each accumulation dtype, less 1: a sum of
#: ``n`` exponentials of at most ``t`` is finite where ``t + log(n)`` is below it
_EXP_ROOM = {dt: math.log(torch.finfo(dt).max) - 1.0 for dt in (torch.float32, torch.float64)}


def covers(
    x: Tensor, y: Tensor, similarity: str, loss: str = "cross_entropy", eager: bool = False
) -> bool:
    """Whether the scores ``similarity(x, y)`` of one process are reduced whole here for
    ``loss`` (``"cross_entropy"`` or ``"sigmoid"``); ``eager``: the caller knows that
    nothing is being compiled."""
    # compiled panel bodies asked for (set_backend) are the sweep's
    if similarity != "dot" or _BACKEND[0] != "eager":
        return False
    rows, columns = x.shape, y.shape
    if len(rows) != 2 or len(columns) != 2:
        return False
    entries = rows[0] * columns[0]
    if entries > MAX_ENTRIES[loss]:
        return False
    # its matrices within the panel workspace the sweep would take (the CPU's, or one set)
    cpu = x.is_cpu
    budget = _BUDGET[0]
    if budget is None and cpu:
        budget = DEFAULT_MEMORY_BUDGET  # get_memory_budget() of the CPU
    if budget is not None and 4 * entries * max(4, x.element_size()) > budget:
        return False
    if torch.is_autocast_enabled("cpu" if cpu else x.device.type):
        return False
    if (not eager and torch.compiler.is_compiling()) or cost.get_path() is not None:
        return False
    # the fused kernels keep every call they take
    return not (triton_on_cpu() if cpu else triton_on(x.device))


@functools.cache
def held_by(similarity: str, loss: str) -> Callable[[Tensor, Tensor], bool]:
    """:func:`covers` of ``similarity`` and ``loss`` as one callable of the features, asked
    eagerly (a loss's checks ask it only then): one per pair."""

    def covered(x: Tensor, y: Tensor) -> bool:
        return covers(x, y, similarity, loss, True)

    return covered


def _read_extremes(
    s: Tensor,
    x: Tensor,
    y: Tensor,
    tau: Any,
    names: tuple[str, ...] | None,
    validating: bool = True,
    bias: float | Tensor | None = None,
    value: Tensor | None = None,
    stacked: bool | None = None,
) -> tuple[float, float]:
    """The spread ``max S - min S`` of the logits ``S = s - bias`` of ``x`` and ``y`` (``s``
    as formed, the bias added) and the ``value`` of a 0-d tensor (``nan`` if none), read back
    at once (on a GPU one synchronisation: ``stacked``, by default off the CPU, reads them in
    one copy). While values are ``validating`` the range rule holds on ``S``, as on the
    streamed path (the message names the temperature ``tau``).
    With the features' ``names`` (and the bias's, third, where the caller left its value to
    this read), their values are checked here too: a NaN or an infinity in either feature
    makes a whole line of ``S`` not finite, so the extremes of ``S`` say whether all are
    finite; where they are not, the bias and the features are read (the message names the
    one that is not finite) before the range rule's message."""
    low, high = torch.aminmax(s)
    # a tensor bias read with them (a NaN or an infinity in it makes them not finite)
    if not (stacked if stacked is not None else not s.is_cpu):
        lo, hi = low.item(), high.item()
        read = math.nan if value is None else value.item()
        b = bias.item() if isinstance(bias, Tensor) else bias
    else:
        more = [t.detach().to(s.device, s.dtype) for t in (value, bias) if isinstance(t, Tensor)]
        lo, hi, *rest = torch.stack([low, high, *more]).tolist()
        read = rest.pop(0) if value is not None else math.nan
        b = rest.pop(0) if isinstance(bias, Tensor) else bias
    if b is not None:
        lo, hi = lo - b, hi - b
    largest = math.inf if math.isnan(lo + hi) else max(-lo, hi)
    if validating and not _within_range(largest, s.shape[-1], s.dtype):
        if names is not None and not math.isfinite(largest):
            named = {names[2]: bias} if len(names) > 2 and isinstance(bias, Tensor) else {}
            named.update(zip(names[:2], (x, y), strict=True))
            _checks.check_values_of(named)
        raise ValueError(_overflow_message(tau, s.dtype, largest, s.shape[-1]))
    return hi - lo, read


def _is_one(k: float | Tensor) -> bool:
    """Whether the multiplier ``k`` is the float 1 (nothing to multiply)."""
    return not isinstance(k, Tensor) and k == 1.0


def cross_entropy(
    x: Tensor,
    y: Tensor,
    tau: float | Tensor,
    symmetric: bool,
    scale: float | Tensor | None = None,
    names: tuple[str, ...] | None = None,
) -> Tensor:
    r"""The mean over the rows of :math:`\log\sum_j e^{S_{ij}} - S_{ii}` (averaged with the
    columns' if ``symmetric``), ``S = x y^T / tau``, in the accumulation dtype. ``scale``, the
    logit scale the temperature is the inverse of where a loss was given one, multiplies the
    products instead (its gradient then reaches it directly). With ``names`` (those of ``x``
    and ``y`` as the caller's users pass them), the features' values are checked here, on the
    logits, while values are validated.

    Example:
        >>> x, y = torch.randn(6, 3), torch.randn(6, 3)
        >>> s = x @ y.T / 0.5
        >>> dense = torch.nn.functional.cross_entropy(s, torch.arange(6))
        >>> torch.allclose(cross_entropy(x, y, 0.5, False), dense)
        True
    """
    _count()
    x, y, k, _, _ = _operands(x, y, tau, scale)
    # PyTorch's own operations, recorded by autograd: the logits S = (k x) y^T and the
    # cross-entropy of their rows (and, symmetric, of their columns, stacked below them),
    # as OpenCLIP forms it
    s = F.linear(x if _is_one(k) else x * k, y)
    n = s.shape[0]
    lines = torch.cat((s, s.t())) if symmetric else s
    value = F.cross_entropy(lines, _targets(n, lines.shape[0], s.device))
    # its value, read back where that costs no device synchronisation (the CPU) or one is
    # made anyway (while values are validated, with the logits' extremes): where it is
    # small, formed again from the positives' shares (log1p), which keeps the digits the
    # dense form rounds away
    spread = None
    if _checks.validating():
        spread, read = _read_extremes(s.detach(), x, y, tau, names, value=value.detach())
    elif s.is_cpu:
        read = float(value.detach())
    else:
        return value
    if not read < _DENSE_FLOOR:
        return value
    if spread is None:
        spread = _read_extremes(s.detach(), x, y, tau, names, validating=False)[0]
    return _log1p_lines(s, symmetric, spread)


#: the value below which the cross-entropy is formed from the positives' shares: the dense
#: form's rounding, about 6e-8 per line, is then more than 1e-5 of the value
_DENSE_FLOOR = 1e-2


def _log1p_lines(s: Tensor, symmetric: bool, spread: float) -> Tensor:
    """The mean over the lines (the rows of ``s``, and its columns if ``symmetric``) of each
    line's log-sum-exp less its positive (the diagonal score), formed as ``log1p`` of the
    other entries' sum of :math:`e^{S_{ij} - S_{ii}}` (a line whose positive dominates keeps
    its small loss): as they are where the ``spread`` of ``s`` shows that the sums stay
    finite, else from each line's own maximum."""
    n = s.shape[0]
    # the lines run down the columns of d: d[0, j, i] = S_ij - S_ii (row i) and, when
    # symmetric, d[1, j, i] = S_ji - S_ii (column i), each line's positive at j = i
    d = (torch.stack((s.t(), s)) if symmetric else s.t()[None]) - s.diagonal()
    others = _eye(n, s.dtype, s.device)  # 1 on the positives
    if spread + math.log(n) < _EXP_ROOM[s.dtype]:
        # every d is at most the spread: the sums of e^d are finite as they are, the
        # positive's own e^0 = 1 left out (log1p keeps a small loss)
        return (d.exp() * (1 - others)).sum(-2).log1p().mean()
    # from each line's maximum top >= 0 (its positive is 0), a constant of the graph: the
    # log-sum-exp less the positive is top + log1p(rest' + (e^{-top} - 1)), rest' the
    # others' sum below the maximum; 1 is taken from the positive's entry, which leaves 0
    # where the positive is the maximum
    top = d.detach().amax(-2, keepdim=True)
    return ((d - top).exp() - others).sum(-2).log1p().add(top[:, 0]).mean()


def sigmoid_loss(
    x: Tensor,
    y: Tensor,
    tau: float | Tensor,
    bias: float | Tensor | None,
    scale: float | Tensor | None = None,
    names: tuple[str, ...] | None = None,
) -> Tensor:
    r""":math:`\frac1N\big[\sum_i \mathrm{softplus}(-z_{ii}) + \sum_{i \ne j}
    \mathrm{softplus}(z_{ij})\big]` for the logits ``z = x y^T / tau + bias``, in the
    accumulation dtype (``scale`` and ``names`` as in :func:`cross_entropy`).

    Example:
        >>> x, y = torch.randn(6, 3), torch.randn(6, 3)
        >>> z = x @ y.T / 0.5 - 1.0
        >>> dense = -torch.nn.functional.logsigmoid((2 * torch.eye(6) - 1) * z).sum() / 6
        >>> torch.allclose(sigmoid_loss(x, y, 0.5, torch.tensor(-1.0)), dense)
        True
    """
    _count()
    x, y, k, b, dt = _operands(x, y, tau, scale, bias)
    cpu = x.is_cpu
    # PyTorch's own operations, recorded by autograd (their backward runs in C++): the
    # logits z (the bias added by the product's own call), each pair's log sigmoid(a) for
    # a = z on the diagonal and -z off it, their sum and its negative over N, as OpenCLIP
    # forms them
    xk = x if _is_one(k) else x * k
    if isinstance(b, Tensor) and (b.is_cpu if cpu else b.device == xk.device):
        z = torch.addmm(b, xk, y.t())
    else:  # no bias, a number, or a CPU scalar tensor beside features on a device
        z = F.linear(xk, y) if b is None else F.linear(xk, y) + b
    if _checks.validating():
        _read_extremes(z.detach(), x, y, tau, names, bias=b, stacked=not cpu)
    n = x.shape[0]
    return F.logsigmoid(z.mul(_signs(n, dt, _CPU if cpu else x.device))).sum().div(-n)


def _operands(
    x: Tensor,
    y: Tensor,
    tau: float | Tensor,
    scale: float | Tensor | None,
    bias: float | Tensor | None = None,
) -> tuple[Any, ...]:
    """The features in their accumulation dtype (half precision upcast, differentiably), the
    multiplier of their products (``scale``, else ``1 / tau``) and the bias, a tensor
    multiplier and bias as 0-d tensors of that dtype, and that dtype."""
    dt = x.dtype
    if dt is not y.dtype or dt not in _WIDE:
        dt = accumulation_dtype(promoted(x.dtype, y.dtype))
        x, y = _as(x, dt), _as(y, dt)
    k = scale
    if k is None:
        k = tau.reciprocal() if isinstance(tau, Tensor) else 1.0 / tau
    # a 0-d tensor of that dtype as it is (tested here: this runs on every small call)
    if not isinstance(k, Tensor):
        k = float(k)
    elif k.dtype is not dt or k.dim():
        k = _scalar(k, dt)
    b = bias
    if isinstance(b, Tensor) and (b.dtype is not dt or b.dim()):
        b = _scalar(b, dt)
    return x, y, k, b, dt


#: the dtypes the products are formed in as they are
_WIDE = (torch.float32, torch.float64)
#: the CPU, as the caches of constant tensors key it (no device object formed per call)
_CPU = torch.device("cpu")


def _as(t: Tensor, dt: torch.dtype) -> Tensor:
    """``t`` in ``dt`` (no call, so no autograd step, when it is already)."""
    return t if t.dtype == dt else t.to(dt)


def _scalar(t: Tensor, dt: torch.dtype) -> Tensor:
    """A one-element tensor as a 0-d tensor of ``dt``."""
    return _as(t if t.dim() == 0 else t.reshape(()), dt)


@functools.lru_cache(maxsize=8)
def _targets(n: int, lines: int, device: torch.device) -> Tensor:
    """Each of ``lines`` lines' positive, the column ``i mod n`` of line ``i``, made once per
    size and device."""
    return torch.arange(lines, device=device) % n


@functools.lru_cache(maxsize=4)
def _eye(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The ``(n, n)`` identity, made once per size, dtype and device."""
    return torch.eye(n, dtype=dtype, device=device)


@functools.lru_cache(maxsize=4)
def _signs(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The ``(n, n)`` matrix of SigLIP's labels, 1 on the diagonal and -1 elsewhere, made once
    per size, dtype and device."""
    w = torch.full((n, n), -1.0, dtype=dtype, device=device)
    w.diagonal().fill_(1.0)
    return w


def _count() -> None:
    _PATH_USAGE["dense"] = _PATH_USAGE.get("dense", 0) + 1
