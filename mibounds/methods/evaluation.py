"""Evaluation helpers for learned representations: linear probes and collapse diagnostics."""

from __future__ import annotations

import torch
from torch import Tensor

from mibounds import _checks

__all__ = ["effective_rank", "linear_probe", "mean_pairwise_sq_distance"]


def linear_probe(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    *,
    epochs: int = 300,
    lr: float = 0.05,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> float:
    """Test accuracy of a multinomial logistic regression trained on frozen features.

    Features are standardised with the training statistics; full-batch Adam.

    Args:
        train_features: ``(N, k)`` features (detached here).
        train_labels: ``(N,)`` integer labels.
        test_features: ``(M, k)``.
        test_labels: ``(M,)``.
        epochs: full-batch optimisation steps.
        lr: Adam learning rate.
        weight_decay: L2 penalty.
        seed: seed of the initialisation.

    Returns:
        The test accuracy in [0, 1].

    Example:
        >>> x = torch.randn(200, 2)
        >>> y = (x[:, 0] > 0).long()
        >>> linear_probe(x[:150], y[:150], x[150:], y[150:]) > 0.9
        True
    """
    for name, t in (("train_features", train_features), ("test_features", test_features)):
        _checks.check_tensor(name, t, min_dim=2)
    if train_features.shape[0] != train_labels.shape[0]:
        raise ValueError("train_features and train_labels must have the same length")
    if test_features.shape[0] != test_labels.shape[0]:
        raise ValueError("test_features and test_labels must have the same length")
    xtr, xte = train_features.detach().float(), test_features.detach().float()
    mean, std = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xte = (xtr - mean) / std, (xte - mean) / std
    classes = int(max(train_labels.max(), test_labels.max())) + 1
    g = torch.Generator().manual_seed(seed)
    w = (0.01 * torch.randn(xtr.shape[1], classes, generator=g)).to(xtr.device)
    w.requires_grad_(True)
    b = torch.zeros(classes, device=xtr.device, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=lr, weight_decay=weight_decay)
    with torch.enable_grad():
        for _ in range(epochs):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(xtr @ w + b, train_labels)
            loss.backward()
            opt.step()
    with torch.no_grad():
        pred = (xte @ w + b).argmax(-1)
    return float((pred == test_labels).float().mean())


def effective_rank(features: Tensor) -> float:
    """``exp`` of the entropy of the normalised singular values of the centred features
    (Roy and Vetterli 2007): 1 for features on a line, up to ``min(N, k)``.

    Example:
        >>> round(effective_rank(torch.eye(4)), 3)
        3.0
    """
    _checks.check_tensor("features", features, min_dim=2)
    z = features.detach().double()
    s = torch.linalg.svdvals(z - z.mean(0))
    p = s / s.sum().clamp_min(1e-300)
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def mean_pairwise_sq_distance(features: Tensor, normalize: bool = True) -> float:
    """Mean squared distance between distinct rows (of L2-normalised rows by default: in
    [0, 4]; 0 when the features collapse to one point).

    Example:
        >>> mean_pairwise_sq_distance(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
        4.0
    """
    _checks.check_tensor("features", features, min_dim=2)
    z = features.detach().double()
    if normalize:
        z = torch.nn.functional.normalize(z, dim=-1)
    n = z.shape[0]
    if n < 2:
        raise ValueError("mean_pairwise_sq_distance needs at least 2 rows")
    sq = (z * z).sum(-1)
    total = 2 * n * sq.sum() - 2 * (z.sum(0) ** 2).sum()
    return float(total / (n * (n - 1)))
