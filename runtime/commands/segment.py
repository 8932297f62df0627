"""``visa-edge segment``: VISA's offline evaluation pipeline on a ReVOS/MeViS-format dataset."""

from __future__ import annotations

import argparse

from .stream_args import add_pipeline_args


def register(sub) -> None:
    p = sub.add_parser(
        "segment",
        help="offline: one reasoning step per expression + tracking both ways (ReVOS/MeViS layout)",
        description="For every expression of META: one reasoning step on the target frame (from --tfs, "
        "VISA's text-guided frame sampler JSON with 'tp' per expression; default the middle frame) with "
        "VISA's reference sampling, then tracking forward and backward from it. Writes "
        "OUT/Annotations/{video}/{exp_id}/{frame}.png. Resumable: complete expressions are skipped.",
    )
    add_pipeline_args(p)
    p.add_argument("--dataset", required=True, metavar="DIR", help="dataset folder with JPEGImages/{video}/{frame}.jpg")
    p.add_argument("--meta", required=True, metavar="JSON", help="meta_expressions.json")
    p.add_argument("--tfs", metavar="JSON", help="target-frame JSON (meta format with 'tp' in [0,1] per expression)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .. import revos
    from ..io import output_dir
    from ..backends.loading import load_engines
    from ..reasoning import ReasoningStep
    from ..streaming.visa_reasoner import VisaReasoner
    from ..tracking.factory import tracker_factory
    from .common import load_model

    output_dir(args.out, "--out")
    videos = revos.load_meta(args.meta, args.tfs)
    model = load_model(args)
    sources = {"checkpoint": args.checkpoint, "clip": args.clip, "sam_checkpoint": args.sam_checkpoint, "xmem": args.xmem}
    engines = load_engines(args.engines, backend=args.backend, device=args.device, sources=sources) if args.engines else {}
    step = ReasoningStep(model, engines)
    trackers = tracker_factory(args.tracker, args.xmem, args.device, engines)
    total = sum(len(v.expressions) for v in videos)
    with tqdm(total=total, unit="expr", desc="segment") as bar:
        counts = revos.segment(args.dataset, videos, args.out, VisaReasoner(step), trackers, progress=lambda e: bar.update(1))
        bar.update(counts["skipped"])
    print(f"segmented {counts['segmented']} expressions, skipped {counts['skipped']} already complete; wrote {args.out}/Annotations")
    return 0
