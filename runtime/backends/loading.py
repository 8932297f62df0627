"""``load_engines``: the engines of an exported folder, checked against its manifest."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..validate import parse_device
from .base import Engine, EngineError
from .manifest import (
    Manifest,
    NetworkRecord,
    check_signature,
    check_sources,
    check_tensorrt_environment,
    read_manifest,
    verify_file,
)

BACKENDS = ("onnxruntime", "tensorrt")


def load_engines(
    engine_dir: str | Path,
    backend: str | None = None,
    device: str | torch.device = "cpu",
    networks: Sequence[str] | None = None,
    providers: Sequence[str] | None = None,
    provider_options: Mapping[str, Mapping[str, Any]] | None = None,
    sources: Mapping[str, str | Path | None] | None = None,
) -> dict[str, Engine]:
    """name -> Engine for ``networks`` (default: all) of an engine folder written by ``visa-edge export``.

    ``backend``: ``"tensorrt"`` (the folder's ``.engine`` files) or ``"onnxruntime"`` (its
    ``.onnx`` files); default: TensorRT if the folder was built for it, else ONNX Runtime.
    ``providers`` picks ONNX Runtime execution providers (``cpu``, ``cuda``, ``tensorrt``;
    default by ``device``). Every file's sha256 is checked; TensorRT engines must also
    match this machine's TensorRT version and GPU. Each failure names the file and the
    export command that rebuilds it. ``sources`` (``checkpoint``, ``clip``, ``sam_checkpoint``,
    ``xmem`` -> the path this run loads) are hashed and must match the hashes the export
    recorded: engines from another checkpoint are refused.
    """
    folder = Path(engine_dir)
    manifest = read_manifest(folder)
    backend = backend or ("tensorrt" if manifest.backend == "tensorrt" else "onnxruntime")
    if backend not in BACKENDS:
        raise EngineError(f"backend {backend!r}: expected one of {BACKENDS}")
    records = [manifest.network(n, folder) for n in (networks or manifest.networks)]
    used = {name for r in records for name in r.sources}
    check_sources(manifest, {k: v for k, v in (sources or {}).items() if k in used}, folder)
    if backend == "tensorrt":  # files are checked first, then the CUDA device (EngineError naming both)
        return {r.name: _tensorrt_engine(folder, manifest, r, torch.device(device)) for r in records}
    device = parse_device(str(device), "engine device")
    return {r.name: _ort_engine(folder, manifest, r, device, providers, provider_options) for r in records}


def _tensorrt_engine(folder: Path, manifest: Manifest, record: NetworkRecord, device: torch.device) -> Engine:
    from .trt import TensorRTEngine, import_tensorrt

    path = verify_file(folder, manifest, record, "engine", "tensorrt")
    trt = import_tensorrt()
    if device.type != "cuda" or not torch.cuda.is_available():
        raise EngineError(f"backend 'tensorrt' needs a CUDA device; got {str(device)!r} (CUDA available: {torch.cuda.is_available()})")
    check_tensorrt_environment(manifest, record, trt.__version__, torch.cuda.get_device_name(device), folder)
    return TensorRTEngine(record.name, path, device, shapes=record.input_shapes(), dims=record.dims)


def _ort_engine(
    folder: Path,
    manifest: Manifest,
    record: NetworkRecord,
    device: torch.device,
    providers: Sequence[str] | None,
    provider_options: Mapping[str, Mapping[str, Any]] | None,
) -> Engine:
    from .ort import OrtEngine, tensorrt_profile_options

    path = verify_file(folder, manifest, record, "onnx", "onnx")
    if "onnx_data" in record.files:
        verify_file(folder, manifest, record, "onnx_data", "onnx")
    options = {k: dict(v) for k, v in (provider_options or {}).items()}
    if providers and "tensorrt" in providers:
        trt_options = options.setdefault("tensorrt", {})
        trt_options.setdefault("trt_fp16_enable", record.precision == "fp16")
        for key, value in tensorrt_profile_options(record.input_shapes(), record.dims).items():
            trt_options.setdefault(key, value)
    engine = OrtEngine(
        record.name,
        path,
        device=device,
        providers=providers,
        shapes=record.input_shapes(),
        output_shapes=record.output_shapes(),
        dims=record.dims,
        provider_options=options,
    )
    graph_inputs = {i.name: tuple(d if isinstance(d, int) else None for d in i.shape) for i in engine.session.get_inputs()}
    check_signature(record, graph_inputs, path)
    return engine
