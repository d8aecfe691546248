r"""The streamed reductions as custom ops, and where each call runs.

Every reduction is a ``torch.library.custom_op`` with a fake (meta) implementation and an
autograd registration, so an outer ``torch.compile`` treats it as one node. Each op returns a
**scalar per leading batch index** and, when a gradient is needed, the gradients with respect
to ``x``, ``y``, ``tau`` and the bias, computed in the forward pass; the backward only scales
them by the incoming gradient. The functions the rest of the library calls are in
:mod:`mibounds.kernels.entry`.

Where a call runs is decided here and nowhere else, by
:func:`mibounds.kernels.cost.choose_path`: for dot scores of float32, float16 or bfloat16
features on a CUDA device, the fused Triton kernels (:mod:`mibounds.kernels.triton_kernels`)
or the tensor-core panels (:mod:`mibounds.kernels.gemm_panels`), whichever the cost model
predicts faster (each after its self-check, :mod:`mibounds.kernels.selfcheck`); the PyTorch
panel sweep (:mod:`mibounds.kernels.sweep`) for everything else. :func:`path_usage` counts
the calls each path computed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mibounds._dtypes import accumulation_dtype as _acc
from mibounds._dtypes import finite_derivatives_
from mibounds.kernels import cost, selfcheck, sweep
from mibounds.kernels import gemm_panels as gp
from mibounds.kernels import triton_kernels as tk
from mibounds.kernels.eager import EagerOp
from mibounds.kernels.elementwise import _FNS, _TRITON_OF, _triton_of

__all__ = ["path_usage"]

# --- the fused kernels: which calls they cover, and how they are called ----------------------

_TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _triton_ok(x: Tensor, y: Tensor, sim: int) -> bool:
    """Whether the fused kernels cover this call: enabled on its device, dot scores, float32
    or half features of one dtype, ``B > 0`` (any feature size, pairing, bias and weights)."""
    return (
        sim == 0
        and x.dtype in _TRITON_DTYPES
        and y.dtype == x.dtype
        and x.shape[0] > 0
        and x.shape[-1] > 0
        and selfcheck.triton_on(x.device)
    )


def _pairs(rl, cl, offset: int, exclude: int, n_paired: int, device) -> tk.Pairs:
    """The op's pairing arguments for the kernels (labels as int64 on the device)."""

    def on(t):
        return None if t is None else t.to(device=device, dtype=torch.int64).contiguous()

    return tk.Pairs(on(rl), on(cl), offset, exclude, n_paired)


def _operands(x: Tensor, y: Tensor, tau: Tensor, bias: Tensor | None):
    """Contiguous features in their own dtype, and the temperature and bias as one-element
    float32 tensors (passed by pointer: never read back)."""
    b = None if bias is None else bias.detach().float().reshape(1)
    return x.contiguous(), y.contiguous(), tau.detach().float().reshape(1), b


def _like(out: tuple, x: Tensor, y: Tensor, n_values: int) -> tuple:
    """The kernels' outputs with the gradients in the layout of ``x`` and ``y`` (as the fake
    kernel promises) and the temperature and bias gradients finite (the overflow rule)."""
    values, (dx, dy, dtau, dbias) = out[:n_values], out[n_values:]
    if dx.numel() and dx.stride() != x.stride():
        dx = torch.empty_like(x).copy_(dx)
    if dy.numel() and dy.stride() != y.stride():
        dy = torch.empty_like(y).copy_(dy)
    return (*values, dx, dy, finite_derivatives_(dtau), finite_derivatives_(dbias))


def _key(op: str, path: str, x: Tensor, rl, exclude: int, bias, *extra) -> tuple:
    """The self-check key of a call: each path and combination is a different variant."""
    pairing = f"labels={rl is not None} exclude={exclude} bias={bias is not None}"
    return (op, path, x.dtype, tk.precision(x.dtype), "dot", x.shape[-1], pairing, *extra)


#: path -> how many op calls it was chosen for (a checked kernel that fell back to the sweep
#: is counted under its own path; :func:`~mibounds.kernels.selfcheck.triton_usage` tells)
_PATH_USAGE: dict[str, int] = {}


def path_usage() -> dict[str, int]:
    """How many streamed op calls each path (``"fused"``, ``"panels"``, ``"sweep"``) was
    chosen for in this process (see :func:`mibounds.kernels.cost.choose_path`), and how many
    loss calls the small-batch path computed whole (``"dense"``, :mod:`mibounds.kernels.small`).

    Example:
        >>> isinstance(path_usage(), dict)
        True
    """
    return dict(_PATH_USAGE)


def _fused(kernel, n_values: int, **names: int):
    """The fused implementation of an op whose arguments start ``(x, y, tau, bias, sim, rl,
    cl, offset, exclude, n_paired, ...)`` and end with ``need_grad``: ``kernel`` gets the
    operands, the pairing and, by keyword, the op arguments at the positions ``names`` gives."""

    def run(*args):
        x, y, tau, bias, _, rl, cl, offset, exclude, n_paired = args[:10]
        xc, yc, t, b = _operands(x, y, tau, bias)
        pairs = _pairs(rl, cl, offset, exclude, n_paired, x.device)
        extra = {name: args[pos] for name, pos in names.items()}
        return _like(kernel(xc, yc, t, args[-1], pairs=pairs, bias=b, **extra), x, y, n_values)

    return run


def _dispatch(op: str, args: tuple, kernels, sweep_fn, covered: bool = True, *key_extra):
    """``args`` on the path :func:`~mibounds.kernels.cost.choose_path` picks: ``kernels``
    maps ``"fused"`` and ``"panels"`` to their implementations (each used after its
    self-check); the sweep everywhere else."""
    x, y, bias, sim, rl, exclude = args[0], args[1], args[3], args[4], args[5], args[8]
    ok = covered and _triton_ok(x, y, sim)
    path = cost.choose_path(op, x.device, x.dtype, x.shape[1], y.shape[1], x.shape[2], ok)
    _PATH_USAGE[path] = _PATH_USAGE.get(path, 0) + 1
    if path == "sweep":
        return sweep_fn(*args)
    key = _key(op, path, x, rl, exclude, bias, *key_extra)
    return selfcheck.checked(op, key, kernels[path], sweep_fn, args)


def _both(name: str, n_values: int, **names: int) -> dict:
    """The fused and the panel implementation of the kernel function ``name``."""
    return {
        "fused": _fused(getattr(tk, name), n_values, **names),
        "panels": _fused(getattr(gp, name), n_values, **names),
    }


_ROW_LSE = _both("lse", 1, weight=10, minus_pos=11)
_SYM_LSE = _both("symmetric_lse", 1, row_weight=10, col_weight=11, minus_pos=12)
_NEG_LME = _both("neg_lme", 1, log_weight=10)


def _row_lse_mean(
    x: Tensor,
    y: Tensor,
    tau: Tensor,
    bias: Tensor | None,
    sim: int,
    rl: Tensor | None,
    cl: Tensor | None,
    offset: int,
    exclude: int,
    n_paired: int,
    row_w: Tensor | None,
    minus_pos: bool,
    need_grad: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    args = (x, y, tau, bias, sim, rl, cl, offset, exclude, n_paired, row_w, minus_pos, need_grad)
    return _dispatch("row_lse_mean", args, _ROW_LSE, sweep.row_lse_mean_sweep, True, minus_pos)


def _sym_lse_mean(
    x: Tensor, y: Tensor, tau: Tensor, bias: Tensor | None, sim: int, rl: Tensor | None,
    cl: Tensor | None, offset: int, exclude: int, n_paired: int, row_w: Tensor | None,
    col_w: Tensor | None, minus_pos: bool, need_grad: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    args = (x, y, tau, bias, sim, rl, cl, offset, exclude, n_paired, row_w, col_w, minus_pos,
            need_grad)  # fmt: skip
    # the own-key-plus-queue exclusion is one-way (MoCo): the sweep takes it
    covered = exclude != 2
    return _dispatch("sym_lse_mean", args, _SYM_LSE, sweep.sym_lse_mean_sweep, covered, minus_pos)


def _offdiag_lme(
    x: Tensor,
    y: Tensor,
    tau: Tensor,
    bias: Tensor | None,
    sim: int,
    rl: Tensor | None,
    cl: Tensor | None,
    offset: int,
    exclude: int,
    n_paired: int,
    log_w: Tensor | None,
    need_grad: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    args = (x, y, tau, bias, sim, rl, cl, offset, exclude, n_paired, log_w, need_grad)
    return _dispatch("offdiag_lme", args, _NEG_LME, sweep.offdiag_lme_sweep)


def _means_names(value_fn: int, grad_fn: int, param: float) -> tuple[str | None, str, float]:
    """The kernel names of the value and gradient functions, and the parameter (a function
    marked with :func:`~mibounds.kernels.elementwise.mark_triton` brings its own)."""
    grad_name, grad_param = _triton_of(grad_fn)
    value_name = None if value_fn < 0 else _FNS[value_fn][0]
    return value_name, grad_name, grad_param if grad_fn in _TRITON_OF else param


def _offdiag_means(
    x: Tensor, y: Tensor, tau: Tensor, bias: Tensor | None, sim: int, rl: Tensor | None,
    cl: Tensor | None, offset: int, exclude: int, n_paired: int, weight: Tensor | None,
    value_fn: int, grad_fn: int, shift: float, param: float, positives: bool, need_grad: bool,
    grad_value: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    args = (x, y, tau, bias, sim, rl, cl, offset, exclude, n_paired, weight, value_fn, grad_fn,
            shift, param, positives, need_grad, grad_value)  # fmt: skip
    vname, gname, kparam = _means_names(value_fn, grad_fn, param)
    covered = all(n is None or n in tk.TRITON_FUNCTIONS for n in (vname, gname))

    def on(module):
        def kernel(xc, yc, t, ng, *, pairs, bias, weight):
            return module.means(
                xc, yc, t, vname, gname, shift, kparam, ng, grad_value, pairs=pairs,
                weight=weight, positives=positives, bias=bias,
            )  # fmt: skip

        # need_grad is not the last argument of this op: the call is given it explicitly
        run = _fused(kernel, 2, weight=10)
        return lambda *a: run(*a[:11], a[16])

    return _dispatch(
        "offdiag_means", args, {"fused": on(tk), "panels": on(gp)}, sweep.offdiag_means_sweep,
        covered, vname, gname, shift, kparam, grad_value, positives,
    )  # fmt: skip


# --- the custom ops ---------------------------------------------------------------------------

_row_lse_mean_op = torch.library.custom_op("mibounds::row_lse_mean", mutates_args=())(_row_lse_mean)
_sym_lse_mean_op = torch.library.custom_op("mibounds::sym_lse_mean", mutates_args=())(_sym_lse_mean)
_offdiag_lme_op = torch.library.custom_op("mibounds::offdiag_lme", mutates_args=())(_offdiag_lme)
_offdiag_means_op = torch.library.custom_op("mibounds::offdiag_means", mutates_args=())(
    _offdiag_means
)
_interpolated_terms = torch.library.custom_op("mibounds::interpolated_terms", mutates_args=())(
    sweep.interpolated_terms_sweep
)


@_row_lse_mean_op.register_fake
def _(x, y, tau, bias, sim, rl, cl, offset, exclude, n_paired, row_w, minus_pos, need_grad):
    return _fake_outputs(x, y, need_grad, 1)


@_sym_lse_mean_op.register_fake
def _(x, y, tau, bias, sim, rl, cl, offset, exclude, n_paired, row_w, col_w, minus_pos, need_grad):
    return _fake_outputs(x, y, need_grad, 1)


@_offdiag_lme_op.register_fake
def _(x, y, tau, bias, sim, rl, cl, offset, exclude, n_paired, log_w, need_grad):
    return _fake_outputs(x, y, need_grad, 1)


@_offdiag_means_op.register_fake
def _(
    x, y, tau, bias, sim, rl, cl, offset, exclude, n_paired, weight, value_fn, grad_fn, shift,
    param, positives, need_grad, grad_value,
):  # fmt: skip
    return _fake_outputs(x, y, need_grad, 2)


def _fake_outputs(x: Tensor, y: Tensor, need_grad: bool, n_values: int):
    b = x.shape[0]
    acc = _acc(torch.promote_types(x.dtype, y.dtype))
    dx = torch.empty_like(x) if need_grad else x.new_empty(0)
    dy = torch.empty_like(y) if need_grad else y.new_empty(0)
    values = [x.new_empty(b, dtype=acc) for _ in range(n_values)]
    return (*values, dx, dy, x.new_empty(b, dtype=acc), x.new_empty(b, dtype=acc))


@_interpolated_terms.register_fake
def _(x, y, tau, log_baseline, sim, alpha, need_grad):
    value, dx, dy, dtau, _ = _fake_outputs(x, y, need_grad, 1)
    db = torch.empty_like(log_baseline) if need_grad else log_baseline.new_empty(0)
    return value, dx, dy, dtau, db


def _setup_interpolated(ctx, inputs, output) -> None:
    ctx.save_for_backward(*output[1:])
    ctx.tau_shape, ctx.tau_dtype = inputs[2].shape, inputs[2].dtype


def _backward_interpolated(ctx, grad_value, *_):
    gx, gy, gt = _backward_scalar(ctx, grad_value)
    db = ctx.saved_tensors[3]
    gb = (db.to(grad_value.dtype) * grad_value[:, None]).to(db.dtype)
    return gx, gy, gt, gb, None, None, None


_interpolated_terms.register_autograd(_backward_interpolated, setup_context=_setup_interpolated)


# --- autograd: backward scales the gradients stored by the forward sweep --------------------


def _setup_scalar(ctx, inputs, output) -> None:
    tau, bias = inputs[2], inputs[3]
    ctx.save_for_backward(*output[-4:])
    ctx.tau_shape, ctx.tau_dtype = tau.shape, tau.dtype
    ctx.bias_shape = None if bias is None else bias.shape
    ctx.bias_dtype = None if bias is None else bias.dtype
    ctx.n_inputs = len(inputs)


def refuse_second_order() -> None:
    """Raise where a backward pass records its own graph (``create_graph=True``): the kernels'
    gradients are formed from stored derivatives, constants to autograd, so a second derivative
    through them would be silently wrong (or silently 0)."""
    if torch.is_grad_enabled():
        raise RuntimeError(
            "mibounds: the streamed, fused and small-batch kernels form first derivatives only, "
            "so a backward pass with create_graph=True cannot go through them (a second "
            "derivative would leave out the loss's own); for second derivatives pass the dense "
            "score matrix to the bound, e.g. mibounds.infonce(x @ y.T / tau), whose operations "
            "are PyTorch's own"
        )


def _backward_scalar(ctx, grad_value):
    """The stored ``(dx, dy, dtau)`` (the first three saved tensors) times the incoming
    per-batch gradient."""
    refuse_second_order()
    dx, dy, dtau = ctx.saved_tensors[:3]
    if dx.numel() == 0:
        raise RuntimeError(
            "mibounds streaming op: no gradient was computed in the forward pass "
            "(it ran with need_grad=False); call it with gradients enabled"
        )
    g = grad_value.to(dtau.dtype)
    zero = g == 0
    gx = _times(dx.to(g.dtype), g[:, None, None], zero[:, None, None]).to(dx.dtype)
    gy = _times(dy.to(g.dtype), g[:, None, None], zero[:, None, None]).to(dy.dtype)
    gt = _times(dtau, g, zero).sum().reshape(ctx.tau_shape).to(ctx.tau_dtype)
    return gx, gy, gt


def _times(stored: Tensor, g: Tensor, zero: Tensor | None = None) -> Tensor:
    """``stored * g`` with the overflow rule: a product beyond the dtype's range is 0, and a
    zero incoming gradient gives 0 (an output that does not reach the loss adds nothing);
    ``zero`` is ``g == 0``, where the caller has it already."""
    zero = g == 0 if zero is None else zero
    return finite_derivatives_((stored * g).masked_fill_(zero, 0.0))


def _backward_op(ctx, grad_value):
    """Gradients of every input of an op whose inputs start ``(x, y, tau, bias)`` and whose
    outputs end with the stored ``(dx, dy, dtau, dbias)``."""
    gx, gy, gt = _backward_scalar(ctx, grad_value)
    gb = None
    if ctx.bias_shape is not None:
        dbias = ctx.saved_tensors[3]
        gb = _times(dbias, grad_value.to(dbias.dtype)).sum().reshape(ctx.bias_shape)
        gb = gb.to(ctx.bias_dtype)
    return (gx, gy, gt, gb, *([None] * (ctx.n_inputs - 4)))


def _backward_one(ctx, grad_value, *_):
    return _backward_op(ctx, grad_value)


def _backward_means(ctx, grad_vvalue, grad_gvalue, *_):
    return _backward_op(ctx, grad_gvalue)


_row_lse_mean_op.register_autograd(_backward_one, setup_context=_setup_scalar)
_sym_lse_mean_op.register_autograd(_backward_one, setup_context=_setup_scalar)
_offdiag_lme_op.register_autograd(_backward_one, setup_context=_setup_scalar)
_offdiag_means_op.register_autograd(_backward_means, setup_context=_setup_scalar)

# the entry points call these: the custom op where it is needed, its implementation otherwise
_ROW_LSE_CALL = EagerOp(_row_lse_mean_op, _row_lse_mean, _setup_scalar, _backward_one, 1)
_SYM_LSE_CALL = EagerOp(_sym_lse_mean_op, _sym_lse_mean, _setup_scalar, _backward_one, 1)
_NEG_LME_CALL = EagerOp(_offdiag_lme_op, _offdiag_lme, _setup_scalar, _backward_one, 1)
_MEANS_CALL = EagerOp(_offdiag_means_op, _offdiag_means, _setup_scalar, _backward_means, 2)

# Under CPU autocast (and for the interpolated bound, which only sweeps, on every device) the
# ops run with autocast off and their inputs in float32: the sweep accumulates in float32 and
# its panel products must not be recast to half. Under CUDA autocast the entry points
# (mibounds.kernels.entry) cast the features to the autocast dtype themselves, so the fused
# kernels multiply them on tensor cores, as torch.matmul would.
for _op in (
    "mibounds::row_lse_mean",
    "mibounds::sym_lse_mean",
    "mibounds::offdiag_lme",
    "mibounds::offdiag_means",
):
    torch.library.register_autocast(_op, "cpu", torch.float32)
for _device in ("cpu", "cuda"):
    torch.library.register_autocast("mibounds::interpolated_terms", _device, torch.float32)
del _op, _device
