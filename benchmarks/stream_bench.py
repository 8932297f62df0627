"""``visa-edge bench --config stream-oracle | stream-soak``: the streaming runtime's own benchmarks.

Both print a Markdown table and write OUT/<config>.json and OUT/<config>.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

STREAM_BENCHES = ("stream-oracle", "stream-soak")


def machine_note() -> str:
    """The machine and its load, for the report (figures on a shared machine are inflated)."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
            f"{'n/a' if load is None else ' '.join(f'{x:.2f}' for x in load)}")


def parse_floats(text: str | None, what: str) -> tuple[float, ...] | None:
    if not text:
        return None
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"{what}: {text!r} is not a comma-separated list of numbers") from None


def run_stream_bench(args: argparse.Namespace) -> int:
    """Run the streaming benchmark ``args.config``; write its JSON and Markdown to ``args.out``."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    note = machine_note()

    def log(message: str) -> None:
        print(f"bench: {message}", file=sys.stderr, flush=True)

    if args.config == "stream-oracle":
        from .stream_oracle import OracleSettings, measure, table

        if not Path(args.davis).is_dir():
            print(f"visa-edge bench: error: {args.davis}: DAVIS folder not found (--davis)", file=sys.stderr)
            return 2
        kw = {}
        latencies = parse_floats(args.latencies, "--latencies")
        if latencies:
            kw["latencies"] = latencies
        if args.sequences:
            kw["sequences"] = tuple(s.strip() for s in args.sequences.split(",") if s.strip())
        if args.rate:
            kw["fps"] = args.rate
        if args.frames:
            kw["max_frames"] = args.frames
        if args.unbridged:
            kw["unbridged"] = True
        result = measure(OracleSettings(Path(args.davis), **kw), log)
        text = table(result)
        header = f"Oracle latency compensation ({result['label']}).\nMachine: {note} (at the end of the run)."
    else:
        from .stream_soak import SoakSettings, soak, table

        settings = SoakSettings(frames=args.frames) if args.frames else SoakSettings()
        result = soak(settings, log)
        text = table(result)
        header = f"Streaming soak.\nMachine: {note} (at the end of the run)."
    result["machine"] = note
    (out / f"{args.config}.json").write_text(json.dumps(result, indent=2, default=str))
    (out / f"{args.config}.md").write_text(header + "\n\n" + text + "\n")
    print(header + "\n\n" + text)
    if args.config == "stream-soak" and not all(result["checks"].values()):
        return 1
    return 0
