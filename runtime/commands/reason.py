"""``visa-edge reason``: one reasoning step on image files, writing the target-frame mask."""

from __future__ import annotations

import argparse
import time

from .common import add_model_args, format_timings, load_model


def register(sub) -> None:
    p = sub.add_parser(
        "reason",
        help="segment the target frame for a query (one VISA reasoning step)",
        description="Run one VISA reasoning step: the last --frames file is the target frame, the ones "
        "before it are the reference frames in temporal order (1 to 11; a single file is both). Writes "
        "the target-frame mask as a 0/255 PNG and prints the time of each stage.",
    )
    add_model_args(p)
    p.add_argument("--frames", nargs="+", required=True, metavar="IMG", help="REF1 ... REFn TARGET image files")
    p.add_argument("--query", required=True, help='referring or reasoning expression, e.g. "the car about to turn"')
    p.add_argument("--out", required=True, metavar="PNG", help="output mask (0/255 PNG at the target frame size)")
    p.add_argument("--logits", metavar="NPY", help="also save the float32 mask logits [H,W] as .npy")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..io import check_output_file, output_file, read_rgb, write_mask
    from ..reasoning import ReasoningStep

    check_output_file(args.out, "--out mask")
    if args.logits:
        output_file(args.logits, "--logits .npy")
    frames = [read_rgb(f) for f in args.frames]
    t0 = time.perf_counter()
    model = load_model(args)
    print(f"loaded {args.checkpoint} in {time.perf_counter() - t0:.1f} s ({args.device}, {args.dtype}, LLM {args.quantization})")
    result = ReasoningStep(model)(frames, args.query)
    write_mask(args.out, result.mask)
    if args.logits:
        np.save(args.logits, result.logits)
    print(f"mask: {args.out} ({100 * result.mask.mean():.1f}% of pixels, predicted IoU {result.iou:.3f})")
    print("stage timings:\n" + format_timings(result.timings))
    return 0
