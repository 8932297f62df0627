"""The bounded buffer of recent frames (reasoning windows and catch-up read it)."""

from __future__ import annotations

import threading
from collections import OrderedDict

from ..frames import Frame


class FrameBuffer:
    """The last ``capacity`` frames by index (thread-safe; the oldest is evicted first)."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"buffer capacity {capacity}: expected >= 1")
        self.capacity = capacity
        self._frames: OrderedDict[int, Frame] = OrderedDict()
        self._lock = threading.Lock()
        self.evicted = 0
        self.last_evicted = -1  # index of the newest frame evicted so far

    def add(self, frame: Frame) -> None:
        with self._lock:
            self._frames[frame.index] = frame
            while len(self._frames) > self.capacity:
                self.last_evicted, _ = self._frames.popitem(last=False)
                self.evicted += 1

    def clear(self) -> None:
        """Forget every frame (a stream restart)."""
        with self._lock:
            self._frames.clear()
            self.last_evicted = -1

    def get(self, index: int) -> Frame | None:
        with self._lock:
            return self._frames.get(index)

    def latest(self) -> int | None:
        with self._lock:
            return next(reversed(self._frames), None)

    def after(self, index: int) -> list[Frame]:
        """Buffered frames newer than ``index``, oldest first."""
        with self._lock:
            return [f for i, f in self._frames.items() if i > index]

    def window(self, end: int, size: int) -> list[Frame]:
        """Buffered frames with index in (end - size, end], oldest first."""
        with self._lock:
            return [f for i, f in self._frames.items() if end - size < i <= end]

    def __len__(self) -> int:
        return len(self._frames)
