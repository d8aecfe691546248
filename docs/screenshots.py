"""Screenshots of the built documentation in headless Chromium, to check the look by eye.

Run by hand after building the docs (``python -m sphinx -W -b html docs docs/_build/html``):

    python docs/screenshots.py [--html docs/_build/html] [--out docs/_build/screenshots]

It needs Debian's ``chromium`` (``apt-get install chromium``). For each main page it writes a
desktop (1280 x 900) and a phone-sized (390 x 844) PNG. Chromium runs with the network off, so
what the pictures show is what a reader sees offline. Formulas are typeset by MathJax after the
page loads; the virtual-time budget gives it time to finish.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

PAGES = (
    "index",
    "getting_started",
    "which_bound",
    "migrating",
    "divergences",
    "validation",
    "large_batches",
    "api",
    "auto_examples/index",
)
SIZES = {"desktop": (1280, 900), "phone": (390, 844)}


def main() -> int:
    here = Path(__file__).resolve().parent
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--html", type=Path, default=here / "_build" / "html")
    p.add_argument("--out", type=Path, default=here / "_build" / "screenshots")
    p.add_argument("--browser", default=shutil.which("chromium") or "chromium")
    args = p.parse_args()
    if not (args.html / "index.html").exists():
        p.error(f"--html: no built documentation in {args.html} (build it first)")
    args.out.mkdir(parents=True, exist_ok=True)
    for page in PAGES:
        for label, (w, h) in SIZES.items():
            target = args.out / f"{page.replace('/', '-')}-{label}.png"
            with tempfile.TemporaryDirectory() as profile:
                subprocess.run(
                    [
                        args.browser, "--headless", "--no-sandbox", "--disable-gpu",
                        "--disable-quic", "--no-first-run", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={profile}", "--hide-scrollbars",
                        f"--window-size={w},{h}", "--virtual-time-budget=8000",
                        f"--screenshot={target}",
                        (args.html / f"{page}.html").resolve().as_uri(),
                    ],
                    check=True,
                    capture_output=True,
                )  # fmt: skip
            print(target)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
