"""``visa-edge tiny``: write a tiny random VISA checkpoint + CLIP folder in the real format."""

from __future__ import annotations

import argparse

from .common import int_arg


def register(sub) -> None:
    p = sub.add_parser(
        "tiny",
        help="write a tiny random checkpoint (for tests and demos; masks are meaningless)",
        description="Write OUT/visa (config.json, sentencepiece tokenizer with [SEG], bf16 weight shards "
        "with an index) and OUT/clip (CLIP vision folder) with random weights.",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--format", choices=["bin", "safetensors"], default="bin", help="weight file format (default bin)")
    p.add_argument("--shards", type=int_arg(1), default=2, help="number of weight shards (default 2)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..io import output_dir
    from ..tiny import UNTRAINED_LABEL, write_tiny_checkpoint

    output_dir(args.out, "--out")
    paths = write_tiny_checkpoint(args.out, seed=args.seed, fmt=args.format, shards=args.shards)
    print(f"checkpoint: {paths.checkpoint}\nclip:       {paths.clip}\n({UNTRAINED_LABEL})")
    return 0
