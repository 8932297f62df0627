"""Arguments shared by several subcommands (model location, device, precision)."""

from __future__ import annotations

import argparse
import math

import torch

from ..visa_config import DTYPES
from ..errors import InputError
from ..validate import parse_device


def device_arg(spec: str) -> str:
    """argparse type of ``--device``: a device that exists here (kept as the string given)."""
    try:
        parse_device(spec)
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from e
    return spec


def int_arg(lo: int):
    """argparse type: an integer >= ``lo``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"{value}: expected an integer >= {lo}")
        return value

    return parse


def float_arg(lo: float, hi: float = float("inf"), open_lo: bool = False):
    """argparse type: a finite number in ``[lo, hi]`` (``(lo, hi]`` if ``open_lo``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or not (lo < value if open_lo else lo <= value) or value > hi:
            low = f"> {lo}" if open_lo else f">= {lo}"
            raise argparse.ArgumentTypeError(f"{value}: expected a number {low}" + (f" and <= {hi}" if hi != float("inf") else ""))
        return value

    return parse

def add_model_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--checkpoint", required=required, metavar="DIR",
                   help="VISA checkpoint folder (config.json, tokenizer with [SEG], weight shards)")
    g.add_argument("--clip", required=required, metavar="DIR",
                   help="CLIP ViT-L/14 folder (Hugging Face CLIPVisionModel with preprocessor_config.json)")
    g.add_argument("--sam-checkpoint", metavar="PTH",
                   help="official SAM .pth whose tensors replace the checkpoint's visual_model.* ones")
    g.add_argument("--quantization", choices=["none", "nf4"], default="none",
                   help="load the LLM in 4-bit NF4 with bitsandbytes (default: none)")
    g.add_argument("--device", type=device_arg, default="cuda" if torch.cuda.is_available() else "cpu",
                   help="torch device (default: cuda if available, else cpu)")
    g.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="weights and activations dtype (default: fp32; bf16/fp16 pay on a GPU, on a CPU without native support they are far slower and warn)")


def load_model(args: argparse.Namespace):
    """A VisaModel from the arguments of :func:`add_model_args`."""
    from ..model import VisaModel

    return VisaModel.from_pretrained(
        args.checkpoint,
        clip=args.clip,
        quantization=None if args.quantization == "none" else args.quantization,
        device=args.device,
        dtype=DTYPES[args.dtype],
        sam_checkpoint=args.sam_checkpoint,
    )


def format_timings(timings: dict[str, float]) -> str:
    """A small table of stage -> milliseconds, plus the total."""
    width = max(len(k) for k in timings) if timings else 5
    rows = [f"  {k:<{width}}  {v * 1000:9.1f} ms" for k, v in timings.items()]
    rows.append(f"  {'total':<{width}}  {sum(timings.values()) * 1000:9.1f} ms")
    return "\n".join(rows)
