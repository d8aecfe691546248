"""The streamed ops called eagerly without the dispatcher.

Each op of :mod:`mibounds.kernels.ops` is a ``torch.library`` custom op, so that
``torch.compile`` sees it whole and CPU autocast casts its inputs. Outside those, going through
the dispatcher costs a fixed fraction of a millisecond per call, which is most of the time of a
loss at small batches. :class:`EagerOp` runs the same implementation, with the same autograd
context and backward, as a :class:`torch.autograd.Function` there, and hands every other call
to the custom op: the values and gradients are the same either way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor


class _Eager(torch.autograd.Function):
    """An op's implementation with the autograd context and backward of its custom op."""

    @staticmethod
    def forward(ctx: Any, op: EagerOp, *args: Any) -> tuple[Tensor, ...]:
        out = op.impl(*args)
        # the outputs after the values are the gradients stored for the backward pass
        ctx.mark_non_differentiable(*out[op.n_values :])
        # no zero gradients are formed for the stored gradients (the backward ignores them)
        ctx.set_materialize_grads(False)
        op.setup_context(ctx, args, out)
        ctx.op, ctx.n_args = op, len(args)
        return out

    @staticmethod
    def backward(ctx: Any, *grads: Tensor | None) -> tuple[Tensor | None, ...]:
        # a value that did not reach the loss has no gradient: zeros, as the custom op gets
        values = grads[: ctx.op.n_values]
        given = [g for g in values if g is not None]
        if not given:
            return (None,) * (1 + ctx.n_args)
        values = tuple(torch.zeros_like(given[0]) if g is None else g for g in values)
        return (None, *ctx.op.backward(ctx, *values))


class EagerOp:
    """Call ``impl`` directly (as :class:`_Eager`) where the custom op ``op`` would only add
    the dispatcher's cost: plain tensors, no ``torch.compile`` tracing, no CPU autocast.

    Args:
        op: the custom op (``torch.library.custom_op``) of ``impl``.
        impl: its implementation.
        setup_context, backward: what ``op.register_autograd`` was given.
        n_values: how many leading outputs are values (the rest are stored gradients).
    """

    def __init__(
        self,
        op: Callable[..., Any],
        impl: Callable[..., Any],
        setup_context: Callable[..., None],
        backward: Callable[..., Any],
        n_values: int,
    ) -> None:
        self.op, self.impl = op, impl
        self.setup_context, self.backward = setup_context, backward
        self.n_values = n_values

    def __call__(self, x: Tensor, *args: Any) -> Any:
        if (
            type(x) is not Tensor  # fake, meta or subclassed tensors: the op's registrations
            or x.device.type == "meta"
            or torch.compiler.is_compiling()
            or torch.is_autocast_enabled("cpu")
        ):
            return self.op(x, *args)
        return _Eager.apply(self, x, *args)
