"""``visa-edge``: one console command, with subcommands contributed through entry points.

Each subcommand is a ``register(subparsers)`` function listed under the entry-point group
``visa_edge.commands`` (pyproject.toml). ``runtime``, ``export``, ``ros_node`` and
``benchmarks`` each register their own, so ``runtime`` never imports ``export``.

Every failure is one line on stderr and a non-zero exit code: 2 for a bad input or
argument (the project's errors, argparse), 1 for an unexpected exception, 130 for Ctrl-C.
``visa-edge --debug COMMAND ...`` also prints the traceback.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from importlib.metadata import entry_points

from .errors import VisaEdgeError

GROUP = "visa_edge.commands"


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (plus where to find help)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="visa-edge",
        description="Reasoning video object segmentation (VISA) for robots: reasoning step, "
        "trackers, engine export, streaming, ROS 2 node and benchmarks.",
    )
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=OneLineParser)
    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        try:
            register = ep.load()
        except Exception as e:  # a broken plugin must not take the other commands down with it
            register = _unavailable(ep.name, e)
        register(sub)
    return parser


def _unavailable(name: str, error: Exception):
    """A stand-in ``register`` for a command whose module failed to import: running it reports why."""
    reason = f"{type(error).__name__}: {one_line(str(error))}"

    def fail(args: argparse.Namespace) -> int:
        raise VisaEdgeError(f"command {name!r} is unavailable: its module failed to import ({reason})")

    def register(sub) -> None:
        p = sub.add_parser(name, help=f"(unavailable: {reason})", add_help=False)
        p.set_defaults(func=fail, unavailable=True)

    return register


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "unavailable", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.func(args) or 0)
    except VisaEdgeError as e:
        return _report(args, f"error: {one_line(str(e))}", 2)
    except KeyboardInterrupt:
        return _report(args, "interrupted", 130)
    except Exception as e:
        return _report(args, f"unexpected {type(e).__name__}: {one_line(str(e))} (rerun with --debug for the traceback)", 1)


def one_line(message: str) -> str:
    """A message on one line: its lines joined, indentation dropped."""
    return " ".join(line.strip() for line in message.splitlines() if line.strip()) or "(no message)"


def _report(args: argparse.Namespace, message: str, code: int) -> int:
    if args.debug:
        traceback.print_exc()
    print(f"visa-edge {args.command}: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
