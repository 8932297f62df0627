"""Assembling a streaming runtime from paths and options (shared by ``visa-edge run`` and the ROS node)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .visa_reasoner import VisaReasoner
from .scheduler import StreamConfig, StreamingRuntime

@dataclass(frozen=True)
class PipelineConfig:
    """Where the model and engines are and how to run them."""

    checkpoint: str | None  # VISA checkpoint folder (LLM, tokenizer, [SEG] head; also the networks without engines)
    clip: str | None  # CLIP folder (both None with a reasoner_url)
    engines: str | None = None  # engine folder from `visa-edge export` (replaces the PyTorch networks it holds)
    backend: str | None = None  # engine backend: onnxruntime | tensorrt (default: what the folder was built for)
    quantization: str | None = None  # None | "nf4" (LLM)
    device: str = "cpu"
    dtype: str = "fp32"
    sam_checkpoint: str | None = None
    tracker: str = "flow"  # flow | xmem
    xmem: str | None = None  # XMem.pth for tracker "xmem"
    stream: StreamConfig = field(default_factory=StreamConfig)
    reasoner_url: str | None = None  # reason on a `visa-edge serve` server instead of loading the model here
    reasoner_token: str | None = None  # the server's shared token


def build_runtime(cfg: PipelineConfig, query: str | Sequence[str] = "") -> StreamingRuntime:
    """Load everything ``cfg`` names and return a running ``StreamingRuntime`` (reasoning remote with a reasoner_url)
    for ``query`` (one, or a list of several)."""
    from ..backends.loading import load_engines
    from ..visa_config import DTYPES
    from ..model import VisaModel
    from ..reasoning import ReasoningStep
    from ..tracking.factory import tracker_factory

    if cfg.reasoner_url:
        from ..remote_reasoner import RemoteReasoner

        engines = load_engines(cfg.engines, backend=cfg.backend, device=cfg.device, sources={"xmem": cfg.xmem}) \
            if cfg.engines else {}
        trackers = tracker_factory(cfg.tracker, cfg.xmem, cfg.device, engines)
        return StreamingRuntime(RemoteReasoner(cfg.reasoner_url, cfg.reasoner_token), trackers, cfg.stream, query=query)
    model = VisaModel.from_pretrained(
        cfg.checkpoint, clip=cfg.clip, quantization=cfg.quantization, device=cfg.device, dtype=DTYPES[cfg.dtype],
        sam_checkpoint=cfg.sam_checkpoint,
    )
    sources = {"checkpoint": cfg.checkpoint, "clip": cfg.clip, "sam_checkpoint": cfg.sam_checkpoint, "xmem": cfg.xmem}
    engines = load_engines(cfg.engines, backend=cfg.backend, device=cfg.device, sources=sources) if cfg.engines else {}
    step = ReasoningStep(model, engines)
    trackers = tracker_factory(cfg.tracker, cfg.xmem, cfg.device, engines)
    return StreamingRuntime(VisaReasoner(step), trackers, cfg.stream, query=query)
