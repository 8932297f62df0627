"""Export a list of networks into an engine folder: ONNX, lint, parity, TensorRT, manifest.

Per network: trace to ONNX (:mod:`.onnx_export`), run the TensorRT lint (:mod:`.lint`;
any finding fails the export), compare ONNX Runtime (CPU) with PyTorch on the example
inputs, and for ``backend="tensorrt"`` build the engine and run it once (outputs must be
finite: fp16 overflow shows up as inf/NaN). The manifest records files, hashes,
signatures, sources, versions and measured errors.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

import onnx
import torch

from visa_edge.runtime.backends.base import DimRange
from visa_edge.runtime.backends.manifest import EXPORT_BACKENDS, MANIFEST_NAME, Manifest, NetworkRecord, SourceRecord
from visa_edge.runtime.backends.ort import OrtEngine

from .errors import ExportError
from .lint import check_model
from .manifest_writer import environment, file_record, write_manifest
from .registry import ExportNetwork
from .onnx_export import DEFAULT_OPSET, INLINE_LIMIT, OnnxExport, export_onnx
from .tensorrt_build import PRECISIONS, TrtBuildOptions, build_engine, reduction_scopes


@dataclass(frozen=True)
class ExportOptions:
    """How to export. ``parity_tol``: allowed max-abs error of ONNX Runtime vs PyTorch,
    relative to max(1, max |reference|)."""

    backend: str = "onnx"
    precision: str = "fp32"
    opset: int = DEFAULT_OPSET
    parity_tol: float = 1e-4
    workspace_bytes: int | None = None
    timing_cache: Path | None = None
    lint_allow: tuple[str, ...] = ()
    inline_limit: int = INLINE_LIMIT


@dataclass
class Progress:
    """Numbered steps with their durations: ``[3/9] sam_encoder: lint ... done (0.1 s)``."""

    total: int
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    done: int = 0

    @contextlib.contextmanager
    def step(self, label: str) -> Iterator[None]:
        self.done += 1
        print(f"[{self.done}/{self.total}] {label} ...", end="", file=self.stream, flush=True)
        t0 = time.perf_counter()
        try:
            yield
        except BaseException:
            print(" failed", file=self.stream, flush=True)
            raise
        print(f" done ({time.perf_counter() - t0:.1f} s)", file=self.stream, flush=True)


def steps_per_network(backend: str) -> int:
    return 5 if backend == "tensorrt" else 3


def check_options(options: ExportOptions) -> None:
    """Reject unsupported combinations before any work."""
    if options.backend not in EXPORT_BACKENDS:
        raise ExportError(f"backend {options.backend!r}: expected one of {EXPORT_BACKENDS}")
    if options.precision not in PRECISIONS:
        raise ExportError(f"precision {options.precision!r}: expected one of {PRECISIONS}")
    if options.backend == "onnx" and options.precision != "fp32":
        raise ExportError(
            "--backend onnx exports fp32 graphs only: reduced precision is a TensorRT build decision "
            "(--backend tensorrt --precision fp16; the engine folder keeps the fp32 ONNX for ONNX Runtime)"
        )
    if options.backend == "tensorrt":
        from visa_edge.runtime.backends.trt import import_tensorrt

        import_tensorrt()
        if not torch.cuda.is_available():
            raise ExportError("--backend tensorrt needs a CUDA GPU (engines are built for the GPU they run on); none is visible")


def export_networks(
    networks: Sequence[ExportNetwork],
    out: Path,
    options: ExportOptions,
    sources: Mapping[str, SourceRecord],
    command: Sequence[str],
    progress: Progress | None = None,
) -> Manifest:
    """Export ``networks`` into ``out`` and write its manifest; returns the manifest."""
    check_options(options)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_NAME).unlink(missing_ok=True)  # a half-rewritten folder must not load
    progress = progress or Progress(len(networks) * steps_per_network(options.backend))
    env = environment(options.backend)
    records = {net.name: _export_one(net, out, options, sources, env, progress) for net in networks}
    manifest = Manifest(
        backend=options.backend,
        precision=options.precision,
        networks=records,
        sources={k: v for k, v in sources.items() if any(k in net.sources for net in networks)},
        export_command=tuple(command),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    write_manifest(out, manifest)
    return manifest


def _export_one(
    net: ExportNetwork,
    out: Path,
    options: ExportOptions,
    sources: Mapping[str, SourceRecord],
    env: Mapping[str, str | None],
    progress: Progress,
) -> NetworkRecord:
    missing = [s for s in net.sources if s not in sources]
    if missing:
        raise ExportError(f"{net.name}: no hash for source(s) {missing}; got {sorted(sources)}")
    with progress.step(f"{net.name}: export ONNX (opset {options.opset})"):
        exported = export_onnx(net, out, options.opset, options.inline_limit)
    dims = dict(net.spec.dims)
    graph = onnx.load(str(exported.path), load_external_data=False)
    with progress.step(f"{net.name}: TensorRT lint"):
        check_model(graph, str(exported.path), dims, options.lint_allow)
    with progress.step(f"{net.name}: parity ONNX Runtime CPU vs PyTorch"):
        parity = {"onnxruntime-cpu": _ort_parity(net, exported, dims, options.parity_tol)}
    files = {"onnx": file_record(out, exported.path)}
    if exported.data_path is not None:
        files["onnx_data"] = file_record(out, exported.data_path)
    build: dict = {}
    if options.backend == "tensorrt":
        engine_path = out / f"{net.name}.engine"
        trt_options = TrtBuildOptions(options.precision, options.workspace_bytes, options.timing_cache or out / "timing.cache")
        inputs = {t.name: t.shape for t in exported.inputs}
        with progress.step(f"{net.name}: build TensorRT engine ({options.precision})"):
            report = build_engine(exported.path, engine_path, inputs, dims, trt_options, reduction_scopes(graph))
        with progress.step(f"{net.name}: run TensorRT engine"):
            parity["tensorrt"] = _tensorrt_check(net, engine_path, exported, dims)
        files["engine"] = file_record(out, engine_path)
        build = {"fp32_layers": len(report.fp32_layers), "workspace_bytes": options.workspace_bytes,
                 "profile": {k: [list(s) for s in v] for k, v in report.profile.items()}}
    return NetworkRecord(
        name=net.name,
        files=files,
        inputs=exported.inputs,
        outputs=exported.outputs,
        dims=dims,
        precision=options.precision,
        opset=options.opset,
        sources={s: sources[s].sha256 for s in net.sources},
        environment=dict(env),
        parity=parity,
        build=build,
    )


def max_abs_error(got: Mapping[str, torch.Tensor], ref: Mapping[str, torch.Tensor]) -> float:
    """Largest |got - ref| over all outputs (inf if a shape differs or a value is not finite)."""
    worst = 0.0
    for name, r in ref.items():
        g = got[name].detach().float().cpu()
        if g.shape != r.shape or not torch.isfinite(g).all():
            return float("inf")
        worst = max(worst, float((g - r.float()).abs().max()) if r.numel() else 0.0)
    return worst


def _ort_parity(net: ExportNetwork, exported: OnnxExport, dims: Mapping[str, DimRange], tol: float) -> float:
    engine = OrtEngine(net.name, exported.path, "cpu", shapes={t.name: t.shape for t in exported.inputs}, dims=dims)
    err = max_abs_error(engine.run(net.example_inputs), exported.reference)
    scale = max([1.0] + [float(r.abs().max()) for r in exported.reference.values() if r.numel()])
    if not err <= tol * scale:
        raise ExportError(
            f"{exported.path}: ONNX Runtime differs from PyTorch by {err:.3g} (allowed {tol * scale:.3g}); "
            "the graph does not reproduce the module"
        )
    return err


def _tensorrt_check(net: ExportNetwork, engine_path: Path, exported: OnnxExport, dims: Mapping[str, DimRange]) -> float:
    from visa_edge.runtime.backends.trt import TensorRTEngine

    engine = TensorRTEngine(net.name, engine_path, "cuda", shapes={t.name: t.shape for t in exported.inputs}, dims=dims)
    err = max_abs_error(engine.run({k: v.cuda() for k, v in net.example_inputs.items()}), exported.reference)
    if err == float("inf"):
        raise ExportError(
            f"{engine_path}: the engine's outputs are not finite or misshapen on the example inputs (fp16 overflow?); "
            "rebuild with --precision fp32 to confirm"
        )
    return err
