"""The Triton safety net, simulated on the CPU: a kernel that fails to compile or computes
wrong values is disabled with one warning and the sweep takes over; switches and coverage."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch

from mibounds.kernels import ops, selfcheck, streaming, sweep, triton_kernels

SWEEP = sweep.row_lse_mean_sweep


def _args(n=9, d=4, b=2):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, n, d, generator=g)
    y = torch.randn(b, n, d, generator=g)
    return (x, y, torch.tensor(0.5), None, 0, None, None, 0, 0, n, None, False, True)


@pytest.fixture(autouse=True)
def _fresh():
    selfcheck._TRITON_CHECKED.clear()
    yield
    selfcheck._TRITON_CHECKED.clear()


def test_a_failing_kernel_is_disabled_with_one_warning():
    calls = []

    def broken(*a):
        calls.append(1)
        raise RuntimeError("out of resources: shared memory, required 262144")

    key = ("row_lse_mean", torch.float32, "dot", 4)
    args = _args()
    with pytest.warns(RuntimeWarning, match=r"failed its check .* out of resources"):
        got = selfcheck.checked("row_lse_mean", key, broken, SWEEP, args)
    for a, b in zip(got, SWEEP(*args), strict=True):
        torch.testing.assert_close(a, b)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning, the kernel is not tried again
        selfcheck.checked("row_lse_mean", key, broken, SWEEP, args)
    assert len(calls) == 1
    assert streaming.triton_status()[key] is False


def test_a_wrong_kernel_is_disabled():
    def wrong(*a):
        out = SWEEP(*a)
        return (out[0] + 1e-2, *out[1:])

    key = ("row_lse_mean", torch.float32, "dot", 4, "wrong")
    args = _args()
    with pytest.warns(RuntimeWarning, match="differs from the sweep"):
        got = selfcheck.checked("row_lse_mean", key, wrong, SWEEP, args)
    torch.testing.assert_close(got[0], SWEEP(*args)[0])


def test_a_correct_kernel_is_used_after_its_check():
    used = []

    def good(*a):
        used.append(a[0].shape)
        return SWEEP(*a)

    key = ("row_lse_mean", torch.float32, "dot", 4, "good")
    args = _args(n=9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        selfcheck.checked("row_lse_mean", key, good, SWEEP, args)
        selfcheck.checked("row_lse_mean", key, good, SWEEP, args)
    # once on the check problem, then on each real call
    assert used == [(1, selfcheck._CHECK_ROWS, 4), (2, 9, 4), (2, 9, 4)]
    assert streaming.triton_status()[key] is True


def test_a_failure_on_the_real_call_falls_back():
    def fails_when_large(*a):
        if a[0].shape[1] > selfcheck._CHECK_ROWS:
            raise RuntimeError("launch failed")
        return SWEEP(*a)

    key = ("row_lse_mean", torch.float32, "dot", 4, "large")
    args = _args(n=100)
    with pytest.warns(RuntimeWarning, match="launch failed"):
        got = selfcheck.checked("row_lse_mean", key, fails_when_large, SWEEP, args)
    torch.testing.assert_close(got[0], SWEEP(*args)[0])
    assert streaming.triton_status()[key] is False


def test_coverage_excludes_what_the_kernels_cannot_do(monkeypatch):
    monkeypatch.setattr(selfcheck, "triton_on", lambda device: True)
    ok = ops._triton_ok
    x = torch.randn(2, 8, 64)
    assert ok(x, x, 0)
    assert ok(x, torch.randn(2, 12, 64), 0)  # a queue
    assert ok(torch.randn(2, 8, 2048), torch.randn(2, 8, 2048), 0)  # any feature size
    assert ok(x.bfloat16(), x.bfloat16(), 0) and ok(x.half(), x.half(), 0)
    assert not ok(x.double(), x.double(), 0)  # float64 stays float64: the sweep
    assert not ok(x, x.bfloat16(), 0)  # mixed dtypes are promoted by the sweep
    assert not ok(torch.randn(0, 8, 64), torch.randn(0, 8, 64), 0)  # an empty batch
    assert not ok(x, x, 1)  # Gaussian scores


def test_the_cpu_runs_kernels_only_in_the_interpreter_when_asked(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    streaming.set_triton(True)
    try:
        assert not selfcheck.triton_on(cpu)
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        assert selfcheck.triton_on(cpu) is triton_kernels.HAS_TRITON
        streaming.set_triton(None)
        monkeypatch.delenv("MIBOUNDS_TRITON", raising=False)
        assert not selfcheck.triton_on(cpu)  # the interpreter alone does not turn them on
    finally:
        streaming.set_triton(None)


# --- the check problem: its own pairing vectors, bounded scores, only the used outputs -----


def _call(op: str, n=9, m=9, d=4, labels=False, exclude=0, bias=False, weights=True, offset=0):
    g = torch.Generator().manual_seed(1)
    x = 50 * torch.randn(2, n, d, generator=g)  # scores far beyond exp's range at tau 0.5
    y = 50 * torch.randn(2, m, d, generator=g)
    lab = torch.arange(m) % 3
    rl, cl = (lab[offset : offset + n], lab) if labels else (None, None)
    b = torch.tensor(0.3) if bias else None
    head = (x, y, torch.tensor(0.5), b, 0, rl, cl, offset, exclude, n)
    w = torch.rand(n, generator=g) if weights else None
    if op == "row_lse_mean":
        return (*head, w, False, True)
    if op == "sym_lse_mean":
        return (*head, w, torch.rand(m, generator=g) if weights else None, False, True)
    if op == "offdiag_lme":
        return (*head, None if w is None else torch.log(w), True)
    fid = streaming.ELEMENTWISE["exp"]
    return (*head, w, -1, fid, 0.0, 0.0, False, True, True)


PAIRINGS = [
    dict(),
    dict(labels=True, exclude=1),
    dict(m=30, exclude=2),
    dict(m=30, bias=True),
    dict(m=27, offset=18),
    dict(labels=True, m=27, offset=9, bias=True),
]


@pytest.mark.parametrize("op", sorted(selfcheck.SPECS))
@pytest.mark.parametrize("pairing", PAIRINGS, ids=str)
def test_the_check_problem_has_its_own_pairing_and_finite_outputs(op, pairing):
    if op == "sym_lse_mean" and pairing.get("exclude") == 2:
        pytest.skip("the own-key exclusion is one-way: the sweep takes it")
    args = _call(op, **pairing)
    small = selfcheck.check_problem(op, args)
    n, m = small[0].shape[1], small[1].shape[1]
    assert n == selfcheck._CHECK_ROWS and m >= n
    if args[5] is not None:  # labels of the check problem's own sizes
        assert small[5].shape == (n,) and small[6].shape == (m,)
        assert torch.equal(small[5], small[6][small[7] : small[7] + n])
    spec = selfcheck.SPECS[op]
    for pos, size in ((spec.row_w, n), (spec.col_w, m), (spec.log_w, n)):
        if pos >= 0 and args[pos] is not None:
            assert small[pos].shape == (size,)
    assert (small[3] is None) == (args[3] is None)
    out = getattr(sweep, f"{op}_sweep")(*small)  # runs: the vectors fit the problem
    for k in selfcheck._used_outputs(spec, small):
        assert bool(torch.isfinite(out[k]).all()), (op, pairing, k)


def test_only_the_outputs_a_call_uses_are_compared():
    args = _call("row_lse_mean")  # no bias: the bias gradient is not part of the call

    def real_bias_sum(*a):
        out = SWEEP(*a)
        return (*out[:4], out[4] + 1.0)  # a bias-gradient sum where the sweep reports 0

    key = ("row_lse_mean", torch.float32, "dot", 4, "unused")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        selfcheck.checked("row_lse_mean", key, real_bias_sum, SWEEP, args)
    assert selfcheck.triton_status()[key] is True
    with_bias = _call("row_lse_mean", bias=True)
    key2 = (*key[:-1], "used")
    with pytest.warns(RuntimeWarning, match="output 4 differs"):
        selfcheck.checked("row_lse_mean", key2, real_bias_sum, SWEEP, with_bias)
    # the value sum of offdiag_means is not compared when no value function was asked for
    means = _call("offdiag_means")
    msweep = sweep.offdiag_means_sweep

    def no_value(*a):
        out = msweep(*a)
        return (out[0] + 7.0, *out[1:])

    key3 = ("offdiag_means", torch.float32, "dot", 4, "no value")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        selfcheck.checked("offdiag_means", key3, no_value, msweep, means)
    assert selfcheck.triton_status()[key3] is True
    assert selfcheck.triton_usage()[key3] == 1


def test_switches():
    streaming.set_triton(False)
    assert not streaming.triton_enabled()
    assert not ops._triton_ok(torch.randn(1, 4, 8), torch.randn(1, 4, 8), 0)
    streaming.set_triton(None)
    with pytest.raises(TypeError, match="enabled must be a bool or None"):
        streaming.set_triton("no")  # type: ignore[arg-type]
    code = "from mibounds.kernels import streaming; print(streaming.triton_enabled())"
    env = {**os.environ, "MIBOUNDS_TRITON": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr
