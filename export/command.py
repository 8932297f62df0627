"""``visa-edge export``: checkpoints -> ONNX graphs (and TensorRT engines) + manifest."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from visa_edge.runtime.errors import InputError

if TYPE_CHECKING:
    from .registry import ExportNetwork

NETWORK_HELP = "visual_tokens, sam_encoder, mask_decoder; with --xmem also xmem_key_encoder, xmem_value_encoder, xmem_skips, xmem_decoder"


def register(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export the networks to ONNX / TensorRT engines with a manifest",
        description="Export the reasoning-step networks (CLIP + token clustering + projector, SAM image encoder, "
        "[SEG]-prompted SAM mask decoder; with --xmem the XMem tracker networks) to ONNX, lint every graph for "
        "TensorRT, check ONNX Runtime against PyTorch, optionally build TensorRT engines, and write "
        "ENGINE_DIR/manifest.json. "
        "Load the folder with visa_edge.runtime.backends.load_engines.",
    )
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="VISA checkpoint folder")
    p.add_argument("--clip", required=True, metavar="DIR", help="CLIP ViT-L/14 folder (Hugging Face CLIPVisionModel)")
    p.add_argument("--sam-checkpoint", metavar="PTH", help="official SAM .pth replacing the checkpoint's visual_model.* tensors")
    p.add_argument("--xmem", metavar="PTH", help="XMem.pth: also export the tracker networks at the working size of --frame-size")
    p.add_argument("--out", required=True, metavar="ENGINE_DIR", help="output folder (created)")
    p.add_argument("--backend", choices=["onnx", "tensorrt"], default="onnx",
                   help="onnx: ONNX graphs for ONNX Runtime; tensorrt: also build TensorRT engines on this GPU (default onnx)")
    p.add_argument("--precision", choices=["fp32", "fp16"], default="fp32",
                   help="engine precision; fp16 keeps normalisations, softmax, reductions and clustering in fp32 "
                   "(default fp32; the ONNX graphs are always fp32)")
    p.add_argument("--networks", metavar="NAMES", help=f"comma-separated subset to export (default all: {NETWORK_HELP})")
    p.add_argument("--frame-size", metavar="HxW",
                   help="camera frame size, with --xmem: the XMem engines are built for its working size")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset, 17..20 (default 17)")
    p.add_argument("--workspace-gb", type=float, help="TensorRT builder workspace limit in GiB (default: TensorRT's)")
    p.add_argument("--timing-cache", metavar="FILE", help="TensorRT timing cache, read and updated (default ENGINE_DIR/timing.cache)")
    p.add_argument("--parity-tol", type=float, default=1e-4,
                   help="allowed ONNX Runtime vs PyTorch max-abs error, relative to max(1, max|ref|) (default 1e-4)")
    p.add_argument("--lint-allow", metavar="OPS", help="comma-separated ONNX ops to accept although the TensorRT table lacks them")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from visa_edge.runtime.reasoning_networks import REASONING_NETWORKS
    from visa_edge.runtime.tracking.xmem import XMEM_NETWORKS

    from .manifest_writer import hash_source
    from .pipeline import ExportOptions, Progress, check_options, export_networks, steps_per_network

    options = ExportOptions(
        backend=args.backend,
        precision=args.precision,
        opset=args.opset,
        parity_tol=args.parity_tol,
        workspace_bytes=int(args.workspace_gb * 2**30) if args.workspace_gb else None,
        timing_cache=Path(args.timing_cache).resolve() if args.timing_cache else None,
        lint_allow=tuple(_names(args.lint_allow)),
    )
    check_options(options)
    out = Path(args.out).resolve()
    frame_size = _frame_size(args.frame_size)
    if args.xmem and frame_size is None:
        raise InputError("--xmem: also give --frame-size HxW (the camera frame size); tracker engines are built for its working size")
    if frame_size is not None and not args.xmem:
        raise InputError("--frame-size: only the XMem engines depend on the frame size; give it with --xmem")
    available = list(REASONING_NETWORKS) + (list(XMEM_NETWORKS) if args.xmem else [])
    names = _names(args.networks) or available
    unknown = sorted(set(names) - set(available))
    if unknown:
        raise InputError(f"--networks: unknown {unknown}; expected names from {available}")
    paths = {"checkpoint": args.checkpoint, "clip": args.clip, "sam_checkpoint": args.sam_checkpoint, "xmem": args.xmem}
    progress = Progress(2 + len(names) * steps_per_network(options.backend))
    with progress.step("hash checkpoints"):
        sources = {k: hash_source(v) for k, v in paths.items() if v}
    with progress.step("load checkpoints (fp32, CPU)"):
        networks = _networks(args, frame_size, names)
    manifest = export_networks(networks, out, options, sources, rebuild_command(args, out), progress)
    print(f"wrote {out / 'manifest.json'} ({options.backend}, {options.precision})")
    for name, record in manifest.networks.items():
        sizes = sum((out / f.file).stat().st_size for f in record.files.values()) / 2**20
        errors = ", ".join(f"{k} {v:.2g}" for k, v in record.parity.items())
        print(f"  {name:<18} {', '.join(f.file for f in record.files.values()):<44} {sizes:8.1f} MiB  max-abs vs torch: {errors}")
    return 0


def _networks(args: argparse.Namespace, frame_size: tuple[int, int] | None, names: list[str]) -> list[ExportNetwork]:
    """The requested ExportNetworks, loading only the checkpoints they need."""
    import torch

    from visa_edge.runtime.model import VisaModel
    from visa_edge.runtime.reasoning_networks import REASONING_NETWORKS
    from visa_edge.runtime.tracking.xmem import XMemConfig, load_xmem

    from .registry import reasoning_networks, tracker_networks, xmem_working_size

    networks = []
    if set(names) & set(REASONING_NETWORKS):
        model = VisaModel.from_pretrained(args.checkpoint, clip=args.clip, sam_checkpoint=args.sam_checkpoint,
                                          device="cpu", dtype=torch.float32, load_llm=False)
        networks += reasoning_networks(model, ("sam_checkpoint",) if args.sam_checkpoint else ())
    if args.xmem and set(names) - set(REASONING_NETWORKS):
        size = xmem_working_size(frame_size, XMemConfig().shorter_side)
        networks += tracker_networks(load_xmem(args.xmem), size)
    return [n for n in networks if n.name in names]


def rebuild_command(args: argparse.Namespace, out: Path) -> list[str]:
    """The command line that reproduces this export, with absolute paths."""
    cmd = ["visa-edge", "export", "--checkpoint", _abs(args.checkpoint), "--clip", _abs(args.clip)]
    for flag, value in (("--sam-checkpoint", args.sam_checkpoint), ("--xmem", args.xmem)):
        if value:
            cmd += [flag, _abs(value)]
    cmd += ["--out", str(out), "--backend", args.backend, "--precision", args.precision]
    optional = (("--networks", args.networks), ("--frame-size", args.frame_size), ("--workspace-gb", args.workspace_gb),
                ("--timing-cache", args.timing_cache and _abs(args.timing_cache)), ("--lint-allow", args.lint_allow))
    for flag, value in optional:
        if value:
            cmd += [flag, str(value)]
    if args.opset != 17:
        cmd += ["--opset", str(args.opset)]
    if args.parity_tol != 1e-4:
        cmd += ["--parity-tol", str(args.parity_tol)]
    return cmd


def _abs(path: str) -> str:
    return str(Path(path).resolve())


def _names(value: str | None) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


def _frame_size(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        h, w = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise InputError(f"--frame-size {value!r}: expected HxW, e.g. 480x640") from None
    if h <= 0 or w <= 0:
        raise InputError(f"--frame-size {value!r}: expected positive sizes")
    return h, w

