"""Triton kernels: correctness in Triton's CPU interpreter (small sizes); CUDA when present."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

pytest.importorskip("triton")

SCRIPT = textwrap.dedent(
    """
    import sys, warnings
    import torch
    import torch.nn.functional as F
    import mibounds
    from mibounds import contrastive as C
    from mibounds.kernels import selfcheck, streaming
    from mibounds.pairing import PairLayout

    # a kernel that fails its check fails here (numpy's overflow notes of the interpreter do not)
    warnings.filterwarnings("error", message="mibounds: ", category=RuntimeWarning)
    torch.manual_seed(0)
    DTYPES = [torch.float32, torch.bfloat16, torch.float16]
    TOL = {torch.float32: (2e-4, 2e-5), torch.bfloat16: (3e-2, 3e-3), torch.float16: (1e-2, 1e-3)}
    failures = []


    def grads_of(fn, tensors):
        tensors = [t.detach().clone().requires_grad_(True) for t in tensors]
        v = fn(*tensors)
        gs = torch.autograd.grad(v.float().sum(), tensors, allow_unused=True)
        return [v.detach().float(), *[g.float() for g in gs if g is not None]]


    def compare(tag, fn, tensors, dtype):
        # the same call through the real dispatch: the fused kernel, then the sweep
        before = sum(selfcheck.triton_usage().values())
        selfcheck.set_triton(True)
        got = grads_of(fn, tensors)
        used = sum(selfcheck.triton_usage().values()) - before
        selfcheck.set_triton(False)
        want = grads_of(fn, tensors)
        selfcheck.set_triton(True)
        if used == 0:
            failures.append(f"{tag}: the fused kernel was not used")
            return
        rtol, atol = TOL[dtype]
        for k, (g, w) in enumerate(zip(got, want, strict=True)):
            fin = torch.isfinite(w)
            if not torch.equal(torch.isfinite(g), fin) or not torch.equal(g[~fin], w[~fin]):
                failures.append(f"{tag}: output {k} is not finite where the sweep is")
                continue
            g, w = g[fin], w[fin]
            scale = float(w.abs().max()) if w.numel() else 0.0
            err = float((g - w).abs().max()) if w.numel() else 0.0
            if err > atol + rtol * scale:
                failures.append(f"{tag}: output {k} differs by {err:.3g} (scale {scale:.3g})")


    def unit(*shape, dtype=torch.float32):
        return F.normalize(torch.randn(*shape), dim=-1).to(dtype)


    for dtype in DTYPES:
        for n, m, d in ((37, 37, 5), (45, 70, 70), (21, 21, 150)):
            x, y = unit(2, n, d, dtype=dtype), unit(2, m, d, dtype=dtype)
            tau = torch.tensor(0.3)
            bias = torch.tensor(-0.7)
            labels = torch.arange(m) % 4
            w = torch.rand(n) / n
            v = torch.rand(m) / n
            layouts = {
                "plain": None,
                "labels-self": PairLayout(labels[:n], labels, 0, 1, n),
                "queue": PairLayout(None, None, 0, 0, n),
                "own-key": PairLayout(None, None, 0, 2, n),
                "other-rank": PairLayout(None, None, m - n, 0, n),
            }
            for name, lay in layouts.items():
                tag = f"{dtype} n={n} m={m} d={d} {name}"
                for b in (None, bias):
                    t = f"{tag} bias={b is not None}"
                    compare(f"row_lse {t}", lambda a, c: streaming.row_logsumexp_mean(
                        a, c, tau, "dot", layout=lay, weight=w, bias=b), (x, y), dtype)
                    compare(f"lme {t}", lambda a, c: streaming.offdiag_logmeanexp(
                        a, c, tau, "dot", layout=lay, log_weight=torch.log(w), bias=b),
                        (x, y), dtype)
                    for pos in (False, True):
                        compare(f"means {t} positives={pos}", lambda a, c: streaming.offdiag_means(
                            a, c, tau, "dot", "softplus", "exp", -1.0, layout=lay, weight=w,
                            positives=pos, bias=b)[1], (x, y), dtype)
                    if name not in ("own-key", "other-rank"):
                        compare(f"sym_lse {t}", lambda a, c: streaming.symmetric_logsumexp_mean(
                            a, c, tau, "dot", layout=lay, row_weight=w, col_weight=v, bias=b),
                            (x, y), dtype)
        # every bound of the library, plain pairing, through the public API
        x, y = unit(40, 24, dtype=dtype), unit(40, 24, dtype=dtype)
        bounds = {
            "infonce": mibounds.infonce,
            "infonce-sym": lambda s: mibounds.infonce(s, symmetric=True),
            "nwj": mibounds.nwj, "dv": mibounds.dv, "js": mibounds.js, "smile": mibounds.smile,
            "tuba": mibounds.tuba,
            **{f"fmi-{k}": (lambda k: lambda s: mibounds.fmi(s, k))(k)
               for k in mibounds.list_divergences()},
        }
        for name, bound in bounds.items():
            compare(f"{name} {dtype}",
                    lambda a, c: bound(mibounds.SeparableScores(a, c, "dot", 0.2)), (x, y), dtype)
        # the drop-in losses (their own pairings: labels, excluded self-pairs, a queue, a bias)
        lab = torch.arange(40) % 6
        queue = unit(50, 24, dtype=dtype)
        losses = {
            "clip": lambda a, c: C.CLIPLoss()(a, c, 10.0),
            "siglip": lambda a, c: C.SigLIPLoss()(a, c, 10.0, -10.0),
            "ntxent": lambda a, c: C.NTXentLoss(0.5)(a, c),
            "supcon": lambda a, c: C.SupConLoss(0.1)(a, lab),
            "moco": lambda a, c: C.MoCoLoss(0.07)(a, c, queue),
        }
        for name, loss in losses.items():
            compare(f"{name} {dtype}", loss, (x, y), dtype)
    # the overflow rule: a derivative of e^S that overflows is 0 in the kernel as in the sweep
    eye = torch.eye(4)
    x = eye[torch.arange(17) % 4][None]
    y = eye[(torch.arange(17) * 3) % 4][None]
    got = streaming.offdiag_means(x.requires_grad_(), y, 1e-3, "dot", "exp")[1]
    assert bool(torch.isinf(got).all()), got
    (g,) = torch.autograd.grad(got.sum(), x)
    assert not bool(torch.isnan(g).any()), "NaN in a fused-kernel gradient"
    status = selfcheck.triton_status()
    assert status and all(status.values()), [k for k, ok in status.items() if not ok]
    if failures:
        print("\\n".join(failures))
        sys.exit(1)
    print("kernels used:", len(status))
    print("triton-interpreter-ok")
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("path", ["fused", "panels"])
def test_triton_kernels_in_interpreter(path):
    """The real dispatch and self-check on each kernel path (fused tiles; tensor-core panels,
    whose products are float32 ``torch.bmm`` on the CPU) for every op, pairing and dtype."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "MIBOUNDS_TRITON": "1", "MIBOUNDS_PATH": path}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "triton-interpreter-ok" in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("arch", [80, 90])
def test_every_kernel_variant_compiles_for_the_target(arch):
    """Ahead-of-time compilation for sm_80 and sm_90 (no GPU needed): every variant the
    dispatcher can launch compiles, fits the target's shared memory and spills no register;
    on sm_90 every half-precision and TF32 product runs on ``wgmma`` (none on ``mma.sync``)."""
    tk = pytest.importorskip("mibounds.kernels.triton_kernels")
    if not tk.HAS_TRITON:
        pytest.skip("needs triton")
    from mibounds.kernels import aot

    failures = []
    for kernel, consts, launch in aot.kernel_variants(arch):
        try:
            r = aot.compile_ahead(kernel, consts, arch, launch)
        except Exception as err:  # a compile error fails the test with the variant named
            failures.append((kernel, consts, repr(err)))
            continue
        if r["stack"] > 0 or r["shared"] > aot.SHARED_MEMORY_LIMIT[arch]:
            failures.append((kernel, consts, r))
        tensor_cores = consts.get("_dtype") != torch.float32 or consts.get("PREC") == "tf32"
        products = kernel in ("_stats_kernel", "_grad_kernel") and tensor_cores
        if arch >= 90 and products and (r["wgmma"] == 0 or r["mma_sync"] > 0):
            failures.append((kernel, consts, r, "not on wgmma"))
    assert not failures, failures


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_triton_on_cuda_matches_cpu():  # pragma: no cover - GPU only
    """Every bound on CUDA through the fused kernels, float32 and bfloat16, d = 64 and 512,
    against the CPU sweep; fails if a kernel fell back (warning) or was not used."""
    import warnings

    import mibounds
    from mibounds.kernels import selfcheck

    bounds = (
        mibounds.infonce,
        lambda s: mibounds.infonce(s, symmetric=True),
        mibounds.nwj,
        mibounds.dv,
        mibounds.js,
        mibounds.smile,
        *[(lambda d: lambda s: mibounds.fmi(s, d))(d) for d in mibounds.list_divergences()],
    )
    for d in (64, 512):
        x = torch.nn.functional.normalize(torch.randn(2, 1000, d), dim=-1)
        y = torch.nn.functional.normalize(x + 0.5 * torch.randn(2, 1000, d), dim=-1)
        for dtype, tol in ((torch.float32, (1e-4, 1e-4)), (torch.bfloat16, (3e-2, 3e-2))):
            xq, yq = x.to(dtype), y.to(dtype)
            for bound in bounds:
                got = []
                for dev in ("cpu", "cuda"):
                    xs = xq.to(dev).requires_grad_(True)
                    before = sum(selfcheck.triton_usage().values())
                    with warnings.catch_warnings():
                        warnings.filterwarnings("error", message="mibounds: ")
                        v = bound(mibounds.SeparableScores(xs, yq.to(dev), "dot", 0.1))
                        (g,) = torch.autograd.grad(v.float().sum(), xs)
                    if dev == "cuda":
                        assert sum(selfcheck.triton_usage().values()) > before, "not fused"
                    got.append((v.float().cpu(), g.float().cpu()))
                torch.testing.assert_close(got[1][0], got[0][0], rtol=tol[0], atol=tol[1])
                torch.testing.assert_close(got[1][1], got[0][1], rtol=tol[0] * 10, atol=tol[1])
