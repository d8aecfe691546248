"""Pairings (rectangular candidates, labels, excluded pairs, a bias) on every lower bound:
streamed == dense == the spelled-out reference, values and gradients."""

from __future__ import annotations

import math

import pytest
import torch

import mibounds
from mibounds.kernels import streaming
from mibounds.pairing import Pairing
from mibounds.scores import DenseScores
from tests import reference as ref

LABELS = torch.tensor([0, 1, 0, 2, 1, 0, 3, 2, 0, 4])  # uneven classes, 3 and 4 without a pair

# (name, n rows, m columns, pairing kwargs)
PAIRINGS = [
    ("labels-self", 10, 10, dict(labels=LABELS, exclude="self")),
    ("labels", 10, 10, dict(labels=LABELS)),
    ("queue", 6, 10, dict()),
    ("own-key-and-queue", 6, 10, dict(exclude="batch")),
    ("row-and-column-labels", 6, 10, dict(labels=LABELS[:6], y_labels=LABELS)),
]


def _reference(name, s, pos, neg):
    div = mibounds.get_divergence("hellinger")
    fns = {
        "infonce": ref.paired_infonce,
        "nwj": ref.paired_nwj,
        "tuba": lambda s, p, q: ref.paired_nwj(s + 1, p, q),
        "dv": ref.paired_dv,
        "js": lambda s, p, q: 1 + ref.paired_nwj(s + 1, p, q) - 1,
        "fmi-hellinger": lambda s, p, q: ref.paired_fmi(s, p, q, div.activation, div.conjugate),
    }
    return fns[name](s, pos, neg)


BOUNDS = {
    "infonce": mibounds.infonce,
    "nwj": mibounds.nwj,
    "tuba": mibounds.tuba,
    "dv": mibounds.dv,
    "js": mibounds.js,
    "fmi-hellinger": lambda s: mibounds.fmi(s, "hellinger"),
}


def _features(n, m, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randn(m, d, generator=g, dtype=torch.float64)
    y[:n] = 0.7 * x + 0.5 * y[:n]
    return x.requires_grad_(True), y.requires_grad_(True)


@pytest.fixture(params=[None, 2 * 4 * 4 * 10], ids=["one-panel", "panels-of-2"])
def budget(request):
    streaming.set_memory_budget(request.param)
    yield
    streaming.set_memory_budget(None)


@pytest.mark.parametrize("bound", list(BOUNDS))
@pytest.mark.parametrize("case", PAIRINGS, ids=[p[0] for p in PAIRINGS])
@pytest.mark.parametrize("sim", ["dot", "cosine", "gaussian"])
def test_streamed_equals_dense_equals_reference(bound, case, sim, budget):
    _, n, m, kw = case
    x, y = _features(n, m)
    tau = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-0.2, dtype=torch.float64, requires_grad=True)
    sep = mibounds.SeparableScores(x, y, sim, tau, bias=bias, **kw)
    fn = BOUNDS[bound]
    got = fn(sep)
    dense = fn(DenseScores(sep.dense(), **kw))
    pos, neg = ref.row_sets(n, m, kw.get("labels"), kw.get("y_labels"), kw.get("exclude", "none"))
    want = _reference(bound, sep.dense(), pos, neg)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(dense, want, rtol=1e-10, atol=1e-10)
    if bound == "js":  # the gradient is the Jensen-Shannon objective's
        want = ref.paired_js_objective(sep.dense(), pos, neg)
    inputs = (x, y, tau, bias)
    g_got = torch.autograd.grad(got, inputs)
    g_want = torch.autograd.grad(want, inputs)
    for a, b in zip(g_got, g_want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("case", PAIRINGS[:3] + PAIRINGS[4:], ids=lambda p: p[0])
def test_symmetric_infonce_with_pairings(case):
    _, n, m, kw = case
    x, y = _features(n, m)
    sep = mibounds.SeparableScores(x, y, "cosine", 0.5, **kw)
    got = mibounds.infonce(sep, symmetric=True)
    s = sep.dense()
    pos, neg = ref.row_sets(n, m, kw.get("labels"), kw.get("y_labels"), kw.get("exclude", "none"))
    # the columns' view: transpose the scores and the label roles
    labels, y_labels = kw.get("labels"), kw.get("y_labels")
    if labels is not None and y_labels is not None:
        labels, y_labels = y_labels, labels
    cpos, cneg = _column_sets(n, m, labels, y_labels, kw.get("exclude", "none"))
    want = 0.5 * (ref.paired_infonce(s, pos, neg) + ref.paired_infonce(s.T, cpos, cneg))
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    dense = mibounds.infonce(DenseScores(s, **kw), symmetric=True)
    torch.testing.assert_close(dense, want, rtol=1e-10, atol=1e-10)
    gx, gy = torch.autograd.grad(got, (x, y))
    wx, wy = torch.autograd.grad(want, (x, y))
    torch.testing.assert_close(gx, wx, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(gy, wy, rtol=1e-9, atol=1e-10)


def _column_sets(n, m, col_labels, row_labels, exclude):
    """Per column j (a row of S^T), its positive and negative rows."""
    if col_labels is not None and row_labels is None:
        row_labels = col_labels
    positives, negatives = [], []
    for j in range(m):
        pos, neg = [], []
        for i in range(n):
            if exclude == "self" and i == j:
                continue
            same = (int(col_labels[j]) == int(row_labels[i])) if col_labels is not None else i == j
            (pos if same else neg).append(i)
        positives.append(pos)
        negatives.append(neg)
    return positives, negatives


def test_counts_and_layout():
    layout = Pairing(labels=LABELS, exclude="self").layout(10, 10)
    npos, ncand = layout.counts()
    pos, neg = ref.row_sets(10, 10, LABELS, None, "self")
    assert npos.tolist() == [len(p) for p in pos]
    assert ncand.tolist() == [len(p) + len(q) for p, q in zip(pos, neg, strict=True)]
    npos, ncand = Pairing(exclude="batch").layout(6, 10).counts(6, 10)
    assert npos.tolist() == [1.0] * 6 and ncand.tolist() == [5.0] * 6


def test_a_row_without_negatives_does_not_count_for_the_marginal():
    labels = torch.tensor([0, 0, 0, 1, 2])  # rows 0-2: one class; with the queue below ...
    x, y = _features(5, 5)
    # rows 0-2 have no negative: they do not count for the marginal term, the others do
    assert torch.isfinite(mibounds.dv(mibounds.SeparableScores(x, y, labels=labels)))


@pytest.mark.parametrize("bound", ["nwj", "js", "dv", "smile", "tuba", "mine"])
@pytest.mark.parametrize("kind", ["dense-labels", "separable-labels", "own-key-only"])
def test_a_bound_over_negatives_without_any_negative_pair_raises(bound, kind):
    """Every pair positive or excluded: the marginal term is not defined, on every path."""
    x, y = _features(5, 5)
    zeros = torch.zeros(5, dtype=torch.long)
    scores = {
        "dense-labels": lambda: mibounds.DenseScores(x @ y.T, labels=zeros, exclude="self"),
        "separable-labels": lambda: mibounds.SeparableScores(x, y, labels=zeros),
        "own-key-only": lambda: mibounds.SeparableScores(x, y, exclude="batch"),
    }[kind]()
    fn = getattr(mibounds, bound)
    with pytest.raises(ValueError, match="no negative pair"):
        fn(scores)
    # InfoNCE needs no negative: a row of positives only is log 1 = 0 of information
    assert torch.isfinite(mibounds.infonce(scores))


def test_bias_is_an_offset_and_infonce_ignores_it():
    x, y = _features(8, 8)
    b = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    with_bias = mibounds.infonce(mibounds.SeparableScores(x, y, bias=b))
    torch.testing.assert_close(with_bias, mibounds.infonce(mibounds.SeparableScores(x, y)))
    (gb,) = torch.autograd.grad(with_bias, b)
    assert abs(float(gb)) < 1e-12
    nwj = mibounds.nwj(mibounds.SeparableScores(x, y, bias=b))
    torch.testing.assert_close(nwj, mibounds.nwj((x @ y.T) + b))


def test_pairing_errors():
    x = torch.randn(4, 3)
    with pytest.raises(TypeError, match="labels must hold integer labels"):
        mibounds.SeparableScores(x, x, labels=torch.zeros(4))
    with pytest.raises(ValueError, match=r"labels must have one entry per row \(4\), got 3"):
        mibounds.SeparableScores(x, x, labels=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="exclude must be one of"):
        mibounds.SeparableScores(x, x, exclude="diag")
    with pytest.raises(ValueError, match="one label vector needs square scores"):
        mibounds.SeparableScores(x, torch.randn(6, 3), labels=torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="cannot have labels"):
        Pairing(labels=torch.zeros(4, dtype=torch.long), exclude="batch")
    with pytest.raises(ValueError, match="bias must be a scalar"):
        mibounds.SeparableScores(x, x, bias=torch.zeros(2))
    with pytest.raises(ValueError, match="needs square scores with the positives on the diagonal"):
        mibounds.interpolated(mibounds.SeparableScores(x, torch.randn(6, 3)))
    # dense scores with a pairing give per-sample terms (tests/test_peers.py checks them)
    terms = mibounds.infonce(DenseScores(torch.randn(4, 4), exclude="self"), reduction="none")
    assert terms.shape == (4,)


def test_sum_reduction_counts_the_rows_that_count():
    x, y = _features(10, 10)
    sep = mibounds.SeparableScores(x, y, labels=LABELS, exclude="self")
    rows = sum(1 for p in ref.row_sets(10, 10, LABELS, None, "self")[0] if p)
    torch.testing.assert_close(mibounds.infonce(sep, reduction="sum"), rows * mibounds.infonce(sep))
    assert math.isfinite(float(mibounds.infonce(sep).detach()))
