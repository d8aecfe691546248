"""Time and memory of the exact contrastive losses and MI bounds on one device.

For each loss, feature size d, batch size N and dtype, forward plus backward of:

* ``bare``: the four matrix products an exact symmetric loss needs (scores, their recomputation
  and the two gradient products), done panel by panel in the features' dtype: the floor;
* ``dense``: the loss as its peers write it (the N x N logits, then cross-entropy or
  log-sigmoid), where the logits fit in memory;
* ``mibounds``: the same loss from :mod:`mibounds.contrastive` or the bound on
  :class:`~mibounds.SeparableScores` (fused kernels on a GPU, the sweep elsewhere);
* ``inf-cl``: Inf-CL's ``cal_inf_loss`` (CLIP only), when the ``inf-cl`` package is installed.

Each row reports the median of three timed runs after a warm-up, the ratio to ``bare``, on
CUDA the peak memory beyond the inputs, and the path the call took (fused kernels, tensor-core
panels or the sweep; :func:`mibounds.kernels.cost.choose_path`). ``--time-limit`` bounds the
whole run: rows that would start after it are listed as skipped. The table is printed and
written to ``--json``.

``--model`` runs nothing: it prints, for the same rows, the path the cost model picks on
``sm_<--arch>`` and its predicted time as a multiple of ``bare`` (``benchmarks/gpu_model.md``
holds its output for the default rows; the tests check that it is current).

Example (a GPU)::

    python benchmarks/gpu.py --device cuda --json gpu.json --time-limit 480

Example (the cost model's predictions, no GPU needed)::

    python benchmarks/gpu.py --model

Example (a quick run anywhere)::

    python benchmarks/gpu.py --device cpu --sizes 256 --dims 16 --json /tmp/b.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import mibounds
from mibounds import contrastive
from mibounds.kernels import cost, streaming

LOSSES = ("clip", "siglip", "ntxent", "supcon", "infonce", "nwj", "js")

#: The streamed op each loss runs, and its rows per batch row (NT-Xent scores both views).
OPS = {
    "clip": ("sym_lse_mean", 1),
    "siglip": ("offdiag_means", 1),
    "ntxent": ("row_lse_mean", 2),
    "supcon": ("row_lse_mean", 1),
    "infonce": ("row_lse_mean", 1),
    "nwj": ("offdiag_means", 1),
    "js": ("offdiag_means", 1),
}


def model_rows(args: argparse.Namespace) -> list[dict]:
    """The cost model's path and predicted time over ``bare`` for every row of the run."""
    rows = []
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        prec = "tf32" if dtype == torch.float32 and args.tf32 else None
        for d in args.dims:
            for n in args.sizes:
                bare = cost.predict("sym_lse_mean", dtype, n, n, d, args.arch, prec)["bare"]
                for name in args.losses:
                    op, k = OPS[name]
                    t = cost.predict(op, dtype, k * n, k * n, d, args.arch, prec)
                    path = min(("fused", "panels"), key=lambda p: t[p])
                    rows.append({"loss": name, "n": n, "d": d, "dtype": dtype_name,
                                 "path": path, "predicted_x_bare": t[path] / bare})  # fmt: skip
    return rows


def format_model(rows: list[dict], arch: int, tf32: bool) -> str:
    """The cost model's rows as a Markdown table."""
    lines = [
        f"cost model, sm_{arch}, float32 at {'TF32' if tf32 else 'IEEE'} precision "
        f"({cost.RATES[arch].source})",
        "",
        "| loss | N | d | dtype | path | predicted x bare |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['loss']} | {r['n']} | {r['d']} | {r['dtype']} | {r['path']} | "
                     f"{r['predicted_x_bare']:.2f} |")  # fmt: skip
    return "\n".join(lines)


def _dense(name: str, u, v, labels):
    """The loss as its peers compute it, from the N x N logits (float32 statistics)."""
    if name == "clip":
        s = (u @ v.T).float() * 10.0
        t = torch.arange(u.shape[0], device=u.device)
        return 0.5 * (F.cross_entropy(s, t) + F.cross_entropy(s.T, t))
    if name == "siglip":
        s = (u @ v.T).float() * 10.0 - 10.0
        sign = 2 * torch.eye(u.shape[0], device=u.device) - 1
        return -F.logsigmoid(sign * s).sum() / u.shape[0]
    if name == "ntxent":
        z = torch.cat([u, v])
        s = (z @ z.T).float() / 0.5
        s.fill_diagonal_(-math.inf)
        n = u.shape[0]
        t = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(u.device)
        return F.cross_entropy(s, t)
    if name == "supcon":
        s = (u @ u.T).float() / 0.1
        eye = torch.eye(u.shape[0], dtype=torch.bool, device=u.device)
        s = s.masked_fill(eye, -math.inf)
        pos = (labels[:, None] == labels[None, :]) & ~eye
        logp = s - torch.logsumexp(s, 1, keepdim=True)
        return -(logp.masked_fill(~pos, 0).sum(1) / pos.sum(1).clamp_min(1)).mean()
    s = (u @ v.T).float() / 0.1
    bound = {"infonce": mibounds.infonce, "nwj": mibounds.nwj, "js": mibounds.js}[name]
    return -bound(s)


def _ours(name: str, u, v, labels):
    if name == "clip":
        return contrastive.CLIPLoss()(u, v, 10.0)
    if name == "siglip":
        return contrastive.SigLIPLoss()(u, v, 10.0, -10.0)
    if name == "ntxent":
        return contrastive.NTXentLoss(0.5)(u, v)
    if name == "supcon":
        return contrastive.SupConLoss(0.1)(u, labels)
    bound = {"infonce": mibounds.infonce, "nwj": mibounds.nwj, "js": mibounds.js}[name]
    return -bound(mibounds.SeparableScores(u, v, "dot", 0.1))


def _infcl(name: str, u, v, labels):  # pragma: no cover - needs the inf-cl package and CUDA
    from inf_cl import cal_inf_loss

    return cal_inf_loss(u, v, scale=10.0).mean()


def _bare(u, v, budget: int = 2**28) -> None:
    """The four products of an exact symmetric loss, in panels of at most ``budget`` scores."""
    n = u.shape[0]
    p = max(1, min(n, budget // n))
    du, dv = torch.empty_like(u), torch.zeros_like(v)
    with torch.no_grad():
        for r0 in range(0, n, p):
            up = u[r0 : r0 + p]
            _ = up @ v.T  # the forward statistics
            s = up @ v.T  # recomputed for the gradient
            du[r0 : r0 + p] = s @ v
            dv += s.T @ up


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _measure(device: torch.device, fn: Callable[[], None]) -> tuple[float, float | None]:
    """Median seconds of three runs after a warm-up; peak MiB beyond the start (CUDA)."""
    fn()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
        if times[-1] > 20.0:  # a slow row is timed once
            break
    peak = None
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    return sorted(times)[len(times) // 2], peak


def _fits_dense(device: torch.device, n: int, name: str) -> bool:
    rows = 2 * n if name == "ntxent" else n
    need = 4 * rows * rows * 4  # logits, their float32 copy, softmax and gradient
    if device.type == "cuda":
        return need < 0.8 * torch.cuda.mem_get_info(device)[0]
    return n <= 8192


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    start = time.perf_counter()
    results = []
    have_infcl = False
    try:
        import inf_cl  # noqa: F401

        have_infcl = device.type == "cuda"
    except ImportError:
        pass
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        for d in args.dims:
            for n in args.sizes:
                g = torch.Generator().manual_seed(0)
                u0 = F.normalize(torch.randn(n, d, generator=g), dim=-1)
                v0 = F.normalize(u0 + torch.randn(n, d, generator=g), dim=-1)
                u = u0.to(device, dtype).requires_grad_(True)
                v = v0.to(device, dtype).requires_grad_(True)
                labels = (torch.arange(n) % max(2, n // 16)).to(device)
                bare = None
                for name in args.losses:
                    row: dict = {"loss": name, "n": n, "d": d, "dtype": dtype_name}
                    if time.perf_counter() - start > args.time_limit:
                        row["skipped"] = "time limit"
                        results.append(row)
                        continue
                    if bare is None:
                        bare, _ = _measure(device, lambda u=u, v=v: _bare(u.detach(), v.detach()))
                    row["bare_s"] = bare
                    impls = {"mibounds": _ours}
                    if _fits_dense(device, n, name):
                        impls["dense"] = _dense
                    if have_infcl and name == "clip":
                        impls["inf-cl"] = _infcl
                    for impl, fn in impls.items():

                        def step(fn=fn, name=name, u=u, v=v, labels=labels) -> None:
                            u.grad = v.grad = None
                            fn(name, u, v, labels).backward()

                        before = streaming.path_usage()
                        try:
                            t, peak = _measure(device, step)
                            row[f"{impl}_s"] = t
                            row[f"{impl}_x_bare"] = t / bare if bare else None
                            row[f"{impl}_peak_mib"] = peak
                            if impl == "mibounds":
                                after = streaming.path_usage()
                                row["path"] = "+".join(
                                    p
                                    for p in ("dense", *cost.PATHS)
                                    if after.get(p, 0) > before.get(p, 0)
                                )
                        except Exception as err:  # out of memory and the like: reported
                            row[f"{impl}_error"] = f"{type(err).__name__}: {err}"[:200]
                            if device.type == "cuda":
                                torch.cuda.empty_cache()
                    results.append(row)
                    print(_format_row(row), flush=True)
    return {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "triton_enabled": mibounds.kernels.streaming.triton_on(device),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "time_limit_s": args.time_limit,
        "elapsed_s": time.perf_counter() - start,
        "rows": results,
    }


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or "cpu"


def _cell(row: dict, impl: str) -> str:
    if f"{impl}_error" in row:
        return "error"
    if f"{impl}_s" not in row:
        return "-"
    out = f"{row[f'{impl}_s']:.4f} ({row[f'{impl}_x_bare']:.2f}x)"
    if row.get(f"{impl}_peak_mib") is not None:
        out += f" {row[f'{impl}_peak_mib']:.0f} MiB"
    return out


HEADER = ("loss", "N", "d", "dtype", "bare s", "dense", "mibounds", "path", "inf-cl")


def _format_row(row: dict) -> str:
    if "skipped" in row:
        cells = (row["loss"], row["n"], row["d"], row["dtype"], "skipped: time limit", "", "", "",
                 "")  # fmt: skip
    else:
        cells = (
            row["loss"], row["n"], row["d"], row["dtype"], f"{row['bare_s']:.4f}",
            _cell(row, "dense"), _cell(row, "mibounds"), row.get("path", "-"),
            _cell(row, "inf-cl"),
        )  # fmt: skip
    return " | ".join(str(c) for c in cells)


def format_table(report: dict) -> str:
    """The report as a Markdown table."""
    lines = [
        f"device: {report['device']}, torch {report['torch']}, fused kernels "
        f"{'on' if report['triton_enabled'] else 'off'}, float32 matmul precision "
        f"{report['float32_matmul_precision']}",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
    ]
    lines += ["| " + _format_row(r) + " |" for r in report["rows"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sizes", type=int, nargs="+", default=[16384, 65536, 262144, 1048576])
    p.add_argument("--dims", type=int, nargs="+", default=[128, 512, 1024])
    p.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"],
                   choices=["bfloat16", "float16", "float32"])  # fmt: skip
    p.add_argument("--losses", nargs="+", default=list(LOSSES), choices=LOSSES)
    p.add_argument("--time-limit", type=float, default=480.0, help="seconds for the whole run")
    p.add_argument("--json", help="where to write the report (required unless --model)")
    p.add_argument(
        "--model",
        action="store_true",
        help="print the cost model's path and predicted ratio per row; run nothing",
    )
    p.add_argument(
        "--arch",
        type=int,
        default=90,
        choices=sorted(cost.RATES),
        help="compute capability for --model (default 90)",
    )
    p.add_argument(
        "--tf32",
        action="store_true",
        help="--model: float32 at TF32 precision (default: IEEE, torch's default)",
    )
    args = p.parse_args(argv)
    if args.model:
        print(format_model(model_rows(args), args.arch, args.tf32))
        return 0
    if args.json is None:
        p.error("--json is required unless --model is given")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device}: no CUDA device is available")
    for flag, values in (("--sizes", args.sizes), ("--dims", args.dims)):
        if any(v < 2 for v in values):
            p.error(f"{flag} must be integers >= 2, got {values}")
    try:
        open(args.json, "a").close()
    except OSError as err:
        p.error(f"--json {args.json}: {err.strerror}")
    report = run(args)
    with open(args.json, "w") as fh:
        json.dump(report, fh, indent=1)
    print(format_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
