"""``visa-edge run``: stream a source, publish a mask per frame, rerun reasoning on a sliding window."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..errors import InputError, VisaEdgeError
from .common import float_arg
from .stream_args import add_pipeline_args, add_stream_args, pipeline_config


def register(sub) -> None:
    p = sub.add_parser(
        "run",
        help="segment a video/camera/rosbag stream for one or several queries, one mask per frame",
        description="Streams SOURCE through the tracker at its frame rate while VISA's reasoning step "
        "reruns asynchronously on a sliding window; writes OUT/masks/<frame>.png (0/255; several queries: "
        "OUT/masks/<query id>/<frame>.png), OUT/labels/<frame>.png (label image: 0 background, k = query id k), "
        "OUT/queries.json (ids to queries), OUT/overlay.mp4, OUT/frames.jsonl (per-frame metadata) and "
        "OUT/summary.json.",
    )
    add_pipeline_args(p, model_required=False)
    add_stream_args(p)
    r = p.add_argument_group("remote reasoning")
    r.add_argument("--reasoner", metavar="URL", help="reason on a `visa-edge serve` server (http://HOST:PORT) "
                   "instead of loading the model here; --checkpoint/--clip are then not needed")
    r.add_argument("--reasoner-token-file", metavar="F", help="file holding the server's shared token")
    g = p.add_argument_group("input and output")
    g.add_argument("--source", required=True,
                   help="image folder, video file, rosbag2 (.mcap/.db3/folder) or camera:N")
    g.add_argument("--topic", help="image topic of a rosbag with several")
    g.add_argument("--rate", type=float_arg(0, open_lo=True), default=None,
                   help="play recorded sources at this camera rate in fps, as a live camera: frames the runtime "
                   "cannot publish within --max-delay-periods are dropped (default: as fast as possible, none "
                   "dropped; live sources always run in real time)")
    g.add_argument("--query", required=True, action="append",
                   help="referring or reasoning expression; repeat for several queries (ids 1, 2, ... in order)")
    g.add_argument("--out", required=True, metavar="DIR", help="output folder")
    g.add_argument("--no-masks", action="store_true", help="do not write mask PNGs")
    g.add_argument("--no-overlay", action="store_true", help="do not write overlay.mp4")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..io import output_dir
    from ..streaming.build import build_runtime
    from ..streaming.sources import Paced, open_source

    out = output_dir(args.out, "--out")
    source = open_source(args.source, topic=args.topic)
    if args.rate:
        source = Paced(source, args.rate)
    runtime = build_runtime(remote_config(args), query=args.query[0] if len(args.query) == 1 else args.query)
    return stream_to_folder(runtime, source, out, masks=not args.no_masks, video=not args.no_overlay,
                            fps=args.rate or getattr(source, "fps", 30.0), live=bool(args.rate) or source.live)


def remote_config(args: argparse.Namespace):
    """The pipeline config with the remote reasoner of ``--reasoner``; InputError when neither it nor a model is given."""
    import dataclasses

    from ..remote_reasoner import read_token

    cfg = pipeline_config(args)
    if not args.reasoner:
        if not (args.checkpoint and args.clip):
            raise InputError("--checkpoint and --clip are required unless --reasoner URL is given")
        return cfg
    token = read_token(args.reasoner_token_file) if args.reasoner_token_file else None
    return dataclasses.replace(cfg, reasoner_url=args.reasoner, reasoner_token=token)


def stream_to_folder(runtime, source, out: Path, masks: bool = True, video: bool = True, fps: float = 30.0,
                     extra_summary: dict | None = None, live: bool | None = None) -> int:
    """Run ``runtime`` over ``source`` with the standard sinks and a live progress line; writes summary.json.

    ``live``: late frames may be dropped (default: the source's ``live``); a dropped frame keeps
    its line in frames.jsonl (mask_source "dropped") and its PNG (the last published mask).
    With several queries, masks go to ``masks/<query id>/``; ``labels/`` and ``queries.json`` always.

    A run in which every reasoning step failed raises VisaEdgeError (after writing the summary):
    its masks come from no reasoning at all.
    """
    from tqdm import tqdm

    from ..streaming.sinks import JsonlSink, LabelSink, OverlayVideoSink, PngSink

    sinks = [JsonlSink(out / "frames.jsonl"), LabelSink(out / "labels")]
    if masks:
        sinks.append(PngSink(out / "masks", per_query=len(runtime.queries) > 1))
    if video:
        sinks.append(OverlayVideoSink(out / "overlay.mp4", fps=fps))
    bar = tqdm(unit="frame", desc="streaming")
    start = time.monotonic()
    staleness = []

    def progress(result):
        staleness.append(result.ready - result.arrival)
        stats = runtime.stats
        last = stats.reasoning_s[-1] if stats.reasoning_s else None
        bar.set_postfix(fps=f"{result.frame.index / max(time.monotonic() - start, 1e-9):.1f}",
                        reason_s="-" if last is None else f"{last:.2f}", anchor_age=result.anchor_age,
                        dropped=stats.dropped + stats.dropped_late, refresh=False)
        bar.update(1)

    try:
        stats = runtime.run(source, sinks, on_result=progress, live=live)
    finally:
        runtime.close()
        source.close()
        for sink in sinks:
            sink.close()
        bar.close()
    wall = time.monotonic() - start
    summary = {"frames": stats.frames, "wall_s": wall, "output_fps": stats.frames / wall if wall > 0 else None,
               "staleness_ms_p50": 1000 * _pct(staleness, 50), "staleness_ms_p99": 1000 * _pct(staleness, 99),
               "stats": stats.snapshot(), **(extra_summary or {})}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    (out / "queries.json").write_text(json.dumps(runtime.query_table(), indent=2))
    print(f"{stats.frames} frames in {wall:.1f} s ({summary['output_fps']:.1f} fps, {stats.dropped_late} dropped late); "
          f"reasoning steps {stats.reasoning_completed} done / {stats.reasoning_failed} failed; wrote {out}")
    if stats.last_error:
        print(f"last reasoning error: {stats.last_error.splitlines()[0]}")
    if stats.reasoning_failed and not stats.reasoning_completed:
        raise VisaEdgeError(f"{out}: all {stats.reasoning_failed} reasoning steps failed; last error: "
                            f"{(stats.last_error or 'unknown').splitlines()[0]}")
    return 0


def _pct(values, q):
    import numpy as np

    return float(np.percentile(values, q)) if values else float("nan")
