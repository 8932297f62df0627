"""``visa-edge demo``: the tiny trained VISA on a generated clip, two queries in turn (no downloads, CPU)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

TINY_VISA = Path(__file__).resolve().parents[1] / "assets" / "tiny_visa"  # embedded model: visa/ + clip/
DEMO_SEED = 1_000_007  # a scene the model never saw in training
DEMO_KINDS = ("colour_shape", "ordering", "motion")  # preferred query kinds, in order


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="stream a generated clip through the tiny trained VISA + the weight-free tracker, two queries in turn",
        description="Generates a clip of coloured shapes (runtime.scenes) and streams it at camera rate "
        "through the embedded tiny VISA (trained on such scenes; see runtime/assets/tiny_visa/README.md) "
        "and the weight-free tracker. The query switches halfway through the clip. Writes OUT/overlay.mp4, "
        "OUT/masks/, OUT/frames.jsonl and OUT/summary.json with J and F of each query's half against the "
        "generated ground truth.",
    )
    p.add_argument("--out", default="out/demo", metavar="DIR", help="output folder (default out/demo)")
    p.add_argument("--frames", type=int, default=60, help="clip length (default 60: two queries x 30 frames)")
    p.add_argument("--rate", type=float, default=4.0,
                   help="camera rate in fps (default 4: a reasoning step takes 1-3 s on 2 CPU cores)")
    p.add_argument("--seed", type=int, default=DEMO_SEED, help=f"scene seed (default {DEMO_SEED}, held out from training)")
    p.add_argument("--model", default=str(TINY_VISA), metavar="DIR",
                   help="folder with visa/ and clip/ (default: the embedded tiny model)")
    p.set_defaults(func=run)


def demo_queries(scene, switch: int) -> tuple:
    """Two queries of the preferred kinds whose answers differ at the switch frame."""
    from ..scenes import queries

    ranked = sorted(queries(scene), key=lambda q: DEMO_KINDS.index(q.kind) if q.kind in DEMO_KINDS else len(DEMO_KINDS))
    first = ranked[0]
    second = next(q for q in ranked[1:] if q.targets[switch] != first.targets[switch] and q.targets[switch] >= 0)
    return first, second


class SwitchQuery:
    """A frame source that replaces the runtime's query when frame ``at`` arrives."""

    live = False
    dropped = 0

    def __init__(self, source, runtime, at: int, query: str):
        self.source, self.runtime, self.at, self.query = source, runtime, at, query

    def __iter__(self) -> Iterator:
        for frame in self.source:
            if frame.index == self.at:
                self.runtime.set_query(self.query)
            yield frame

    def close(self) -> None:
        self.source.close()


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from .. import scenes
    from ..errors import InputError
    from ..io import output_dir, read_mask
    from ..streaming import Frame, StreamConfig
    from ..streaming.build import PipelineConfig, build_runtime
    from ..streaming.sources import FrameListSource, Paced
    from ..vos_metrics import boundary_f, jaccard
    from .run import stream_to_folder

    model = Path(args.model)
    if not (model / "visa" / "config.json").is_file() or not (model / "clip" / "config.json").is_file():
        raise InputError(f"--model {model}: expected visa/config.json and clip/config.json inside (a train-tiny output)")
    if args.frames < 8:
        raise InputError(f"--frames {args.frames}: expected at least 8")
    out = output_dir(args.out, "--out")
    scene = scenes.generate(args.seed, args.frames)
    switch = args.frames // 2
    first, second = demo_queries(scene, switch)
    cfg = PipelineConfig(checkpoint=str(model / "visa"), clip=str(model / "clip"),
                         stream=StreamConfig(window=12, references=4, every_frames=6))
    runtime = build_runtime(cfg, query=first.text)
    clip = [Frame(i, i / args.rate, f, f"{i:05d}") for i, f in enumerate(scene.frames)]
    runtime.reasoner(clip[:1], first.text)  # warm up: a first PyTorch call is several times slower than the next
    source = SwitchQuery(Paced(FrameListSource(clip, args.rate), args.rate), runtime, switch, second.text)
    print(f"streaming {args.frames} frames at {args.rate:g} fps: {first.text!r}, then {second.text!r} from frame {switch}")
    code = stream_to_folder(runtime, source, out, fps=args.rate, extra_summary={"model": str(model), "seed": args.seed})
    figures = {}
    for query, frames in ((first, range(switch)), (second, range(switch, args.frames))):
        masks = [read_mask(out / "masks" / f"{t:05d}.png") for t in frames]
        truth = [scene.target_mask(query, t) for t in frames]
        figures[query.text] = {"frames": [frames.start, frames.stop - 1],
                               "J": float(np.mean([jaccard(m, g) for m, g in zip(masks, truth)])),
                               "F": float(np.mean([boundary_f(m, g) for m, g in zip(masks, truth)]))}
        print(f"{query.text!r} (frames {frames.start}-{frames.stop - 1}): J {figures[query.text]['J']:.3f} "
              f"F {figures[query.text]['F']:.3f} against the generated ground truth (includes frames before "
              "its first reasoning result)")
    summary = json.loads((out / "summary.json").read_text())
    summary["queries"] = figures
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return code
