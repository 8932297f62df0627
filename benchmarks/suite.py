"""The whole benchmark: model, per-stage latency, streaming, memory, quality -> one result dict.

Presets per config: ``tiny`` fits a 2-core CPU in under three minutes (CI smoke with
``quick``); ``visa-7b`` measures the real-size architectures with few repeats.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import torch

from visa_edge.runtime.reasoning_networks import REASONING_NETWORKS
from visa_edge.runtime.reasoning import ReasoningStep

from . import system
from .backends import EXPORTED, Backend, ExportedEngines, NotApplicable, export_engines, plan_backends
from .models import CLIP_PERIOD, CONFIGS, BenchModel, tiny_model, visa7b_model, weights_note
from .quality import DAVIS_DEFAULT, QualitySettings, davis_quality
from .report import SCHEMA, SCHEMA_VERSION
from .stages import BACKENDS, STAGE_NETWORKS, STAGES, run_stages
from .streaming import StreamSettings, run_stream
from .timing import RepeatSettings


@dataclass(frozen=True)
class Preset:
    """How much to measure for one config."""

    repeat: RepeatSettings
    stream: StreamSettings
    quality: QualitySettings
    flow_steps: int = CLIP_PERIOD  # consecutive weight-free tracker steps timed
    xmem_shorter_side: int = 128  # tiny only: XMem's working size (visa-7b runs XMem's 480)


QUICK_REPEAT = RepeatSettings(warmup=1, repeats=1, min_repeats=1, budget_s=0.1)
QUICK_7B_REPEAT = replace(QUICK_REPEAT, interleave=False)
QUICK_QUALITY = QualitySettings(sequences=1, frames=6)
PRESETS: dict[tuple[str, bool], Preset] = {
    ("tiny", False): Preset(RepeatSettings(warmup=2, repeats=20, min_repeats=5, budget_s=8.0), StreamSettings(seconds=20.0),
                            QualitySettings(frames=25)),
    ("tiny", True): Preset(QUICK_REPEAT, StreamSettings(rate_fps=5.0, seconds=3.0, max_seconds=30.0), QUICK_QUALITY, flow_steps=3,
                           xmem_shorter_side=64),
    ("visa-7b", False): Preset(RepeatSettings(warmup=1, repeats=5, min_repeats=3, budget_s=60.0, interleave=False),
                               StreamSettings(seconds=20.0, frame_hw=(480, 640)), QualitySettings()),
    ("visa-7b", True): Preset(QUICK_7B_REPEAT, StreamSettings(rate_fps=5.0, seconds=3.0, max_seconds=30.0, frame_hw=(480, 640)),
                              QUICK_QUALITY, flow_steps=3),
}


@dataclass(frozen=True)
class BenchOptions:
    """What ``visa-edge bench`` was asked for (None: the preset's value)."""

    config: str = "tiny"
    quick: bool = False
    device: str = "cpu"
    backends: tuple[str, ...] = BACKENDS
    stages: tuple[str, ...] = STAGES
    repeats: int | None = None
    warmup: int | None = None
    budget_s: float | None = None
    rate_fps: float | None = None
    stream_seconds: float | None = None
    stream: bool = True
    quality: bool = True
    davis: Path = DAVIS_DEFAULT
    flush_denormals: bool = True  # random weights produce subnormal activations, slow in x86 fp32 math
    checkpoint: Path | None = None
    clip: Path | None = None
    xmem: Path | None = None

    def __post_init__(self):
        if self.config not in CONFIGS:
            raise ValueError(f"config {self.config!r}: expected one of {CONFIGS}")
        unknown = sorted(set(self.stages) - set(STAGES))
        if unknown:
            raise ValueError(f"stages {unknown}: expected names from {list(STAGES)}")


def preset(options: BenchOptions) -> Preset:
    """The config's preset with the options' overrides applied."""
    p = PRESETS[(options.config, options.quick)]
    rep = p.repeat
    repeats = options.repeats or rep.repeats
    rep = replace(rep, repeats=repeats, min_repeats=min(rep.min_repeats, repeats),
                  warmup=rep.warmup if options.warmup is None else options.warmup, budget_s=options.budget_s or rep.budget_s)
    stream = p.stream
    if options.rate_fps:
        stream = replace(stream, rate_fps=options.rate_fps)
    if options.stream_seconds:
        stream = replace(stream, seconds=options.stream_seconds, max_seconds=max(stream.max_seconds, options.stream_seconds))
    return replace(p, repeat=rep, stream=stream)


def run_benchmark(options: BenchOptions, log: Callable[[str], None] | None = None) -> dict:
    """Measure everything ``options`` asks for; returns the result (see ``report.py`` for the outputs).

    The quality run comes first, under the runtime's default floating-point mode, so that its J&F
    equals ``davis_tracker``'s. Then, with ``flush_denormals``, the CPU flushes subnormal floats to
    zero (FTZ/DAZ) for the rest of the run: set in this thread before any model, thread pool or
    ONNX Runtime session of the run exists (new threads inherit it). Random weights produce
    subnormal activations (the tiny SAM encoder ran 2.4x slower with them on this project's CPU);
    trained weights need not, so the figures would otherwise reflect the random values. The
    runtime itself does not flush; the default (off) is restored at the end.
    """
    log = log or _stderr
    start = time.perf_counter()
    p = preset(options)
    quality, quality_s = None, None
    if options.quality:
        log(f"quality: weight-free tracker on {options.davis}")
        quality = davis_quality(options.davis, p.quality)
        quality_s = time.perf_counter() - start
    flushing = torch.set_flush_denormal(options.flush_denormals)
    try:
        result = measure(options, p, log, flushing)
    finally:
        torch.set_flush_denormal(False)
    if quality is not None:
        result["quality"] = quality
        result["phases_s"]["quality_s"] = round(quality_s, 2)
    result["phases_s"]["total_s"] = round(time.perf_counter() - start, 2)
    return result


def measure(options: BenchOptions, p: Preset, log: Callable[[str], None], flushing: bool) -> dict:
    """Model, export, per-stage latency, streaming and memory (everything but quality)."""
    device = torch.device(options.device)
    result = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "config": options.config,
        "quick": options.quick,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()},
        "machine": system.machine(),
        "device": system.device_info(device),
        "versions": system.versions(),
        "settings": {"repeat": asdict(p.repeat), "stream": asdict(p.stream), "quality": asdict(p.quality),
                     "flow_steps": p.flow_steps, "flush_denormals": flushing},
    }
    phases, memory = {}, {}
    with tempfile.TemporaryDirectory(prefix="visa-edge-bench-") as tmp:
        workdir = Path(tmp)
        t0 = time.perf_counter()
        log(f"building the {options.config} model on {device}")
        bm = build_model(options, p, device, workdir)
        phases["model_s"] = time.perf_counter() - t0
        memory["model loaded"] = system.memory_snapshot(device)
        result["note"] = weights_note(bm.random_parts) + ("" if flushing or not bm.random_parts else
                         " Subnormal floats were not flushed (--keep-denormals): CPU latency reflects the random values.")
        result["model"] = {"architecture": bm.architecture, "frame_hw": list(bm.frame_hw),
                           "xmem_shorter_side": bm.xmem_config.shorter_side, "llm_na": bm.llm_na}
        plans = plan_backends(device, options.backends)
        t0 = time.perf_counter()
        log(f"exporting the networks for {[b for b in EXPORTED if plans[b].available] or 'no exported backend'}")
        engines = export_engines(bm, plans, workdir, export_names(options, bm))
        system.release_memory()
        phases["export_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        result["stages"] = run_stages(bm, plans, engines, p.repeat, options.stages, p.flow_steps, log)
        phases["stages_s"] = time.perf_counter() - t0
        memory["after stages"] = system.memory_snapshot(device)
        if options.stream:
            t0 = time.perf_counter()
            result["streaming"] = streaming(bm, plans, engines, p.stream, workdir, log)
            phases["streaming_s"] = time.perf_counter() - t0
            memory["after streaming"] = system.memory_snapshot(device)
        del bm
        system.release_memory()
    memory["end"] = system.memory_snapshot(device)
    result["memory"] = {"peak_rss_mib": memory["end"]["peak_rss_mib"], "gpu_peak_allocated_mib": system.gpu_peak_mib(
                        [memory, result.get("stages")]), "phases": memory,
                        "note": "RSS from psutil, peak RSS from getrusage (the process's maximum so far), per backend "
                        "rss_peak_mib where backends run one at a time; on CUDA, torch's allocations (peak per stage "
                        "in the stage results; TensorRT and ONNX Runtime allocate outside torch: gpu_device_used_mib "
                        "counts every library)"}
    result["phases_s"] = {k: round(v, 2) for k, v in phases.items()}
    result["load_average_end"] = system.load_average()
    return result


def build_model(options: BenchOptions, p: Preset, device: torch.device, workdir: Path) -> BenchModel:
    if options.config == "tiny":
        if options.checkpoint or options.clip:
            raise ValueError("--checkpoint/--clip apply to --config visa-7b (tiny is always the generated tiny checkpoint)")
        return tiny_model(workdir, device, p.xmem_shorter_side)
    return visa7b_model(workdir, device, options.checkpoint, options.clip, options.xmem)


def export_names(options: BenchOptions, bm: BenchModel) -> set[str]:
    """Networks to export: those of the requested stages, and the reasoning networks if the stream reasons with ``bm``."""
    names = {n for stage in options.stages for n in STAGE_NETWORKS.get(stage, ())}
    if options.stream and bm.model.llm is not None:
        names |= set(REASONING_NETWORKS)
    return names


def streaming(bm: BenchModel, plans: dict[str, Backend], engines: ExportedEngines, settings: StreamSettings,
              workdir: Path, log: Callable[[str], None]) -> dict:
    """The streaming run with this config's model, or the tiny one where its LLM is not built (visa-7b on a CPU)."""
    reasoner = bm.config
    if bm.model.llm is None:
        log("streaming: building the tiny reasoner (this config's LLM is not built here)")
        bm = tiny_model(workdir / "stream", bm.device)
        reasoner = "tiny"
        engines = export_engines(bm, plans, workdir / "stream", REASONING_NETWORKS)
    step, backend = reasoning_step(bm, plans, engines)
    log(f"streaming {settings.seconds:g} s at {settings.rate_fps:g} fps (reasoner {reasoner} on {backend})")
    return run_stream(step, settings, {"reasoner": reasoner, "backend": backend, "tracker": "flow"},
                      true_masks="VISA" in bm.random_parts)


def reasoning_step(bm: BenchModel, plans: dict[str, Backend], engines: ExportedEngines) -> tuple[ReasoningStep, str]:
    """The reasoning step on the fastest exported backend available (TensorRT, then ONNX Runtime), else PyTorch eager."""
    for backend in ("tensorrt", "onnxruntime"):
        if backend in EXPORTED and plans[backend].available:
            try:
                return ReasoningStep(bm.model, engines.load(backend, list(REASONING_NETWORKS))), backend
            except NotApplicable:
                continue
    return ReasoningStep(bm.model), "torch-eager"


def parse_names(value: str | None, allowed: Sequence[str], what: str) -> tuple[str, ...]:
    """A comma-separated subset of ``allowed`` (all when empty)."""
    if not value:
        return tuple(allowed)
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    unknown = sorted(set(names) - set(allowed))
    if unknown:
        raise ValueError(f"{what}: unknown {unknown}; expected names from {list(allowed)}")
    return names


def _stderr(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)
