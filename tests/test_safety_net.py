"""The Triton safety net, simulated on the CPU: a kernel that fails to compile or computes
wrong values is disabled with one warning and the sweep takes over; switches and coverage."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch

from mibounds.kernels import streaming

SWEEP = streaming._row_lse_mean_sweep


def _args(n=9, d=4, b=2):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, n, d, generator=g)
    y = torch.randn(b, n, d, generator=g)
    return (x, y, torch.tensor(0.5), None, 0, None, None, 0, 0, n, None, True)


@pytest.fixture(autouse=True)
def _fresh():
    streaming._TRITON_CHECKED.clear()
    yield
    streaming._TRITON_CHECKED.clear()


def test_a_failing_kernel_is_disabled_with_one_warning():
    calls = []

    def broken(*a):
        calls.append(1)
        raise RuntimeError("out of resources: shared memory, required 262144")

    key = ("row_lse_mean", torch.float32, "dot", 4)
    args = _args()
    with pytest.warns(RuntimeWarning, match=r"failed its check .* out of resources"):
        got = streaming._checked_triton(key, broken, SWEEP, args)
    for a, b in zip(got, SWEEP(*args), strict=True):
        torch.testing.assert_close(a, b)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning, the kernel is not tried again
        streaming._checked_triton(key, broken, SWEEP, args)
    assert len(calls) == 1
    assert streaming.triton_status()[key] is False


def test_a_wrong_kernel_is_disabled():
    def wrong(*a):
        out = SWEEP(*a)
        return (out[0] + 1e-2, *out[1:])

    key = ("row_lse_mean", torch.float32, "dot", 4, "wrong")
    args = _args()
    with pytest.warns(RuntimeWarning, match="differs from the sweep"):
        got = streaming._checked_triton(key, wrong, SWEEP, args)
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
        streaming._checked_triton(key, good, SWEEP, args)
        streaming._checked_triton(key, good, SWEEP, args)
    # once on the check problem, then on each real call
    assert used == [(1, streaming._CHECK_ROWS, 4), (2, 9, 4), (2, 9, 4)]
    assert streaming.triton_status()[key] is True


def test_a_failure_on_the_real_call_falls_back():
    def fails_when_large(*a):
        if a[0].shape[1] > streaming._CHECK_ROWS:
            raise RuntimeError("launch failed")
        return SWEEP(*a)

    key = ("row_lse_mean", torch.float32, "dot", 4, "large")
    args = _args(n=100)
    with pytest.warns(RuntimeWarning, match="launch failed"):
        got = streaming._checked_triton(key, fails_when_large, SWEEP, args)
    torch.testing.assert_close(got[0], SWEEP(*args)[0])
    assert streaming.triton_status()[key] is False


def test_coverage_excludes_what_the_kernels_cannot_do():
    streaming.set_triton(True)
    try:
        ok = streaming._triton_ok
        x = torch.randn(2, 8, 64)
        assert ok(x, x, 0) is streaming.triton_kernels.HAS_TRITON
        assert ok(x, torch.randn(2, 12, 64), 0) is streaming.triton_kernels.HAS_TRITON  # a queue
        assert not ok(torch.randn(2, 8, 65), torch.randn(2, 8, 65), 0)  # registers, shared memory
        assert not ok(x.double(), x.double(), 0)  # float64 stays float64: the sweep
        assert not ok(torch.randn(0, 8, 64), torch.randn(0, 8, 64), 0)  # an empty batch
        assert not ok(x, x, 1)  # Gaussian scores
    finally:
        streaming.set_triton(None)


def test_switches():
    streaming.set_triton(False)
    assert not streaming.triton_enabled()
    assert not streaming._triton_ok(torch.randn(1, 4, 8), torch.randn(1, 4, 8), 0)
    streaming.set_triton(None)
    with pytest.raises(TypeError, match="enabled must be a bool or None"):
        streaming.set_triton("no")  # type: ignore[arg-type]
    code = "from mibounds.kernels import streaming; print(streaming.triton_enabled())"
    env = {**os.environ, "MIBOUNDS_TRITON": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr
