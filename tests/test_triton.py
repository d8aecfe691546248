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
    import torch
    import mibounds
    from mibounds.divergences import streaming_name
    from mibounds.kernels import streaming, triton_kernels as tk

    E = streaming.ELEMENTWISE
    torch.manual_seed(0)


    def check(got, want, tag):
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, rtol=2e-4, atol=2e-5, msg=tag)


    for n, d in ((37, 5), (40, 16), (70, 33)):
        x = torch.nn.functional.normalize(torch.randn(2, n, d), dim=-1)
        y = torch.nn.functional.normalize(x + 0.5 * torch.randn(2, n, d), dim=-1)
        tau = torch.tensor(0.3)
        ops = torch.ops.mibounds
        # each Triton entry point, batched as the CUDA registrations do, against the sweep
        plain = (None, 0, None, None, 0, 0, n)  # bias, sim, labels, offset, exclude, n_paired
        for fn, op, extra, k in (
            (tk.row_lse_mean_triton, ops.row_lse_mean, (None,), 1),
            (tk.symmetric_lse_mean_triton, ops.sym_lse_mean, (None, None), 1),
            (tk.offdiag_lme_triton, ops.offdiag_lme, (None,), 1),
        ):
            want = op(x, y, tau, *plain, *extra, True)
            check(streaming._per_batch(fn, x, y, tau, True, k), want, op.__name__)
        cases = (
            (None, "exp", -1.0, 0.0, True),
            ("exp", "softplus", 0.0, 0.0, False),
            ("exp-clip", "softplus", 0.0, 2.0, False),
        )
        for vf, gf, shift, param, gv in cases:
            vid = -1 if vf is None else E[vf]
            want = ops.offdiag_means(
                x, y, tau, *plain, None, vid, E[gf], shift, param, False, True, gv
            )

            def run(xb, yb, t, ng):
                return tk.offdiag_means_triton(xb, yb, t, vf, gf, shift, param, ng, gv, block=16)

            got = streaming._per_batch(run, x, y, tau, True, 2)
            if vf is None:  # the value mean is not computed: 0 on both sides' terms
                got = (want[0], *got[1:])
            check(got, want, f"offdiag_means {vf} {gf}")
        # f*(g_f(S)) of every built-in divergence (the fmi bound), named as the CUDA
        # registration names them
        for div in mibounds.list_divergences():
            fid = E[streaming_name(div)]
            tname, param = streaming._triton_of(fid)
            assert tname in tk.TRITON_FUNCTIONS, tname
            want = ops.offdiag_means(
                x, y, tau, *plain, None, -1, fid, 0.0, 0.0, False, True, True
            )

            def run(xb, yb, t, ng):
                return tk.offdiag_means_triton(xb, yb, t, None, tname, 0.0, param, ng, block=16)

            got = streaming._per_batch(run, x, y, tau, True, 2)
            check((want[0], *got[1:]), want, tname)
        # statistics only
        v, dx, dy, dt = tk.offdiag_lme_triton(x[0], y[0], 0.3, False)
        assert dx.numel() == 0 and dy.numel() == 0
    # small temperatures against a float64 reference (float32 products would be off by the
    # TF32 truncation otherwise)
    for n, d in ((45, 64), (33, 7)):
        x = torch.nn.functional.normalize(torch.randn(1, n, d), dim=-1)
        y = torch.nn.functional.normalize(x + 0.3 * torch.randn(1, n, d), dim=-1)
        for tau in (0.1, 0.02):
            t = torch.tensor(tau)
            got = streaming._per_batch(tk.row_lse_mean_triton, x, y, t, True, 1)
            want = ops.row_lse_mean(x.double(), y.double(), t.double(), None, 0, None, None, 0,
                                    0, n, None, True)
            check(got[:3], [w.float() for w in want[:3]], f"tau {tau} d {d}")
    # pairings: labels with the self-pair excluded, a queue of extra columns, MoCo's own key
    # plus queue, a bias and per-row weights, against the sweep with the same arguments
    P = tk.Pairs
    n, m, d = 21, 30, 7
    x = torch.nn.functional.normalize(torch.randn(2, n, d), dim=-1)
    y = torch.nn.functional.normalize(torch.randn(2, m, d), dim=-1)
    y[:, :n] = torch.nn.functional.normalize(x + 0.4 * torch.randn(2, n, d), dim=-1)
    tau, bias = torch.tensor(0.3), torch.tensor(-0.7)
    labels = torch.arange(m) % 4
    w = torch.rand(n)
    configs = {
        "labels-self": (labels[:n], labels, 0, 1, n),
        "queue": (None, None, 0, 0, n),
        "own-key": (None, None, 0, 2, n),
    }
    for tag, (rl, cl, off, exc, npd) in configs.items():
        pairs = P(rl, cl, off, exc, npd)
        base = (x, y, tau, bias, 0, rl, cl, off, exc, npd)
        want = ops.row_lse_mean(*base, w, True)
        got = streaming._per_batch(
            lambda a, b, t, ng: tk.lse_triton(a, b, t, ng, pairs=pairs, weight=w,
                                              bias=bias.reshape(1), block=16),
            x, y, tau, True, 1)
        check(got, want, f"lse {tag}")
        want = ops.offdiag_lme(*base, torch.log(w), True)
        got = streaming._per_batch(
            lambda a, b, t, ng: tk.neg_lme_triton(a, b, t, ng, pairs=pairs, log_weight=torch.log(w),
                                                  bias=bias.reshape(1), block=16),
            x, y, tau, True, 1)
        check(got, want, f"lme {tag}")
        for positives in (False, True):
            want = ops.offdiag_means(*base, w, E["exp"], E["softplus"], -1.0, 0.0, positives,
                                     True, True)
            got = streaming._per_batch(
                lambda a, b, t, ng: tk.means_triton(
                    a, b, t, "exp", "softplus", -1.0, 0.0, ng, True, pairs=pairs, weight=w,
                    positives=positives, bias=bias.reshape(1), block=16),
                x, y, tau, True, 2)
            check(got, want, f"means {tag} positives={positives}")
    # the symmetric terms with labels on a square batch
    z = torch.nn.functional.normalize(torch.randn(1, 24, 5), dim=-1)
    lab = torch.arange(24) % 5
    v = torch.rand(24)
    u = torch.full((24,), 0.02)
    want = ops.sym_lse_mean(z, z, tau, bias, 0, lab, lab, 0, 1, 24, u, v, True)
    got = streaming._per_batch(
        lambda a, b, t, ng: tk.symmetric_lse_triton(a, b, t, ng, pairs=P(lab, lab, 0, 1, 24),
                                                    row_weight=torch.full((24,), 0.02),
                                                    col_weight=v, bias=bias.reshape(1), block=16),
        z, z, tau, True, 1)
    check(got, want, "symmetric labels")
    # leading batches of 0, 1 and 3 and half-precision inputs, against the sweep (which
    # accumulates half inputs in float32, as the kernels load them)
    n, d = 19, 6
    plain19 = (None, 0, None, None, 0, 0, n)
    for b in (0, 1, 3):
        for dt in (torch.float32, torch.float16, torch.bfloat16):
            x = torch.nn.functional.normalize(torch.randn(b, n, d), dim=-1)
            y = torch.nn.functional.normalize(x + 0.5 * torch.randn(b, n, d), dim=-1)
            x, y = x.to(dt), y.to(dt)
            tau = torch.tensor(0.2)
            want = ops.row_lse_mean(x, y, tau, *plain19, None, True)
            got = streaming._per_batch(tk.row_lse_mean_triton, x, y, tau, True, 1)
            assert [g.dtype for g in got] == [w.dtype for w in want], (b, dt)
            # half-precision gradients are rounded to the input dtype on both sides
            full = dt == torch.float32
            tol = {"rtol": 2e-4, "atol": 2e-5} if full else {"rtol": 1e-2, "atol": 1e-3}
            for g, w in zip(got, want, strict=True):
                torch.testing.assert_close(g.float(), w.float(), **tol, msg=f"B={b} {dt}")
    # the overflow rule: a derivative of e^S that overflows is 0 in the kernel as in the sweep
    # (one-hot features: every score is 0 or 1 / tau = 1000, nothing in between)
    eye = torch.eye(4)
    x = eye[torch.arange(17) % 4][None]
    y = eye[(torch.arange(17) * 3) % 4][None]
    tau = torch.tensor(1e-3)
    want = ops.offdiag_means(x, y, tau, *((None, 0, None, None, 0, 0, 17)), None, -1, E["exp"],
                             0.0, 0.0, False, True, True)
    got = streaming._per_batch(
        lambda a, b, t, ng: tk.offdiag_means_triton(a, b, t, None, "exp", 0.0, 0.0, ng, block=16),
        x, y, tau, True, 2)
    assert bool(torch.isinf(want[1]).all()) and bool(torch.isinf(got[1]).all())
    for g, w in zip(got[2:], want[2:], strict=True):
        assert not bool(torch.isnan(g).any()), "NaN in a Triton gradient"
        torch.testing.assert_close(g, w, rtol=2e-4, atol=2e-5, msg="overflow rule")
    print("triton-interpreter-ok")
    """
)


@pytest.mark.slow
def test_triton_kernels_in_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "triton-interpreter-ok" in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("arch", [80, 90])
def test_every_kernel_variant_compiles_for_the_target(arch):
    """Ahead-of-time compilation for sm_80 and sm_90 (no GPU needed): every variant the
    dispatcher can launch compiles, fits the target's shared memory and spills no register."""
    tk = pytest.importorskip("mibounds.kernels.triton_kernels")
    if not tk.HAS_TRITON:
        pytest.skip("needs triton")
    failures = []
    for kernel, consts in tk.kernel_variants():
        try:
            r = tk.compile_ahead(kernel, consts, arch)
        except Exception as err:  # a compile error fails the test with the variant named
            failures.append((kernel, consts, repr(err)))
            continue
        if r["stack"] > 0 or r["shared"] > tk.SHARED_MEMORY_LIMIT[arch]:
            failures.append((kernel, consts, r))
    assert not failures, failures


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_triton_on_cuda_matches_cpu():  # pragma: no cover - GPU only
    import mibounds

    x = torch.nn.functional.normalize(torch.randn(2, 1000, 64), dim=-1)
    y = torch.nn.functional.normalize(x + 0.5 * torch.randn(2, 1000, 64), dim=-1)
    bounds = (
        mibounds.infonce,
        lambda s: mibounds.infonce(s, symmetric=True),
        mibounds.nwj,
        mibounds.dv,
        mibounds.js,
        mibounds.smile,
        *[(lambda d: lambda s: mibounds.fmi(s, d))(d) for d in mibounds.list_divergences()],
    )
    for bound in bounds:
        for dev in ("cpu", "cuda"):
            xs = x.to(dev).requires_grad_(True)
            v = bound(mibounds.SeparableScores(xs, y.to(dev), "dot", 0.1))
            (g,) = torch.autograd.grad(v.sum(), xs)
            if dev == "cpu":
                want, want_g = v, g
        torch.testing.assert_close(v.cpu(), want, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(g.cpu(), want_g, rtol=1e-3, atol=1e-5)
