"""Streaming: frame sources, the sliding-window reasoning scheduler with tracking, sinks."""

from .scheduler import FrameResult, ReasonOutput, RuntimeStats, StreamConfig, StreamingRuntime
from .sources import Frame, FrameSource, PushSource, open_source

__all__ = [
    "Frame",
    "FrameResult",
    "FrameSource",
    "PushSource",
    "ReasonOutput",
    "RuntimeStats",
    "StreamConfig",
    "StreamingRuntime",
    "open_source",
]
