"""``visa-edge eval-revos``: J, F, J&F, A, R per type and overall, as VISA's ReVOS evaluation defines them."""

from __future__ import annotations

import argparse
import json


def register(sub) -> None:
    p = sub.add_parser(
        "eval-revos",
        help="score ReVOS-format predictions: J, F, J&F, A, R per type (referring, reasoning) and overall",
        description="Per expression J (IoU), F (DAVIS boundary F), A (pixel accuracy), R (robustness, needs "
        "--foreground), averaged over frames; then per type and overall (the mean of the two type means), "
        "in %. Masks are binarised; VISA's own script compares 0/255 predictions with 0/1 ground truth in "
        "A and R: --compat-visa reproduces its numbers.",
    )
    p.add_argument("--pred", required=True, metavar="DIR", help="predictions (OUT or OUT/Annotations of `segment`)")
    p.add_argument("--meta", required=True, metavar="JSON", help="meta_expressions.json")
    p.add_argument("--mask-dict", required=True, metavar="JSON", help="mask_dict.json (anno_id -> per-frame RLE)")
    p.add_argument("--foreground", metavar="JSON", help="mask_dict_foreground.json (for R)")
    p.add_argument("--compat-visa", action="store_true", help="reproduce VISA's 0/255-vs-0/1 quirk in A and R")
    p.add_argument("--json", metavar="OUT", help="write the summary and per-expression scores as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import revos
    from ..io import output_file

    if args.json:
        output_file(args.json, "--json")
    videos = revos.load_meta(args.meta)
    scores = revos.evaluate(args.pred, videos, args.mask_dict, args.foreground, compat_visa=args.compat_visa)
    summary = revos.summarize(scores)
    print(f"{'type':<10} {'J':>7} {'F':>7} {'J&F':>7} {'A':>7} {'R':>7}")
    for name, row in summary.items():
        cells = " ".join("    n/a" if row[k] is None else f"{row[k]:7.2f}" for k in ("J", "F", "JF", "A", "R"))
        print(f"{name:<10} {cells}")
    if args.json:
        per = [{"video": s.video, "exp_id": s.exp_id, "type_id": s.type_id, "J": s.j, "F": s.f, "JF": s.jf, "A": s.a, "R": s.r}
               for s in scores]
        with open(args.json, "w") as f:
            json.dump({"summary": summary, "expressions": per}, f, indent=2)
    return 0
