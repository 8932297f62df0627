"""``visa-edge train-tiny``: train the tiny VISA on procedural scenes and report its held-out figures."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "train-tiny",
        help="train the tiny VISA on generated scenes (the demo's embedded model; CPU, deterministic)",
        description="Writes a tiny random checkpoint to OUT (runtime.tiny's format), trains it on procedural "
        "scenes (runtime.scenes) and overwrites its weights: OUT/visa, OUT/clip, OUT/train_log.jsonl, "
        "OUT/train_config.json, then OUT/figures.json with the held-out reasoning J per query kind.",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per stage process, fixed for bitwise reproducibility (default 1)")
    p.add_argument("--workers", type=int, default=2, choices=(1, 2),
                   help="processes: 2 runs the decoder and reasoner stages in parallel, 1 one after the other "
                   "(same weights either way; default 2)")
    p.add_argument("--eval-scenes", type=int, default=8, help="held-out scenes for the figures (default 8; 0: skip)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from visa_edge.runtime.model import VisaModel
    from visa_edge.runtime.reasoning import ReasoningStep

    from .evaluate import reasoning_figures
    from .train import TrainConfig, train

    cfg = replace(TrainConfig(), seed=args.seed, threads=args.threads)
    t0 = time.perf_counter()
    ckpt = train(cfg, args.out, workers=args.workers)
    train_s = time.perf_counter() - t0
    figures = {"train_seconds": round(train_s, 1)}
    if args.eval_scenes:
        step = ReasoningStep(VisaModel.from_pretrained(ckpt.checkpoint, clip=ckpt.clip))
        result = reasoning_figures(step, args.eval_scenes)
        figures.update(mean_j=round(result.mean, 4), per_kind={k: round(v, 4) for k, v in result.per_kind.items()},
                       counts=result.counts, eval_scenes=args.eval_scenes)
        for kind, j in result.per_kind.items():
            print(f"{kind:>14}: J {j:.3f} over {result.counts[kind]} queries")
        print(f"{'all':>14}: J {result.mean:.3f}")
    (Path(args.out) / "figures.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(f"trained in {train_s:.0f} s; wrote {args.out}")
    return 0
