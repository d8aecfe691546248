"""Per-call cost of the drop-in CLIP and SigLIP losses against OpenCLIP's own, forward+backward.

    pip install --no-deps open_clip_torch   # OpenCLIP's losses (its loss module needs torch only)
    python benchmarks/overhead.py           # writes benchmarks/overhead.json
    python benchmarks/overhead.py --device cuda --json gpu-overhead.json

At small N the time of a call is mostly Python (argument checks, building the scores, choosing
a path); from N of a few thousand on it is the products and the exponentials. Each loss runs on
the same normalised float32 features, d = 128 by default, on the CPU unless ``--device`` says
otherwise (on a GPU each call is synchronised before its time is read). The two losses
alternate call by call (the machine is noisy), and the table gives the median time of each and
their ratio, ours / OpenCLIP's. Beside them, "kernel" times the kernel call our loss makes,
alone (forward and backward, the backward ending at its operands): for a batch whose score
matrix is small, the dense path's whole loss (``mibounds.kernels.small``, "path" dense);
otherwise the streamed kernel call on the operands its batch forms ("path" streamed). The
rest of our time is the checks, the scores, the batch and the autograd steps around the
kernel. "checks off" times ours with the checks on values off
(``mibounds.set_validate_args(False)``), as the peer runs: its ratio to the peer's time. "ops"
counts the tensor operations one call dispatches, ours and the
peer's (views not counted): at small N each costs a few microseconds, whatever its size, and
they set the time. Without ``open_clip`` installed, the peer is the same loss
written plainly on the dense logits (``cross_entropy`` / ``logsigmoid``), as OpenCLIP writes it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import mibounds
from mibounds import contrastive
from mibounds.kernels import small, streaming
from mibounds.reductions import SeparableBatch
from mibounds.scores import SeparableScores

HERE = Path(__file__).resolve().parent
SCALE, BIAS = 10.0, -10.0


def _openclip_losses() -> tuple[str, Any, Any] | None:
    """OpenCLIP's ``ClipLoss`` and ``SigLipLoss`` from its ``loss`` module, loaded on its own
    (the package's ``__init__`` imports its models, which need more than torch)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "loss.py"
    loss_spec = importlib.util.spec_from_file_location("_open_clip_loss", path)
    if loss_spec is None or loss_spec.loader is None:
        return None
    module = importlib.util.module_from_spec(loss_spec)
    loss_spec.loader.exec_module(module)
    from importlib.metadata import version

    return f"open_clip_torch {version('open_clip_torch')}", module.ClipLoss(), module.SigLipLoss()


def _plain_clip(u: torch.Tensor, v: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    logits = scale * u @ v.T
    target = torch.arange(u.shape[0], device=u.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def _plain_siglip(u: torch.Tensor, v: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor):
    logits = scale * u @ v.T + bias
    labels = 2 * torch.eye(u.shape[0], dtype=u.dtype, device=u.device) - 1
    return -F.logsigmoid(labels * logits).sum() / u.shape[0]


def pairs() -> tuple[str, dict[str, tuple[Callable[..., Any], Callable[..., Any]]]]:
    """The peer's name and, per loss, ``(ours, peer)``, both called as
    ``loss(image_features, text_features, logit_scale, logit_bias)``."""
    found = _openclip_losses()
    if found is None:
        peer_clip: Callable[..., Any] = lambda u, v, s, b: _plain_clip(u, v, s)  # noqa: E731
        peer_siglip: Callable[..., Any] = _plain_siglip
        name = "plain dense PyTorch (open_clip not installed)"
    else:
        name, clip, siglip = found
        peer_clip = lambda u, v, s, b: clip(u, v, s)  # noqa: E731
        peer_siglip = siglip
    ours_clip, ours_siglip = contrastive.CLIPLoss(), contrastive.SigLIPLoss()
    return name, {
        "clip": (lambda u, v, s, b: ours_clip(u, v, s), peer_clip),
        "siglip": (ours_siglip, peer_siglip),
    }


#: the loss of :mod:`mibounds.kernels.small` each of ours is
_SMALL_LOSS = {"clip": "cross_entropy", "siglip": "sigmoid"}


def kernel_call(name: str, u: torch.Tensor, v: torch.Tensor):
    """The kernel call of our loss ``name`` alone, and its arguments: the operands the loss
    forms, as leaves (the backward pass ends there). A batch small enough for the dense path
    (:mod:`mibounds.kernels.small`) calls its loss there, whole; a larger one calls the
    streamed kernel its batch forms."""
    bias = BIAS if name == "siglip" else None
    if small.covers(u, v, "dot", _SMALL_LOSS[name]):
        x, y = u.detach().requires_grad_(), v.detach().requires_grad_()
        scale = torch.tensor(SCALE, device=u.device)
        if name == "clip":
            return lambda x, y: small.cross_entropy(x, y, 1 / SCALE, True, scale), (x, y)
        b = torch.tensor(BIAS, device=u.device)
        return lambda x, y: small.sigmoid_loss(x, y, 1 / SCALE, b, scale), (x, y)
    st = SeparableBatch(SeparableScores(u.detach(), v.detach(), "dot", 1 / SCALE, bias=bias))
    x, y = st.x.detach().requires_grad_(), st.y.detach().requires_grad_()
    if name == "clip":
        return lambda x, y: streaming.symmetric_logsumexp_mean(
            x, y, st.tau, st.sim, minus_positives=True
        ), (x, y)
    w = st.w_neg
    return lambda x, y: streaming.offdiag_means(
        x, y, st.tau, st.sim, "softplus", layout=st.layout, weight=w, bias=st.bias
    )[1], (x, y)


def count_ops(loss: Callable[..., Any], args: tuple[torch.Tensor, ...]) -> int:
    """The tensor operations one forward+backward call dispatches (views, which move no data,
    not counted): at small N each costs a few microseconds of the CPU, whatever its size."""
    from torch.utils._python_dispatch import TorchDispatchMode

    counted = [0]

    class _Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not func.is_view and func.overloadpacket.__name__ not in _NOT_COUNTED:
                counted[0] += 1
            return func(*args, **(kwargs or {}))

    for t in args:
        t.grad = None
    with _Count():
        loss(*args).backward()
    return counted[0]


#: operations that only alias or wrap a tensor but are not marked as views
_NOT_COUNTED = {"detach", "alias", "lift_fresh"}


def _step(loss: Callable[..., Any], args: tuple[torch.Tensor, ...], validate: bool = True) -> float:
    """One timed forward+backward call; ``validate=False``: with the checks on values off
    (:func:`mibounds.set_validate_args`), as the peers' losses run."""
    for t in args:
        t.grad = None
    cuda = args[0].device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    mibounds.set_validate_args(validate)
    try:
        start = time.perf_counter()
        loss(*args).backward()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start
    finally:
        mibounds.set_validate_args(True)


def measure(
    n: int, d: int, calls: int, losses: dict[str, Any], device: str = "cpu"
) -> list[dict[str, Any]]:
    g = torch.Generator().manual_seed(n)
    u0 = F.normalize(torch.randn(n, d, generator=g), dim=-1).to(device)
    v0 = F.normalize(u0.cpu() + 0.5 * torch.randn(n, d, generator=g), dim=-1).to(device)
    rows = []
    for name, (ours, peer) in losses.items():
        args = (
            u0.clone().requires_grad_(),
            v0.clone().requires_grad_(),
            torch.tensor(SCALE, device=device, requires_grad=True),
            torch.tensor(BIAS, device=device, requires_grad=True),
        )
        kernel, kernel_args = kernel_call(name, u0, v0)
        for _ in range(3):  # warm-up: first calls import, cache and allocate
            _step(ours, args), _step(peer, args), _step(kernel, kernel_args)
        mine, theirs, kernels, unchecked = [], [], [], []
        for _ in range(calls):
            mine.append(_step(ours, args))
            theirs.append(_step(peer, args))
            kernels.append(_step(kernel, kernel_args))
            unchecked.append(_step(ours, args, validate=False))
        t_ours, t_peer = statistics.median(mine), statistics.median(theirs)
        ops = {"ours_ops": count_ops(ours, args), "peer_ops": count_ops(peer, args)}
        path = "dense" if small.covers(u0, v0, "dot", _SMALL_LOSS[name]) else "streamed"
        rows.append({"loss": name, "n": n, "d": d, "device": device, "ours_ms": 1e3 * t_ours,
                     "peer_ms": 1e3 * t_peer, "ratio": t_ours / t_peer,
                     "kernel_ms": 1e3 * statistics.median(kernels), "path": path,
                     "unchecked_ratio": statistics.median(unchecked) / t_peer,
                     **ops})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="16,256,1024,4096", help="batch sizes N, comma-separated")
    p.add_argument("--dim", type=int, default=128, help="feature size d")
    p.add_argument("--calls", type=int, default=0, help="calls per size (0: by size)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--json", default=str(HERE / "overhead.json"), help="output file ('' for none)")
    args = p.parse_args(argv)
    peer, losses = pairs()
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        calls = args.calls or max(7, min(201, 200_000 // n))
        rows += measure(n, args.dim, calls, losses, args.device)
    where = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(f"peer: {peer}; torch {torch.__version__} on {where}, {torch.get_num_threads()} threads")
    print("| loss | N | d | ours (ms) | peer (ms) | ours / peer | checks off / peer | path "
          "| kernel (ms) | ops ours / peer |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['loss']} | {r['n']} | {r['d']} | {r['ours_ms']:.3f} | {r['peer_ms']:.3f} "
              f"| {r['ratio']:.2f} | {r['unchecked_ratio']:.2f} | {r['path']} "
              f"| {r['kernel_ms']:.3f} "
              f"| {r['ours_ops']} / {r['peer_ops']} |")  # fmt: skip
    if args.json:
        meta = {"peer": peer, "torch": torch.__version__, "device": where,
                "threads": torch.get_num_threads()}  # fmt: skip
        Path(args.json).write_text(json.dumps({**meta, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
