"""Streaming: frame sources, the sliding-window reasoning scheduler with tracking, sinks."""

from .scheduler import (FrameResult, ReasonOutput, RuntimeStats, StreamConfig, StreamingRuntime, StreamParameter,
                        stream_parameters)
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
    "StreamParameter",
    "open_source",
    "stream_parameters",
]
