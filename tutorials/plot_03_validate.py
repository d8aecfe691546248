"""
Validating estimators on a staircase of known MI
================================================

Before trusting an estimator on real data, run it where the answer is known. This is the
protocol of Poole et al. (2019), which ``mibounds validate`` runs at full size: fresh batches of
a correlated Gaussian whose MI steps up during training, every estimator trained side by side on
the same batches.
"""

# %%
import os

import matplotlib.pyplot as plt

from mibounds.estimate import run_staircase, staircase_table
from mibounds.tasks import staircase

# 400 steps per stair; the documentation build sets MIBOUNDS_DOCS_QUICK=1 and runs 60, so the
# numbers printed on this page are a short run's. The figure of the full run is at the end.
steps = 60 if os.environ.get("MIBOUNDS_DOCS_QUICK") == "1" else 400
schedule = staircase(levels=(1.0, 3.0, 5.0), steps_per_level=steps, dim=10)
result = run_staircase(
    ["infonce", "smile", "nwj", "l1out"], schedule, batch_size=64, progress=False
)

# %%
# Mean, bias and standard deviation over the last half of each stair. InfoNCE cannot exceed
# log 64 = 4.16 nats; L1Out is an upper bound.
print(f"{'estimator':<10}{'kind':<7}{'true':>6}{'estimate':>10}{'bias':>8}{'std':>7}")
for row in staircase_table(result):
    print(
        f"{row.estimator:<10}{row.kind:<7}{row.true_mi:>6.1f}{row.estimate:>10.2f}"
        f"{row.bias:>+8.2f}{row.std:>7.2f}"
    )

# %%
fig, ax = plt.subplots(figsize=(7, 3.5))
for name, values in result.estimates.items():
    smooth, out = values[0], []
    for v in values:
        smooth = 0.9 * smooth + 0.1 * v
        out.append(smooth)
    ax.plot(out, label=name)
ax.plot(result.true_mi, "k", lw=2, label="true MI")
ax.set_ylim(-1, 9)
ax.set_xlabel("step")
ax.set_ylabel("nats (smoothed)")
ax.legend(ncol=5, fontsize=8)
fig.tight_layout()

# %%
# The full run (400 steps per stair, this script without ``MIBOUNDS_DOCS_QUICK``):
#
# .. image:: /_static/results/tutorial_validate_full.png
#    :alt: Smoothed estimates of InfoNCE, SMILE, NWJ and L1Out over 1200 steps against the true
#          MI stepping through 1, 3 and 5 nats; InfoNCE levels off below log 64 = 4.16 nats.
