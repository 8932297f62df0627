"""End-to-end streaming: a camera-rate producer, the streaming runtime, and what a robot sees.

A producer thread pushes synthetic frames at the camera rate into a ``PushSource`` (bounded,
drops the oldest frame when the consumer falls behind) with their capture time; the
``StreamingRuntime`` tracks every frame with the weight-free tracker while the VISA
reasoning step reruns asynchronously on a sliding window. Figures: output fps, staleness
(capture -> mask ready) and its series over time, reasoning-step latency, anchor age
(frames between a published mask and the frame it was reasoned on), frames dropped.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from visa_edge.runtime.reasoning import ReasoningStep
from visa_edge.runtime.streaming import Frame, FrameResult, PushSource, ReasonOutput, StreamConfig, StreamingRuntime
from visa_edge.runtime.streaming.visa_reasoner import VisaReasoner
from visa_edge.runtime.reasoner_protocol import Reasoner
from visa_edge.runtime.tracking.factory import tracker_factory

from .models import CLIP_PERIOD, QUERY, synthetic_frames, synthetic_mask
from .timing import summarize


@dataclass(frozen=True)
class StreamSettings:
    """The camera and the scheduling of the streaming run.

    The producer runs ``seconds`` and, if no frame has been published with a reasoned mask by
    then, on until one has (at most ``max_seconds``): the figures must include tracking from an
    anchor, not only the frames before the first reasoning result.
    """

    rate_fps: float = 15.0
    seconds: float = 20.0
    max_seconds: float = 60.0
    frame_hw: tuple[int, int] = (240, 320)
    every_frames: int = 30
    window: int = 22
    queue: int = 4

    def __post_init__(self):
        if self.rate_fps <= 0 or self.seconds <= 0 or self.max_seconds < self.seconds or self.queue < 1:
            raise ValueError(f"{self}: expected rate_fps > 0, 0 < seconds <= max_seconds, queue >= 1")


@dataclass(frozen=True)
class FrameRecord:
    """What the benchmark keeps of one published frame (times in ``time.monotonic`` seconds)."""

    index: int
    capture: float
    arrival: float
    ready: float
    track_s: float
    anchor_age: int | None
    mask_source: str


def produce(source: PushSource, frames: Sequence[np.ndarray], settings: StreamSettings,
            anchored: Callable[[], bool]) -> None:
    """Push frames at the camera rate (capture time = push time), then close the source."""
    period = 1.0 / settings.rate_fps
    start = time.monotonic()
    i = 0
    while True:
        elapsed = time.monotonic() - start
        if elapsed >= settings.max_seconds or (elapsed >= settings.seconds and anchored()):
            break
        delay = start + i * period - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        source.push(frames[i % len(frames)], timestamp=time.monotonic())
        i += 1
    source.close()


class TrueMaskReasoner:
    """Runs the reasoning step in full (its latency is what is measured) but returns the synthetic
    clip's true mask of the target frame.

    With random weights the reasoned mask is noise (often half the frame), and the weight-free
    tracker's cost depends on the mask it tracks; anchoring it on the real object keeps the
    tracking workload that of a real stream.
    """

    def __init__(self, reasoner: Reasoner, frame_hw: tuple[int, int]):
        self.reasoner, self.frame_hw = reasoner, frame_hw

    def __call__(self, frames: Sequence[Frame], query: str) -> ReasonOutput:
        out = self.reasoner(frames, query)
        return ReasonOutput(synthetic_mask(frames[-1].index % CLIP_PERIOD, self.frame_hw), out.timings)


def run_stream(step: ReasoningStep, settings: StreamSettings, labels: dict[str, str], true_masks: bool) -> dict:
    """Stream the synthetic clip through the runtime at the camera rate; ``labels`` name the reasoner and its backend.

    ``true_masks``: anchor the tracker on the clip's true masks (:class:`TrueMaskReasoner`; for random weights).
    """
    frames = synthetic_frames(CLIP_PERIOD, settings.frame_hw)
    step(frames[: step_frames(settings)], QUERY)  # one-time costs (first engine runs) stay out of the stream
    source = PushSource(maxsize=settings.queue)
    config = StreamConfig(window=settings.window, every_frames=settings.every_frames)
    reasoner = VisaReasoner(step)
    if true_masks:
        reasoner = TrueMaskReasoner(reasoner, settings.frame_hw)
    runtime = StreamingRuntime(reasoner, tracker_factory("flow"), config, query=QUERY)
    records: list[FrameRecord] = []
    anchored = threading.Event()  # a frame has been published with a reasoned (re-anchored) mask

    def collect(r: FrameResult) -> None:
        records.append(FrameRecord(r.frame.index, r.frame.timestamp, r.arrival, r.ready, r.track_s, r.anchor_age, r.mask_source))
        if r.anchor_index is not None:
            anchored.set()

    producer = threading.Thread(target=produce, name="camera", daemon=True,
                                args=(source, frames, settings, anchored.is_set))
    producer.start()
    try:
        runtime.run(source, on_result=collect)
    finally:
        producer.join()
        runtime.close()
    return summarize_stream(records, runtime, source.dropped, settings, {**labels, "anchor_masks": "synthetic clip's true masks"
                            if true_masks else "reasoned masks"})


def step_frames(settings: StreamSettings) -> int:
    """Frames one reasoning step of the stream sees: up to 11 references + the target."""
    return min(settings.window, 12)


def summarize_stream(records: Sequence[FrameRecord], runtime: StreamingRuntime, dropped: int,
                     settings: StreamSettings, labels: dict[str, str]) -> dict:
    """The streaming figures, and the per-frame series for the staleness plot."""
    if not records:
        raise RuntimeError("streaming: no frame was published")
    stats = runtime.stats
    t0 = records[0].capture
    wall = max(r.ready for r in records) - t0
    ages = [r.anchor_age for r in records if r.anchor_age is not None]
    return {
        **labels,
        "settings": asdict(settings),
        "frames_pushed": len(records) + dropped,  # every pushed frame is published or dropped
        "frames_out": len(records),
        "dropped": dropped,
        "dropped_late": stats.dropped_late,  # received too late to track (published with the last mask)
        "wall_s": wall,
        "output_fps": len(records) / wall,
        "staleness_ms": summarize([r.ready - r.capture for r in records]),
        "queue_wait_ms": summarize([r.arrival - r.capture for r in records]),
        "track_ms": summarize([r.track_s for r in records]),
        "reasoning_ms": summarize(list(stats.reasoning_s)) if stats.reasoning_s else None,
        "catchup_ms": summarize(list(stats.catchup_s)) if stats.catchup_s else None,
        "reasoning_steps": {"requested": stats.reasoning_requested, "completed": stats.reasoning_completed,
                            "coalesced": stats.reasoning_coalesced, "failed": stats.reasoning_failed,
                            "discarded": stats.results_discarded, "catchup_frames": stats.catchup_frames},
        "last_error": stats.last_error,
        "frames_with_reasoned_mask": len(ages),
        "first_reasoned_mask_s": next((r.ready - t0 for r in records if r.anchor_age is not None), None),
        "anchor_age_frames": {"p50": float(np.percentile(ages, 50)), "max": int(max(ages)), "n": len(ages)} if ages else None,
        "mask_sources": dict(Counter(r.mask_source for r in records)),
        "series": {
            "t_s": [round(r.capture - t0, 4) for r in records],
            "staleness_ms": [round((r.ready - r.capture) * 1000, 3) for r in records],
            "anchor_age": [r.anchor_age for r in records],
            "mask_source": [r.mask_source for r in records],
        },
    }

