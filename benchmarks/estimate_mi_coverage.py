"""What the interval of `estimate_mi` covers, on tasks whose MI is known.

    python benchmarks/estimate_mi_coverage.py          # fourteen tasks, 1 to 50 dimensions
    python benchmarks/estimate_mi_coverage.py --standardize true --no-gaussian-start \
        --json benchmarks/estimate_mi_coverage_plain.json     # a plain network on z-scores

For every task, 5000 samples (seed 0) go to ``estimate_mi`` with its defaults (or the
``--standardize`` and ``--no-gaussian-start`` given). The table shows
the true MI, the estimate, the interval (the bound's 95% sampling interval over the held-out
folds) and two checks: whether the interval contains the MI (it is not meant to: the bound's
bias is not in it), and whether the MI is at least the interval's low end, the one-sided
limit ``MIEstimate.mi_limit`` that a lower bound supports. Results go to
``benchmarks/estimate_mi_coverage.json`` (``--json``), which the documentation's table is built
from; ``--markdown`` prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from mibounds import estimate_mi
from mibounds.tasks import (
    AdditiveUniformNoise,
    CorrelatedGaussian,
    MultivariateStudentT,
    Transformed,
)

HERE = Path(__file__).resolve().parent


class Sparse:
    """``pairs`` coordinates of x correlated with those of y (correlation ``rho``), the other
    ``dim - pairs`` independent noise, then an increasing map on each side: high-dimensional
    data whose MI sits in a few coordinates, ``-pairs / 2 * log(1 - rho^2)``."""

    def __init__(self, dim: int, pairs: int, rho: float, maps: tuple[str, str]) -> None:
        self.dim, self.pairs, self.rho, self.maps = dim, pairs, rho, maps
        self.mutual_information = -pairs / 2 * math.log(1 - rho**2)

    def sample(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        f64 = torch.float64
        z = torch.randn(n, self.pairs, generator=gen, dtype=f64)
        e = torch.randn(n, self.pairs, generator=gen, dtype=f64)
        rest = self.dim - self.pairs
        x = torch.cat([z, torch.randn(n, rest, generator=gen, dtype=f64)], 1)
        y = self.rho * z + math.sqrt(1 - self.rho**2) * e
        y = torch.cat([y, torch.randn(n, rest, generator=gen, dtype=f64)], 1)
        return _MAPS[self.maps[0]](x).float(), _MAPS[self.maps[1]](y).float()


class Rotated:
    """A correlated Gaussian seen through a fixed random rotation on each side."""

    def __init__(self, dim: int, mi: float) -> None:
        self.task = CorrelatedGaussian(dim, mi=mi)
        self.mutual_information = mi
        g = torch.Generator().manual_seed(1234)
        self.qx = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))[0]
        self.qy = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))[0]

    def sample(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.task.sample(n, gen)
        return (x.double() @ self.qx).float(), (y.double() @ self.qy).float()


_MAPS = {
    "asinh": lambda t: torch.asinh(3 * t),
    "cube": lambda t: t**3,
    "half-cube": lambda t: t * t.abs().sqrt(),
    "exp": torch.exp,
}


def tasks() -> dict[str, Any]:
    """Gaussian and non-Gaussian tasks of known MI, 1 to 50 dimensions per side."""
    return {
        "gaussian 1x1, 0.5 nats": CorrelatedGaussian(1, mi=0.5),
        "gaussian 5x5, 1 nat": CorrelatedGaussian(5, mi=1.0),
        "gaussian 10x10, 3 nats": CorrelatedGaussian(10, mi=3.0),
        "gaussian 20x20, 2 nats": CorrelatedGaussian(20, mi=2.0),
        "gaussian 50x50, 1 nat": CorrelatedGaussian(50, mi=1.0),
        "cubic gaussian 5x5, 1 nat": Transformed(CorrelatedGaussian(5, mi=1.0), "cubic"),
        "asinh gaussian 3x3, 1 nat": Transformed(CorrelatedGaussian(3, mi=1.0), "asinh"),
        "student-t 2x2, df 3, 0.5 nats": MultivariateStudentT.with_mi(2, df=3.0, mi=0.5),
        "student-t 5x5, df 5, 1 nat": MultivariateStudentT.with_mi(5, df=5.0, mi=1.0),
        "uniform noise 1x1, eps 0.1": AdditiveUniformNoise(0.1),
        "uniform noise 1x1, eps 0.5": AdditiveUniformNoise(0.5),
        "rotated gaussian 10x10, 1 nat": Rotated(10, 1.0),
        "sparse 50x50, 4 pairs, asinh/cube": Sparse(50, 4, 0.7, ("asinh", "cube")),
        "sparse 30x30, 3 pairs, half-cube/exp": Sparse(30, 3, 0.8, ("half-cube", "exp")),
    }


def run(name: str, task: Any, samples: int, seed: int, **kwargs: Any) -> dict[str, Any]:
    x, y = task.sample(samples, torch.Generator().manual_seed(seed))
    start = time.perf_counter()
    r = estimate_mi(x, y, progress=False, **kwargs)
    seconds = time.perf_counter() - start
    truth = float(task.mutual_information)
    low, high = r.interval
    return {
        "task": name,
        "dims": [x.shape[1] if x.dim() > 1 else 1, y.shape[1] if y.dim() > 1 else 1],
        "truth": truth,
        "estimate": r.estimate,
        "low": low,
        "high": high,
        "contains": low <= truth <= high,
        "limit_holds": truth >= r.mi_limit,
        "seconds": seconds,
        "t_copula_folds": sum(df is not None for df in r.t_copula),
        "note": r.note,
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| task | true MI | estimate | 95% interval of the bound | contains MI | MI >= low end |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['task']} | {r['truth']:.3f} | {r['estimate']:.3f} | {r['low']:.3f} .. "
            f"{r['high']:.3f} | {'yes' if r['contains'] else 'no'} | "
            f"{'yes' if r['limit_holds'] else 'no'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--tasks", default="all", help="all, or task names separated by ';' (they hold commas)"
    )
    parser.add_argument("--max-seconds", type=float, default=None)
    parser.add_argument(
        "--standardize", default="auto", choices=("auto", "true", "rank"),
        help="estimate_mi's option",
    )  # fmt: skip
    parser.add_argument(
        "--no-gaussian-start", action="store_true", help="estimate_mi(gaussian_start=False)"
    )
    parser.add_argument("--json", type=Path, default=HERE / "estimate_mi_coverage.json")
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown")
    args = parser.parse_args(argv)
    chosen = tasks()
    if args.tasks != "all":
        names = [name.strip() for name in args.tasks.split(";")]
        unknown = [name for name in names if name not in chosen]
        if unknown:
            parser.error(f"unknown task(s) {unknown}; the tasks are {list(chosen)}")
        chosen = {name: chosen[name] for name in names}
    rows = []
    for name, task in chosen.items():
        standardize: bool | str = True if args.standardize == "true" else args.standardize
        row = run(
            name, task, args.samples, args.seed, max_seconds=args.max_seconds,
            standardize=standardize, gaussian_start=False if args.no_gaussian_start else "auto",
        )  # fmt: skip
        print(
            f"{name:<32} truth {row['truth']:.3f}  estimate {row['estimate']:.3f}  "
            f"[{row['low']:.3f}, {row['high']:.3f}]  {row['seconds']:.0f} s",
            flush=True,
        )
        rows.append(row)
    record = {
        "samples": args.samples, "seed": args.seed, "standardize": args.standardize,
        "gaussian_start": not args.no_gaussian_start, "rows": rows,
    }  # fmt: skip
    args.json.write_text(json.dumps(record, indent=1) + "\n")
    if args.markdown:
        print(markdown(rows))
    contains = sum(r["contains"] for r in rows)
    holds = sum(r["limit_holds"] for r in rows)
    total = len(rows)
    print(f"interval contains the MI: {contains} of {total}; MI >= low end: {holds} of {total}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
