r"""
NCE-CLUB against CLUB on the Gaussian staircase
===============================================

FactorCL's upper bound NCE-CLUB (Liang et al., NeurIPS 2023, Fig. 3) reuses a critic trained by
InfoNCE: :math:`\frac1N\sum_i S_{ii} - \frac1{N^2}\sum_{i,j} S_{ij}`
(:func:`mibounds.nce_club`). CLUB (Cheng et al., ICML 2020) instead fits a Gaussian
:math:`q(y|x)` (:class:`mibounds.nn.CLUB`). Both are trained on the correlated-Gaussian
staircase of Poole et al. (2019), dimension 20, MI 2, 4, 6, 8, 10 nats, with the paper's
settings: batch 64, Adam 5e-3, 4000 steps per stair, and the paper's critic
Linear(2d, 512)-ReLU-Linear(512, 1) for NCE-CLUB.

Run ``python examples/nce_club_gaussian.py`` (263 to 1425 s on a 2-core CPU) or add
``--quick`` for a smoke run (the test suite runs it; its numbers mean nothing).

**Full default run** (2026-11-25, mibounds 0.1.0 development tree; 2-core CPU, two runs of
263 s and 1425 s with identical numbers; mean, bias and standard deviation
over the last half of each stair).

.. code-block:: text

    estimator  true MI    mean    bias    std
    club           2.0   3.702   1.702  0.311
    club           4.0   8.923   4.923  0.533
    club           6.0  15.226   9.226  0.800
    club           8.0  22.716  14.716  1.068
    club          10.0  31.775  21.775  1.490
    nce-club       2.0   3.947   1.947  0.279
    nce-club       4.0   8.473   4.473  0.447
    nce-club       6.0  13.772   7.772  0.625
    nce-club       8.0  20.047  12.047  0.835
    nce-club      10.0  28.486  18.486  1.144

.. figure:: /_static/results/nce_club_gaussian.png
   :alt: CLUB and NCE-CLUB estimates against the true MI on the staircase

   The same full default run (2026-11-25), as plotted by the script.

**Against the paper.** FactorCL's Fig. 3 (d = 20 to 200) shows NCE-CLUB above the truth and
tighter than CLUB, and CLUB collapsing toward 0 at high dimension. At d = 20 we reproduce the
first part: NCE-CLUB stays above the truth on every stair and is 5-12% tighter than CLUB from
the 4-nat stair on (at 2 nats they are within noise). Our CLUB does not collapse: its Gaussian
:math:`q(y|x)` has a smoothly bounded, not tanh-capped, log-variance, so it stays a valid but
loose bound (about the MI plus the reverse-KL f-information at the optimum; see
:func:`mibounds.club`). Both are far looser than L1Out on the same data (``mibounds validate``).
"""

# %%
# sphinx_gallery_thumbnail_path = "_static/results/nce_club_gaussian.png"
from __future__ import annotations

import argparse
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from mibounds.estimate import (
    EstimatorSpec,
    VariationalUpperEstimator,
    get_estimator,
    run_staircase,
    staircase_table,
)
from mibounds.nn import ConcatCritic, NCEClub
from mibounds.tasks import staircase


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="NCE-CLUB against CLUB on the Gaussian staircase")
    p.add_argument("--quick", action="store_true", help="a smoke run (seconds)")
    p.add_argument("--steps-per-level", type=int, default=4000)
    p.add_argument("--dim", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="nce_club_gaussian.png", help="figure path")
    args = p.parse_args(argv)
    if args.quick:
        args.steps_per_level = 30
    return args


def paper_nce_club() -> EstimatorSpec:
    """NCE-CLUB with the paper's critic: one hidden layer of 512 ReLU units on [x, y]."""

    def build(dx, dy, critic):
        return VariationalUpperEstimator(NCEClub(ConcatCritic(dx, dy, hidden=(512,))))

    return EstimatorSpec("nce-club", "upper", build, "NCE-CLUB, paper critic")


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    schedule = staircase(steps_per_level=args.steps_per_level, dim=args.dim)
    start = time.time()
    result = run_staircase(
        [get_estimator("club"), paper_nce_club()],
        schedule,
        batch_size=args.batch_size,
        lr=args.lr,
        device=args.device,
        seed=args.seed,
        progress=not args.quick,
    )
    rows = staircase_table(result)
    print(f"\n{'estimator':<10}{'true MI':>9}{'mean':>9}{'bias':>9}{'std':>9}  above truth")
    for r in rows:
        above = "yes" if r.estimate >= r.true_mi else "no"
        print(
            f"{r.estimator:<10}{r.true_mi:>9.1f}{r.estimate:>9.3f}{r.bias:>9.3f}{r.std:>9.3f}"
            f"  {above}"
        )
    print(f"({time.time() - start:.0f} s, dim {args.dim}, last half of each stair)")

    fig, ax = plt.subplots(figsize=(7, 4))
    steps = torch.arange(schedule.total_steps)
    truth = list(result.true_mi)
    ax.plot(steps, truth, "k", lw=2, label="true MI")
    for name, values in result.estimates.items():
        v = torch.as_tensor(values, dtype=torch.float64)
        smooth = v.clone()
        for t in range(1, len(v)):
            smooth[t] = 0.95 * smooth[t - 1] + 0.05 * v[t]
        ax.plot(steps, v, alpha=0.2)
        ax.plot(steps, smooth, label=name, color=ax.lines[-1].get_color())
    ax.set_xlabel("training step")
    ax.set_ylabel("estimate (nats)")
    top = max([max(truth)] + [float(line.get_ydata().max()) for line in ax.lines[2::2]])
    ax.set_ylim(-1, 1.1 * top)
    ax.set_title(f"upper bounds on the dim-{args.dim} Gaussian staircase")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"figure: {args.out}")
    return rows


if __name__ == "__main__":
    main()
