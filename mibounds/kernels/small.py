r"""The small-batch path: a plain batch whose score matrix is small is reduced from that
matrix, held whole.

At a few hundred samples a call costs its number of tensor operations (each a few
microseconds on a CPU, whatever its size), not its arithmetic. The streamed sweep forms its
statistics panel by panel with float64 sums and the gradient in the forward pass: a CLIP loss
call dispatches about 160 operations in all. Here each of the plain pairing's two losses is
one :class:`torch.autograd.Function`, 25 operations a call (CLIP's; SigLIP's 24) with the
checks and the autograd steps: the logits ``S = (k x) y^T`` (``k`` the logit scale, or the
inverse temperature) in one product, each row's (and column's) statistic from the matrix, and the
gradient only when the backward pass asks for it, from the stored matrices, in two products.
The lines' losses (CLIP's) and the rows' sums (SigLIP's) are added in float64: one rounding
of the total.

* :func:`cross_entropy`: the InfoNCE family's cross-entropy, each row's
  :math:`\log\sum_j e^{S_{ij}} - S_{ii}` formed as ``log1p`` of the other entries' sum of
  :math:`e^{S_{ij} - S_{ii}}` (a row whose positive dominates keeps its small loss, which the
  dense ``cross_entropy`` rounds to 0 below about 6e-8): as they are where the extremes of
  ``S``, read back while values are validated (and on the CPU with the checks off too), show
  that the sums stay finite, else from each line's own maximum, as the sweep forms them;
* :func:`sigmoid_loss`: SigLIP's :math:`\frac1N\sum_{ij} -\log\sigma(\pm z_{ij})` for the
  logits ``z = S + bias``.

:func:`covers` says whether a call takes this path: dot scores of 2-D features with at most
:data:`MAX_ENTRIES` scores for the loss, whose four matrices fit the sweep's panel workspace
(:func:`mibounds.kernels.streaming.get_memory_budget`), called eagerly (not while compiling:
there the custom op is one node of the graph), outside autocast, where no path is forced
(:func:`mibounds.kernels.cost.set_path`), the sweep's panel bodies are not compiled
(:func:`mibounds.kernels.streaming.set_backend`) and the fused kernels are off (on a GPU with
Triton they keep every call). The range rule is the one of the streamed and the dense paths
(:func:`mibounds.kernels.operands._within_range`), checked on the matrix while values are
validated; a loss that names its features (``SeparableScores._of_loss`` decides the path
once, when it builds the scores) has their values checked on the same read-back of
the matrix's extremes. The gradient is a first derivative only: a backward pass with
``create_graph=True`` is refused (:func:`mibounds.kernels.ops.refuse_second_order`).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mibounds import _checks
from mibounds._dtypes import accumulation_dtype, promoted
from mibounds.kernels import cost
from mibounds.kernels.operands import _overflow_message, _within_range
from mibounds.kernels.ops import _PATH_USAGE, refuse_second_order
from mibounds.kernels.panels import _BUDGET, DEFAULT_MEMORY_BUDGET, get_backend
from mibounds.kernels.selfcheck import triton_on

__all__ = ["MAX_ENTRIES", "covers", "cross_entropy", "sigmoid_loss"]

#: The most score entries (``N x M``) each loss reduces whole: up to them its matrices (four
#: of ``N x M`` in the accumulation dtype) cost less time than the sweep's operations do
#: (``benchmarks/overhead.py`` times both): N = 768 for the cross-entropy, 1448 (32 MiB of
#: float32 matrices) for the sigmoid loss, whose sweep forms a transcendental per entry more.
MAX_ENTRIES = {"cross_entropy": 768 * 768, "sigmoid": 2**21}

#: the natural log of the largest finite value of each accumulation dtype, less 1: a sum of
#: ``n`` exponentials of at most ``t`` is finite where ``t + log(n)`` is below it
_EXP_ROOM = {dt: math.log(torch.finfo(dt).max) - 1.0 for dt in (torch.float32, torch.float64)}


def covers(x: Tensor, y: Tensor, similarity: str, loss: str = "cross_entropy") -> bool:
    """Whether the scores ``similarity(x, y)`` of one process are reduced whole here for
    ``loss`` (``"cross_entropy"`` or ``"sigmoid"``)."""
    if similarity != "dot" or x.dim() != 2 or y.dim() != 2:
        return False
    entries = x.shape[0] * y.shape[0]
    # compiled panel bodies asked for (set_backend) are the sweep's
    if entries > MAX_ENTRIES[loss] or get_backend() != "eager" or torch.compiler.is_compiling():
        return False
    # its matrices within the panel workspace the sweep would take (the CPU's, or one set)
    kind = "cpu" if x.is_cpu else x.device.type
    budget = _BUDGET[0]
    if budget is None and kind == "cpu":
        budget = DEFAULT_MEMORY_BUDGET  # get_memory_budget() of the CPU
    if budget is not None and 4 * entries * max(4, x.element_size()) > budget:
        return False
    if torch.is_autocast_enabled(kind) or cost.get_path() is not None:
        return False
    return not triton_on(x.device)  # the fused kernels keep every call they take


def _scores(
    x: Tensor,
    y: Tensor,
    k: float | Tensor,
    tau: Any,
    names: tuple[str, str] | None,
    spread: bool = False,
) -> tuple[Tensor, Tensor, float | None]:
    """``S = (k x) y^T`` in the features' dtype (the logits as OpenCLIP forms them), ``k x``
    and the spread ``max S - min S`` where its extremes were read (else ``None``): while
    values are validated, and with ``spread`` on the CPU, where reading them back costs no
    device synchronisation. While values are validated the range rule holds on ``S``, as on
    the streamed path (the message names the temperature ``tau``). With the features'
    ``names``, their values are checked here too: a NaN or an infinity in either makes a whole
    line of ``S`` not finite, so the extremes of ``S`` read back once say whether all are
    finite; where they are not, the features are read (the message names the one that is not
    finite) before the range rule's message."""
    xk = x if _is_one(k) else x * k
    s = F.linear(xk, y)  # x y^T
    validating = _checks.validating()
    if not validating and not (spread and s.is_cpu):
        return s, xk, None
    extremes = torch.aminmax(s)
    lo, hi = float(extremes.min), float(extremes.max)
    largest = math.inf if math.isnan(lo + hi) else max(-lo, hi)
    if validating and not _within_range(largest, s.shape[-1], s.dtype):
        if names is not None and not math.isfinite(largest):
            _checks.check_values_of(dict(zip(names, (x, y), strict=True)))
        raise ValueError(_overflow_message(tau, s.dtype, largest, s.shape[-1]))
    return s, xk, hi - lo


def _keep(
    ctx: Any, x: Tensor, xk: Tensor, y: Tensor, k: float | Tensor, count: int, *more: Tensor
) -> None:
    """Save what :func:`_feature_grads` needs (``xk = k x``), and ``more``."""
    ctx.k = None if isinstance(k, Tensor) else k
    ctx.count = count
    ctx.save_for_backward(x, xk, y, k if isinstance(k, Tensor) else None, *more)


def _feature_grads(
    ctx: Any, saved: tuple, g: Tensor, grad: Tensor | None, bias: bool = False
) -> tuple[Tensor | None, ...]:
    r"""The gradients with respect to ``x``, ``y``, the multiplier ``k`` (and, with ``bias``,
    the bias) of ``grad`` times a loss whose gradient with respect to the scores
    ``S = (k x) y^T`` is ``g / count`` (``count`` the number of terms the loss averages), ``g``
    scaled in place: :math:`k\,g\,y`, :math:`g^T (k x)` and :math:`\sum g \odot S / k =
    (g y) \cdot x`; ``saved`` are the context's saved tensors."""
    x, xk, y, saved_k = saved[:4]
    k = ctx.k if saved_k is None else saved_k  # a float, or the tensor with its gradient
    need = ctx.needs_input_grad
    if grad is not None:  # None: g is scaled already
        g.mul_(grad).mul_(_constant(1.0 / ctx.count))
    gb = g.sum() if bias else None
    gy = torch.mm(g.t(), xk) if need[1] else None
    need_k = saved_k is not None and need[2]
    gx = gk = None
    if need[0] or need_k:
        gyx = torch.mm(g, y)  # the gradient with respect to k x
        if need_k:  # in O(N d)
            gk = torch.dot(gyx.reshape(-1), x.reshape(-1))
        if need[0]:
            gx = gyx if _is_one(k) else gyx.mul_(k)
    return gx, gy, gk, gb


def _is_one(k: float | Tensor) -> bool:
    """Whether the multiplier ``k`` is the float 1 (nothing to multiply)."""
    return not isinstance(k, Tensor) and k == 1.0


class _CrossEntropy(torch.autograd.Function):
    """The mean over the rows (and, symmetric, the columns) of each line's log-sum-exp less
    its positive (the diagonal score)."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        y: Tensor,
        k: float | Tensor,
        symmetric: bool,
        tau: Any,
        names: tuple[str, str] | None,
    ) -> Tensor:
        s, xk, spread = _scores(x, y, k, tau, names, spread=True)
        pos = s.diagonal()
        # the lines run down the columns of d: d[0, j, i] = S_ij - S_ii (row i) and, when
        # symmetric, d[1, j, i] = S_ji - S_ii (column i), each line's positive at j = i
        # (the stacked copy shifted in place; a single line's shift is a new matrix, as the
        # positives are a view of S)
        d = torch.stack((s.t(), s)).sub_(pos) if symmetric else s.t().sub(pos)[None]
        # each line's log-sum-exp less its positive is log(1 + rest), rest the sum of e^d over
        # the others (the positive's own e^0 = 1 left out of the sum, so that log1p keeps a
        # small loss where the positive dominates)
        if spread is not None and spread + math.log(s.shape[-1]) < _EXP_ROOM[s.dtype]:
            # every d is at most the spread of S: the sums of e^d are finite as they are
            e = d.exp()
            e.diagonal(0, -2, -1).zero_()
            terms = e.sum(-2, keepdim=True).log1p_()
        else:
            # from each line's maximum top >= 0 (its positive is 0): the log-sum-exp less the
            # positive is top + log(e^{-top} + rest'), rest' the others' sum below the maximum,
            # formed as top + log1p(rest' + (e^{-top} - 1)): 1 is taken from the positive's
            # entry, which leaves 0 where the positive is the maximum, and where it is not,
            # rest' holds the maximum's own 1 (the sum is at least e^{-top})
            top = d.amax(-2, keepdim=True)
            e = (d - top).exp_()
            e.diagonal(0, -2, -1).sub_(1)
            terms = torch.log1p(e.sum(-2, keepdim=True)).add_(top)
        _keep(ctx, x, xk, y, k, terms.numel(), d, terms)
        return terms.mean(dtype=torch.float64).to(terms.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        refuse_second_order()  # the gradient is formed from stored matrices
        saved = ctx.saved_tensors
        d, terms = saved[4:]
        # each line's softmax, e^{S_ij - lse_i}; the positive's -1 on the diagonal
        p = (d - terms).exp_()
        lines = p.shape[0]
        if lines == 2:  # the rows' lines transposed back onto the scores
            g = p[0].t() + p[1]
        else:
            g = p[0].t()
        g.diagonal().sub_(_constant(lines))
        return (*_feature_grads(ctx, saved, g, grad)[:3], None, None, None)


class _Sigmoid(torch.autograd.Function):
    """SigLIP's loss: every pair a binary classification, the diagonal positive."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        y: Tensor,
        k: float | Tensor,
        bias: float | Tensor | None,
        tau: Any,
        names: tuple[str, str] | None,
    ) -> Tensor:
        s, xk, _ = _scores(x, y, k, tau, names)
        # each pair's loss is -log sigmoid(a) for a = -z off the diagonal and z on it (the
        # logits z = S + bias); the buffer of log sigmoid serves its derivative
        a = s.neg() if bias is None else torch.sub(-bias, s)
        a.diagonal().neg_()
        out, buffer = torch.ops.aten.log_sigmoid_forward(a)
        # each row's sum, then their total in float64 (N^2 terms: one rounding of the total)
        total = out.sum(-1).sum(dtype=torch.float64)
        value = total.mul_(_constant(-1.0 / a.shape[0])).to(a.dtype)
        _keep(ctx, x, xk, y, k, a.shape[0], a, buffer)
        ctx.tensor_bias = isinstance(bias, Tensor)
        return value

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        refuse_second_order()  # the gradient is formed from stored matrices
        saved = ctx.saved_tensors
        a, buffer = saved[4:]
        # d(-log sigmoid(a)) / dz = sigmoid(-a) off the diagonal (da / dz = -1), its
        # negative on it; the incoming gradient and the mean's 1 / N are applied to it here
        scaled = grad * _constant(1.0 / ctx.count, grad.dtype)
        g = torch.ops.aten.log_sigmoid_backward(scaled.expand_as(a), a, buffer)
        g.diagonal().neg_()
        need_bias = ctx.tensor_bias and ctx.needs_input_grad[3]
        return (*_feature_grads(ctx, saved, g, None, need_bias), None, None)


def cross_entropy(
    x: Tensor,
    y: Tensor,
    tau: float | Tensor,
    symmetric: bool,
    scale: float | Tensor | None = None,
    names: tuple[str, str] | None = None,
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
    x, y, k, _ = _operands(x, y, tau, scale)
    return _CrossEntropy.apply(x, y, k, symmetric, _named(tau), names)


def sigmoid_loss(
    x: Tensor,
    y: Tensor,
    tau: float | Tensor,
    bias: float | Tensor | None,
    scale: float | Tensor | None = None,
    names: tuple[str, str] | None = None,
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
    x, y, k, b = _operands(x, y, tau, scale, bias)
    return _Sigmoid.apply(x, y, k, b, _named(tau), names)


def _operands(
    x: Tensor,
    y: Tensor,
    tau: float | Tensor,
    scale: float | Tensor | None,
    bias: float | Tensor | None = None,
) -> tuple[Any, ...]:
    """The features in their accumulation dtype (half precision upcast, differentiably), the
    multiplier of their products (``scale``, else ``1 / tau``) and the bias, a tensor
    multiplier and bias as 0-d tensors of that dtype."""
    dt = accumulation_dtype(promoted(x.dtype, y.dtype))
    k = scale
    if k is None:
        k = tau.reciprocal() if isinstance(tau, Tensor) else 1.0 / tau
    k = _scalar(k, dt) if isinstance(k, Tensor) else float(k)
    b = _scalar(bias, dt) if isinstance(bias, Tensor) else bias
    return _as(x, dt), _as(y, dt), k, b


def _named(tau: float | Tensor) -> float | Tensor:
    """The temperature as the range rule's message names it (no part of the graph)."""
    return tau.detach() if isinstance(tau, Tensor) else tau


def _as(t: Tensor, dt: torch.dtype) -> Tensor:
    """``t`` in ``dt`` (no call, so no autograd step, when it is already)."""
    return t if t.dtype == dt else t.to(dt)


def _scalar(t: Tensor, dt: torch.dtype) -> Tensor:
    """A one-element tensor as a 0-d tensor of ``dt``."""
    return _as(t if t.dim() == 0 else t.reshape(()), dt)


@functools.lru_cache(maxsize=256)
def _constant(value: float, dtype: torch.dtype = torch.float64) -> Tensor:
    """``value`` as a 0-d tensor of ``dtype`` on the CPU, made once: an operation with a
    tensor of more dimensions takes it as a scalar of its own dtype, on any device, without
    wrapping a Python number into a tensor on every call (made on the CPU whatever the default
    device: only a CPU scalar tensor combines with tensors of every device)."""
    return torch.tensor(value, dtype=dtype, device="cpu")


def _count() -> None:
    _PATH_USAGE["dense"] = _PATH_USAGE.get("dense", 0) + 1
