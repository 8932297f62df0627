"""``visa-edge track``: propagate a first-frame mask through a folder of frames."""

from __future__ import annotations

import argparse
import time

from ..errors import InputError
from ..tracking.factory import TRACKERS
from .common import device_arg


def register(sub) -> None:
    p = sub.add_parser(
        "track",
        help="track a mask through a folder of frames (XMem or the weight-free flow tracker)",
        description="Track the object of --init-mask (the mask of the first frame, in file-name order) "
        "through every frame of --frames and write one 0/255 PNG per frame to --out, named after the "
        "frame (stem + .png). Prints the tracking speed.",
    )
    p.add_argument("--frames", required=True, metavar="DIR", help="folder of frames (jpg/png/bmp), in file-name order")
    p.add_argument("--init-mask", required=True, metavar="PNG",
                   help="binary mask of the first frame (0 and one foreground value)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder for the mask PNGs")
    p.add_argument("--tracker", choices=TRACKERS, default="flow",
                   help="flow: weight-free optical-flow tracker (CPU, no checkpoint); "
                   "xmem: XMem (needs --checkpoint). Default flow")
    p.add_argument("--checkpoint", metavar="PTH", help="XMem checkpoint (official XMem.pth); required with --tracker xmem")
    p.add_argument("--device", type=device_arg, help="torch device for XMem (default: cuda if available, else cpu)")
    p.set_defaults(func=run)


def make_tracker(args: argparse.Namespace):
    """The tracker named by --tracker (XMem needs --checkpoint)."""
    import torch

    from ..tracking.factory import tracker_factory

    if args.tracker == "xmem" and not args.checkpoint:
        raise InputError("--tracker xmem needs --checkpoint XMem.pth (or use --tracker flow, which needs no weights)")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return tracker_factory(args.tracker, args.checkpoint, device)()


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..io import output_dir, read_mask, read_rgb, write_mask
    from ..streaming.sources import ImageFolderSource

    paths = ImageFolderSource(args.frames).files
    out = output_dir(args.out, "--out")
    mask = read_mask(args.init_mask)
    first = read_rgb(paths[0])
    if mask.shape != first.shape[:2]:
        raise InputError(f"{args.init_mask}: mask is {mask.shape[1]}x{mask.shape[0]}, first frame {paths[0].name} "
                         f"is {first.shape[1]}x{first.shape[0]}")
    tracker = make_tracker(args)
    seconds = 0.0
    confidences = []
    for i, path in enumerate(tqdm(paths, desc=f"track ({args.tracker})", unit="frame")):
        frame = first if i == 0 else read_rgb(path)
        t0 = time.perf_counter()
        result = tracker.step(frame, mask if i == 0 else None)
        seconds += time.perf_counter() - t0
        confidences.append(result.confidence)
        write_mask(out / f"{path.stem}.png", result.mask)
    fps = len(paths) / seconds if seconds > 0 else float("inf")
    print(f"tracked {len(paths)} frames with {args.tracker}: {fps:.1f} fps (tracker only), "
          f"mean confidence {sum(confidences) / len(confidences):.2f}; masks in {out}")
    return 0
