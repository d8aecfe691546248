"""`estimate_mi` against bmi's neural estimators on tasks of bmi's public benchmark v1.

    pip install -e ".[bmi]"            # bmi 0.1.3 and the JAX it was released with
    python benchmarks/estimate_mi.py   # the seven tasks of the table in docs/estimate.rst
    python benchmarks/estimate_mi.py coverage   # the fourteen tasks of known MI (no bmi needed)

For every task, 5000 samples are drawn with bmi's own sampler (seed 0) and given to
``estimate_mi`` with its defaults and to bmi's InfoNCE, NWJ and MINE estimators with theirs; the
table shows each estimate, its absolute error and its wall time. ``--tasks others`` runs the
remaining tasks of the benchmark (other transforms, dimensions and degrees of freedom): no
default of ``estimate_mi`` was chosen on them, so those are its check on data it was not tuned
on. ``--seeds 0,1,2`` repeats everything on fresh samples; ``--no-bmi`` runs ``estimate_mi``
alone (the tasks still come from bmi). Results go to ``benchmarks/estimate_mi.json``
(``--json``); ``--markdown`` prints the table for the docs. ``coverage`` runs
``estimate_mi_coverage.py`` with the arguments that follow it (the docs' tables of the interval
and of high dimensions).

bmi is an optional extra of this script only; ``mibounds`` never imports it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

#: the tasks of the comparison, by bmi task id
BENCHMARK = [
    "1v1-normal-0.75",
    "half_cube-multinormal-sparse-5-5-2-2.0",
    "multinormal-dense-5-5-0.5",
    "student-identity-2-2-2",
    "asinh-student-identity-3-3-2",
    "1v1-additive-0.1",
    "multinormal-sparse-25-25-2-2.0",
]

BMI_ESTIMATORS = ("infonce", "nwj", "mine")


def _bmi_tasks() -> dict[str, Any]:
    try:
        from bmi.benchmark.task_list import BENCHMARK_TASKS_LIST
    except ImportError as err:  # pragma: no cover - depends on the optional extra
        raise SystemExit(
            'this benchmark samples its tasks with bmi: pip install -e ".[bmi]" '
            f"(import failed: {err})"
        ) from err
    return {t.id: t for t in BENCHMARK_TASKS_LIST}


def run_bmi(name: str, x: Any, y: Any) -> tuple[float, float]:
    """One of bmi's neural estimators with its defaults: (estimate, seconds)."""
    import bmi

    cls = {
        "infonce": bmi.estimators.InfoNCEEstimator,
        "nwj": bmi.estimators.NWJEstimator,
        "mine": bmi.estimators.MINEEstimator,
    }[name]
    start = time.perf_counter()
    try:
        value = float(cls(verbose=False).estimate(x, y))
    except Exception as err:  # a crash is a result of the comparison
        print(f"  bmi {name} failed: {type(err).__name__}: {err}", file=sys.stderr)
        value = math.nan
    return value, time.perf_counter() - start


def run_ours(x: Any, y: Any, **kwargs: Any) -> tuple[float, float, str]:
    """``estimate_mi`` with its defaults (or ``kwargs``): (estimate, seconds, note)."""
    import numpy as np
    import torch

    from mibounds import estimate_mi

    torch.set_num_threads(os.cpu_count() or 1)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        result = estimate_mi(xs, ys, progress=False, **kwargs)
    return result.estimate, time.perf_counter() - start, result.note


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["coverage"]:  # the tasks of known MI, sampled here (bmi is not needed)
        sys.path.insert(0, str(HERE))
        from estimate_mi_coverage import main as coverage

        return coverage(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="benchmark", help="benchmark, others, all or ids")
    parser.add_argument("--seeds", default="0", help="comma-separated sampling seeds")
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--no-bmi", action="store_true", help="run estimate_mi only")
    parser.add_argument("--json", type=Path, default=HERE / "estimate_mi.json")
    parser.add_argument(
        "--reuse-bmi", type=Path, help="take bmi's results from an earlier --json (same tasks)"
    )
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown")
    parser.add_argument(
        "--ours", default="{}", help="keyword arguments of estimate_mi as JSON (default: none)"
    )
    args = parser.parse_args(argv)
    tasks = _bmi_tasks()
    if args.tasks == "benchmark":
        ids = BENCHMARK
    elif args.tasks == "others":
        ids = [t for t in tasks if t not in BENCHMARK]
    elif args.tasks == "all":
        ids = list(tasks)
    else:
        ids = args.tasks.split(",")
    unknown = [t for t in ids if t not in tasks]
    if unknown:
        parser.error(f"unknown task id(s) {unknown}; bmi has {sorted(tasks)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    kwargs = json.loads(args.ours)
    reused = {}
    if args.reuse_bmi is not None:
        old = json.loads(args.reuse_bmi.read_text())
        if old["samples"] != args.samples:
            parser.error(f"--reuse-bmi {args.reuse_bmi} has {old['samples']} samples")
        reused = {(r["task"], r["seed"]): r for r in old["rows"] if "infonce" in r}
    rows = []
    for task_id in ids:
        task = tasks[task_id]
        truth = float(task.mutual_information)
        for seed in seeds:
            x, y = task.sample(args.samples, seed=seed)
            row: dict[str, Any] = {"task": task_id, "seed": seed, "truth": truth}
            row["ours"], row["ours_s"], row["ours_note"] = run_ours(x, y, **kwargs)
            if (task_id, seed) in reused:
                old_row = reused[task_id, seed]
                row.update({k: v for k, v in old_row.items() if k.startswith(BMI_ESTIMATORS)})
            elif not args.no_bmi:
                for name in BMI_ESTIMATORS:
                    row[name], row[f"{name}_s"] = run_bmi(name, x, y)
            rows.append(row)
            print(_line(row), flush=True)
    with_bmi = not args.no_bmi or bool(reused)
    summary = _summary(rows, with_bmi)
    print(summary["text"])
    args.json.write_text(json.dumps({"samples": args.samples, "ours_kwargs": kwargs, "rows": rows,
                                     "wins": summary["wins"]}, indent=1))  # fmt: skip
    if args.markdown:
        print(markdown(rows, with_bmi))
    return 0


def _err(row: dict[str, Any], key: str) -> float:
    value = row.get(key, math.nan)
    return abs(value - row["truth"]) if math.isfinite(value) else math.inf


def _best_bmi(row: dict[str, Any]) -> tuple[str, float]:
    name = min(BMI_ESTIMATORS, key=lambda k: _err(row, k))
    return name, _err(row, name)


def _line(row: dict[str, Any]) -> str:
    text = (
        f"{row['task']:<42} seed {row['seed']} truth {row['truth']:.3f} "
        f"ours {row['ours']:.3f} ({row['ours_s']:.1f} s)"
    )
    for name in BMI_ESTIMATORS:
        if name in row:
            text += f" {name} {row[name]:.3f} ({row[f'{name}_s']:.1f} s)"
    return text


def _summary(rows: list[dict[str, Any]], with_bmi: bool) -> dict[str, Any]:
    errs = [_err(r, "ours") for r in rows]
    text = f"estimate_mi: mean abs. error {sum(errs) / len(errs):.3f} over {len(rows)} runs"
    wins = None
    if with_bmi:
        wins = sum(_err(r, "ours") < _best_bmi(r)[1] for r in rows)
        best = [_best_bmi(r)[1] for r in rows]
        text += f"; best of bmi {sum(best) / len(best):.3f}; estimate_mi better on {wins}"
    return {"text": text, "wins": wins}


def markdown(rows: list[dict[str, Any]], with_bmi: bool) -> str:
    """The comparison as a markdown table (absolute errors, best in bold)."""
    head = "| task (bmi v1) | seed | true MI | estimate_mi | error | s |"
    rule = "|---|---|---|---|---|---|"
    if with_bmi:
        head += " bmi InfoNCE | bmi NWJ | bmi MINE | best bmi error | s |"
        rule += "---|---|---|---|---|"
    lines = [head, rule]
    for r in rows:
        ours = _err(r, "ours")
        cells = [r["task"], str(r["seed"]), f"{r['truth']:.3f}", f"{r['ours']:.3f}"]
        if with_bmi:
            name, best = _best_bmi(r)
            mark = "**" if ours < best else ""
            cells += [f"{mark}{ours:.3f}{mark}", f"{r['ours_s']:.0f}"]
            cells += [f"{r[k]:.3f}" for k in BMI_ESTIMATORS]
            mark = "**" if best <= ours else ""
            cells += [f"{mark}{best:.3f}{mark}", f"{r[f'{name}_s']:.0f}"]
        else:
            cells += [f"{ours:.3f}", f"{r['ours_s']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
