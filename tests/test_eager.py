"""The streamed ops called eagerly (mibounds.kernels.eager) give the custom ops' values and
gradients, bit for bit, and the custom op still serves torch.compile and CPU autocast."""

from __future__ import annotations

import pytest
import torch

from mibounds.kernels import eager, streaming
from mibounds.pairing import Pairing


def _through_op(monkeypatch):
    monkeypatch.setattr(eager.EagerOp, "__call__", lambda self, x, *a: self.op(x, *a))


def _calls():
    g = torch.Generator().manual_seed(3)
    layout = Pairing(torch.tensor([0, 1, 0, 2, 1, 0]), exclude="self").layout(6, 6)
    weight = torch.rand(6, generator=g, dtype=torch.float64)
    return {
        "row_lse": lambda x, y, t, b: streaming.row_logsumexp_mean(x, y, t, "dot", bias=b),
        "row_lse_pairing": lambda x, y, t, b: streaming.row_logsumexp_mean(
            x, y, t, "dot", layout=layout, weight=weight, minus_positives=True
        ),
        "sym_lse": lambda x, y, t, b: streaming.symmetric_logsumexp_mean(
            x, y, t, "dot", bias=b, minus_positives=True
        ),
        "neg_lme": lambda x, y, t, b: streaming.offdiag_logmeanexp(x, y, t, "gaussian", bias=b),
        "means": lambda x, y, t, b: streaming.offdiag_means(
            x, y, t, "dot", "softplus", "exp", shift=0.5, layout=layout, weight=weight, bias=b
        )[1],
    }


@pytest.mark.parametrize("name", list(_calls()))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_eager_calls_match_the_custom_op_bit_for_bit(name, dtype, monkeypatch):
    call = _calls()[name]

    def run():
        g = torch.Generator().manual_seed(0)
        x = torch.randn(6, 5, generator=g, dtype=dtype).requires_grad_()
        y = torch.randn(6, 5, generator=g, dtype=dtype).requires_grad_()
        t = torch.tensor(0.7, dtype=dtype, requires_grad=True)
        b = torch.tensor(-0.3, dtype=dtype, requires_grad=True)
        value = call(x, y, t, b)
        value.backward()
        return value.detach(), x.grad, y.grad, t.grad, b.grad

    eager_out = run()
    with monkeypatch.context() as m:
        _through_op(m)
        op_out = run()
    for a, b in zip(eager_out, op_out, strict=True):
        if a is None or b is None:
            assert a is None and b is None
        else:
            assert torch.equal(a, b)


def test_eager_calls_without_gradients_and_under_no_grad():
    x, y = torch.randn(5, 3), torch.randn(5, 3)
    with torch.no_grad():
        a = streaming.row_logsumexp_mean(x.requires_grad_(), y, 0.5, "dot")
    assert not a.requires_grad
    dense = torch.logsumexp(x.detach() @ y.T / 0.5, dim=-1).mean()
    assert torch.allclose(a, dense)


def test_the_custom_op_serves_cpu_autocast(monkeypatch):
    seen = []
    original = eager.EagerOp.__call__

    def spy(self, x, *a):
        seen.append(torch.is_autocast_enabled("cpu"))
        return original(self, x, *a)

    monkeypatch.setattr(eager.EagerOp, "__call__", spy)
    called = []
    op = streaming.row_logsumexp_mean  # goes through ops._ROW_LSE_CALL

    from mibounds.kernels import ops

    real_op = ops._ROW_LSE_CALL.op
    monkeypatch.setattr(ops._ROW_LSE_CALL, "op", lambda *a: called.append(1) or real_op(*a))
    x, y = torch.randn(4, 3), torch.randn(4, 3)
    op(x, y, 1.0, "dot")
    assert not called  # eager: the implementation directly
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = op(x, y, 1.0, "dot")
    assert called and out.dtype == torch.float32  # the op, whose autocast rule keeps float32
    assert seen == [False, True]
