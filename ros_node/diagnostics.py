"""What the node reports on ``diagnostics``: computed from RuntimeStats.snapshot(), the recent
frame results and the node's counters (pure Python, so it is tested without ROS)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..runtime.streaming.scheduler import FrameResult

OK, WARN, ERROR = 0, 1, 2  # diagnostic_msgs/DiagnosticStatus levels
FPS_HORIZON_S = 2.0  # tracking fps is measured over the results of the last FPS_HORIZON_S seconds
FPS_MIN_SPAN_S = 1.0  # ... divided by at least this span, so a burst of queued frames does not read as a spike
QUERY_CHARS = 200  # a query longer than this is shortened in diagnostics and mask_info


@dataclass
class NodeCounters:
    """Per-node message counters (the runtime counts frames it saw; these count what ROS delivered)."""

    received: int = 0  # image messages delivered to the node
    rejected: int = 0  # unsupported encoding/format or inconsistent step/size/data: never reach the runtime
    published: int = 0  # frames whose mask was published
    failed: int = 0  # frames whose processing raised (logged; the node goes on)
    queries_refused: int = 0  # queries the reasoner refused (e.g. too long); the previous query stays
    last_rejection: str = ""
    query_error: str = ""  # why the last query published was refused ("" once a query is accepted)


@dataclass(frozen=True)
class ResultInfo:
    """What diagnostics need from a FrameResult (without holding on to its frame)."""

    ready: float
    track_s: float
    anchor_age: int | None
    mask_source: str
    confidence: float

    @classmethod
    def of(cls, r: FrameResult) -> "ResultInfo":
        return cls(r.ready, r.track_s, r.anchor_age, r.mask_source, float(r.confidence))


@dataclass(frozen=True)
class Report:
    level: int
    message: str
    values: dict[str, str]


def tracking_fps(ready_times: Sequence[float], now: float, horizon: float = FPS_HORIZON_S,
                 min_span: float = FPS_MIN_SPAN_S) -> float:
    """Masks per second over the results that became ready in the last ``horizon`` seconds, over a
    span of at least ``min_span`` (queued frames finishing together count at most their number per
    ``min_span``, not as a spike)."""
    recent = [t for t in ready_times if now - t <= horizon]
    if len(recent) < 2:
        return 0.0
    return (len(recent) - 1) / max(recent[-1] - recent[0], min_span)


def short(query: str) -> str:
    """The query, cut to QUERY_CHARS characters (with its full length) for reports."""
    return query if len(query) <= QUERY_CHARS else f"{query[:QUERY_CHARS]}... ({len(query)} chars)"


def mask_info(metadata: Mapping, query_id: int, anchor_age_s: float | None) -> dict[str, str]:
    """The per-frame key-values published on ``mask_info`` from FrameResult.metadata()."""
    latency = metadata["anchor_latency_ms"] or {}
    values = {
        "frame_index": str(metadata["index"]),
        "mask_source": metadata["mask_source"],
        "anchor_index": "" if metadata["anchor_index"] is None else str(metadata["anchor_index"]),
        "anchor_age_frames": "" if metadata["anchor_age"] is None else str(metadata["anchor_age"]),
        "anchor_age_s": "" if anchor_age_s is None else f"{anchor_age_s:.3f}",
        "confidence": f"{metadata['confidence']:.4f}",
        "mask_fraction": f"{metadata['mask_fraction']:.5f}",
        "query": short(metadata["query"]),
        "query_id": str(query_id),
        "staleness_ms": f"{metadata['staleness_ms']:.1f}",
        "delay_ms": "" if metadata.get("delay_ms") is None else f"{metadata['delay_ms']:.1f}",
        "track_ms": f"{metadata['track_ms']:.1f}",
    }
    values.update({f"anchor_latency_{stage}_ms": f"{ms:.1f}" for stage, ms in latency.items()})
    return values


def _ms(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds * 1000:.1f}"


def report(stats: Mapping, recent: Sequence[ResultInfo], counters: NodeCounters, dropped: int, state: str,
           query: str, now: float, previous: Report | None = None) -> Report:
    """The diagnostics of one period; WARN when frames were rejected or failed or reasoning failed
    since ``previous``; ERROR when the processing thread stopped, or while the last query published
    was refused (the previous one stays active)."""
    last = recent[-1] if recent else None
    track = [r.track_s for r in recent if now - r.ready <= FPS_HORIZON_S]
    values = {
        "state": state,
        "query": short(query),
        "frames_received": str(counters.received),
        "frames_published": str(counters.published),
        "rejected_frames": str(counters.rejected),
        "dropped_frames": str(dropped),
        "dropped_late": str(stats["dropped_late"]),
        "failed_frames": str(counters.failed),
        "tracking_fps": f"{tracking_fps([r.ready for r in recent], now):.2f}",
        "tracker_ms_p50": _ms(float(np.median(track)) if track else None),
        "reasoning_latency_ms": _ms(stats["reasoning_s"]["last"]),
        "reasoning_latency_p50_ms": _ms(stats["reasoning_s"]["p50"]),
        "reasoning_completed": str(stats["reasoning_completed"]),
        "reasoning_failed": str(stats["reasoning_failed"]),
        "reasoning_coalesced": str(stats["reasoning_coalesced"]),
        "anchor_age": "" if last is None or last.anchor_age is None else str(last.anchor_age),
        "mask_source": "" if last is None else last.mask_source,
        "confidence": "" if last is None else f"{last.confidence:.3f}",
        "last_rejection": counters.last_rejection,
        "queries_refused": str(counters.queries_refused),
        "query_error": counters.query_error,
        "last_error": (stats["last_error"] or "").split("\n")[0],
    }
    if state == "stopped":
        return Report(ERROR, "processing thread stopped: no masks are published", values)
    if counters.query_error:
        return Report(ERROR, f"query refused ({counters.query_error}); still using {short(query)!r}", values)
    grew = [key for key in ("rejected_frames", "failed_frames", "reasoning_failed")
            if int(values[key]) > (int(previous.values[key]) if previous else 0)]
    if grew:
        return Report(WARN, "new " + ", ".join(grew), values)
    return Report(OK, "paused (no query)" if state == "paused" else f"{state}: {query!r}", values)
