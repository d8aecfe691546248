r"""
SimCLR with the LBE and RC regularisers on digits
=================================================

"Rethinking Minimal Sufficient Representation in Contrastive Learning" (Wang et al., CVPR 2022)
argues that contrastive learning keeps mostly the information *shared* by two views, which
can drop information a *different* downstream task needs. It adds a term that raises
:math:`I(z; v)`: LBE (an InfoNCE lower bound with a Gaussian critic on noisy features,
:class:`mibounds.methods.LBE`) or RC (reconstruction of the view,
:func:`mibounds.methods.reconstruction_loss`).

Here, at CPU scale: a small CNN is pre-trained with SimCLR (the NT-Xent loss,
:class:`mibounds.contrastive.NTXentLoss`: cosine similarity, temperature 0.5, each of the 2N
views against the other 2N - 1) on scikit-learn's 8x8 digits **0-4** with hand-written
augmentations, with and without each regulariser (:math:`\lambda = 1`; LBE on the three conv
blocks with weights 0.25, 0.5, 1). Linear probes on the frozen representation measure the
source task (digits 0-4) and a transfer task the encoder never saw: digits **5-9**.

Run ``python examples/infocl_simclr_digits.py`` (a few minutes on a 2-core CPU: 5 seeds,
100 epochs, lambda 0.1 and 1) or add ``--quick`` for a smoke run (the test suite runs it; its
numbers mean nothing). ``--data path.npz`` uses your own images (arrays ``images`` and
``labels``).

**Full default run** (2026-11-25, mibounds 0.1.0 development tree; 344 s on a 2-core CPU;
linear-probe accuracy in %, mean ± std over 5 seeds).

.. code-block:: text

    method                     source 0-4    transfer 5-9   transfer, 10 labels/class
    SimCLR                     100.00 ± 0.00  97.17 ± 0.72   88.25 ± 2.62
    SimCLR + LBE (lambda 0.1)   99.93 ± 0.17  95.84 ± 1.22   86.77 ± 1.57
    SimCLR + LBE (lambda 1)     99.48 ± 0.33  93.38 ± 1.85   78.66 ± 3.67
    SimCLR + RC (lambda 0.1)    99.93 ± 0.17  97.25 ± 1.10   88.70 ± 3.25
    SimCLR + RC (lambda 1)     100.00 ± 0.00  97.55 ± 0.77   92.19 ± 1.72

.. figure:: /_static/results/infocl_simclr_digits.png
   :alt: source and transfer accuracy of SimCLR with and without the LBE and RC regularisers

   The same full default run (2026-11-25), as plotted by the script.

**Against the paper.** The paper (CIFAR-10 pre-training, ResNet-18, 200 epochs) reports the
source accuracy essentially unchanged (SimCLR 85.76, +RC 85.78, +LBE 85.45) and the gain on
transfer tasks: DTD 29.52 / 33.67 (RC) / 34.52 (LBE), VGG Flower 42.81 / 54.16 / 54.10, Traffic
Signs 92.41 / 95.84 / 94.96. Here **RC reproduces the effect**: the source accuracy is
unchanged and the transfer accuracy rises with lambda 1, most with few labels (88.3 to 92.2,
about 1.5 standard deviations of the baseline; lambda 0.1 is within noise). **LBE does not at
this scale**: slightly worse at lambda 0.1 and harmful at the paper's lambda 1. A likely
reason: the Gaussian critic's scale (:math:`\rho = 0.05`, :math:`\sigma = 0.1`) was set for
ResNet-18 features of 128-512 dimensions; on
16-64-dimensional pooled features the bound is maximised mostly by inflating the feature scale,
which the contrastive head does not use. The paper itself reports an inverted U in lambda.
"""

# %%
# sphinx_gallery_thumbnail_path = "_static/results/infocl_simclr_digits.png"
from __future__ import annotations

import argparse
import statistics
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from tqdm import tqdm

from mibounds.contrastive import NTXentLoss
from mibounds.methods import LBE, ConvDecoder, SmallConvEncoder, image_augment, linear_probe
from mibounds.methods import reconstruction_loss as rc_loss
from mibounds.nn import MLP
from mibounds.tasks import load_digits, split_by_class

TASKS = ("source", "transfer", "transfer, 10 labels/class")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="SimCLR with the LBE and RC regularisers on digits")
    p.add_argument("--quick", action="store_true", help="a smoke run (seconds)")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--seeds", type=int, default=5, help="repetitions with different seeds")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument(
        "--lams", default="0.1,1", help="regulariser weights lambda, comma-separated (paper: 1)"
    )
    p.add_argument("--data", default=None, help=".npz with 'images' and 'labels'")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="infocl_simclr_digits.png", help="figure path")
    args = p.parse_args(argv)
    args.lams = [float(v) for v in args.lams.split(",")]
    if args.quick:
        args.epochs, args.seeds, args.lams = 1, 1, args.lams[-1:]
    return args


def methods(lams):
    """(label, regulariser, lambda) for SimCLR and each regulariser at each lambda."""
    out = [("SimCLR", None, 0.0)]
    for reg in ("LBE", "RC"):
        out += [(f"SimCLR + {reg} (lambda {lam:g})", reg, lam) for lam in lams]
    return out


def pretrain(method, images, args, seed):
    label, reg_kind, lam = method
    torch.manual_seed(seed)
    gen = torch.Generator(device=args.device).manual_seed(seed)
    order_gen = torch.Generator().manual_seed(seed)
    enc = SmallConvEncoder(width=16).to(args.device)
    proj = MLP(enc.out_dim, 32, hidden=(64,)).to(args.device)
    modules = [enc, proj]
    lbe = LBE(weights=(0.25, 0.5, 1.0), sigma=0.1, rho=0.05)
    ntxent = NTXentLoss(temperature=0.5)
    decoder = ConvDecoder(enc.out_dim, size=images.shape[-1]).to(args.device)
    if reg_kind == "RC":
        modules.append(decoder)
    params = [p for m in modules for p in m.parameters()]
    opt = torch.optim.Adam(params, lr=args.lr)
    n = len(images)
    for _ in tqdm(
        range(args.epochs), desc=label, leave=False, disable=True if args.quick else None
    ):
        order = torch.randperm(n, generator=order_gen).to(args.device)
        for start in range(0, n - args.batch_size + 1, args.batch_size):
            v = images[order[start : start + args.batch_size]]
            v1, v2 = image_augment(v, gen), image_augment(v, gen)
            feats = [torch.cat(pair) for pair in zip(enc(v1), enc(v2), strict=True)]
            reg = torch.zeros((), device=args.device)
            rep = feats[-1]
            if reg_kind == "LBE":
                est, noisy = lbe(feats)
                reg = -est
                rep = noisy[-1]  # only the noisy last layer feeds the projector
            elif reg_kind == "RC":
                b = len(v)
                reg = rc_loss(decoder, feats[-1][:b], v1) + rc_loss(decoder, feats[-1][b:], v2)
            z = proj(rep)
            z1, z2 = z[: len(v)], z[len(v) :]
            loss = ntxent(z1, z2) + lam * reg
            opt.zero_grad()
            loss.backward()
            opt.step()
    return enc.eval()


def represent(enc, images):
    with torch.no_grad():
        return torch.cat([enc(images[i : i + 512])[-1] for i in range(0, len(images), 512)])


def few_labels(x, y, per_class, seed):
    """``per_class`` labelled examples of each class."""
    g = torch.Generator().manual_seed(seed)
    keep = []
    for c in y.unique():
        idx = torch.nonzero(y == c).squeeze(1).cpu()
        keep.append(idx[torch.randperm(len(idx), generator=g)[:per_class]])
    k = torch.cat(keep).to(y.device)
    return x[k], y[k]


def main(argv=None):
    args = parse_args(argv)
    images, labels = load_digits(args.data)
    images, labels = images.to(args.device), labels.to(args.device)
    src = split_by_class(images, labels, [0, 1, 2, 3, 4], seed=0)
    tgt = split_by_class(images, labels, [5, 6, 7, 8, 9], seed=0)
    probe_epochs = 20 if args.quick else 300
    runs = methods(args.lams)
    results = {m[0]: {t: [] for t in TASKS} for m in runs}
    start = time.time()
    for seed in range(args.seeds):
        for method in runs:
            enc = pretrain(method, src[0], args, seed)
            few = few_labels(represent(enc, tgt[0]), tgt[1], 10, seed)
            for task, (ftr, ytr, xte, yte) in (
                ("source", (represent(enc, src[0]), src[1], src[2], src[3])),
                ("transfer", (represent(enc, tgt[0]), tgt[1], tgt[2], tgt[3])),
                ("transfer, 10 labels/class", (*few, tgt[2], tgt[3])),
            ):
                acc = linear_probe(ftr, ytr, represent(enc, xte), yte, epochs=probe_epochs)
                results[method[0]][task].append(100 * acc)

    def summary(vals):
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        return statistics.mean(vals), sd

    header = "".join(f"{t:>28}" for t in TASKS)
    print(f"\n{'method':<28}{header}")
    for name, res in results.items():
        cells = [summary(res[t]) for t in TASKS]
        print(f"{name:<28}" + "".join(f"{a:>19.2f} ± {s:5.2f}" for a, s in cells))
    print(
        f"({time.time() - start:.0f} s; linear-probe accuracy in %, mean ± std over "
        f"{args.seeds} seeds; source: digits 0-4, transfer: digits 5-9, never seen in training)"
    )

    fig, ax = plt.subplots(figsize=(9, 3.8))
    width = 0.8 / len(results)
    for k, (name, res) in enumerate(results.items()):
        means = [summary(res[t])[0] for t in TASKS]
        sds = [summary(res[t])[1] for t in TASKS]
        xs = [x + width * (k - (len(results) - 1) / 2) for x in range(len(TASKS))]
        ax.bar(xs, means, width, yerr=sds, label=name, capsize=2)
    ax.set_xticks(range(len(TASKS)), list(TASKS))
    ax.set_ylabel("linear probe accuracy (%)")
    lo = min(min(v) for res in results.values() for v in res.values())
    ax.set_ylim(max(0.0, lo - 5), 100)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"figure: {args.out}")
    return results


if __name__ == "__main__":
    main()
