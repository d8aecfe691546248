"""float32 accuracy of the drop-in losses: the error against float64 over random draws, for
mibounds' streamed loss, the dense float32 computation the peers use (cross-entropy on the
N x N logits) and, where it is installed, pytorch-metric-learning itself.

For each loss, ``--draws`` random problems (N from 4 to 64, d from 3 to 64, temperatures 0.05
to 1, positive pairs correlated), each computed in float32 and compared with the same loss in
float64 (the dense formula); the table gives the largest and the mean relative error::

    python benchmarks/accuracy.py --json benchmarks/accuracy.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import torch
import torch.nn.functional as F

from mibounds import contrastive


def _ntxent_dense(u, v, tau):
    z = F.normalize(torch.cat([u, v]), dim=1)
    s = z @ z.T / tau
    s.fill_diagonal_(-math.inf)
    n = u.shape[0]
    return F.cross_entropy(s, torch.cat([torch.arange(n, 2 * n), torch.arange(n)]))


def _clip_dense(u, v, tau):
    s = u @ v.T / tau
    t = torch.arange(u.shape[0])
    return 0.5 * (F.cross_entropy(s, t) + F.cross_entropy(s.T, t))


def _supcon_dense(z, labels, tau):
    zn = F.normalize(z, dim=1)
    s = (zn @ zn.T / tau).fill_diagonal_(-math.inf)
    pos = (labels[:, None] == labels[None, :]).fill_diagonal_(False)
    logp = s - torch.logsumexp(s, 1, keepdim=True)
    per = -(logp.masked_fill(~pos, 0).sum(1) / pos.sum(1).clamp_min(1))
    return per[pos.any(1)].mean()


def _siglip_dense(u, v, tau):
    # OpenCLIP's arithmetic: logit_scale * u @ v.T + logit_bias, scale 1 / tau, bias -1 / tau
    scale = torch.tensor(1.0 / tau, dtype=u.dtype)
    s = scale * u @ v.T + torch.tensor(-1.0 / tau, dtype=u.dtype)
    sign = 2 * torch.eye(u.shape[0], dtype=u.dtype) - 1
    return -F.logsigmoid(sign * s).sum() / u.shape[0]


def _pml_ntxent_dense(z, labels, tau):
    zn = F.normalize(z, dim=1)
    s = zn @ zn.T / tau
    n = z.shape[0]
    eye = torch.eye(n, dtype=torch.bool)
    pos = (labels[:, None] == labels[None, :]) & ~eye
    neg = labels[:, None] != labels[None, :]
    log_neg = torch.logsumexp(s.masked_fill(~neg, -math.inf), 1)
    a, p = pos.nonzero(as_tuple=True)
    return F.softplus(log_neg[a] - s[a, p]).mean()


def _pml(name):
    try:
        from pytorch_metric_learning import losses
    except ImportError:
        return None
    return getattr(losses, name)


LOSSES = {
    # name: (ours, dense, the peer's own class where installed, inputs)
    "ntxent (lightly)": (
        lambda u, v, lab, tau: contrastive.NTXentLoss(tau)(u, v),
        lambda u, v, lab, tau: _ntxent_dense(u, v, tau),
        None,
        "views",
    ),
    "clip (OpenCLIP)": (
        lambda u, v, lab, tau: contrastive.CLIPLoss()(u, v, 1.0 / tau),
        lambda u, v, lab, tau: _clip_dense(u, v, tau),
        None,
        "views",
    ),
    "siglip (OpenCLIP)": (
        lambda u, v, lab, tau: contrastive.SigLIPLoss()(u, v, 1.0 / tau, -1.0 / tau),
        lambda u, v, lab, tau: _siglip_dense(u, v, tau),
        None,
        "views",
    ),
    "ntxent (pytorch-metric-learning)": (
        lambda z, _, lab, tau: contrastive.PMLNTXentLoss(tau)(z, lab),
        lambda z, _, lab, tau: _pml_ntxent_dense(z, lab, tau),
        "NTXentLoss",
        "labelled",
    ),
    "supcon (pytorch-metric-learning)": (
        lambda z, _, lab, tau: contrastive.SupConLoss(tau)(z, lab),
        lambda z, _, lab, tau: _supcon_dense(z, lab, tau),
        "SupConLoss",
        "labelled",
    ),
}


def run(draws: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for name, (ours, dense, peer, kind) in LOSSES.items():
        peer_cls = None if peer is None else _pml(peer)
        errors: dict[str, list[float]] = {"mibounds": [], "dense": []}
        if peer_cls is not None:
            errors["pytorch-metric-learning"] = []
        for k in range(draws):
            n = int(torch.randint(4, 65, (1,), generator=g))
            d = int(torch.randint(3, 65, (1,), generator=g))
            tau = (0.05, 0.1, 0.5, 1.0)[k % 4]
            u = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
            v = F.normalize(u + 0.3 * torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
            if kind == "labelled":
                u, v = torch.cat([u, v]), None
            lab = torch.arange(u.shape[0]) % max(2, n // 2)
            truth = float(dense(u, v, lab, tau))
            f32 = (u.float(), None if v is None else v.float())
            errors["mibounds"].append(abs(float(ours(*f32, lab, tau)) - truth) / truth)
            errors["dense"].append(abs(float(dense(*f32, lab, tau)) - truth) / truth)
            if peer_cls is not None:
                got = float(peer_cls(tau)(f32[0], lab))
                errors["pytorch-metric-learning"].append(abs(got - truth) / truth)
        for impl, errs in errors.items():
            rows.append({"loss": name, "impl": impl, "draws": draws, "max_rel_error": max(errs),
                         "mean_rel_error": sum(errs) / len(errs)})  # fmt: skip
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ["| loss | computed by | max rel. error | mean rel. error |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['loss']} | {r['impl']} | {r['max_rel_error']:.2e} | "
                     f"{r['mean_rel_error']:.2e} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--draws", type=int, default=500)
    p.add_argument("--json", help="where to write the rows")
    args = p.parse_args(argv)
    if args.draws < 1:
        p.error(f"--draws must be >= 1, got {args.draws}")
    rows = run(args.draws)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"torch": torch.__version__, "rows": rows}, fh, indent=1)
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
