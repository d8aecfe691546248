r"""
FactorCL on synthetic two-modality data
=======================================

Reproduces the synthetic experiment of FactorCL (Liang et al., NeurIPS 2023) at CPU scale.
Two modalities share a latent :math:`w_s` and each has a unique latent :math:`w_1`, :math:`w_2`
(:class:`mibounds.tasks.FactorCLSynthetic`). The label depends on chosen coordinates of all
three, so part of the task-relevant information is *unique* to one modality, which a plain
cross-modal contrastive objective throws away.

We train FactorCL-SUP, FactorCL-SSL and a cross-modal InfoNCE baseline (SimCLR-style, one
head per modality) at several shared/unique label ratios, then report

* the accuracy of a linear probe on the frozen representation (held-out data), and
* the MI between learned representations and each latent, estimated with SMILE and a separable
  critic (:func:`mibounds.estimate_mi`), as in the paper's Table 1.

Run ``python examples/factorcl_synthetic.py`` (8 to 24 minutes on a 2-core CPU) or add
``--quick`` for a smoke run.

Settings: MLP encoders 100-256-64, heads of 32, concat critics with one hidden layer of 64
(the official code: two of 512), batch 128, Adam 1e-3, 1500 steps, and **5 NCE-CLUB critic
steps per main step** (the official code takes 1). With one step and this short, fast
schedule the encoders outran the frozen NCE-CLUB critic: the conditional shared NCE-CLUB term
reached -145 nats, an "upper bound" the encoder had learnt to exploit, and the
representations lost their information. Five critic steps keep the critic near its InfoNCE
optimum, where NCE-CLUB is an upper bound.

**Full default run** (2026-11-25, mibounds 0.1.0 development tree; 1423 s on a 2-core CPU;
linear-probe accuracy on held-out data,
SMILE estimates of the MI in nats between modality 1's shared head :math:`Z_S`, its unique head
:math:`Z_U` (the baseline's single representation for both) and the latents).

.. code-block:: text

    label (l_s, l_1, l_2)    method                 acc  I(Zs;ws) I(Zs;w1) I(Zu;ws) I(Zu;w1)
    shared only (10, 0, 0)   InfoNCE (cross-modal) 0.967  4.720    1.274    4.720    1.274
    shared only (10, 0, 0)   FactorCL-SSL          0.919  1.348    0.537    1.431    0.514
    shared only (10, 0, 0)   FactorCL-SUP          0.992  2.301    1.529    2.455    1.587
    balanced (10, 6, 6)      InfoNCE (cross-modal) 0.935  4.900    1.102    4.900    1.102
    balanced (10, 6, 6)      FactorCL-SSL          0.940  2.013    0.742    2.059    0.804
    balanced (10, 6, 6)      FactorCL-SUP          0.979  1.980    0.811    0.254    0.277
    mostly unique (2, 6, 6)  InfoNCE (cross-modal) 0.879  4.629    1.686    4.629    1.686
    mostly unique (2, 6, 6)  FactorCL-SSL          0.823  0.567    0.436    1.761    1.253
    mostly unique (2, 6, 6)  FactorCL-SUP          0.982  4.072    2.017    2.079    1.488

.. figure:: /_static/results/factorcl_synthetic.png
   :alt: linear-probe accuracy and MI estimates of FactorCL-SUP, FactorCL-SSL and InfoNCE

   The same full default run (2026-11-25), as plotted by the script.

**Against the paper.** The official notebook reports FactorCL-SUP 98.63%, FactorCL-SSL 97.17%
and SimCLR 95.55% (its 10/6/6 label). **FactorCL-SUP reproduces the claim**: it beats the
cross-modal InfoNCE at every ratio, and the gap grows with the share of unique information in
the label (+2.5, +4.4 and +10.3 points), because the contrastive baseline keeps mostly
:math:`w_s` (4.6-4.9 nats) and little of the unique latents. **The factorisation is only partial
at this scale**: the paper's Table 1 has the unique head carrying much more of :math:`w_1`
than SimCLR's representation (7.83 vs 4.45 nats); here :math:`I(Z_U; w_1)` of FactorCL-SUP is
0.3-1.6 nats, about the baseline's 1.1-1.7. **FactorCL-SSL does not reproduce the paper's
97.17%**: it matches the baseline only on the balanced label (94.0 vs 93.5%) and is about 5
points below it otherwise. With FactorCL's
vector augmentations (noise of standard deviation 0.01, halves swapped, 10% of the features
zeroed), an augmented view keeps almost all of the information of the original, so
:math:`I(Z_{S1}; Z_{S2} | X_1', X_2')` is close to :math:`I(Z_{S1}; Z_{S2})` and the two shared
terms nearly cancel, leaving the shared heads little to learn.
"""

# %%
# sphinx_gallery_thumbnail_path = "_static/results/factorcl_synthetic.png"
from __future__ import annotations

import argparse
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from torch import nn
from tqdm import tqdm

import mibounds
from mibounds.methods import FactorCLSSL, FactorCLSUP, linear_probe, vector_augment
from mibounds.nn import MLP, ConcatCritic
from mibounds.tasks import FactorCLSynthetic

#: (l_s, l_1, l_2): label coordinates taken from w_s, w_1 and w_2
RATIOS = {"shared only": (10, 0, 0), "balanced": (10, 6, 6), "mostly unique": (2, 6, 6)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="FactorCL on synthetic two-modality data")
    p.add_argument("--quick", action="store_true", help="a smoke run (seconds)")
    p.add_argument("--steps", type=int, default=1500, help="training steps per model")
    p.add_argument(
        "--critic-steps",
        type=int,
        default=5,
        help="NCE-CLUB critic steps per main step (the official code: 1; see the docs)",
    )
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--mi-steps", type=int, default=400, help="critic steps per MI estimate")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="factorcl_synthetic.png", help="figure path")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.mi_steps, args.batch_size, args.critic_steps = 20, 20, 64, 1
    return args


def encoder(out_dim: int) -> nn.Module:
    return MLP(100, out_dim, hidden=(256,))


class CrossModalInfoNCE(nn.Module):
    """Baseline: InfoNCE between the two modalities' representations (one concat critic)."""

    def __init__(self, dim: int, critic_hidden: tuple[int, ...]) -> None:
        super().__init__()
        self.encoder1, self.encoder2 = encoder(dim), encoder(dim)
        self.critic = ConcatCritic(dim, dim, hidden=critic_hidden)

    def loss(self, x1, x2):
        return -mibounds.infonce(self.critic(self.encoder1(x1), self.encoder2(x2)))

    def embed(self, x1, x2):
        return torch.cat([self.encoder1(x1), self.encoder2(x2)], -1)


def train(kind, task, args, gen):
    dev = args.device
    hidden = (64,)
    if kind == "InfoNCE (cross-modal)":
        model = CrossModalInfoNCE(64, hidden).to(dev)
    elif kind == "FactorCL-SUP":
        model = FactorCLSUP(
            encoder(64), encoder(64), 64, num_classes=2, head_dim=32, critic_hidden=hidden
        ).to(dev)
    else:
        model = FactorCLSSL(encoder(64), encoder(64), 64, head_dim=32, critic_hidden=hidden).to(dev)
    if isinstance(model, CrossModalInfoNCE):
        opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    else:
        opt = torch.optim.Adam(model.main_parameters(), lr=args.lr)
        critic_opt = torch.optim.Adam(model.club_critics.parameters(), lr=args.lr)

    def batch():
        b = task.sample(args.batch_size, gen, device=dev)
        x1, x2 = b["x1"], b["x2"]
        if kind == "FactorCL-SSL":
            return (x1, x2, (vector_augment(x1, gen), vector_augment(x2, gen)))
        return (x1, x2, b["y"])

    for _ in tqdm(range(args.steps), desc=kind, leave=False, disable=True if args.quick else None):
        if isinstance(model, CrossModalInfoNCE):
            x1, x2, _ = batch()
            opt.zero_grad()
            model.loss(x1, x2).backward()
            opt.step()
        else:
            model.step(batch(), batch(), opt, critic_opt, critic_steps=args.critic_steps)
    return model.eval()


def evaluate(kind, model, task, args, gen):
    train_b = task.sample(3000, gen, device=args.device)
    test_b = task.sample(2000, gen, device=args.device)
    with torch.no_grad():
        z_tr = model.embed(train_b["x1"], train_b["x2"])
        z_te = model.embed(test_b["x1"], test_b["x2"])
        if isinstance(model, CrossModalInfoNCE):
            shared = unique = model.encoder1(test_b["x1"])
        else:
            h = model.heads_of(test_b["x1"], test_b["x2"])
            shared, unique = h["shared1"], h["unique1"]
    acc = linear_probe(z_tr, train_b["y"], z_te, test_b["y"], epochs=200 if not args.quick else 20)

    def mi(z, w):
        # one split, a fixed number of steps, z-scores and batched held-out evaluation: the
        # read-out protocol of the tables on the example's page
        est = mibounds.estimate_mi(
            z, w, "smile", "separable", folds=1, patience=None, steps=args.mi_steps,
            batch_size=128, eval_batch_size=128, lr=1e-3, hidden=256, embed=64, progress=False,
            standardize=True,
        )  # fmt: skip
        return est.estimate

    return {
        "acc": acc,
        "I(Zs;ws)": mi(shared, test_b["w_s"]),
        "I(Zs;w1)": mi(shared, test_b["w_1"]),
        "I(Zu;ws)": mi(unique, test_b["w_s"]),
        "I(Zu;w1)": mi(unique, test_b["w_1"]),
    }


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    gen = torch.Generator(device=args.device).manual_seed(args.seed)
    kinds = ["InfoNCE (cross-modal)", "FactorCL-SSL", "FactorCL-SUP"]
    ratios = dict(list(RATIOS.items())[:1] + list(RATIOS.items())[2:]) if args.quick else RATIOS
    results = {}
    start = time.time()
    for ratio, (ls, l1, l2) in ratios.items():
        task = FactorCLSynthetic(label_shared=ls, label_unique=(l1, l2), seed=args.seed)
        for kind in kinds:
            model = train(kind, task, args, gen)
            results[(ratio, kind)] = evaluate(kind, model, task, args, gen)
    cols = ["acc", "I(Zs;ws)", "I(Zs;w1)", "I(Zu;ws)", "I(Zu;w1)"]
    print(f"\n{'label (l_s, l_1, l_2)':<26}{'method':<24}" + "".join(f"{c:>10}" for c in cols))
    for (ratio, kind), r in results.items():
        name = f"{ratio} {RATIOS[ratio]}"
        print(f"{name:<26}{kind:<24}" + "".join(f"{r[c]:>10.3f}" for c in cols))
    print(
        f"({time.time() - start:.0f} s; Zs/Zu: shared/unique head of modality 1, the "
        "baseline's single representation for both)"
    )

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    width = 0.25
    for k, kind in enumerate(kinds):
        xs = range(len(ratios))
        for ax, col in zip(axes, ["acc", "I(Zs;ws)", "I(Zu;w1)"], strict=True):
            vals = [results[(r, kind)][col] for r in ratios]
            ax.bar([x + (k - 1) * width for x in xs], vals, width, label=kind)
            ax.set_xticks(list(xs), list(ratios))
            ax.set_title(col if col != "acc" else "linear probe accuracy")
    axes[0].set_ylim(0.5, 1.0)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"figure: {args.out}")
    return results


if __name__ == "__main__":
    main()
