"""The ``mibounds`` console script."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mibounds._version import __version__
from mibounds.divergences import list_divergences


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mibounds",
        description="Differentiable bounds on mutual information: tools and validation.",
    )
    parser.add_argument("--version", action="version", version=f"mibounds {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p_div = sub.add_parser("divergences", help="list the registered f-divergences")
    p_div.set_defaults(func=_cmd_divergences)
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
