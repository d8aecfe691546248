r"""``mibounds check``: every kernel and every path on one device against the dense reference.

One command verifies a device: each bound and contrastive loss is computed on every path
(dense scores, the streaming sweep, the sweep with compiled panel bodies, the fused Triton
kernels and the tensor-core panels where they cover the call, and under ``torch.autocast``
on the path the cost model picks), and its value and gradients are compared with the dense
float64 reference on the CPU. Each row names the streamed path that computed it (CLIP's and
SigLIP's losses of the check's small batch run on the small-batch path, "dense", where no
kernel path is asked for and the panel bodies are not compiled). Where a
kernel path should run, the check asserts that it did (a kernel that fails its self-check
falls back otherwise, with one warning). Then a
short benchmark measures time and peak memory against the bare matrix products and a plain
dense implementation. Everything ends in one table; the exit status is non-zero on any
failure.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from mibounds import _checks, contrastive
from mibounds.bounds.lower import dv, fmi, infonce, interpolated, js, mine, nwj, smile, tuba
from mibounds.bounds.upper import nce_club
from mibounds.kernels import cost, streaming
from mibounds.scores import SeparableScores

__all__ = ["CheckRow", "run_check"]

#: bound name -> f(scores): each returns a scalar to compare (and differentiate)
_BOUNDS: dict[str, Callable[..., Tensor]] = {
    "infonce": infonce,
    "infonce-sym": lambda s: infonce(s, symmetric=True),
    "nwj": nwj,
    "tuba": tuba,
    "dv": dv,
    "mine": lambda s: mine(s)[0],
    "js": js,
    "smile": smile,
    "fmi-js": lambda s: fmi(s, "js"),
    "fmi-kl": lambda s: fmi(s, "kl"),
    "interpolated": interpolated,
    "nce_club": nce_club,
}

#: loss name -> f(u, v) on features
_LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "clip": lambda u, v: contrastive.CLIPLoss()(u, v, 8.0),
    "siglip": lambda u, v: contrastive.SigLIPLoss()(u, v, 8.0, -4.0),
    "ntxent": lambda u, v: contrastive.NTXentLoss(0.2)(u, v),
    "supcon": lambda u, v: contrastive.SupConLoss(0.2)(u, torch.arange(u.shape[0]) % 7),
    "moco": lambda u, v: contrastive.MoCoLoss(0.2)(u[:32], v[:32], v[32:].detach()),
}


@dataclass
class CheckRow:
    """One line of the check's table.

    Example:
        >>> CheckRow("correctness", "infonce", "streaming", True, "max error 1e-7").passed
        True
    """

    part: str
    name: str
    path: str
    passed: bool
    detail: str


def _features(n: int, d: int, device: torch.device, seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    u = torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    v = 0.6 * u + 0.8 * torch.randn(n, d, generator=g, dtype=torch.float64)
    v = torch.nn.functional.normalize(v, dim=1)
    return u.to(device), v.to(device)


def _value_grads(fn: Callable[[Tensor, Tensor], Tensor], u: Tensor, v: Tensor):
    u = u.detach().clone().requires_grad_(True)
    v = v.detach().clone().requires_grad_(True)
    value = fn(u, v)
    gu, gv = torch.autograd.grad(value.float().sum(), (u, v), allow_unused=True)
    gv = torch.zeros_like(v) if gv is None else gv
    return value.detach().double().cpu(), gu.double().cpu(), gv.double().cpu()


def _compare(got, want, rtol: float, atol: float) -> tuple[bool, str]:
    worst = 0.0
    ok = True
    for g, w in zip(got, want, strict=True):
        if not bool(torch.isfinite(g).all()):
            return False, "non-finite output"
        err = float((g - w).abs().max()) if g.numel() else 0.0
        scale = float(w.abs().max()) if w.numel() else 0.0
        worst = max(worst, err)
        ok = ok and err <= atol + rtol * scale
    return ok, f"max abs error {worst:.2e}"


def _paths(device: torch.device) -> list[str]:
    paths = ["dense", "streaming", "compiled"]
    if streaming.triton_on(device):
        paths += ["fused", "panels"]
    paths.append("autocast")
    return paths


def _scores_fn(path: str, bound: Callable[..., Tensor], tau: float = 0.2):
    def run(u: Tensor, v: Tensor) -> Tensor:
        s = SeparableScores(u, v, "dot", tau)
        if path == "dense":
            return bound(s.dense())
        if path == "autocast":
            with _autocast(u) as dtype:
                # the features come out of a half-precision layer, as in a real model
                return bound(SeparableScores(u.to(dtype), v.to(dtype), "dot", tau))
        return bound(s)

    return run


@contextlib.contextmanager
def _autocast(like: Tensor) -> Iterator[torch.dtype]:
    """``torch.autocast`` on ``like``'s device (float16 on CUDA, bfloat16 on the CPU); yields
    that dtype."""
    dtype = torch.float16 if like.is_cuda else torch.bfloat16
    with torch.autocast("cuda" if like.is_cuda else "cpu", dtype=dtype):
        yield dtype


_KERNEL_PATHS = ("fused", "panels")


def _run_path(path: str, fn: Callable[[Tensor, Tensor], Tensor], u: Tensor, v: Tensor):
    kernel = path in _KERNEL_PATHS
    streaming.set_triton(True if kernel else None if path == "autocast" else False)
    cost.set_path(path if kernel else None)
    backend = streaming.get_backend()
    try:
        if path == "compiled":
            streaming.set_backend("compiled")
        return _value_grads(fn, u, v)
    finally:
        streaming.set_backend(backend)
        streaming.set_triton(None)
        cost.set_path(None)


def check_correctness(device: torch.device, n: int = 96, dims: tuple[int, ...] = (16, 64)):
    """Rows of the correctness part (see :func:`run_check`). Where the fused kernels run, a
    feature size of 300 is checked too (several feature steps and output chunks)."""
    rows: list[CheckRow] = []
    tol = {"autocast": (5e-2, 5e-2)}
    paths = _paths(device)
    if "fused" in paths:
        dims = (*dims, 300)
    for d in dims:
        u64, v64 = _features(n, d, torch.device("cpu"))
        u, v = u64.float().to(device), v64.float().to(device)
        cases: list[tuple[str, Callable[..., Tensor], bool]] = [
            *((name, b, True) for name, b in _BOUNDS.items()),
            *((name, f, False) for name, f in _LOSSES.items()),
        ]
        for name, fn, is_bound in cases:

            def make(path: str, fn: Callable[..., Tensor] = fn, is_bound: bool = is_bound):
                return _scores_fn(path, fn) if is_bound else _loss_fn(path, fn)

            want = _value_grads(make("dense"), u64, v64)
            for path in paths:
                if path == "dense" and not is_bound:
                    continue  # the losses always stream
                if path in _KERNEL_PATHS and name in _SWEEP_ONLY:
                    continue
                rows.append(_check_path(path, name, d, make(path), u, v, want, tol))
    return rows


#: Bounds that no fused kernel computes: the interpolated bound's leave-one-out column
#: statistics run on the sweep, NCE-CLUB's all-pairs mean needs no pairwise reduction at all.
_SWEEP_ONLY = ("interpolated", "nce_club")


def _check_path(path, name, d, fn, u, v, want, tol) -> CheckRow:
    """One row: ``fn`` on ``path`` against ``want``; on a kernel path, also that a kernel
    computed the call (not the sweep after a failed self-check). The detail names the
    streamed paths that ran."""
    before = sum(streaming.triton_usage().values())
    ran_before = streaming.path_usage()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = _run_path(path, fn, u, v)
        rtol, atol = tol.get(path, (2e-4, 2e-5))
        ok, detail = _compare(got, want, rtol, atol)
        fell_back = [w for w in caught if "failed its check" in str(w.message)]
        used = sum(streaming.triton_usage().values()) - before
        ran_after = streaming.path_usage()
        ran = [p for p in ran_after if ran_after[p] > ran_before.get(p, 0)]
        if ran:
            detail += f" (ran: {'+'.join(sorted(ran))})"
        if path in _KERNEL_PATHS and (fell_back or used == 0):
            why = str(fell_back[0].message)[:160] if fell_back else "not used"
            ok, detail = False, f"the {path} kernels did not run: " + why
    except Exception as err:  # any failure is a failed row, not a crash
        ok, detail = False, f"{type(err).__name__}: {err}"[:160]
    return CheckRow("correctness", f"{name} d={d}", path, ok, detail)


def _loss_fn(path: str, loss: Callable[[Tensor, Tensor], Tensor]):
    def run(u: Tensor, v: Tensor) -> Tensor:
        if path == "autocast":
            with _autocast(u) as dtype:
                return loss(u.to(dtype), v.to(dtype))
        return loss(u, v)

    return run


def check_speed(device: torch.device, sizes: tuple[int, ...], d: int = 128) -> list[CheckRow]:
    """Rows of the benchmark part: streamed one-way and symmetric InfoNCE against the bare
    products and a naive dense version (where it fits)."""
    rows = []
    for n in sizes:
        u, v = _features(n, d, torch.device("cpu"))
        u = u.float().to(device).requires_grad_(True)
        v = v.float().to(device).requires_grad_(True)
        rows += _speed_rows(device, u, v, d)
    return rows


def _speed_rows(device: torch.device, u: Tensor, v: Tensor, d: int) -> list[CheckRow]:
    n = u.shape[0]
    rows = []
    bare_t, _ = _timed(device, lambda: _bare(u, v))
    bounds: list[tuple[str, Callable[..., Tensor]]] = [
        ("infonce", infonce),
        ("infonce-sym", _BOUNDS["infonce-sym"]),
    ]
    for name, bound in bounds:

        def streamed(b: Callable[..., Tensor] = bound) -> None:
            _backward(b(SeparableScores(u, v, "dot", 0.1)))

        def naive(b: Callable[..., Tensor] = bound) -> None:
            _backward(b(_dense_scores(u, v)))

        t, mem = _timed(device, streamed)
        detail = f"{t:.3f} s = {t / bare_t:.2f}x bare"
        if device.type == "cuda":
            detail += f", peak {mem:.0f} MiB"
        dense_bytes = 3 * n * n * 4
        if device.type == "cuda" and dense_bytes < 0.5 * torch.cuda.mem_get_info()[0]:
            td, memd = _timed(device, naive)
            detail += f"; naive {td:.3f} s, {memd:.0f} MiB ({memd / max(mem, 1):.0f}x memory)"
        elif device.type == "cpu" and n <= 8192:
            td, _ = _timed(device, naive)
            detail += f"; naive {td:.3f} s"
        rows.append(CheckRow("speed", f"{name} N={n} d={d}", "streaming", True, detail))
    return rows


def _dense_scores(u: Tensor, v: Tensor) -> Tensor:
    return u @ v.T / 0.1


def _backward(value: Tensor) -> None:
    value.backward()


def _bare(u: Tensor, v: Tensor) -> None:
    with torch.no_grad():
        s = u @ v.T
        _ = s @ v
        _ = s.T @ u


def _timed(device: torch.device, fn: Callable[[], None]) -> tuple[float, float]:
    """Median seconds of 3 runs after a warm-up, and the peak extra memory (MiB, CUDA only)."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = 0.0
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    return sorted(times)[1], peak


def run_check(device: str = "cpu", sizes: tuple[int, ...] | None = None) -> list[CheckRow]:
    """Run the whole check on ``device``; see the module documentation.

    Args:
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:K"``.
        sizes: batch sizes of the benchmark part (default 4096 on the CPU; 16384 and 65536
            on a GPU).

    Raises:
        ValueError: an unknown device, or CUDA without a GPU.

    Example:
        >>> run_check("tpu0")
        Traceback (most recent call last):
        ...
        ValueError: device must be a torch device such as 'cpu' or 'cuda', got 'tpu0'
    """
    dev = _checks.check_device("device", device)
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, got {device!r}")
    if sizes is None:
        sizes = (4096,) if dev.type == "cpu" else (16384, 65536)
    rows = check_correctness(dev)
    rows += check_speed(dev, sizes)
    return rows


def format_table(rows: list[CheckRow]) -> str:
    """The rows as a plain-text table, then a summary line.

    Example:
        >>> print(format_table([CheckRow("speed", "infonce N=8", "streaming", True, "ok")]))
        part   name         path       result  detail
        speed  infonce N=8  streaming  pass    ok
        1 passed, 0 failed
    """
    header = ("part", "name", "path", "result", "detail")
    body = [(r.part, r.name, r.path, "pass" if r.passed else "FAIL", r.detail) for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body, strict=False)]
    lines = []
    for line in (header, *body):
        cells = [str(c).ljust(w) for c, w in zip(line[:-1], widths, strict=False)]
        lines.append("  ".join([*cells, str(line[-1])]).rstrip())
    failed = sum(not r.passed for r in rows)
    lines.append(f"{len(rows) - failed} passed, {failed} failed")
    return "\n".join(lines)
