"""The road from a drop-in loss to its kernel: which modules its forward call passes through,
in order.

    python benchmarks/road.py            # CLIP, SigLIP, NT-Xent, SupCon and MoCo
    python benchmarks/road.py --verbose  # and every stop

Each loss is called on small float32 inputs on the CPU (once to warm up, then once under a
profiler) that records, at every call and return between Python functions of ``mibounds``, the
module control is in; a package, such as ``mibounds.kernels``, ``mibounds.bounds`` or
``mibounds.reductions``, counts as one module. Consecutive stops in one module are one stop.
The road ends at a kernel: a call into ``mibounds.kernels`` is one stop there, whatever the
kernel calls until it returns (its own dispatch, its precision helpers) is the kernel's.
The table gives the modules passed through, the stops, the largest number of entries into one
module, and how many times the road turns back up to a caller in another module.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch

import mibounds
from mibounds import contrastive

_ROOT = mibounds.__file__.rsplit("/", 1)[0] + "/"
_ONE_MODULE = ("kernels", "bounds", "contrastive", "reductions", "estimate")


def _module(filename: str) -> str | None:
    if not filename.startswith(_ROOT):
        return None
    parts = filename[len(_ROOT) :].removesuffix(".py").split("/")
    if parts[0] in _ONE_MODULE or parts[-1] == "__init__":
        return parts[0]
    return ".".join(parts)


def road(call: Callable[[], Any]) -> tuple[list[str], int]:
    """The modules control passes through while ``call()`` runs (consecutive repeats merged)
    and the number of returns into another module."""
    stops: list[str] = []
    ups = 0

    depth = 0  # calls open inside a kernel

    def profile(frame: Any, event: str, arg: Any) -> None:
        nonlocal ups, depth
        if event not in ("call", "return"):
            return
        if depth:  # inside a kernel: its own calls are the kernel's
            depth += 1 if event == "call" else -1
            if depth:
                return
        if event == "return":
            frame = frame.f_back
            if frame is None:
                return
        module = _module(frame.f_code.co_filename)
        if event == "call" and module == "kernels":
            depth = 1
        if module is None or (stops and stops[-1] == module):
            return
        if event == "return":
            ups += 1
        stops.append(module)

    sys.setprofile(profile)
    try:
        call()
    finally:
        sys.setprofile(None)
    return stops, ups


def losses() -> dict[str, Callable[[], Any]]:
    g = torch.Generator().manual_seed(0)
    u = torch.randn(16, 8, generator=g, requires_grad=True)
    v = torch.randn(16, 8, generator=g, requires_grad=True)
    labels = torch.arange(16) % 4
    queue = torch.randn(32, 8, generator=g)
    clip, siglip = contrastive.CLIPLoss(), contrastive.SigLIPLoss()
    ntxent, supcon = contrastive.NTXentLoss(0.1), contrastive.SupConLoss(0.1)
    moco = contrastive.MoCoLoss(0.1)
    return {
        "CLIPLoss": lambda: clip(u, v, 10.0),
        "SigLIPLoss": lambda: siglip(u, v, 10.0, -10.0),
        "NTXentLoss": lambda: ntxent(u, v),
        "SupConLoss": lambda: supcon(u, labels),
        "MoCoLoss": lambda: moco(u, v, queue),
    }


def measure() -> list[dict[str, Any]]:
    rows = []
    for name, call in losses().items():
        call()  # first calls import and cache; the road is that of a training step
        stops, ups = road(call)
        entries = Counter(stops)
        top, most = entries.most_common(1)[0]
        rows.append({"loss": name, "modules": len(entries), "stops": len(stops),
                     "most_entries": most, "most_entered": top, "back_up": ups,
                     "road": stops})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--verbose", action="store_true", help="print every stop")
    args = p.parse_args(argv)
    print("| loss | modules | stops | most entries (module) | back up |")
    print("|---|---|---|---|---|")
    rows = measure()
    for r in rows:
        print(f"| {r['loss']} | {r['modules']} | {r['stops']} | {r['most_entries']} "
              f"({r['most_entered']}) | {r['back_up']} |")  # fmt: skip
    if args.verbose:
        for r in rows:
            print(f"\n{r['loss']}: " + " -> ".join(r["road"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
