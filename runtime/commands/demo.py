"""``visa-edge demo``: the README's main job on an embedded default (no downloads, CPU)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .common import format_timings

QUERY = "the red ball moving to the right"


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="run VISA end to end on a generated clip with a tiny random model (no downloads)",
        description="Writes a tiny random checkpoint, generates a synthetic clip, runs the reasoning "
        "step on it and writes the mask, an overlay and metrics. The model is UNTRAINED: the "
        "pipeline is real, the masks are not meaningful.",
    )
    p.add_argument("--out", default="out/demo", metavar="DIR", help="output folder (default out/demo)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from .. import synthetic
    from ..io import write_mask, write_rgb
    from ..model import VisaModel
    from ..reasoning import ReasoningStep
    from ..tiny import UNTRAINED_LABEL, write_tiny_checkpoint

    out = Path(args.out)
    print(f"[{UNTRAINED_LABEL}]")
    tiny = write_tiny_checkpoint(out / "tiny")
    video = synthetic.video(22)
    frames = video[1::2] + [video[7]]
    t0 = time.perf_counter()
    model = VisaModel.from_pretrained(tiny.checkpoint, clip=tiny.clip)
    result = ReasoningStep(model)(frames, QUERY)
    write_mask(out / "mask.png", result.mask)
    overlay = video[7].copy()
    overlay[result.mask > 0] = (0.5 * overlay[result.mask > 0] + (0, 127, 0)).astype(np.uint8)
    write_rgb(out / "overlay.png", overlay)
    metrics = {"label": UNTRAINED_LABEL, "query": QUERY, "timings_s": result.timings,
               "mask_fraction": float(result.mask.mean()), "wall_s": time.perf_counter() - t0}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print("stage timings:\n" + format_timings(result.timings))
    print(f"wrote {out / 'mask.png'}, {out / 'overlay.png'}, {out / 'metrics.json'}")
    return 0
