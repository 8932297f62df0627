"""``visa-edge eval-vos``: DAVIS J, F and J&F of predicted masks against annotations."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "eval-vos",
        help="score predicted masks against annotations with the DAVIS metrics (J, F, J&F)",
        description="Compare prediction PNGs with annotation PNGs, frames matched by file name. --gt is "
        "one sequence (a folder of PNGs) or a folder of sequence folders; --pred mirrors it. Prints J "
        "(region IoU), F (boundary F-measure) and J&F per sequence and their mean over sequences.",
    )
    p.add_argument("--pred", required=True, metavar="DIR", help="predicted masks (0/255 PNGs)")
    p.add_argument("--gt", required=True, metavar="DIR", help="annotations (binary PNGs)")
    p.add_argument("--json", metavar="OUT", help="also write the scores (per sequence, per frame, mean) as JSON")
    p.add_argument("--skip-first", action=argparse.BooleanOptionalAction, default=True,
                   help="leave out each sequence's first frame, the given mask of the semi-supervised "
                   "protocol (default: skip)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..io import output_file
    from ..vos_metrics import evaluate_folders

    if args.json:
        output_file(args.json, "--json")
    score = evaluate_folders(args.pred, args.gt, skip_first=args.skip_first)
    print(score.table())
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        report = {**score.to_dict(per_frame=True), "skip_first": args.skip_first}
        out.write_text(json.dumps(report, indent=2))
        print(f"wrote {out}")
    return 0
