"""Streaming: frame sources, the sliding-window reasoning scheduler with tracking, sinks."""

from ..frames import Frame
from ..reasoner_protocol import Reasoner, ReasonOutput
from .scheduler import FrameResult, RuntimeStats, StreamConfig, StreamingRuntime, StreamParameter, stream_parameters
from .sources import FrameSource, PushSource, open_source

__all__ = [
    "Frame",
    "FrameResult",
    "FrameSource",
    "PushSource",
    "ReasonOutput",
    "Reasoner",
    "RuntimeStats",
    "StreamConfig",
    "StreamingRuntime",
    "StreamParameter",
    "open_source",
    "stream_parameters",
]
