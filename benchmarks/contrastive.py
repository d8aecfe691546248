"""The drop-in contrastive losses against plain dense implementations of the same losses.

`python benchmarks/contrastive.py` runs `mibounds bench` for CLIP, SigLIP, NT-Xent, SupCon and
MoCo at N = 4096 and 16384 embeddings, d = 128 (float32, CPU unless `--device cuda`), and
writes benchmarks/contrastive.json. Each configuration runs in its own process; the table
reports time and peak extra memory as ratios within the one run (the machine is noisy).
Extra `mibounds bench` options are passed through, e.g. `--sizes 4096`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mibounds.cli import main

HERE = Path(__file__).resolve().parent
DEFAULTS = [
    "bench",
    "--bounds",
    "clip,siglip,ntxent,supcon,moco",
    "--sizes",
    "4096,16384",
    "--dims",
    "128",
    "--methods",
    "bare,naive,streaming",
    "--json",
    str(HERE / "contrastive.json"),
]

if __name__ == "__main__":
    sys.exit(main([*DEFAULTS, *sys.argv[1:]]))
