"""Ahead-of-time compilation of every kernel variant the dispatch can launch, for sm_80 and
sm_90, on a machine without a GPU (Triton's bundled ``ptxas``): shared memory, registers,
spilled registers and the matrix instructions each variant uses."""

from __future__ import annotations

import torch

from mibounds.kernels import gemm_panels
from mibounds.kernels import triton_kernels as tk
from mibounds.kernels.triton_kernels import TRITON_FUNCTIONS, config

__all__ = ["AOT_DIMS", "SHARED_MEMORY_LIMIT", "compile_ahead", "kernel_variants"]

# --- ahead-of-time compilation (no GPU needed) ------------------------------------------------

#: Shared memory a block may use (opt-in maximum), in bytes, per compute capability.
SHARED_MEMORY_LIMIT = {80: 166912, 90: 232448}

#: The feature sizes whose tiles the ahead-of-time test compiles: every distinct tile shape of
#: :func:`config` from d = 16 to d = 2048 (the kernels loop over larger ones in the same tiles).
AOT_DIMS = (16, 32, 64, 128, 256, 2048)


def kernel_variants(arch: int = 90) -> list[tuple[str, dict[str, object], tuple[int, int]]]:
    """``(kernel, constexprs, (num_warps, num_stages))`` of every launch the dispatcher can
    make on ``sm_<arch>``: each kernel for each feature dtype (float32 at both precisions),
    each tile shape of :func:`config` (:data:`AOT_DIMS`), each set of columns, each pairing
    (plain; labels, the self-pair excluded and a bias; the own key plus a queue) and every
    elementwise function; and the elementwise kernels of the tensor-core panels
    (:mod:`mibounds.kernels.gemm_panels`) for each pairing, mode and ``G`` dtype.

    Example:
        >>> len(kernel_variants()) > 100
        True
    """
    fns = sorted(set(TRITON_FUNCTIONS.values()))
    plain = {"BIAS": 0, "LABELS": 0, "EXCLUDE": 0}
    full = {"BIAS": 1, "LABELS": 1, "EXCLUDE": 1}
    flags = [plain, full, {"BIAS": 1, "LABELS": 0, "EXCLUDE": 2}]
    dtypes = ((torch.float32, "ieee"), (torch.float32, "tf32"), (torch.bfloat16, "ieee"),
              (torch.float16, "ieee"))  # fmt: skip
    out: list[tuple[str, dict[str, object], tuple[int, int]]] = []

    def stats(dt, prec, d, consts):
        minus_pos = consts.pop("MINUS_POS", 0)
        cfg = config("stats", dt, d, prec, arch, minus_pos=bool(minus_pos))
        tile = {"BM": cfg.bm, "BN": cfg.bn, "BK": cfg.bk, "PREC": prec, "EMU": 0, "_dtype": dt,
                "RESIDENT": cfg.bk >= d, "MINUS_POS": minus_pos}  # fmt: skip
        out.append(("_stats_kernel", {**consts, **tile}, (cfg.num_warps, cfg.num_stages)))

    def grad(dt, prec, d, consts):
        cfg = config("grad", dt, d, prec, arch, int(consts["MODE"]))
        half_g = dt == torch.bfloat16
        gprec = "tf32" if dt == torch.float16 else prec
        tile = {"BM": cfg.bm, "BN": cfg.bn, "BK": cfg.bk, "BDO": cfg.bdo, "PREC": prec,
                "GPREC": gprec, "HALF_G": half_g, "EMU": 0, "_dtype": dt}  # fmt: skip
        for cols in (0, 1):
            c = {**consts, "COLS": cols, **tile}
            out.append(("_grad_kernel", c, (cfg.num_warps, cfg.num_stages)))

    # every tile shape and dtype with every pairing feature on (the most registers)
    for dt, prec in dtypes:
        for d in AOT_DIMS:
            for which in (0, 1):
                stats(dt, prec, d, dict(MODE=0, FN1=0, FN2=0, SET=which, **full))
            stats(dt, prec, d, dict(MODE=0, FN1=0, FN2=0, SET=0, MINUS_POS=1, **full))
            grad(dt, prec, d, dict(MODE=0, FN=0, SET=1, **full))
            grad(dt, prec, d, dict(MODE=2, FN=0, SET=0, **full))
            grad(dt, prec, d, dict(MODE=1, FN=1, SET=1, **full))
    # the other pairings at the widest tile
    big = AOT_DIMS[-1]
    for f in (plain, flags[2]):
        stats(torch.bfloat16, "ieee", big, dict(MODE=0, FN1=0, FN2=0, SET=0, **f))
        grad(torch.bfloat16, "ieee", big, dict(MODE=0, FN=0, SET=0, **f))
        grad(torch.bfloat16, "ieee", big, dict(MODE=2, FN=0, SET=0, **f))
    # every elementwise function, for its value and its gradient, negatives and positives
    for fn in fns:
        stats(torch.bfloat16, "ieee", big, dict(MODE=1, FN1=0, FN2=fn, SET=1, **full))
        grad(torch.bfloat16, "ieee", big, dict(MODE=1, FN=fn, SET=2, **full))
    for f1 in (TRITON_FUNCTIONS["exp"], TRITON_FUNCTIONS["exp-clip"]):
        for f2 in (0, TRITON_FUNCTIONS["softplus"]):
            stats(torch.bfloat16, "ieee", big, dict(MODE=1, FN1=f1, FN2=f2, SET=1, **full))
    # the tensor-core panels' elementwise kernels (no products: any architecture)
    tile: dict[str, object] = {"BR": gemm_panels._BR, "BC": gemm_panels._BC}
    consts: dict[str, object]
    for f in (plain, full, flags[2]):
        for colstats, minus_pos in ((0, 0), (1, 0), (0, 1), (1, 1)):
            consts = dict(MODE=0, FN1=0, FN2=0, SET=0, COLSTATS=colstats, MINUS_POS=minus_pos,
                          **f, **tile)  # fmt: skip
            out.append(("_panel_stats_kernel", consts, (gemm_panels._WARPS, 2)))
        for mode, which in ((0, 0), (2, 0), (0, 1)):
            for dt in (torch.bfloat16, torch.float16, torch.float32):
                consts = dict(MODE=mode, FN=0, SET=which, **f, **tile, _dtype=dt)
                out.append(("_panel_grad_kernel", consts, (gemm_panels._WARPS, 2)))
    for fn in fns:
        consts = dict(MODE=1, FN1=fn, FN2=fn, SET=1, COLSTATS=0, MINUS_POS=0, **full, **tile)
        out.append(("_panel_stats_kernel", consts, (gemm_panels._WARPS, 2)))
        for dt in (torch.bfloat16, torch.float32):
            consts = dict(MODE=1, FN=fn, SET=2, **full, **tile, _dtype=dt)
            out.append(("_panel_grad_kernel", consts, (gemm_panels._WARPS, 2)))
    return out


def compile_ahead(
    kernel: str, constexprs: dict[str, object], arch: int, launch: tuple[int, int] = (4, 2)
) -> dict[str, int]:
    """Compile one kernel variant for ``sm_<arch>`` on this machine (Triton's bundled ptxas; no
    GPU needed) and report its resources: ``shared`` bytes, ``registers`` and ``stack`` bytes
    per thread (a stack frame means spilled registers). ``constexprs`` may name the features'
    dtype as ``_dtype``; ``launch`` is ``(num_warps, num_stages)``.

    Raises:
        RuntimeError: without Triton, or if the compilation fails.
    """
    import os
    import subprocess
    import tempfile

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from mibounds.kernels import triton_jit as tj

    tk._require()
    consts = dict(constexprs)
    dt = consts.pop("_dtype", torch.float32)
    if not isinstance(dt, torch.dtype):
        raise TypeError(f"_dtype must be a torch.dtype, got {dt!r}")
    feat = {torch.float32: "*fp32", torch.bfloat16: "*bf16", torch.float16: "*fp16"}[dt]
    fn = {
        "_stats_kernel": tj._stats_kernel,
        "_grad_kernel": tj._grad_kernel,
        "_panel_stats_kernel": gemm_panels._panel_stats_kernel,
        "_panel_grad_kernel": gemm_panels._panel_grad_kernel,
    }[kernel]
    ints = ("n", "m", "d", "offset", "n_paired", "r0", "p")
    sig: dict[str, str] = {}
    for a in fn.arg_names:
        if a in ("x_ptr", "y_ptr", "g_ptr") or (a == "out_ptr" and kernel == "_grad_kernel"):
            sig[a] = feat
        elif a in ("rl_ptr", "cl_ptr"):
            sig[a] = "*i64"
        elif a.endswith("_ptr"):
            sig[a] = "*fp32"
        else:
            sig[a] = "i32" if a in ints else "fp32"
    sig.update({k: "constexpr" for k in consts})
    compiled = triton.compile(
        ASTSource(fn=fn, signature=sig, constexprs=consts),
        target=GPUTarget("cuda", arch, 32),
        options={"num_warps": launch[0], "num_stages": launch[1]},
    )
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as fh:
            fh.write(compiled.asm["cubin"])
        usage = subprocess.run([tool, "-res-usage", path], capture_output=True, text=True)
    line = [ln for ln in usage.stdout.splitlines() if "REG:" in ln][-1]
    return {
        "shared": int(compiled.metadata.shared),
        "registers": int(line.split("REG:")[1].split()[0]),
        "stack": int(line.split("STACK:")[1].split()[0]),
        "wgmma": compiled.asm["ptx"].count("wgmma.mma_async"),
        "mma_sync": compiled.asm["ptx"].count("mma.sync"),
    }
