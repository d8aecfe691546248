r"""Where a streamed reduction runs: the fused kernels, the tensor-core panels or the sweep,
chosen per call from a cost model.

**The model.** Counting in units of one ``n x m x d`` matrix product (``2 n m d`` flops):

* *bare*: the four products of an exact symmetric loss (the scores, their recomputation,
  ``G Y`` and ``G^T X``) at cuBLAS's rate; the floor every path is compared with;
* *panels* (:mod:`mibounds.kernels.gemm_panels`): three products for a one-way reduction and
  four for the symmetric log-sum-exp and the log-mean-exp over the negatives, at cuBLAS's
  rate, plus the bytes each score entry costs in device memory: the float32 scores written
  and read once per statistics pass, read again for the gradient, and ``G`` written once and
  read by two products (18 bytes an entry one-way, 22 symmetric, for half-precision ``G``),
  plus a fixed cost per panel (kernel launches);
* *fused* (:mod:`mibounds.kernels.triton_kernels`): one statistics pass per direction and two
  gradient passes, each gradient pass recomputing its scores ``ceil(d / bdo)`` times
  (:func:`~mibounds.kernels.triton_kernels.config`): ``s + 2 (ceil(d / bdo) + 1)`` products
  (``s`` = 2 symmetric, 1 one-way) at a fraction of cuBLAS's rate, the tiles' efficiency
  (nothing of size ``n x m`` touches device memory);
* *sweep* (:mod:`mibounds.kernels.sweep`): the panel path's products plus its eager
  elementwise steps, about 40 bytes an entry.

The rates are per compute capability (:data:`RATES`); where a benchmark has measured one
(``benchmarks/gpu.py``), its value is the measured one, and the others are stated as
assumptions. :func:`predict` gives every path's predicted seconds and :func:`choose_path` the
fastest path that covers the call. ``MIBOUNDS_PATH`` (``fused``, ``panels`` or ``sweep``) or
:func:`set_path` forces a path wherever it covers the call (for tests and comparisons).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from mibounds._environ import setting
from mibounds.kernels import triton_kernels as tk
from mibounds.kernels.panels import out_dtype_products

__all__ = [
    "PATHS",
    "RATES",
    "Rates",
    "choose_path",
    "get_path",
    "predict",
    "set_path",
]

#: The three paths, in the order of preference when their predicted times tie.
PATHS = ("fused", "panels", "sweep")


class Rates(NamedTuple):
    """A device's rates: cuBLAS's half-precision, TF32 and IEEE float32 products (flop/s), the
    device memory's bandwidth (bytes/s), the fused kernels' fraction of cuBLAS's product rate
    and the fixed cost of one panel (seconds), and where each number comes from."""

    half: float
    tf32: float
    fp32: float
    memory: float
    fused_efficiency: float
    panel_overhead: float
    source: str


#: Rates per compute capability (``10 * major + minor``; the nearest lower entry is used).
RATES = {
    80: Rates(
        half=2.5e14, tf32=1.25e14, fp32=1.9e13, memory=1.5e12, fused_efficiency=0.45,
        panel_overhead=5e-5,
        source="A100 (sm_80): data-sheet peaks at about 80% (assumed, not measured here)",
    ),
    90: Rates(
        half=6.07e14, tf32=3.0e14, fp32=5.0e13, memory=3.0e12, fused_efficiency=0.45,
        panel_overhead=5e-5,
        source="H100/H200 (sm_90): the half-precision rate is the four bare bfloat16 products "
        "at N = 65,536, d = 512 measured in 0.029 s on an H200; the others are data-sheet "
        "peaks at about 80% and the fused kernels' efficiency is assumed",
    ),
}  # fmt: skip

#: Bytes an entry of the score matrix costs the sweep's eager elementwise steps.
SWEEP_BYTES = 40.0

_FORCED: list[str | None] = [None]

#: The ops whose gradient needs every panel's statistics first (two sweeps, four products).
_TWO_SWEEPS = ("sym_lse_mean", "offdiag_lme")


def set_path(path: str | None) -> None:
    """Force every covered call onto ``path`` (``"fused"``, ``"panels"`` or ``"sweep"``), or
    ``None`` for the cost model's choice (and the ``MIBOUNDS_PATH`` environment variable).

    Raises:
        ValueError: for another name.

    Example:
        >>> set_path("sweep")
        >>> get_path()
        'sweep'
        >>> set_path(None)
    """
    if path is not None and path not in PATHS:
        raise ValueError(f"path must be one of {PATHS} or None, got {path!r}")
    _FORCED[0] = path


def get_path() -> str | None:
    """The forced path (:func:`set_path`, else ``MIBOUNDS_PATH``), or ``None``.

    Raises:
        ValueError: if ``MIBOUNDS_PATH`` names no path.

    Example:
        >>> get_path() is None or get_path() in PATHS
        True
    """
    if _FORCED[0] is not None:
        return _FORCED[0]
    env = setting("MIBOUNDS_PATH").strip()
    if not env:
        return None
    if env not in PATHS:
        raise ValueError(f"MIBOUNDS_PATH must be one of {PATHS}, got {env!r}")
    return env


def _rates(arch: int) -> Rates:
    known = [a for a in sorted(RATES) if a <= arch]
    return RATES[known[-1] if known else min(RATES)]


def _product_rate(r: Rates, dtype: torch.dtype, prec: str, half_products: bool) -> float:
    if dtype in (torch.float16, torch.bfloat16):
        return r.half if half_products else r.fp32
    return r.tf32 if prec == "tf32" else r.fp32


def predict(
    op: str,
    dtype: torch.dtype,
    n: int,
    m: int,
    d: int,
    arch: int = 90,
    prec: str | None = None,
    half_products: bool = True,
    memory_budget: int = 4 * 2**30,
) -> dict[str, float]:
    """Predicted seconds of forward plus backward of ``op`` (``"row_lse_mean"``,
    ``"sym_lse_mean"``, ``"offdiag_lme"``, ``"offdiag_means"``) on each path and of the bare
    four products, for ``n`` rows, ``m`` columns and ``d`` features of ``dtype`` on
    ``sm_<arch>``. ``half_products``: whether half-precision operands reach cuBLAS as they
    are (``out_dtype`` products); ``memory_budget``: the panels' workspace in bytes.

    Example:
        >>> t = predict("sym_lse_mean", torch.bfloat16, 65536, 65536, 1024)
        >>> round(t["panels"] / t["bare"], 2)
        1.56
    """
    prec = tk.precision(dtype) if prec is None else prec
    r = _rates(arch)
    unit = 2.0 * n * m * d
    rate = _product_rate(r, dtype, prec, half_products)
    two = op in _TWO_SWEEPS
    entries = float(n) * m
    g_bytes = 4 if dtype == torch.float32 else 2
    # scores: written and read per statistics pass, read (one-way) or rewritten and read
    # (two sweeps) for the gradient; G written once, read by two products
    panel_bytes = (16.0 if two else 12.0) + 3 * g_bytes
    rows = max(32, memory_budget // ((4 + g_bytes) * max(m, 1)))
    n_panels = math.ceil(n / rows) * (2 if two else 1)
    products = 4 if two else 3
    panels = products * unit / rate + panel_bytes * entries / r.memory
    panels += n_panels * r.panel_overhead
    bdo = tk.config("grad", dtype, d, prec, arch, 2 if op == "sym_lse_mean" else 0).bdo
    stats = 2 if op == "sym_lse_mean" else 1
    fused_products = stats + 2 * (math.ceil(d / bdo) + 1)
    fused_rate = _product_rate(r, dtype, prec, True) * r.fused_efficiency
    fused = fused_products * unit / fused_rate
    sweep = products * unit / rate + SWEEP_BYTES * entries / r.memory
    return {"bare": 4 * unit / rate, "fused": fused, "panels": panels, "sweep": sweep}


def choose_path(
    op: str,
    device: torch.device,
    dtype: torch.dtype,
    n: int,
    m: int,
    d: int,
    covered: bool,
) -> str:
    """The path of one call: ``"sweep"`` where the kernels do not cover it (``covered``
    false, or they are off on ``device``), else the forced path (:func:`get_path`) or the
    one with the least predicted time (:func:`predict`) on a CUDA device, and the fused
    kernels in Triton's interpreter.

    Example:
        >>> choose_path("sym_lse_mean", torch.device("cpu"), torch.float32, 8, 8, 4, False)
        'sweep'
    """
    if not covered:
        return "sweep"
    forced = get_path()
    if forced is not None:
        return forced
    if device.type != "cuda":
        return "fused"
    major, minor = torch.cuda.get_device_capability(device)
    times = predict(
        op, dtype, n, m, d, 10 * major + minor, half_products=out_dtype_products(device)
    )
    return min(("fused", "panels"), key=lambda p: times[p])
