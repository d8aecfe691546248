"""Slow, obviously-correct loop implementations of every bound, for tests only.

Each function takes a single ``(N, N)`` score matrix (``S[i][j] = T(x_i, y_j)``) and computes the
definition literally with Python loops over scalar torch ops, so autograd works through it.
Nothing here is clever: no masking tricks, no shared helpers with the library.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _exp(t: Tensor) -> Tensor:
    return torch.exp(t)


def infonce(s: Tensor, symmetric: bool = False) -> Tensor:
    n = s.shape[0]
    rows = []
    for i in range(n):
        denom = sum(_exp(s[i, j]) for j in range(n))
        rows.append(s[i, i] - torch.log(denom) + math.log(n))
    row_bound = sum(rows) / n
    if not symmetric:
        return row_bound
    cols = []
    for j in range(n):
        denom = sum(_exp(s[i, j]) for i in range(n))
        cols.append(s[j, j] - torch.log(denom) + math.log(n))
    return 0.5 * (row_bound + sum(cols) / n)


def _pairs(n: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(n) for j in range(n) if i != j]


def tuba(s: Tensor, log_baseline: Tensor | None = None) -> Tensor:
    n = s.shape[0]
    b = torch.zeros(n, dtype=s.dtype) if log_baseline is None else log_baseline
    joint = sum(s[i, i] - b[i] for i in range(n)) / n
    marg = sum(_exp(s[i, j] - b[j]) for i, j in _pairs(n)) / (n * (n - 1))
    return 1 + joint - marg


def nwj(s: Tensor) -> Tensor:
    n = s.shape[0]
    joint = sum(s[i, i] for i in range(n)) / n
    marg = sum(_exp(s[i, j]) for i, j in _pairs(n)) / (n * (n - 1))
    return joint - marg / math.e


def dv(s: Tensor) -> Tensor:
    n = s.shape[0]
    joint = sum(s[i, i] for i in range(n)) / n
    marg = sum(_exp(s[i, j]) for i, j in _pairs(n)) / (n * (n - 1))
    return joint - torch.log(marg)


def js_objective(s: Tensor) -> Tensor:
    """The f-GAN Jensen-Shannon training objective (gradient of js and smile)."""
    n = s.shape[0]
    sp = torch.nn.functional.softplus
    joint = sum(-sp(-s[i, i]) for i in range(n)) / n
    marg = sum(sp(s[i, j]) for i, j in _pairs(n)) / (n * (n - 1))
    return joint - marg


def smile_value(s: Tensor, clip: float | None) -> Tensor:
    n = s.shape[0]
    joint = sum(s[i, i] for i in range(n)) / n
    c = s if clip is None else torch.clamp(s, -clip, clip)
    marg = sum(_exp(c[i, j]) for i, j in _pairs(n)) / (n * (n - 1))
    return joint - torch.log(marg)


def interpolated(s: Tensor, log_baseline: Tensor | None, alpha: float) -> Tensor:
    """Poole et al. (2019) Eq. 11 with K = N - 1 samples, baselines per y, leave-one-out."""
    n = s.shape[0]
    b = torch.zeros(n, dtype=s.dtype) if log_baseline is None else log_baseline

    def a(y: int, leave_out: int) -> Tensor:
        # alpha * (1/K) sum_{k != leave_out} e^{T(x_k, y)} + (1 - alpha) e^{b(y)}
        m = sum(_exp(s[k, y]) for k in range(n) if k != leave_out) / (n - 1)
        return alpha * m + (1 - alpha) * _exp(b[y])

    joint = sum(s[j, j] - torch.log(a(j, i)) for i, j in _pairs(n)) / (n * (n - 1))
    marg = sum(_exp(s[i, j]) / a(j, j) for i, j in _pairs(n)) / (n * (n - 1))
    return 1 + joint - marg


def fmi(s: Tensor, activation, conjugate) -> Tensor:  # type: ignore[no-untyped-def]
    n = s.shape[0]
    joint = sum(activation(s[i, i]) for i in range(n)) / n
    marg = sum(conjugate(activation(s[i, j])) for i, j in _pairs(n)) / (n * (n - 1))
    return joint - marg


def concat_critic(net: torch.nn.Module, x: Tensor, y: Tensor) -> Tensor:
    n = x.shape[0]
    out = torch.empty(n, n, dtype=x.dtype)
    for i in range(n):
        for j in range(n):
            out[i, j] = net(torch.cat([x[i], y[j]])).squeeze()
    return out


def gaussian_log_q(mu_i: Tensor, logvar_i: Tensor, y_j: Tensor) -> Tensor:
    """log N(y_j; mu_i, diag exp(logvar_i)), written out."""
    total = torch.zeros((), dtype=mu_i.dtype)
    for k in range(mu_i.shape[0]):
        var = torch.exp(logvar_i[k])
        total = total - 0.5 * ((y_j[k] - mu_i[k]) ** 2 / var + logvar_i[k] + math.log(2 * math.pi))
    return total


def club(mu: Tensor, logvar: Tensor, y: Tensor) -> Tensor:
    """The O(N^2 d) definition: mean_i log q(y_i|x_i) - mean_{i,j} log q(y_j|x_i)."""
    n = mu.shape[0]
    logvar = logvar.expand_as(mu)
    pos = sum(gaussian_log_q(mu[i], logvar[i], y[i]) for i in range(n)) / n
    neg = sum(gaussian_log_q(mu[i], logvar[i], y[j]) for i in range(n) for j in range(n)) / n**2
    return pos - neg


def club_sample(mu: Tensor, logvar: Tensor, y: Tensor, perm: list[int]) -> Tensor:
    n = mu.shape[0]
    logvar = logvar.expand_as(mu)
    return (
        sum(
            gaussian_log_q(mu[i], logvar[i], y[i]) - gaussian_log_q(mu[i], logvar[i], y[perm[i]])
            for i in range(n)
        )
        / n
    )


def l1out(log_q: Tensor) -> Tensor:
    n = log_q.shape[0]
    total = torch.zeros((), dtype=log_q.dtype)
    for j in range(n):
        mixture = sum(torch.exp(log_q[i, j]) for i in range(n) if i != j) / (n - 1)
        total = total + log_q[j, j] - torch.log(mixture)
    return total / n


def nce_club(s: Tensor) -> Tensor:
    n = s.shape[0]
    pos = sum(s[i, i] for i in range(n)) / n
    allp = sum(s[i, j] for i in range(n) for j in range(n)) / n**2
    return pos - allp
