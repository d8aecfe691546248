r"""Forward+backward time and peak extra memory of a bound, naive vs ours, as ratios in one run.

Each configuration runs in a fresh subprocess so that its peak resident memory (Linux
``ru_maxrss``; on CUDA the allocator's peak) belongs to it alone. Times are medians over
repeated runs after a warm-up. Methods:

* ``bare``: the three matrix products any implementation needs (``S = X Y^T``, ``G Y``,
  ``G^T X``) and nothing else: the floor.
* ``naive``: the bound written plainly in PyTorch on the dense ``N x N`` scores, as users
  write it; for the contrastive losses (:data:`LOSSES`), the loss as its library writes it.
* ``dense``: :mod:`mibounds` on dense scores.
* ``compiled``: :mod:`mibounds` on dense scores inside ``torch.compile`` (compile time
  excluded).
* ``streaming``: :mod:`mibounds` on :class:`~mibounds.SeparableScores` (the streaming kernels).

Peak memory is the rise of the resident set over its value after the warm-up; memory the
allocator keeps after the warm-up's frees is not counted, so small peaks can be underestimated
by a few MiB. Features are L2-normalised (cosine-style scores) with temperature 0.1, as in
contrastive learning. Configurations whose dense ``N x N`` buffers would not fit are reported
as skipped.
"""

from __future__ import annotations

import gc
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

import mibounds
from mibounds import contrastive

__all__ = [
    "BOUNDS",
    "BenchResult",
    "LOSSES",
    "METHODS",
    "ratio_table",
    "run_benchmarks",
    "run_one",
]

METHODS = ("bare", "naive", "dense", "compiled", "streaming")
TAU = 0.1


def _offdiag(s: Tensor) -> Tensor:
    n = s.shape[-1]
    return s[~torch.eye(n, dtype=torch.bool, device=s.device)]


def _naive_infonce(s: Tensor) -> Tensor:
    return (s.diagonal() - torch.logsumexp(s, dim=1)).mean() + math.log(s.shape[0])


def _naive_infonce_sym(s: Tensor) -> Tensor:
    rows = (s.diagonal() - torch.logsumexp(s, dim=1)).mean()
    cols = (s.diagonal() - torch.logsumexp(s, dim=0)).mean()
    return 0.5 * (rows + cols) + math.log(s.shape[0])


def _naive_nwj(s: Tensor) -> Tensor:
    return s.diagonal().mean() - torch.exp(_offdiag(s) - 1).mean()


def _naive_js(s: Tensor) -> Tensor:
    # the Jensen-Shannon training objective (its gradient is what js trains with)
    return -F.softplus(-s.diagonal()).mean() - F.softplus(_offdiag(s)).mean()


def _naive_fmi_js(s: Tensor) -> Tensor:
    return (math.log(2) - F.softplus(-s.diagonal())).mean() - (
        F.softplus(_offdiag(s)) - math.log(2)
    ).mean()


def _naive_clip(x: Tensor, y: Tensor) -> Tensor:
    logits = x @ y.T / TAU
    target = torch.arange(x.shape[0], device=x.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def _naive_siglip(x: Tensor, y: Tensor) -> Tensor:
    logits = x @ y.T / TAU - 10.0
    labels = 2 * torch.eye(x.shape[0], device=x.device, dtype=x.dtype) - 1
    return -F.logsigmoid(labels * logits).sum() / x.shape[0]


def _naive_ntxent(x: Tensor, y: Tensor) -> Tensor:
    # the N embeddings are two views of N/2 samples
    h = x.shape[0] // 2
    z = F.normalize(torch.cat([x[:h], y[:h]]), dim=1)
    logits = (z @ z.T / TAU).fill_diagonal_(-math.inf)
    target = torch.arange(2 * h, device=x.device).roll(h)
    return F.cross_entropy(logits, target)


def _labels(n: int, device: torch.device) -> Tensor:
    return torch.arange(n, device=device) % 100  # 100 classes


def _naive_supcon(x: Tensor, y: Tensor) -> Tensor:
    z = F.normalize(x, dim=1)
    labels = _labels(x.shape[0], x.device)
    logits = z @ z.T / TAU
    self_mask = torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    pos = (labels[:, None] == labels[None, :]) & ~self_mask
    log_prob = logits - torch.logsumexp(logits.masked_fill(self_mask, -math.inf), 1, keepdim=True)
    per_anchor = -(log_prob * pos).sum(1) / pos.sum(1).clamp_min(1)
    return per_anchor[pos.any(1)].mean()


_MOCO_BATCH = 256


def _naive_moco(x: Tensor, y: Tensor) -> Tensor:
    # 256 queries and keys; the other N - 256 rows of y form the queue
    q, k, queue = x[:_MOCO_BATCH], y[:_MOCO_BATCH], y[_MOCO_BATCH:].detach()
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.T], 1) / TAU
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=x.device))


def _ours_ntxent(x: Tensor, y: Tensor) -> Tensor:
    h = x.shape[0] // 2
    return contrastive.NTXentLoss(TAU)(x[:h], y[:h])


def _ours_moco(x: Tensor, y: Tensor) -> Tensor:
    b = _MOCO_BATCH
    return contrastive.MoCoLoss(TAU)(x[:b], y[:b], y[b:].detach())


#: loss name -> (a plain dense implementation of the loss, the streamed mibounds module), both
#: called on the features ``(x, y)``; N counts every embedding (NT-Xent: two views of N/2;
#: MoCo: 256 queries against their keys and a queue of N - 256).
LOSSES: dict[str, tuple[Callable[[Tensor, Tensor], Tensor], Callable[[Tensor, Tensor], Tensor]]] = {
    "clip": (_naive_clip, lambda x, y: contrastive.CLIPLoss()(x, y, 1 / TAU)),
    "siglip": (_naive_siglip, lambda x, y: contrastive.SigLIPLoss()(x, y, 1 / TAU, -10.0)),
    "ntxent": (_naive_ntxent, _ours_ntxent),
    "supcon": (
        _naive_supcon,
        lambda x, y: contrastive.SupConLoss(TAU)(x, _labels(x.shape[0], x.device)),
    ),
    "moco": (_naive_moco, _ours_moco),
}


#: bound name -> (naive implementation on dense scores, mibounds call on any scores)
BOUNDS: dict[str, tuple[Callable[[Tensor], Tensor], Callable[..., Tensor]]] = {
    "infonce": (_naive_infonce, mibounds.infonce),
    "infonce-sym": (_naive_infonce_sym, lambda s: mibounds.infonce(s, symmetric=True)),
    "nwj": (_naive_nwj, mibounds.nwj),
    "js": (_naive_js, mibounds.js),
    "fmi-js": (_naive_fmi_js, lambda s: mibounds.fmi(s, "js")),
}


@dataclass
class BenchResult:
    """One measured configuration (times in seconds, memory in MiB).

    Example:
        >>> r = run_one("infonce", "streaming", 64, 8, repeats=1)
        >>> isinstance(r, BenchResult), r.method, r.n, r.time_s > 0
        (True, 'streaming', 64, True)
    """

    bound: str
    method: str
    n: int
    d: int
    dtype: str
    device: str
    time_s: float | None
    peak_extra_mib: float | None
    note: str = ""


def _rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark of this process (Linux ``clear_refs`` 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mib() -> float:
    """The high-water mark since the last reset (VmHWM), or ``ru_maxrss`` without procfs."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _dense_bytes(n: int) -> int:
    return 3 * n * n * 4  # scores, their exponentials and their gradient, float32


def run_one(
    bound: str,
    method: str,
    n: int,
    d: int,
    dtype: str = "float32",
    device: str = "cpu",
    repeats: int = 3,
) -> BenchResult:
    """Measure one configuration in this process (call it in a fresh one for the memory).

    Example:
        >>> r = run_one("nwj", "bare", 64, 8, repeats=1)
        >>> r.bound, r.method, r.d
        ('nwj', 'bare', 8)
    """
    dt = getattr(torch, dtype)
    dev = torch.device(device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = F.normalize(torch.randn(n, d, generator=gen), dim=-1).to(dev, dt)
    y = F.normalize(x.float().cpu() + 0.3 * torch.randn(n, d, generator=gen), dim=-1).to(dev, dt)
    x.requires_grad_(True)
    y.requires_grad_(True)
    naive, ours = BOUNDS.get(bound, BOUNDS["infonce"])
    if bound in LOSSES and method not in ("bare", "naive", "streaming"):
        return BenchResult(bound, method, n, d, dtype, device, None, None, "n/a for a loss")

    def step() -> None:
        if method == "bare":
            with torch.no_grad():
                s = x @ y.T
                _ = s @ y
                _ = s.T @ x
            return
        x.grad = y.grad = None
        if bound in LOSSES:
            # the losses are minimised: their own sign
            dense_loss, loss = LOSSES[bound]
            value = -(loss(x, y) if method == "streaming" else dense_loss(x, y))
        elif method == "streaming":
            value = ours(mibounds.SeparableScores(x, y, "dot", TAU))
        elif method == "naive":
            value = naive(x @ y.T / TAU)
        elif method == "compiled" and compiled is not None:
            value = compiled(x, y)
        else:
            value = ours(x @ y.T / TAU)
        (-value).backward()

    compiled = torch.compile(lambda a, b: ours(a @ b.T / TAU)) if method == "compiled" else None

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up (compilation, lazy initialisation) before the baseline
    sync()
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        base = _rss_mib()
        _reset_peak_rss()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20 - base
    else:
        peak = _peak_rss_mib() - base
    return BenchResult(bound, method, n, d, dtype, device, statistics.median(times), max(peak, 0.0))


def run_benchmarks(
    bounds: Sequence[str] = ("infonce",),
    sizes: Sequence[int] = (1024, 4096),
    dims: Sequence[int] = (128,),
    methods: Sequence[str] = METHODS,
    dtype: str = "float32",
    device: str = "cpu",
    memory_limit_gib: float = 20.0,
    progress: Callable[[BenchResult], None] | None = None,
) -> list[BenchResult]:
    """Run every configuration in its own subprocess; skip dense ones that cannot fit.

    Example:
        >>> rs = run_benchmarks(("infonce",), sizes=(64,), dims=(8,), methods=("bare", "streaming"))
        >>> sorted(r.method for r in rs)
        ['bare', 'streaming']
    """
    results = []
    bare_cache: dict[tuple[int, int], BenchResult] = {}
    for bound in bounds:
        for d in dims:
            for n in sizes:
                for method in methods:
                    if method == "bare" and (n, d) in bare_cache:
                        r = BenchResult(**{**asdict(bare_cache[(n, d)]), "bound": bound})
                    elif method in ("naive", "dense", "compiled") and (
                        _dense_bytes(n) > memory_limit_gib * 2**30
                    ):
                        r = BenchResult(
                            bound,
                            method,
                            n,
                            d,
                            dtype,
                            device,
                            None,
                            None,
                            f"skipped: needs ~{_dense_bytes(n) / 2**30:.0f} GiB",
                        )
                    else:
                        r = _in_subprocess(
                            bound, method, n, d, dtype, device, repeats=3 if n <= 16384 else 1
                        )
                    results.append(r)
                    if progress is not None:
                        progress(r)
    return results


def _in_subprocess(
    bound: str, method: str, n: int, d: int, dtype: str, device: str, repeats: int
) -> BenchResult:
    code = (
        "import json, dataclasses, mibounds.benchmark as b; "
        f"r = b.run_one({bound!r}, {method!r}, {n}, {d}, {dtype!r}, {device!r}, {repeats}); "
        "print(json.dumps(dataclasses.asdict(r)))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        return BenchResult(bound, method, n, d, dtype, device, None, None, f"failed: {tail}")
    return BenchResult(**json.loads(proc.stdout.strip().splitlines()[-1]))


def ratio_table(results: Sequence[BenchResult]) -> list[dict[str, object]]:
    """Rows per (bound, N, d): each method's time, memory and ratios to naive and to bare.

    Example:
        >>> rs = [run_one("infonce", m, 64, 8, repeats=1) for m in ("bare", "streaming")]
        >>> rows = ratio_table(rs)
        >>> sorted(row["method"] for row in rows), all("x_bare" in row for row in rows)
        (['bare', 'streaming'], True)
    """
    rows = []
    keys = sorted({(r.bound, r.n, r.d) for r in results}, key=lambda k: (k[0], k[2], k[1]))
    for bound, n, d in keys:
        group = {r.method: r for r in results if (r.bound, r.n, r.d) == (bound, n, d)}
        bare, naive = group.get("bare"), group.get("naive")
        for r in group.values():
            row: dict[str, object] = {**asdict(r)}
            if r.time_s is not None and bare is not None and bare.time_s:
                row["x_bare"] = r.time_s / bare.time_s
            if r.time_s is not None and naive is not None and naive.time_s:
                row["x_naive"] = r.time_s / naive.time_s
            if (
                r.peak_extra_mib is not None
                and naive is not None
                and naive.peak_extra_mib
                and r.peak_extra_mib > 0
            ):
                row["mem_vs_naive"] = naive.peak_extra_mib / r.peak_extra_mib
            rows.append(row)
    return rows
