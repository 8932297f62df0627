"""``visa-edge demo``: the README's main job on an embedded default (no downloads, CPU, < 1 minute)."""

from __future__ import annotations

import argparse
from pathlib import Path

QUERY = "the red ball moving to the right"


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="stream a generated clip through VISA + the weight-free tracker with a tiny random model",
        description="Writes a tiny random VISA checkpoint, generates a synthetic clip (a red ball moving over "
        "a textured background) and streams it at camera rate: the weight-free tracker publishes a mask "
        "per frame while the reasoning step reruns asynchronously on a sliding window. Writes "
        "OUT/overlay.mp4, OUT/masks/, OUT/frames.jsonl and OUT/summary.json. The model is UNTRAINED: "
        "the pipeline is real, its masks are not meaningful.",
    )
    p.add_argument("--out", default="out/demo", metavar="DIR", help="output folder (default out/demo)")
    p.add_argument("--frames", type=int, default=60, help="clip length (default 60)")
    p.add_argument("--rate", type=float, default=10.0, help="camera rate in fps (default 10: 2 CPU cores track and reason at once)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import synthetic
    from ..model import VisaModel
    from ..reasoning import ReasoningStep
    from ..streaming import Frame, StreamConfig, StreamingRuntime
    from ..streaming.reasoner import VisaReasoner
    from ..streaming.sources import FrameListSource, Paced
    from ..tiny import UNTRAINED_LABEL, write_tiny_checkpoint
    from ..tracking.factory import tracker_factory
    from .run import stream_to_folder

    out = Path(args.out)
    print(f"[{UNTRAINED_LABEL}]")
    tiny = write_tiny_checkpoint(out / "tiny")
    clip = [Frame(i, i / args.rate, synthetic.frame(0.4 * i), f"{i:05d}") for i in range(args.frames)]
    model = VisaModel.from_pretrained(tiny.checkpoint, clip=tiny.clip)
    runtime = StreamingRuntime(VisaReasoner(ReasoningStep(model)), tracker_factory("flow"),
                               StreamConfig(window=22, every_frames=20), query=QUERY)
    print(f"streaming {args.frames} frames at {args.rate:g} fps, query {QUERY!r}")
    return stream_to_folder(runtime, Paced(FrameListSource(clip, args.rate), args.rate), out, fps=args.rate,
                            extra_summary={"label": UNTRAINED_LABEL, "query": QUERY})
