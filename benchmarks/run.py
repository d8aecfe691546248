"""The full benchmark grid of the streaming kernels: `python benchmarks/run.py`.

Runs `mibounds bench` over N in {1024, 4096, 16384, 65536}, d in {128, 512} for the one-way
and symmetric InfoNCE, NWJ, JS and f-MI (JS), and writes benchmarks/results.json and
benchmarks/results.png. On the 2-core CPU this takes a long while (N = 65536 alone is minutes
per bound); pass other `mibounds bench` options to run a subset, e.g.
`python benchmarks/run.py --sizes 1024,4096 --bounds infonce`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mibounds.cli import main

HERE = Path(__file__).resolve().parent
DEFAULTS = [
    "bench",
    "--bounds",
    "infonce,infonce-sym,nwj,js,fmi-js",
    "--sizes",
    "1024,4096,16384,65536",
    "--dims",
    "128,512",
    "--json",
    str(HERE / "results.json"),
    "--plot",
    str(HERE / "results.png"),
]

if __name__ == "__main__":
    sys.exit(main([*DEFAULTS, *sys.argv[1:]]))
