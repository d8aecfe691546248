"""The safety net of the fused kernels: a kernel is used on a device only after it matched the
PyTorch sweep once on a small problem of its own.

The check problem has the call's dtype, device, feature size, similarity and pairing kind, but
its own rows, columns, label vectors, weights and bias, of its own size (so a kernel is checked
with the same variant it will run), and features whose scores are bounded (unit vectors at
temperature 0.25, ``|S| <= 4``), so every elementwise function, ``exp`` included, stays finite.
Only the outputs that the call uses are compared (a value the call does not ask for, the
gradients without ``need_grad``, the bias gradient without a bias). A failure disables that
kernel for the process with one warning naming it and the difference; ``MIBOUNDS_TRITON=0``
turns every kernel off.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
from torch import Tensor

from mibounds._environ import setting
from mibounds.kernels import triton_kernels

__all__ = ["set_triton", "triton_enabled", "triton_status", "triton_usage"]

_TRITON_SETTING: list[bool | None] = [None]
#: (op, dtype, similarity, feature size, pairing, ...) -> whether its kernel passed its check
_TRITON_CHECKED: dict[tuple, bool] = {}
#: the same keys -> how many real calls the kernel computed
_TRITON_USED: dict[tuple, int] = {}
#: the size of the self-check problem (not a multiple of any block size)
_CHECK_ROWS = 67
#: extra columns of the check problem when the call has more columns than rows
_CHECK_EXTRA = 29


def set_triton(enabled: bool | None) -> None:
    """Turn the fused Triton kernels on or off for this process (``None``: back to the
    environment variable ``MIBOUNDS_TRITON``, where ``0`` means off). Off, every device runs
    the PyTorch sweep.

    On a CUDA device the kernels are on by default. On the CPU they run only in Triton's
    interpreter and only when asked for: ``TRITON_INTERPRET=1`` together with
    ``MIBOUNDS_TRITON=1`` or ``set_triton(True)`` (slow; for testing the kernels without a GPU).

    Raises:
        TypeError: if ``enabled`` is not a bool or None.

    Example:
        >>> set_triton(False)
        >>> triton_enabled()
        False
        >>> set_triton(None)
    """
    if enabled is not None and not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool or None, got {type(enabled).__name__}")
    _TRITON_SETTING[0] = enabled


def triton_enabled() -> bool:
    """Whether the Triton kernels may be used (Triton installed, not turned off by
    :func:`set_triton` or ``MIBOUNDS_TRITON=0``).

    Example:
        >>> isinstance(triton_enabled(), bool)
        True
    """
    if not triton_kernels.HAS_TRITON:
        return False
    if _TRITON_SETTING[0] is not None:
        return _TRITON_SETTING[0]
    return setting("MIBOUNDS_TRITON", "1").strip() != "0"


def triton_on(device: torch.device) -> bool:
    """Whether the kernels run on ``device``: on CUDA when enabled; on the CPU only in Triton's
    interpreter and when asked for explicitly (see :func:`set_triton`).

    Example:
        >>> triton_on(torch.device("meta"))
        False
    """
    kind = device.type
    if kind == "cuda":
        return triton_enabled()
    return kind == "cpu" and triton_on_cpu()


def triton_on_cpu() -> bool:
    """:func:`triton_on` the CPU: in Triton's interpreter, asked for by ``set_triton(True)``
    or ``MIBOUNDS_TRITON=1``."""
    if _TRITON_SETTING[0] is False or not triton_kernels.HAS_TRITON:
        return False
    if setting("TRITON_INTERPRET", "0") != "1":
        return False
    return _TRITON_SETTING[0] is True or setting("MIBOUNDS_TRITON").strip() == "1"


def triton_status() -> dict[tuple, bool]:
    """The self-checked Triton kernels of this process: ``(op, dtype, similarity, d, pairing,
    ...) -> passed``.

    Example:
        >>> isinstance(triton_status(), dict)
        True
    """
    return dict(_TRITON_CHECKED)


def triton_usage() -> dict[tuple, int]:
    """How many calls each checked kernel computed (keys as in :func:`triton_status`); a
    kernel that failed its check, or fell back on a call, is not counted for that call.

    Example:
        >>> isinstance(triton_usage(), dict)
        True
    """
    return dict(_TRITON_USED)


class OpSpec(NamedTuple):
    """Where an op's arguments are: positions of the row weights, column weights and log
    weights (-1: none), of ``need_grad``, of the value function (-1: none), and how many
    values come before the ``(dx, dy, dtau, dbias)`` outputs."""

    row_w: int
    col_w: int
    log_w: int
    need_grad: int
    value_fn: int
    n_values: int


#: The ops the kernels implement. Every op starts ``(x, y, tau, bias, sim, rl, cl, offset,
#: exclude, n_paired, ...)``.
SPECS = {
    "row_lse_mean": OpSpec(10, -1, -1, 12, -1, 1),
    "sym_lse_mean": OpSpec(10, 11, -1, 13, -1, 1),
    "offdiag_lme": OpSpec(-1, -1, 10, 11, -1, 1),
    "offdiag_means": OpSpec(10, -1, -1, 16, 11, 2),
}


def _tolerance(dtype: torch.dtype) -> tuple[float, float]:
    """``(rtol, atol)`` of the check, relative to the largest output: the products' precision
    decides (half-precision gradients are rounded to the features' dtype on both sides)."""
    if dtype in (torch.float16, torch.bfloat16):
        return 2e-2, 2e-3
    if triton_kernels.precision(dtype) == "tf32":
        return 1e-2, 1e-3
    return 1e-4, 1e-5


def _used_outputs(spec: OpSpec, args: tuple) -> list[int]:
    """The indices of the outputs that the call ``args`` uses."""
    used = list(range(spec.n_values))
    if spec.value_fn >= 0 and args[spec.value_fn] < 0:
        used.remove(0)  # the value sum was not asked for
    if args[spec.need_grad]:
        k = spec.n_values
        used += [k, k + 1, k + 2]
        if args[3] is not None:
            used.append(k + 3)
    return used


def _difference(got, want, used: list[int], dtype: torch.dtype) -> str | None:
    """``None`` if every used output matches, else what differs."""
    rtol, atol = _tolerance(dtype)
    for k in used:
        g, w = got[k], want[k]
        if g.shape != w.shape:
            return f"output {k} has shape {tuple(g.shape)}, expected {tuple(w.shape)}"
        if g.dtype != w.dtype:
            return f"output {k} has dtype {g.dtype}, expected {w.dtype}"
        if not g.numel():
            continue
        g, w = g.double(), w.double()
        if not torch.equal(torch.isfinite(g), torch.isfinite(w)):
            return f"output {k} is not finite where the sweep is (or the other way round)"
        fin = torch.isfinite(w)
        if not torch.equal(g[~fin], w[~fin]):
            return f"output {k} has other infinities than the sweep"
        err = float((g[fin] - w[fin]).abs().max()) if bool(fin.any()) else 0.0
        scale = float(w[fin].abs().max()) if bool(fin.any()) else 0.0
        if err > atol + rtol * scale:
            return f"output {k} differs from the sweep by up to {err:.3g} (scale {scale:.3g})"
    return None


def _warn(key: tuple, reason: str) -> None:
    warnings.warn(
        f"mibounds: the Triton kernel for {key[0]} ({', '.join(map(str, key[1:]))}) failed "
        f"its check on this device ({reason}); it is disabled for this process and the "
        "PyTorch sweep is used instead (correct, slower). Please report this warning with "
        "your GPU, driver, torch and triton versions; MIBOUNDS_TRITON=0 turns Triton off.",
        RuntimeWarning,
        stacklevel=4,
    )


def checked(op: str, key: tuple, triton_fn, sweep_fn, args: tuple):
    """``triton_fn(*args)`` if that kernel passed its one-time check against ``sweep_fn`` on
    the check problem of ``args`` (:func:`check_problem`), else ``sweep_fn(*args)``. A compile
    or launch error, here or on the real call, disables the kernel with one warning."""
    ok = _TRITON_CHECKED.get(key)
    if ok is None:
        small = check_problem(op, args)
        try:
            got = triton_fn(*small)
            used = _used_outputs(SPECS[op], small)
            reason = _difference(got, sweep_fn(*small), used, small[0].dtype)
        except Exception as err:  # a compile or launch failure: the sweep takes over
            reason = f"{type(err).__name__}: {err}"
        ok = reason is None
        _TRITON_CHECKED[key] = ok
        if not ok:
            _warn(key, str(reason))
    if not ok:
        return sweep_fn(*args)
    try:
        out = triton_fn(*args)
    except Exception as err:
        _TRITON_CHECKED[key] = False
        _warn(key, f"{type(err).__name__}: {err}")
        return sweep_fn(*args)
    _TRITON_USED[key] = _TRITON_USED.get(key, 0) + 1
    return out


def _unit(shape: tuple[int, ...], gen: torch.Generator) -> Tensor:
    t = torch.randn(shape, generator=gen, dtype=torch.float64)
    return torch.nn.functional.normalize(t, dim=-1)


def check_problem(op: str, args: tuple) -> tuple:
    """The check problem of the op call ``args``: one batch index, :data:`_CHECK_ROWS` rows,
    as many extra columns (up to :data:`_CHECK_EXTRA`) as the call has beyond its rows, the
    own columns where the call has them (first, or last for another rank's rows), label
    vectors, weights and a bias of its own where the call has them; unit features at
    temperature 0.25, in the call's dtype, device and feature size."""
    spec = SPECS[op]
    x, y, tau, bias = args[0], args[1], args[2], args[3]
    rl, offset, exclude = args[5], args[7], args[8]
    n, m, d = x.shape[-2], y.shape[-2], x.shape[-1]
    ns = _CHECK_ROWS
    ms = ns + (min(m - n, _CHECK_EXTRA) if m > n else 0)
    off = 0 if offset == 0 else ms - ns
    gen = torch.Generator(device="cpu").manual_seed(0)
    xs = _unit((1, ns, d), gen)
    ys = _unit((1, ms, d), gen)
    ys[:, off : off + ns] = torch.nn.functional.normalize(xs + 0.5 * ys[:, off : off + ns], dim=-1)
    dev = x.device
    out = list(args)
    out[0] = xs.to(dev, x.dtype)
    out[1] = ys.to(dev, y.dtype)
    out[2] = torch.tensor(0.25, dtype=tau.dtype, device=tau.device)
    if bias is not None:
        out[3] = torch.tensor(-0.5, dtype=bias.dtype, device=bias.device)
    if rl is not None:
        cls = torch.arange(ms, device=rl.device, dtype=rl.dtype) % 5
        out[5], out[6] = cls[off : off + ns], cls
    out[7] = off
    out[9] = ns
    if exclude == 2:
        out[7] = 0
    for pos, size in ((spec.row_w, ns), (spec.col_w, ms), (spec.log_w, ns)):
        if pos >= 0 and args[pos] is not None:
            w = (0.5 + torch.rand(size, generator=gen, dtype=torch.float64)) / ns
            if pos == spec.log_w:
                w = torch.log(w / ms)
            out[pos] = w.to(args[pos].device, args[pos].dtype)
    return tuple(out)
