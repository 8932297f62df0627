"""CLI arguments for the streaming pipeline (``run``) and the offline mode (``segment``)."""

from __future__ import annotations

import argparse

from ..streaming.build import PipelineConfig
from ..streaming.scheduler import StreamConfig
from ..tracking.factory import TRACKERS
from .common import add_model_args, float_arg, int_arg


def add_pipeline_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    g = p.add_argument_group("engines and tracker")
    g.add_argument("--engines", metavar="DIR", help="engine folder from `visa-edge export` (its networks replace PyTorch)")
    g.add_argument("--backend", choices=["onnxruntime", "tensorrt"], help="engine backend (default: what --engines was built for)")
    g.add_argument("--tracker", choices=TRACKERS, default="flow", help="flow: weight-free (default); xmem: needs --xmem")
    g.add_argument("--xmem", metavar="PTH", help="XMem.pth for --tracker xmem")


def add_stream_args(p: argparse.ArgumentParser) -> None:
    d = StreamConfig()
    g = p.add_argument_group("scheduling")
    g.add_argument("--window", type=int_arg(1), default=d.window, help=f"frames in the reasoning window (default {d.window})")
    g.add_argument("--references", type=int_arg(1), default=d.references, help=f"reference frames from the window, 1..11 (default {d.references})")
    g.add_argument("--every-frames", type=int_arg(0), default=d.every_frames, help=f"rerun reasoning every K frames, 0 = off (default {d.every_frames})")
    g.add_argument("--every-seconds", type=float_arg(0), default=0.0, help="rerun reasoning every T seconds, 0 = off (default off)")
    g.add_argument("--min-confidence", type=float_arg(0, 1), default=d.min_confidence,
                   help=f"rerun reasoning when tracker confidence stays below this (default {d.min_confidence})")
    g.add_argument("--buffer-frames", type=int_arg(1), default=d.buffer_frames, help=f"frames kept for catch-up (default {d.buffer_frames})")
    g.add_argument("--blocking", action="store_true",
                   help="wait for every reasoning result before the next frame (deterministic, not real-time)")


def pipeline_config(args: argparse.Namespace) -> PipelineConfig:
    stream = StreamConfig(
        window=args.window,
        references=args.references,
        every_frames=args.every_frames or None,
        every_seconds=args.every_seconds or None,
        min_confidence=args.min_confidence,
        buffer_frames=args.buffer_frames,
        blocking=args.blocking,
    )
    return PipelineConfig(
        checkpoint=args.checkpoint, clip=args.clip, engines=args.engines, backend=args.backend,
        quantization=None if args.quantization == "none" else args.quantization, device=args.device, dtype=args.dtype,
        sam_checkpoint=args.sam_checkpoint, tracker=args.tracker, xmem=args.xmem, stream=stream,
    )
