"""Per-stage latency on every backend available here (``backends.py``), measured in the same run.

Stages: CLIP+clustering+projector for one frame, the LLaMA prefill over a full window, the
[SEG] head, the SAM image encoder, the mask decoder, one XMem tracker step, and the
weight-free tracker's step (one implementation, no backends). The LLM and the [SEG] head
are not exported (by design they run in PyTorch), so they are n/a on ONNX Runtime and
TensorRT; every n/a carries its reason. Backends of a stage are timed in interleaved rounds
(or one at a time where several copies of a model do not fit in memory) and compared with
eager on their outputs (max-abs difference).
"""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from visa_edge.runtime import sam
from visa_edge.runtime.reasoning_networks import REASONING_NETWORKS
from visa_edge.runtime.tracking.xmem import XMEM_NETWORKS, XMemTracker, xmem_modules, xmem_torch_engines

from .backends import (BACKENDS, EXPORTED, Backend, CallableEngine, ExportedEngines, NotApplicable, first_line, on_cpu,
                       optimize)
from .models import CLIP_PERIOD, BenchModel, PrefillNet, prefill_flops, prefill_inputs, synthetic_frames, synthetic_mask
from .system import MIB, PeakRss, release_memory
from .timing import RepeatSettings, measure_interleaved, ratio, summarize, synchronizer, time_call

STAGES = ("visual_tokens", "llm_prefill", "seg_head", "sam_encoder", "mask_decoder", "xmem_step")
STAGE_NETWORKS = {"visual_tokens": ("visual_tokens",), "sam_encoder": ("sam_encoder",), "mask_decoder": ("mask_decoder",),
                  "xmem_step": tuple(XMEM_NETWORKS)}  # exported networks each stage runs on ONNX Runtime / TensorRT
LLM_NOT_EXPORTED = "the LLM is not exported by design: it runs in PyTorch (NF4 via bitsandbytes), fed inputs_embeds"
HEAD_NOT_EXPORTED = "not exported by design: the [SEG] head runs in PyTorch right after the LLM (two small matmuls)"


@dataclass
class Stage:
    """One timed stage: a module with its inputs (in argument order), and the exported network it maps to."""

    name: str
    description: str
    module: nn.Module | None
    inputs: dict[str, torch.Tensor]
    network: str | None = None  # exported network; None: PyTorch only
    pytorch_only: str = ""  # why ONNX Runtime / TensorRT do not apply (when ``network`` is None)
    unavailable: str | None = None  # why the stage is not measured at all
    flops: float | None = None


def network_stages(bm: BenchModel, seed: int = 0) -> list[Stage]:
    """The reasoning-step stages of ``bm`` with inputs from the synthetic clip (random where values do not matter)."""
    m, dev = bm.model, bm.device
    gen = torch.Generator().manual_seed(seed)
    frame = synthetic_frames(1, bm.frame_hw)[0]
    grid = sam.IMAGE_SIZE // sam.PATCH_SIZE
    stages = [
        Stage("visual_tokens", "CLIP layer -2 + token clustering + projector, one frame", m.visual_token_net(),
              {"pixel_values": m.clip_preprocess(frame)[None].to(dev)}, "visual_tokens"),
        _prefill_stage(bm, seed),
        Stage("seg_head", "[SEG] head text_hidden_fcs: Linear(H,H)-ReLU-Linear(H,256)", m.text_hidden_fcs,
              {"hidden": torch.randn(1, m.config.hidden_size, generator=gen).to(dev)}, pytorch_only=HEAD_NOT_EXPORTED),
        Stage("sam_encoder", "SAM image encoder, 1024x1024 padded target frame", m.sam_encoder_net(),
              {"image": sam.preprocess(frame)[0][None].to(dev)}, "sam_encoder"),
        Stage("mask_decoder", "SAM prompt encoder + mask decoder, one [SEG] query", m.mask_decoder_net(),
              {"image_embeddings": torch.randn(1, sam.PROMPT_DIM, grid, grid, generator=gen).to(dev),
               "seg_embeddings": torch.randn(1, sam.PROMPT_DIM, generator=gen).to(dev)}, "mask_decoder"),
    ]
    for s in stages:
        if s.network is not None and tuple(s.inputs) != REASONING_NETWORKS[s.network].inputs:
            raise AssertionError(f"stage {s.name}: inputs {tuple(s.inputs)} differ from the network's")
    return stages


def _prefill_stage(bm: BenchModel, seed: int) -> Stage:
    description = "LLaMA prefill over a full window: 12 images x 112 tokens + prompt -> [SEG] state"
    if bm.model.llm is None:
        return Stage("llm_prefill", description, None, {}, unavailable=bm.llm_na or "the LLM was not loaded")
    embeds, positions = prefill_inputs(bm, seed)
    tokens = int(embeds.shape[1])
    return Stage("llm_prefill", f"{description} ({tokens} tokens)", PrefillNet(bm.model.llm, positions),
                 {"inputs_embeds": embeds}, pytorch_only=LLM_NOT_EXPORTED, flops=prefill_flops(bm.model.config, tokens))


def describe_inputs(inputs: Mapping[str, torch.Tensor]) -> str:
    """``name [shape] dtype, ...`` for the report."""
    return ", ".join(f"{k} {list(v.shape)} {str(v.dtype).removeprefix('torch.')}" for k, v in inputs.items())


def stage_runner(stage: Stage, backend: Backend, engines: ExportedEngines) -> tuple[Callable[[], object], str]:
    """A zero-argument call of ``stage`` on ``backend`` and what it runs; NotApplicable if it does not apply."""
    args = list(stage.inputs.values())
    if backend.name == "torch-eager":
        return (lambda: stage.module(*args)), backend.variant
    if backend.name == "torch-optimized":
        fn, variant = optimize(stage.module, args, engines.device)
        return (lambda: fn(*args)), variant
    if stage.network is None:
        raise NotApplicable(stage.pytorch_only)
    engine = engines.load(backend.name, [stage.network])[stage.network]
    return (lambda: engine.run(stage.inputs)), backend.variant


Factory = Callable[[], tuple[Callable[[], object], str]]  # builds a backend's runner; returns it and its variant


def measure_stage(
    stage: Stage, plans: Mapping[str, Backend], engines: ExportedEngines, settings: RepeatSettings
) -> dict:
    """Latency of ``stage`` on every backend, ratios to eager and output differences."""
    record = {"stage": stage.name, "description": stage.description, "inputs": describe_inputs(stage.inputs)}
    if stage.flops:
        record["flops"] = stage.flops
    if stage.unavailable:
        return {**record, "results": {b: na(stage.unavailable) for b in plans}}
    factories = {name: (lambda plan=plan: stage_runner(stage, plan, engines)) for name, plan in plans.items()}
    return {**record, "results": run_backends(factories, plans, settings, engines.device)}


def run_backends(
    factories: Mapping[str, Factory],
    plans: Mapping[str, Backend],
    settings: RepeatSettings,
    device: torch.device,
    compare: Callable[[object], list[torch.Tensor]] | None = None,
) -> dict[str, dict]:
    """Build, warm up and time every available backend; summarise with ratios to eager and output differences.

    ``settings.interleave``: build all, then time them in interleaved rounds; otherwise one backend
    at a time, freed before the next is built (real-size models do not fit three times in memory).
    """
    compare = compare or as_tensors
    results = {name: na(plan.reason) for name, plan in plans.items() if not plan.available}
    outputs, samples = {}, {}
    names = [n for n, plan in plans.items() if plan.available]
    groups = [names] if settings.interleave else [[n] for n in names]
    with torch.inference_mode():
        for group in groups:
            with PeakRss() as rss:
                runners = {}
                for name in group:
                    runner = _build_and_warm_up(name, factories[name], settings, device, results, outputs)
                    if runner is not None:
                        runners[name] = runner
                samples.update(measure_interleaved(runners, settings, synchronizer(device)))
                del runners
            if len(group) == 1 and results[group[0]]["status"] == "ok":
                results[group[0]]["rss_peak_mib"] = rss.peak_mib
            release_memory()
    eager_p50 = summarize(samples["torch-eager"])["p50"] if "torch-eager" in samples else None
    reference = compare(outputs["torch-eager"]) if "torch-eager" in outputs else None
    for name, times in samples.items():
        stats = summarize(times)
        results[name].update(latency_ms=stats, speedup_vs_eager_p50=ratio(eager_p50, stats["p50"]))
        if reference is not None:
            results[name]["max_abs_diff_vs_eager"] = max_abs_diff(reference, compare(outputs[name]))
    return {n: results[n] for n in sorted(results, key=BACKENDS.index)}


def _build_and_warm_up(name: str, factory: Factory, settings: RepeatSettings, device: torch.device,
                       results: dict[str, dict], outputs: dict[str, object]) -> Callable[[], object] | None:
    """The backend's runner, warmed up (result and last output recorded); None if n/a or failing."""
    t0 = time.perf_counter()
    try:
        runner, variant = factory()
        setup_s = time.perf_counter() - t0
        outputs[name], gpu_peak = warm_up(runner, settings.warmup, device)
    except NotApplicable as e:
        results[name] = na(str(e))
        return None
    except Exception as e:  # one failing backend must not hide the others' figures
        results[name] = {"status": "error", "reason": f"{type(e).__name__}: {first_line(e)}"}
        print(f"bench: {name} failed: {e}", file=sys.stderr)
        return None
    results[name] = {"status": "ok", "variant": variant, "setup_s": round(setup_s, 3)}
    if gpu_peak is not None:
        results[name]["gpu_max_allocated_mib"] = gpu_peak
    return runner


def warm_up(fn: Callable[[], object], n: int, device: torch.device) -> tuple[object, float | None]:
    """Run ``fn`` ``max(n, 1)`` times; its last output and, on CUDA, torch's peak allocation meanwhile (MiB)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    out = None
    for _ in range(max(n, 1)):
        out = fn()
    if device.type != "cuda":
        return out, None
    torch.cuda.synchronize(device)
    return out, round(torch.cuda.max_memory_allocated(device) / MIB, 1)


def na(reason: str | None) -> dict:
    return {"status": "n/a", "reason": reason or "not available"}


def as_tensors(out: object) -> list[torch.Tensor]:
    """Outputs of a module (tensor or tuple) or an engine (dict) as a list of tensors in output order."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, Mapping):
        return [v for v in out.values() if isinstance(v, torch.Tensor)]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in as_tensors(o)]
    return []


def max_abs_diff(reference: Sequence[torch.Tensor], other: Sequence[torch.Tensor]) -> float | None:
    """Largest |other - reference| over all outputs; None if the outputs do not correspond or are not finite."""
    if len(reference) != len(other) or not reference:
        return None
    worst = 0.0
    for r, o in zip(reference, other):
        r, o = r.detach().float().cpu(), o.detach().float().cpu()
        if r.shape != o.shape or not bool(torch.isfinite(o).all()):
            return None
        worst = max(worst, float((r - o).abs().max()) if r.numel() else 0.0)
    return worst


def xmem_engines(bm: BenchModel, plan: Backend, engines: ExportedEngines, examples: Mapping[str, Mapping]) -> tuple[dict, str]:
    """The XMem networks on ``plan``'s backend and what they run."""
    if plan.name == "torch-eager":
        return xmem_torch_engines(bm.xmem), plan.variant
    if plan.name == "torch-optimized":
        out, variants = {}, set()
        for name, module in xmem_modules(bm.xmem).items():
            spec = XMEM_NETWORKS[name]
            fn, variant = optimize(module, [examples[name][n].to(bm.device) for n in spec.inputs], bm.device)
            out[name] = CallableEngine(name, fn, spec.inputs, spec.outputs, copy_outputs=bm.device.type == "cuda")
            variants.add(variant)
        return out, "; ".join(sorted(variants))
    return engines.load(plan.name, list(XMEM_NETWORKS)), plan.variant


def xmem_examples(bm: BenchModel) -> dict[str, dict[str, torch.Tensor]]:
    """Example inputs of each XMem network at this run's working size (what TorchScript/CUDA graphs trace on)."""
    from visa_edge.export.registry import tracker_networks, xmem_working_size

    size = xmem_working_size(bm.frame_hw, bm.xmem_config.shorter_side)
    with on_cpu([bm.xmem], bm.device):
        return {n.name: dict(n.example_inputs) for n in tracker_networks(bm.xmem, size)}


def measure_xmem(bm: BenchModel, plans: Mapping[str, Backend], engines: ExportedEngines, settings: RepeatSettings) -> dict:
    """One XMem step per backend on the same frame sequence (memory frames every ``mem_every`` steps included)."""
    from visa_edge.export.registry import xmem_working_size

    h, w = bm.frame_hw
    frames = synthetic_frames(settings.warmup + settings.repeats + 1, bm.frame_hw)
    examples = xmem_examples(bm) if plans["torch-optimized"].available else {}

    def factory(plan: Backend) -> tuple[Callable[[], object], str]:
        nets, variant = xmem_engines(bm, plan, engines, examples)
        tracker = XMemTracker(nets, bm.xmem_config, bm.device)
        tracker.step(frames[0], synthetic_mask(0, bm.frame_hw))
        return _stepper(tracker, itertools.cycle(frames[1:])), variant

    cfg = bm.xmem_config
    size = xmem_working_size(bm.frame_hw, cfg.shorter_side)
    record = {"stage": "xmem_step", "description": f"XMem tracker step (key encoder, memory read, decoder; value encoder "
              f"every {cfg.mem_every} frames), frame {h}x{w}, working size {size[0]}x{size[1]}",
              "inputs": f"frame [{h},{w},3] uint8"}
    factories = {name: (lambda plan=plan: factory(plan)) for name, plan in plans.items()}
    return {**record, "results": run_backends(factories, plans, settings, bm.device, compare=_prob)}


def _stepper(tracker: XMemTracker, frames: Iterator[np.ndarray]) -> Callable[[], object]:
    return lambda: tracker.step(next(frames))


def _prob(out: object) -> list[torch.Tensor]:
    return [torch.from_numpy(out.prob)]


def measure_flow(frame_hw: tuple[int, int], warmup: int, steps: int) -> dict:
    """The weight-free tracker's step over ``steps`` consecutive frames (one implementation: no networks, no backends).

    Its cost varies along the clip (object position, frame memory filling after the reference),
    so it is timed over consecutive frames once its memory is full (and after ``warmup`` steps).
    """
    from visa_edge.runtime.tracking.factory import tracker_factory

    h, w = frame_hw
    tracker = tracker_factory("flow")()
    cfg = tracker.config
    warmup = max(warmup, cfg.memory_every * cfg.memory_size + 1)
    frames = synthetic_frames(warmup + steps + 1, frame_hw)
    tracker.step(frames[0], synthetic_mask(0, frame_hw))
    for frame in frames[1 : warmup + 1]:
        tracker.step(frame)
    samples = [time_call(lambda f=f: tracker.step(f), lambda: None) for f in frames[warmup + 1 :]]
    return {"stage": "flow_step", "description": f"weight-free tracker step, frame {h}x{w}", "status": "ok",
            "latency_ms": summarize(samples)}


def run_stages(
    bm: BenchModel,
    plans: Mapping[str, Backend],
    engines: ExportedEngines,
    settings: RepeatSettings,
    stages: Sequence[str] = STAGES,
    flow_steps: int = CLIP_PERIOD,
    log: Callable[[str], None] = print,
) -> dict:
    """Measure every requested stage on every backend (optimized modules and engines are freed after each stage)."""
    records = []
    for stage in network_stages(bm):
        if stage.name in stages:
            log(f"stage {stage.name}")
            records.append(measure_stage(stage, plans, engines, settings))
    if "xmem_step" in stages:
        log("stage xmem_step")
        records.append(measure_xmem(bm, plans, engines, settings))
    log("flow tracker step")
    return {
        "backends": {n: {"variant": p.variant, "available": p.available, "reason": p.reason} for n, p in plans.items()},
        "export": {"backends": [b for b in EXPORTED if plans[b].available and b not in engines.reasons],
                   "export_s": round(engines.export_s, 2), "reasons": engines.reasons},
        "stages": records,
        "flow_tracker": measure_flow(bm.frame_hw, settings.warmup, flow_steps),
    }
