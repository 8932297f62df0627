"""CLI arguments for the streaming pipeline (``run``) and the offline mode (``segment``)."""

from __future__ import annotations

import argparse

from ..streaming.build import PipelineConfig
from ..streaming.scheduler import StreamParameter, stream_config_from, stream_parameters
from ..tracking.factory import TRACKERS
from .common import add_model_args, float_arg, int_arg


def add_pipeline_args(p: argparse.ArgumentParser, model_required: bool = True) -> None:
    add_model_args(p, required=model_required)
    g = p.add_argument_group("engines and tracker")
    g.add_argument("--engines", metavar="DIR", help="engine folder from `visa-edge export` (its networks replace PyTorch)")
    g.add_argument("--backend", choices=["onnxruntime", "tensorrt"], help="engine backend (default: what --engines was built for)")
    g.add_argument("--tracker", choices=TRACKERS, default="flow", help="flow: weight-free (default); xmem: needs --xmem")
    g.add_argument("--xmem", metavar="PTH", help="XMem.pth for --tracker xmem")


def option_name(name: str) -> str:
    """The CLI option of a StreamConfig field: ``every_frames`` -> ``--every-frames``."""
    return "--" + name.replace("_", "-")


def add_stream_args(p: argparse.ArgumentParser) -> None:
    """One option per StreamConfig field, generated from its type, default and help text."""
    g = p.add_argument_group("scheduling")
    for param in stream_parameters():
        if param.type is bool:
            action = "store_false" if param.default else "store_true"
            g.add_argument(option_name(param.name), dest=param.name, action=action, help=param.help)
        else:
            g.add_argument(option_name(param.name), dest=param.name, type=_parser(param), default=param.default,
                           metavar=param.type.__name__.upper(), help=f"{param.help} (default {param.default})")


def _parser(param: StreamParameter):
    """argparse type of a numeric parameter: its type and bounds (a None-able one also takes 0: off)."""
    lo = 0 if param.optional or param.lo is None else param.lo
    if param.type is int:
        return int_arg(int(lo))
    return float_arg(lo, float("inf") if param.hi is None else param.hi)


def pipeline_config(args: argparse.Namespace) -> PipelineConfig:
    stream = stream_config_from({p.name: getattr(args, p.name) for p in stream_parameters()})
    return PipelineConfig(
        checkpoint=args.checkpoint, clip=args.clip, engines=args.engines, backend=args.backend,
        quantization=None if args.quantization == "none" else args.quantization, device=args.device, dtype=args.dtype,
        sam_checkpoint=args.sam_checkpoint, tracker=args.tracker, xmem=args.xmem, stream=stream,
    )
