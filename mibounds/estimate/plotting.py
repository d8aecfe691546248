"""The staircase figure: :func:`plot_staircase`."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from mibounds.estimate.staircase import StaircaseResult, StairRow

__all__ = ["plot_staircase"]


def plot_staircase(
    result: StaircaseResult,
    path: str,
    *,
    smoothing: float = 0.95,
    oracle: Sequence[StairRow] | None = None,
) -> None:
    """Write the staircase figure: one panel per estimator, estimates over steps vs. the truth.

    Args:
        result: a :class:`StaircaseResult`.
        path: output file (PNG by extension).
        smoothing: exponential moving-average factor of the smoothed curve, in [0, 1).
        oracle: rows of :func:`~mibounds.estimate.staircase_table`; their oracle (the bound
            with the exact critic, mean and one standard deviation) is drawn on each stair.

    Raises:
        ImportError: if matplotlib is not installed (``pip install "mibounds[examples]"``).

    Example:
        >>> import os, tempfile
        >>> from mibounds.estimate import run_staircase
        >>> from mibounds.tasks import staircase
        >>> schedule = staircase((1.0,), steps_per_level=4, dim=2)
        >>> res = run_staircase(["infonce"], schedule, progress=False)
        >>> path = os.path.join(tempfile.mkdtemp(), "staircase.png")
        >>> plot_staircase(res, path)
        >>> os.path.getsize(path) > 0
        True
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            'plot_staircase needs matplotlib: pip install "mibounds[examples]"'
        ) from err
    names = list(result.estimates)
    cols = min(len(names), 4)
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False, sharex=True
    )
    steps = np.arange(len(result.true_mi))
    top = max(result.staircase.levels) * 1.3 + 1
    for ax, name in zip(axes.flat, names, strict=False):
        vals = np.asarray(result.estimates[name])
        smooth = np.empty_like(vals)
        acc = vals[0]
        for i, v in enumerate(vals):
            acc = smoothing * acc + (1 - smoothing) * v if i else v
            smooth[i] = acc
        color = "tab:blue" if result.kinds[name] == "lower" else "tab:red"
        ax.plot(steps, np.clip(vals, -1, 10 * top), color=color, alpha=0.25, lw=0.6)
        ax.plot(steps, smooth, color=color, lw=1.4, label="estimate")
        ax.plot(steps, result.true_mi, color="black", lw=1.2, label="true MI")
        spl = result.staircase.steps_per_level
        stairs = [r for r in oracle or () if r.estimator == name and math.isfinite(r.oracle)]
        for level, row in enumerate(stairs):
            lo, hi = level * spl, (level + 1) * spl
            ax.hlines(row.oracle, lo, hi, color="tab:green", ls="--", lw=1.1,
                      label="exact critic" if level == 0 else None)  # fmt: skip
            ax.fill_between([lo, hi], row.oracle - row.oracle_std, row.oracle + row.oracle_std,
                            color="tab:green", alpha=0.12, lw=0)  # fmt: skip
        if name.startswith("infonce"):
            ax.axhline(math.log(result.batch_size), color="gray", ls="--", lw=0.8, label="log N")
        ax.set_title(f"{name} ({result.kinds[name]})", fontsize=9)
        finite = smooth[np.isfinite(smooth)]
        high = top
        if result.kinds[name] == "upper" and finite.size:
            high = max(top, float(finite.max()) * 1.1)  # upper bounds can sit far above
        ax.set_ylim(-1, high)
    for ax in axes.flat[len(names) :]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("training step")
    for ax in axes[:, 0]:
        ax.set_ylabel("MI (nats)")
    axes.flat[0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
