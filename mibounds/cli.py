"""The ``mibounds`` console script."""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Sequence

from mibounds._version import __version__
from mibounds.divergences import list_divergences

DEFAULT_ESTIMATORS = ("infonce", "nwj", "js", "smile", "mine", "club", "l1out", "nce-club")


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join([line, sep, *body])


def _cmd_divergences(args: argparse.Namespace) -> int:
    rows = [
        (d.name, ", ".join(d.aliases) or "-", d.formula or "-", str(d.conjugate_domain))
        for d in list_divergences()
    ]
    print(_table(("name", "aliases", "f(u)", "conjugate domain"), rows))
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    import math
    import time

    import torch

    from mibounds.estimate import get_estimator, plot_staircase, run_staircase, staircase_table
    from mibounds.tasks import staircase

    names = [n.strip() for n in args.estimators.split(",") if n.strip()]
    try:
        specs = [get_estimator(n) for n in names]
        levels = [float(v) for v in args.levels.split(",")]
        schedule = staircase(
            levels,
            steps_per_level=args.steps,
            dim=args.dim,
            task=args.task,
            df=args.df,
            transform=args.transform,
        )
    except (KeyError, ValueError) as err:
        print(f"mibounds validate: error: {err}", file=sys.stderr)
        return 2
    out = None if args.no_plot else (args.out or "staircase.png")
    try:
        if out is not None:
            _out_file(out)  # the default figure's folder, checked as --out is
    except argparse.ArgumentTypeError as err:
        print(f"mibounds validate: error: {err}; pass --out PATH or --no-plot", file=sys.stderr)
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    task0 = schedule.tasks()[0]
    print(
        f"mibounds validate: {type(task0).__name__ if args.transform is None else repr(task0)} "
        f"staircase, dim {args.dim}, levels {', '.join(f'{v:g}' for v in levels)} nats, "
        f"{args.steps} steps per level, batch {args.batch_size}, seed {args.seed}, "
        f"device {args.device}",
        flush=True,
    )
    start = time.perf_counter()
    result = run_staircase(
        specs,
        schedule,
        batch_size=args.batch_size,
        lr=args.lr,
        critic=args.critic,
        device=args.device,
        seed=args.seed,
        progress=False if args.no_progress else (True if args.progress else None),
    )
    elapsed = time.perf_counter() - start
    table = staircase_table(result, seed=args.seed)
    total = time.perf_counter() - start  # training and the oracle's batches
    rows = [
        (
            r.estimator,
            r.kind,
            f"{r.true_mi:.2f}",
            f"{r.estimate:.2f}",
            f"{r.bias:+.2f}",
            f"{r.std:.2f}",
            f"{r.mse:.2f}",
            "-" if math.isnan(r.oracle) else f"{r.oracle:.2f} +- {r.oracle_std:.2f}",
        )
        for r in table
    ]
    n_oracle = max(r.oracle_batches for r in table)
    oracle_text = (
        f"oracle: the same bound with the exact critic at batch {args.batch_size} "
        f"(mean +- std over {n_oracle} batches; - where there is none):"
        if n_oracle
        else "no oracle for this task at this batch size:"
    )
    print(
        "Mean, bias, standard deviation and MSE over the last half of each stair "
        f"(training-batch estimates on fresh samples); {oracle_text}"
    )
    header = ("estimator", "bound", "true MI", "estimate", "bias", "std", "MSE", "oracle")
    print(_table(header, rows))
    for name, step in result.diverged.items():
        print(f"{name}: training diverged (non-finite parameters) at step {step}; NaN after it")
    print(f"trained {len(specs)} estimators in {elapsed:.1f} s")
    if args.json:
        import dataclasses
        import json

        record = {
            "batch_size": args.batch_size,
            "dim": args.dim,
            "steps_per_level": args.steps,
            "seed": args.seed,
            "seconds": round(elapsed, 1),
            "total_seconds": round(total, 1),
            "rows": [dataclasses.asdict(r) for r in table],
        }
        with open(args.json, "w") as fh:
            json.dump(record, fh, indent=1, allow_nan=True)
        print(f"wrote {args.json}")
    if out is not None:
        plot_staircase(result, out, oracle=table)
        print(f"wrote {out}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    import json

    from mibounds.benchmark import (
        BOUNDS,
        LOSSES,
        METHODS,
        BenchResult,
        ratio_table,
        run_benchmarks,
    )

    def ints(text: str) -> list[int]:
        return [int(v) for v in text.split(",") if v.strip()]

    bounds = [b.strip() for b in args.bounds.split(",") if b.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    known = {**BOUNDS, **LOSSES}
    bad = [b for b in bounds if b not in known] + [m for m in methods if m not in METHODS]
    if bad:
        print(
            f"mibounds bench: error: unknown bound or method {bad}; bounds: {sorted(known)}, "
            f"methods: {list(METHODS)}",
            file=sys.stderr,
        )
        return 2
    print(
        f"mibounds bench: forward+backward, {args.dtype} on {args.device}, "
        f"{os.cpu_count()} CPU cores visible, torch {__import__('torch').__version__}"
    )

    def show(r: BenchResult) -> None:
        if not args.quiet:
            t = "-" if r.time_s is None else f"{r.time_s:.4f} s"
            m = "-" if r.peak_extra_mib is None else f"{r.peak_extra_mib:.0f} MiB"
            print(f"  {r.bound} N={r.n} d={r.d} {r.method}: {t}, {m} {r.note}", flush=True)

    results = run_benchmarks(
        bounds,
        ints(args.sizes),
        ints(args.dims),
        methods,
        args.dtype,
        args.device,
        progress=show,
    )
    rows = ratio_table(results)

    def fmt(v: object, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    table = [
        (
            str(r["bound"]),
            str(r["n"]),
            str(r["d"]),
            str(r["method"]),
            fmt(r["time_s"], ".4f"),
            fmt(r.get("x_bare"), ".2f"),
            fmt(r.get("x_naive"), ".2f"),
            fmt(r["peak_extra_mib"], ".0f"),
            fmt(r.get("mem_vs_naive"), ".1f"),
            str(r["note"]),
        )
        for r in rows
    ]
    headers = (
        "bound",
        "N",
        "d",
        "method",
        "time (s)",
        "x bare",
        "x naive",
        "peak MiB",
        "naive mem /",
        "note",
    )
    print(_table(headers, table))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
        print(f"wrote {args.json}")
    if args.plot:
        _plot_bench(rows, args.plot)
        print(f"wrote {args.plot}")
    return 0


def _plot_bench(rows: list[dict[str, object]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({(str(r["bound"]), int(r["d"])) for r in rows})  # type: ignore[call-overload]
    fig, axes = plt.subplots(2, len(keys), figsize=(4 * len(keys), 6), squeeze=False)
    for col, (bound, d) in enumerate(keys):
        sel = [r for r in rows if r["bound"] == bound and r["d"] == d]
        for method in sorted({str(r["method"]) for r in sel}):
            pts = sorted(
                (int(r["n"]), r["time_s"], r["peak_extra_mib"])  # type: ignore[call-overload]
                for r in sel
                if r["method"] == method and r["time_s"] is not None
            )
            if not pts:
                continue
            ns = [p[0] for p in pts]
            axes[0, col].loglog(ns, [p[1] for p in pts], marker="o", label=method)
            mem = [max(float(p[2]), 1.0) for p in pts]  # type: ignore[arg-type]
            axes[1, col].loglog(ns, mem, marker="o", label=method)
        axes[0, col].set_title(f"{bound}, d={d}")
        axes[0, col].set_ylabel("forward+backward (s)")
        axes[1, col].set_ylabel("peak extra memory (MiB)")
        axes[1, col].set_xlabel("N")
        axes[0, col].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cmd_check(args: argparse.Namespace) -> int:
    import torch

    from mibounds.check import format_table, run_check

    sizes = None
    if args.sizes is not None:
        sizes = tuple(int(t) for t in args.sizes.split(",") if t.strip())
    t0 = time.perf_counter()
    print(
        f"mibounds check on {args.device}: torch {torch.__version__}, every bound and loss on "
        "every path against the float64 dense reference, then a short benchmark",
        flush=True,
    )
    rows = run_check(args.device, sizes)
    print(format_table(rows))
    print(f"took {time.perf_counter() - t0:.0f} s")
    return 0 if all(r.passed for r in rows) else 1


def _sizes_arg(text: str) -> str:
    """``--sizes`` of check: comma-separated integers >= 2 (or empty: no benchmark)."""
    for part in text.split(","):
        if part.strip() and (not part.strip().isdigit() or int(part) < 2):
            raise argparse.ArgumentTypeError(
                f"expected comma-separated batch sizes >= 2, got {text!r}"
            )
    return text


# --- argument types: every bad flag is an argparse error (usage, the flag, exit 2) ----------


def _int_min(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            msg = f"expected an integer >= {minimum}, got {text!r}"
            raise argparse.ArgumentTypeError(msg) from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def _int_list(minimum: int):
    def parse(text: str) -> str:
        parts = [p.strip() for p in text.split(",")]
        if not text.strip() or any(not p for p in parts):
            raise argparse.ArgumentTypeError(
                f"expected comma-separated integers >= {minimum}, got {text!r}"
            )
        for part in parts:
            _int_min(minimum)(part)
        return text

    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
    return value


def _levels(text: str) -> str:
    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or any(not p for p in parts):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated MI levels in nats, got {text!r}"
        )
    for part in parts:
        try:
            value = float(part)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated MI levels in nats, got {text!r}"
            ) from None
        if not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(f"MI levels must be positive and finite, got {part!r}")
    return text


def _device(text: str) -> str:
    """A CPU or CUDA device this machine has (the device types every command supports)."""
    from mibounds import _checks

    try:
        dev = _checks.check_device("device", text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err).replace("device=", "")) from None
    if dev.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:K, got {text!r}")
    return text


def _seed(text: str) -> int:
    """A seed torch accepts: an integer from 0 to 2**63 - 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {text!r}") from None
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"expected a seed from 0 to 2**63 - 1, got {value}")
    return value


def _transform(text: str) -> str:
    from mibounds.tasks import list_transforms

    known = list_transforms()
    if text.strip().lower() not in known:
        raise argparse.ArgumentTypeError(f"unknown transform {text!r}; known: {known}")
    return text


def _out_file(text: str) -> str:
    """A path whose folder exists and is writable (checked before any work)."""
    folder = os.path.dirname(os.path.abspath(text))
    if not os.path.isdir(folder):
        raise argparse.ArgumentTypeError(f"the folder {folder!r} does not exist")
    if not os.access(folder, os.W_OK):
        raise argparse.ArgumentTypeError(f"the folder {folder!r} is not writable")
    return text


def _estimators(text: str) -> str:
    from mibounds.estimate import get_estimator, list_estimators

    names = [n.strip().lower() for n in text.split(",")]
    known = [e.name for e in list_estimators()]
    if not text.strip() or any(not n for n in names):
        raise argparse.ArgumentTypeError(f"expected comma-separated estimators from {known}")
    resolved = []
    for n in names:
        try:
            resolved.append(get_estimator(n).name)
        except KeyError:
            raise argparse.ArgumentTypeError(f"unknown estimator {n!r}; known: {known}") from None
    if len(set(resolved)) != len(resolved):
        raise argparse.ArgumentTypeError(f"an estimator is named twice in {text!r}")
    return text


def _out_png(text: str) -> str:
    """A figure path in a writable folder, in a format matplotlib writes (by its suffix)."""
    _out_file(text)
    suffix = os.path.splitext(text)[1].lower().lstrip(".")
    formats = ("png", "pdf", "svg", "jpg", "jpeg", "eps", "ps", "tif", "tiff", "webp")
    if suffix not in formats:
        raise argparse.ArgumentTypeError(
            f"expected a figure file ending in one of {', '.join('.' + f for f in formats)}, "
            f"got {text!r}"
        )
    return text


def _names(known_fn, kind: str):
    def parse(text: str) -> str:
        known = known_fn()
        names = [n.strip() for n in text.split(",")]
        if not text.strip() or any(not n for n in names):
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind} from {known}")
        unknown = [n for n in names if n not in known]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {kind} {unknown}; known: {known}")
        return text

    return parse


def _bench_bounds() -> list[str]:
    from mibounds.benchmark import BOUNDS, LOSSES

    return sorted({**BOUNDS, **LOSSES})


def _bench_methods() -> list[str]:
    from mibounds.benchmark import METHODS

    return list(METHODS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mibounds",
        description="Differentiable bounds on mutual information: tools and validation.",
    )
    parser.add_argument("--version", action="version", version=f"mibounds {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p_div = sub.add_parser("divergences", help="list the registered f-divergences")
    p_div.set_defaults(func=_cmd_divergences)

    p_val = sub.add_parser(
        "validate",
        help="train estimators on a staircase of known MI and report bias, variance and MSE",
        description=(
            "Train several estimators side by side on fresh samples while the true mutual "
            "information steps up (Poole et al. 2019), then print a table per stair and "
            "optionally write the staircase figure."
        ),
    )
    p_val.add_argument(
        "--task", default="gaussian", choices=("gaussian", "student-t"), help="ground truth"
    )
    p_val.add_argument(
        "--df", type=_positive_float, default=5.0, help="Student-t degrees of freedom"
    )
    p_val.add_argument(
        "--transform",
        type=_transform,
        default=None,
        help="invertible map applied to x and y (cubic, half-cube, asinh, normal-cdf)",
    )
    p_val.add_argument(
        "--estimators",
        type=_estimators,
        default=",".join(DEFAULT_ESTIMATORS),
        help="comma-separated registered estimators (default: %(default)s)",
    )
    p_val.add_argument(
        "--levels", type=_levels, default="2,4,6,8,10", help="MI of each stair in nats"
    )
    p_val.add_argument("--steps", type=_int_min(1), default=1000, help="training steps per stair")
    p_val.add_argument("--batch-size", type=_int_min(2), default=64, help="batch size N")
    p_val.add_argument("--dim", type=_int_min(1), default=20, help="dimension of x and y")
    p_val.add_argument("--lr", type=_positive_float, default=5e-4, help="Adam learning rate")
    p_val.add_argument(
        "--critic", default="separable", choices=("separable", "concat"), help="critic kind"
    )
    p_val.add_argument(
        "--device", type=_device, default="cpu", help="torch device, e.g. cpu or cuda"
    )
    p_val.add_argument("--seed", type=_seed, default=0, help="random seed")
    p_val.add_argument("--threads", type=_int_min(1), default=None, help="torch CPU threads")
    p_val.add_argument(
        "--out",
        type=_out_png,
        default=None,
        help="write the staircase figure to this PNG (default: staircase.png in the current "
        "folder)",
    )
    p_val.add_argument("--no-plot", action="store_true", help="write no figure")
    p_val.add_argument(
        "--json",
        type=_out_file,
        default=None,
        help="write the table (one object per estimator and stair) here",
    )
    p_val.add_argument("--no-progress", action="store_true", help="no progress output at all")
    p_val.add_argument(
        "--progress",
        action="store_true",
        help="a progress bar even when not on a terminal (default: a bar on a terminal, plain "
        "progress lines elsewhere)",
    )
    p_val.set_defaults(func=_cmd_validate)

    p_bench = sub.add_parser(
        "bench",
        help="time and memory of bounds: naive, dense, compiled, streaming vs bare products",
    )
    p_bench.add_argument(
        "--bounds",
        default="infonce",
        help="comma-separated bounds, or contrastive losses (clip, siglip, ntxent, supcon, moco)",
        type=_names(_bench_bounds, "bounds"),
    )
    p_bench.add_argument(
        "--sizes", type=_int_list(2), default="1024,4096", help="comma-separated batch sizes N"
    )
    p_bench.add_argument(
        "--dims", type=_int_list(1), default="128", help="comma-separated feature sizes d"
    )
    p_bench.add_argument(
        "--methods",
        type=_names(_bench_methods, "methods"),
        default="bare,naive,dense,compiled,streaming",
        help="methods to run",
    )
    p_bench.add_argument("--device", type=_device, default="cpu", help="torch device")
    p_bench.add_argument(
        "--dtype", default="float32", choices=("float32", "bfloat16", "float16"), help="dtype"
    )
    p_bench.add_argument("--json", type=_out_file, default=None, help="write the results as JSON")
    p_bench.add_argument(
        "--plot", type=_out_png, default=None, help="write a PNG of time and memory vs N"
    )
    p_bench.add_argument("--quiet", action="store_true", help="no per-run lines")
    p_bench.set_defaults(func=_cmd_bench)

    p_check = sub.add_parser(
        "check",
        help="verify every kernel and path on a device, then a short benchmark",
        description=(
            "Every bound and contrastive loss on every path (dense, streaming, compiled, Triton "
            "where present, autocast) against the float64 dense reference, values and "
            "gradients, then time and memory against the bare products. Exit status 1 if any "
            "row fails."
        ),
    )
    p_check.add_argument("--device", type=_device, default="cpu", help="cpu, cuda or cuda:K")
    p_check.add_argument(
        "--sizes",
        type=_sizes_arg,
        default=None,
        help="benchmark batch sizes (default: 4096 on the CPU, 16384,65536 on a GPU)",
    )
    p_check.set_defaults(func=_cmd_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
