"""The streaming runtime: tracking at camera rate, reasoning re-run asynchronously.

Every frame is tracked on the caller's thread and gets exactly one ``FrameResult``. The
reasoning step runs on one worker thread (at most one step in flight, at most one
request pending: a newer request replaces the pending one, counted as *coalesced*). Its
result for frame t0 arrives later: the worker anchors a fresh tracker at t0 with the mask,
steps it through the buffered frames up to the newest one ("catch-up"), and swaps it in
between two frames, so the published mask always belongs to the newest frame. A catch-up
pass steps at most ``catchup_max_steps`` frames: when more are pending it steps an evenly
spaced subset ending at the newest (trackers follow a few frames' motion); the new tracker
is swapped in once at most ``catchup_gap`` frames are left or after ``catchup_passes``
passes, so catch-up converges even when the tracker is barely faster than the camera.

Triggers: a new query, every ``every_frames`` frames or ``every_seconds`` seconds, and
``confidence_patience`` consecutive frames with tracker confidence below
``min_confidence``. A failing step is reported in the stats and retried after
``retry_delay_s`` while tracking continues.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Protocol

import numpy as np

from ..errors import InputError
from ..tracking import Tracker, TrackOutput
from .sources import Frame
from .window import FrameBuffer, sample_references

MASK_SOURCES = ("reasoning", "tracked", "none", "paused")


@dataclass(frozen=True)
class StreamConfig:
    """Scheduling parameters of the streaming runtime."""

    window: int = 22  # frames in the reasoning window; the newest is the target
    references: int = 11  # reference frames sampled from the window (VISA: at most 11)
    every_frames: int | None = 30  # rerun reasoning every K frames (None: off)
    every_seconds: float | None = None  # rerun reasoning every T seconds (None: off)
    min_confidence: float = 0.3  # tracker confidence under this is "low"
    confidence_patience: int = 3  # consecutive low-confidence frames that trigger reasoning
    buffer_frames: int = 300  # frames kept for windows and catch-up (bounded memory)
    catchup_max_steps: int = 8  # tracker steps per catch-up pass; more pending frames are subsampled
    catchup_gap: int = 2  # swap the caught-up tracker in once at most this many frames are left
    catchup_passes: int = 3  # ... or after this many passes
    retry_delay_s: float = 0.5  # wait before retrying a failed reasoning step
    blocking: bool = False  # wait for each reasoning result before the next frame (offline/deterministic)

    def __post_init__(self):
        if self.window < 1 or not 1 <= self.references <= 11:
            raise InputError(f"window={self.window}, references={self.references}: expected window >= 1, references in 1..11")
        if self.buffer_frames < self.window:
            raise InputError(f"buffer_frames={self.buffer_frames} < window={self.window}: the buffer must hold a window")
        if self.catchup_max_steps < 1 or self.catchup_passes < 1 or self.catchup_gap < 0:
            raise InputError(f"catchup_max_steps={self.catchup_max_steps}, catchup_passes={self.catchup_passes}, "
                             f"catchup_gap={self.catchup_gap}: expected >= 1, >= 1, >= 0")


@dataclass
class ReasonOutput:
    """What a reasoner returns for the target (last) frame."""

    mask: np.ndarray  # uint8 [H,W] 0/1
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    masks: np.ndarray | None = None  # uint8 [Q,H,W] one mask per query (reasoners given several queries); mask = masks[0]


class Reasoner(Protocol):
    def __call__(self, frames: Sequence[Frame], query: str) -> ReasonOutput: ...


@dataclass
class FrameResult:
    """The published mask of one frame and its metadata."""

    frame: Frame
    mask: np.ndarray  # uint8 [H,W] 0/1
    confidence: float
    mask_source: str  # one of MASK_SOURCES
    anchor_index: int | None  # frame the current mask was reasoned on
    query: str
    arrival: float  # time.monotonic() when the runtime received the frame
    ready: float  # time.monotonic() when its mask was ready
    track_s: float  # tracker time for this frame
    anchor_latency: dict[str, float] | None = None  # seconds per stage of the reasoning step behind the anchor

    @property
    def anchor_age(self) -> int | None:
        """Frames between this frame and the frame its anchor was reasoned on."""
        return None if self.anchor_index is None else self.frame.index - self.anchor_index

    def metadata(self) -> dict:
        return {
            "index": self.frame.index,
            "name": self.frame.name,
            "timestamp": self.frame.timestamp,
            "mask_source": self.mask_source,
            "anchor_index": self.anchor_index,
            "anchor_age": self.anchor_age,
            "confidence": round(float(self.confidence), 4),
            "mask_fraction": round(float(self.mask.mean()), 5),
            "query": self.query,
            "staleness_ms": round((self.ready - self.arrival) * 1000, 3),
            "track_ms": round(self.track_s * 1000, 3),
            "anchor_latency_ms": None if self.anchor_latency is None
            else {k: round(v * 1000, 3) for k, v in self.anchor_latency.items()},
        }


@dataclass
class RuntimeStats:
    """Counters and recent latencies of a streaming session."""

    frames: int = 0
    dropped: int = 0  # frames a live source dropped before the runtime saw them
    reasoning_requested: int = 0
    reasoning_coalesced: int = 0  # pending requests replaced by a newer one
    reasoning_started: int = 0
    reasoning_completed: int = 0
    reasoning_failed: int = 0
    results_discarded: int = 0  # results for an old query, or whose frame left the buffer
    catchup_frames: int = 0  # frames re-tracked after re-anchoring
    last_error: str | None = None
    reasoning_s: deque = field(default_factory=lambda: deque(maxlen=256))
    catchup_s: deque = field(default_factory=lambda: deque(maxlen=256))

    def snapshot(self) -> dict:
        """Plain values (safe to call while the runtime runs: deques are copied, not iterated in Python)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        for key in ("reasoning_s", "catchup_s"):
            values = list(getattr(self, key))
            d[key] = {"count": len(values), "last": values[-1] if values else None,
                      "p50": float(np.percentile(values, 50)) if values else None}
        return d


class StreamingRuntime:
    """Publishes one mask per frame while the reasoning step reruns on a sliding window."""

    def __init__(self, reasoner: Reasoner, tracker_factory: Callable[[], Tracker], config: StreamConfig = StreamConfig(),
                 query: str = ""):
        self.reasoner = reasoner
        self.tracker_factory = tracker_factory
        self.config = config
        self.stats = RuntimeStats()
        self.buffer = FrameBuffer(config.buffer_frames)
        self._lock = threading.Lock()  # guards the tracker swap and the query state
        self._wake = threading.Condition()  # worker requests
        self._done = threading.Condition()  # completion of a reasoning step (blocking mode)
        self._tracker: Tracker | None = None
        self._tracker_upto = -1  # newest frame the current tracker has seen
        self._tracker_out: TrackOutput | None = None  # its output for that frame
        self._anchor: int | None = None
        self._anchor_latency: dict[str, float] | None = None
        self._query = ""
        self._generation = 0
        self._pending: tuple[int, int, str] | None = None  # (generation, target index, query)
        self._busy = False
        self._last_request_index: int | None = None
        self._last_request_time = 0.0
        self._low_streak = 0
        self._retry_at: float | None = None
        self._stop = False
        self._worker = threading.Thread(target=self._work, name="reasoning", daemon=True)
        self._worker.start()
        if query:
            self.set_query(query)

    @property
    def query(self) -> str:
        return self._query

    def set_query(self, query: str) -> None:
        """Set or replace the query (takes effect with its first reasoning result); "" pauses."""
        with self._lock:
            self._query = " ".join(query.split())
            self._generation += 1
            self._tracker, self._tracker_out, self._tracker_upto, self._anchor = None, None, -1, None
            self._anchor_latency = None
            self._last_request_index = None
            self._retry_at = None
        with self._wake:
            self._pending = None

    @property
    def reasoning_busy(self) -> bool:
        """Whether a reasoning step is running or waiting to run (for diagnostics)."""
        return self._busy or self._pending is not None

    def request_reasoning(self) -> None:
        """Force a reasoning step on the next frame (e.g. a ROS service call)."""
        self._last_request_index = None

    def process(self, frame: Frame, arrival: float | None = None) -> FrameResult:
        """Track one frame (triggering reasoning as configured) and return its result."""
        arrival = time.monotonic() if arrival is None else arrival
        self.buffer.add(frame)
        self.stats.frames += 1
        if self._query and self._should_reason(frame.index):
            self._submit(frame.index)
            if self.config.blocking:
                self._wait_idle()
        t0 = time.monotonic()
        with self._lock:
            query, anchor, latency = self._query, self._anchor, self._anchor_latency
            if self._tracker is None:
                out = None
            elif self._tracker_upto >= frame.index:
                out = self._tracker_out
            else:
                out = self._tracker.step(frame.image)
                self._tracker_upto, self._tracker_out = frame.index, out
        track_s = time.monotonic() - t0
        if out is None:
            mask, conf = np.zeros(frame.image.shape[:2], np.uint8), 0.0
            source = "none" if query else "paused"
        else:
            mask, conf = out.mask, float(out.confidence)
            source = "reasoning" if anchor == frame.index else "tracked"
        low = source == "tracked" and conf < self.config.min_confidence  # a fresh reasoning mask is not "low"
        self._low_streak = self._low_streak + 1 if low else 0
        return FrameResult(frame, mask, conf, source, anchor, query, arrival, time.monotonic(), track_s, latency)

    def run(self, frames: Iterable[Frame], sinks: Sequence = (), on_result: Callable[[FrameResult], None] | None = None) -> RuntimeStats:
        """Process every frame of ``frames``, writing each result to ``sinks``."""
        source_dropped = getattr(frames, "dropped", None)
        for frame in frames:
            result = self.process(frame)
            for sink in sinks:
                sink.write(result)
            if on_result is not None:
                on_result(result)
            if source_dropped is not None:
                self.stats.dropped = frames.dropped
        return self.stats

    def close(self) -> None:
        """Stop the worker (an in-flight step finishes first)."""
        with self._wake:
            self._stop = True
            self._wake.notify()
        self._worker.join()

    def __enter__(self) -> "StreamingRuntime":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _should_reason(self, index: int) -> bool:
        cfg, now = self.config, time.monotonic()
        if self._retry_at is not None:
            return now >= self._retry_at
        if self._last_request_index is None:
            return True
        if cfg.every_frames and index - self._last_request_index >= cfg.every_frames:
            return True
        if cfg.every_seconds and now - self._last_request_time >= cfg.every_seconds:
            return True
        return self._low_streak >= cfg.confidence_patience

    def _submit(self, index: int) -> None:
        self._last_request_index, self._last_request_time = index, time.monotonic()
        self._low_streak, self._retry_at = 0, None
        self.stats.reasoning_requested += 1
        with self._wake:
            if self._pending is not None:
                self.stats.reasoning_coalesced += 1
            self._pending = (self._generation, index, self._query)
            self._wake.notify()

    def _wait_idle(self) -> None:
        with self._done:
            self._done.wait_for(lambda: self._pending is None and not self._busy)

    def _work(self) -> None:
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._stop or self._pending is not None)
                if self._stop:
                    return
                request, self._pending, self._busy = self._pending, None, True
            try:
                self._reason_and_anchor(*request)
            except Exception as e:  # reported and retried; tracking goes on
                self.stats.reasoning_failed += 1
                self.stats.last_error = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}"
                self._retry_at = time.monotonic() + self.config.retry_delay_s
            finally:
                with self._done:
                    self._busy = False
                    self._done.notify_all()

    def _reason_and_anchor(self, generation: int, target: int, query: str) -> None:
        window = self.buffer.window(target, self.config.window)
        if not window or window[-1].index != target:
            self.stats.results_discarded += 1
            return
        refs = [window[i] for i in sample_references(len(window), len(window) - 1, self.config.references)]
        self.stats.reasoning_started += 1
        t0 = time.monotonic()
        result = self.reasoner(refs + [window[-1]], query)
        self.stats.reasoning_s.append(time.monotonic() - t0)
        self.stats.reasoning_completed += 1
        latency = {**result.timings, "reasoning": self.stats.reasoning_s[-1]}
        if not self._catch_up(generation, window[-1], result.mask, latency):
            self.stats.results_discarded += 1
        else:
            self.stats.catchup_s.append(latency["catchup"])

    def _catch_up(self, generation: int, anchor: Frame, mask: np.ndarray, latency: dict[str, float]) -> bool:
        """Anchor a fresh tracker at ``anchor``, step it towards the newest frame, then swap it in.

        Frames keep arriving during a pass; the tracker is swapped in once at most
        ``catchup_gap`` of them are left (the next published frame bridges them), or after
        ``catchup_passes`` passes, so a tracker only as fast as the camera still converges.
        ``latency`` (the step's stage timings) gains ``catchup`` and is published with the anchor.
        """
        start = time.monotonic()
        shadow = self.tracker_factory()
        out, upto = shadow.anchor(anchor.image, mask), anchor.index
        for passes in range(1, self.config.catchup_passes + 1):
            if generation != self._generation:
                return False
            newer = self.buffer.after(upto)
            if self.buffer.last_evicted > upto:
                return False  # frames after the anchor left the buffer: cannot catch up
            for frame in subsample(newer, self.config.catchup_max_steps):
                out, upto = shadow.step(frame.image), frame.index
                self.stats.catchup_frames += 1
            with self._lock:
                if generation != self._generation:
                    return False
                behind = len(self.buffer.after(upto))
                if behind <= self.config.catchup_gap or passes == self.config.catchup_passes:
                    latency["catchup"] = time.monotonic() - start
                    self._tracker, self._tracker_upto, self._tracker_out, self._anchor = shadow, upto, out, anchor.index
                    self._anchor_latency = latency
                    return True
        return False


def subsample(frames: list[Frame], n: int) -> list[Frame]:
    """At most ``n`` of ``frames``, evenly spaced, always ending with the newest."""
    if len(frames) <= n:
        return frames
    picks = np.linspace(len(frames) - 1, 0, n, endpoint=False)[::-1]
    return [frames[int(round(p))] for p in picks]
