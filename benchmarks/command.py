"""``visa-edge bench``: per-stage latency per backend, streaming staleness, memory and quality in one report."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from .models import CONFIGS
from .multi_query import MULTI_QUERY
from .quality import DAVIS_DEFAULT
from .stages import BACKENDS, STAGES
from .stream_bench import STREAM_BENCHES


def register(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmark every stage on every backend, streaming staleness, memory and tracker quality",
        description="Measures, on every backend available here (PyTorch eager, PyTorch optimized, ONNX Runtime, "
        "TensorRT), each stage of the pipeline (CLIP+clustering per frame, LLM prefill for a full window, [SEG] head, "
        "SAM encoder, mask decoder, tracker step) with warm-up and p50/p90/p99 over repeats (interleaved across backends "
        "where memory allows); then streams "
        "a synthetic clip at camera rate (output fps, staleness, reasoning latency, anchor age, drops), records "
        "memory, and scores the weight-free tracker on DAVIS 2016 when present. Writes OUT/bench.json, OUT/bench.md, "
        "OUT/latency.png and OUT/staleness.png. Without checkpoints the weights are random: latency does not depend "
        "on weight values (subnormal floats are flushed to zero, see --keep-denormals).",
    )
    p.add_argument("--config", choices=(*CONFIGS, *STREAM_BENCHES, MULTI_QUERY), default="tiny",
                   help="tiny: the tiny checkpoint (CPU-friendly, CI smoke); visa-7b: real-size CLIP ViT-L/14, "
                   "Vicuna-7B in NF4 (CUDA only), SAM ViT-H, XMem at 480p; stream-oracle: latency compensation of "
                   "the streaming runtime with an oracle reasoner on DAVIS sequences paced in real time (--davis, "
                   "--sequences, --latencies, --rate, --frames); stream-soak: 10,000 synthetic frames with a reasoner "
                   "that fails every 7th step and hangs once (--frames); multi-query: reasoning-step latency for 1, 2, 4 and 8 "
                   "queries in one step vs one step per query, mid-size LLaMA (--quick, --device, --repeats, --warmup) "
                   "(default tiny)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--quick", action="store_true",
                   help="CI smoke: one warm-up and one timed call per backend, a 3 s stream at 5 fps, DAVIS on one "
                   "sequence x 6 frames")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--backends", metavar="NAMES", help=f"comma-separated subset of {','.join(BACKENDS)} (default all)")
    p.add_argument("--stages", metavar="NAMES", help=f"comma-separated subset of {','.join(STAGES)} (default all)")
    p.add_argument("--repeats", type=int, help="timed calls per backend and stage (default: 20 for tiny, 5 for visa-7b)")
    p.add_argument("--warmup", type=int, help="untimed calls per backend before timing (default: 2 for tiny, 1 for visa-7b)")
    p.add_argument("--budget-s", type=float, help="stop timing a stage after this many seconds, once 5 (visa-7b: 3) calls are done "
                   "(default: 8 for tiny, 60 for visa-7b)")
    p.add_argument("--rate", type=float, help="camera rate of the streaming run, fps (default 15; 5 with --quick)")
    p.add_argument("--stream-seconds", type=float, help="length of the streaming run, s (default 20)")
    p.add_argument("--no-stream", action="store_true", help="skip the streaming run")
    p.add_argument("--no-quality", action="store_true", help="skip the DAVIS 2016 quality run")
    p.add_argument("--davis", type=Path, default=DAVIS_DEFAULT, metavar="DIR",
                   help="DAVIS 2016 folder (JPEGImages/480p, Annotations/480p); skipped with a note when absent")
    p.add_argument("--keep-denormals", action="store_true",
                   help="do not flush subnormal floats to zero on the CPU (the runtime's default; random weights then "
                   "produce subnormal activations that slow fp32 math, so latency reflects the random values)")
    p.add_argument("--checkpoint", type=Path, metavar="DIR", help="visa-7b: a VISA checkpoint instead of random weights")
    p.add_argument("--clip", type=Path, metavar="DIR", help="visa-7b: the CLIP ViT-L/14 folder for --checkpoint")
    p.add_argument("--xmem", type=Path, metavar="PTH", help="visa-7b: XMem.pth instead of random XMem weights")
    p.add_argument("--sequences", metavar="NAMES", help="stream-oracle: comma-separated sequences (default all)")
    p.add_argument("--latencies", metavar="SECONDS", help="stream-oracle: comma-separated oracle latencies (default 0.5,1,2)")
    p.add_argument("--frames", type=int, help="stream-oracle: frames per sequence (default all); stream-soak: frames "
                   "(default 10000)")
    p.add_argument("--unbridged", action="store_true", help="stream-oracle: also run the runtime with every catch-up "
                   "frame a full step (no bridging), side by side in the same run (policy runtime_unbridged)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.config == MULTI_QUERY:
        from .multi_query import run_multi_query_bench

        return run_multi_query_bench(args)
    from .report import write_report
    from .stream_bench import run_stream_bench
    from .suite import BenchOptions, parse_names, run_benchmark

    if args.config in STREAM_BENCHES:
        try:
            return run_stream_bench(args)
        except ValueError as e:
            print(f"visa-edge bench: error: {e}", file=sys.stderr)
            return 2

    try:
        options = BenchOptions(
            config=args.config, quick=args.quick, device=args.device,
            backends=parse_names(args.backends, BACKENDS, "--backends"), stages=parse_names(args.stages, STAGES, "--stages"),
            repeats=args.repeats, warmup=args.warmup, budget_s=args.budget_s, rate_fps=args.rate,
            stream_seconds=args.stream_seconds, stream=not args.no_stream, quality=not args.no_quality, davis=args.davis,
            flush_denormals=not args.keep_denormals, checkpoint=args.checkpoint, clip=args.clip, xmem=args.xmem,
        )
    except ValueError as e:
        print(f"visa-edge bench: error: {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    result = run_benchmark(options)
    paths = write_report(result, Path(args.out))
    print(f"wrote {', '.join(str(p) for p in paths.values())} ({time.perf_counter() - t0:.0f} s)")
    return 0
