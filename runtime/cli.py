"""``visa-edge``: one console command, with subcommands contributed through entry points.

Each subcommand is a ``register(subparsers)`` function listed under the entry-point group
``visa_edge.commands`` (pyproject.toml). ``runtime``, ``export``, ``ros_node`` and
``benchmarks`` each register their own, so ``runtime`` never imports ``export``.
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import entry_points

from .errors import VisaEdgeError

GROUP = "visa_edge.commands"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="visa-edge",
        description="Reasoning video object segmentation (VISA) for robots: reasoning step, "
        "trackers, engine export, streaming, ROS 2 node and benchmarks.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        ep.load()(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except VisaEdgeError as e:
        print(f"visa-edge {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"visa-edge {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
