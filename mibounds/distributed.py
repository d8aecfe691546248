r"""Negatives from every rank: collectives with gradients, and bounds over the global batch.

With data parallelism each rank holds ``n_r`` of the ``N = sum_r n_r`` pairs. Passing
``gather=True`` (or a process group) to a bound, or to
:class:`~mibounds.scores.SeparableScores`, makes every rank score **its own rows against the
columns of all ranks**, with the positive of local row ``i`` in global column
``offset_r + i`` (``offset_r = n_0 + ... + n_{r-1}``, the order of the ranks in the group).
Each rank reduces its rows, the partial sums are combined across ranks, and every rank returns
the bound of the concatenated batch.

**Gradient convention (the DDP one).** The collectives here sum gradients over ranks in
their backward pass, like :mod:`torch.distributed.nn.functional`. Every rank computes the same
global value, so the gradient reaching each rank's local inputs is ``world_size`` times the
single-process gradient of the concatenated batch, and
:class:`~torch.nn.parallel.DistributedDataParallel`, which averages gradients over ranks,
ends with exactly the single-process gradient. Without DDP, sum the parameter gradients over
ranks and divide by the world size. Every rank must call ``backward``.

Local batch sizes may differ between ranks (they are exchanged on every call, which is one
small host synchronisation); every rank needs at least one row. These functions run eagerly:
under ``torch.compile`` the collectives are graph breaks.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import torch
import torch.distributed as dist
from torch import Tensor

from mibounds import _checks

__all__ = ["GroupArg", "all_gather", "all_reduce", "batch_layout", "resolve_group"]

#: What ``gather=`` accepts: ``False``/``None`` (off), ``True`` (the default group) or a group.
GroupArg: TypeAlias = "bool | dist.ProcessGroup | None"


def resolve_group(gather: Any) -> Any:
    """The process group named by a ``gather=`` argument, or ``None`` when gathering is off.

    Args:
        gather: ``False`` or ``None`` (off), ``True`` (the default group) or a
            :class:`torch.distributed.ProcessGroup`.

    Raises:
        TypeError: for any other value.
        RuntimeError: ``gather`` is on but :func:`torch.distributed.init_process_group` was
            not called.

    Example:
        >>> resolve_group(False) is None
        True
    """
    if gather is None or gather is False:
        return None
    if gather is not True and not (dist.is_available() and isinstance(gather, dist.ProcessGroup)):
        raise TypeError(
            f"gather must be a bool, None or a torch.distributed.ProcessGroup, got {gather!r}"
        )
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            "gather needs an initialised torch.distributed process group: call "
            "torch.distributed.init_process_group(...) first, or pass gather=False"
        )
    return dist.group.WORLD if gather is True else gather


def _explicit_group(group: GroupArg) -> Any:
    """The group of a collective called directly (``None`` or ``True``: the default group)."""
    return resolve_group(True if group is None else group)


def _world(group: Any) -> tuple[int, int]:
    return dist.get_rank(group), dist.get_world_size(group)


_MAX_DIMS = 8


def _shapes(t: Tensor, group: Any) -> list[tuple[int, ...]]:
    """Every rank's shape of ``t`` (one small all-gather)."""
    if t.dim() > _MAX_DIMS:
        raise ValueError(
            f"gather supports tensors of at most {_MAX_DIMS} dimensions, got {t.dim()}"
        )
    code = torch.full((_MAX_DIMS + 1,), -1, dtype=torch.int64, device=t.device)
    code[0] = t.dim()
    code[1 : t.dim() + 1] = torch.tensor(t.shape, dtype=torch.int64)
    out = [torch.empty_like(code) for _ in range(_world(group)[1])]
    dist.all_gather(out, code, group=group)
    rows = [c.tolist() for c in out]
    return [tuple(int(v) for v in r[1 : int(r[0]) + 1]) for r in rows]


def _sizes_along(name: str, t: Tensor, dim: int, group: Any) -> list[int]:
    """Every rank's size of ``t`` along ``dim``; the other dimensions must agree."""
    shapes = _shapes(t, group)
    d = dim % t.dim()
    others = {s[:d] + s[d + 1 :] if len(s) == t.dim() else s for s in shapes}
    if len(others) != 1:
        raise ValueError(
            f"{name}: the ranks must agree on every dimension but dim {dim} (the batch), got "
            f"shapes {shapes} (rank order)"
        )
    return [s[d] for s in shapes]


class _AllGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t: Tensor, sizes: list[int], group: Any) -> Tensor:
        rank, _ = _world(group)
        ctx.sizes, ctx.group, ctx.rank = sizes, group, rank
        width = max(sizes)
        padded = t
        if t.shape[0] < width:
            padded = torch.cat([t, t.new_zeros(width - t.shape[0], *t.shape[1:])])
        bufs = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(bufs, padded.contiguous(), group=group)
        return torch.cat([b[:n] for b, n in zip(bufs, sizes, strict=True)])

    @staticmethod
    def backward(ctx, grad: Tensor):
        total = grad.contiguous().clone()
        dist.all_reduce(total, group=ctx.group)
        start = sum(ctx.sizes[: ctx.rank])
        return total[start : start + ctx.sizes[ctx.rank]], None, None


class _AllReduce(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t: Tensor, group: Any) -> Tensor:
        ctx.group = group
        out = t.contiguous().clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        total = grad.contiguous().clone()
        dist.all_reduce(total, group=ctx.group)
        return total, None


def all_gather(tensor: Tensor, group: GroupArg = True, dim: int = 0) -> Tensor:
    """Concatenate every rank's ``tensor`` along ``dim`` (in rank order), with gradient.

    The sizes along ``dim`` may differ between ranks; every other dimension must agree. The
    backward pass sums the incoming gradients over ranks and returns this rank's slice (see the
    gradient convention in the module documentation).

    Args:
        tensor: this rank's part.
        group: ``True`` (the default group) or a process group.
        dim: the dimension to concatenate along.

    Returns:
        The concatenation, the same on every rank.

    Raises:
        RuntimeError: no initialised process group.
        ValueError: the ranks disagree on a dimension other than ``dim``.

    Example:
        >>> import os, tempfile, torch.distributed as dist
        >>> dist.init_process_group("gloo", init_method="file://" + os.path.join(
        ...     tempfile.mkdtemp(), "pg"), rank=0, world_size=1)
        >>> all_gather(torch.ones(2, 3)).shape  # one process: the tensor itself
        torch.Size([2, 3])
        >>> dist.destroy_process_group()
    """
    g = _explicit_group(group)
    _checks.check_tensor("tensor", tensor, min_dim=1)
    sizes = _sizes_along("all_gather", tensor, dim, g)
    moved = tensor.movedim(dim, 0)
    return _AllGather.apply(moved, sizes, g).movedim(0, dim)


def all_reduce(tensor: Tensor, group: GroupArg = True) -> Tensor:
    """Sum of every rank's ``tensor``, with gradient (the backward pass sums over ranks too).

    Raises:
        RuntimeError: no initialised process group.

    Example:
        >>> import os, tempfile, torch.distributed as dist
        >>> dist.init_process_group("gloo", init_method="file://" + os.path.join(
        ...     tempfile.mkdtemp(), "pg"), rank=0, world_size=1)
        >>> all_reduce(torch.tensor([1.0, 2.0]))
        tensor([1., 2.])
        >>> dist.destroy_process_group()
    """
    g = _explicit_group(group)
    _checks.check_tensor("tensor", tensor)
    return _AllReduce.apply(tensor, g)


def batch_layout(n_local: int, group: GroupArg = True, device: Any = "cpu") -> tuple[int, int]:
    """``(offset, N)``: where this rank's rows start in the global batch, and its size.

    One small all-gather (a host synchronisation).

    Raises:
        RuntimeError: no initialised process group.

    Example:
        >>> import os, tempfile, torch.distributed as dist
        >>> dist.init_process_group("gloo", init_method="file://" + os.path.join(
        ...     tempfile.mkdtemp(), "pg"), rank=0, world_size=1)
        >>> batch_layout(5)  # (offset of this rank's rows, global N)
        (0, 5)
        >>> dist.destroy_process_group()
    """
    g = _explicit_group(group)
    sizes = _sizes_along("batch_layout", torch.zeros(n_local, device=device), 0, g)
    rank, _ = _world(g)
    return sum(sizes[:rank]), sum(sizes)
