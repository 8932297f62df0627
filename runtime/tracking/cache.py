"""Per-frame features shared by every tracker of a factory, keyed by frame index.

Features that do not depend on the reference mask (consecutive-frame optical flow, XMem's
key-encoder output and decoder skip convolutions) are computed once per frame by whichever tracker sees the frame first
(normally the live one) and reused by the others (a catch-up tracker re-stepping buffered
frames after a re-anchoring). Bounded: the oldest frames are evicted first.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any


class FeatureCache:
    """Thread-safe bounded LRU map ``(frame index, feature name) -> value`` with hit/miss counters."""

    def __init__(self, max_frames: int = 64):
        if max_frames < 1:
            raise ValueError(f"FeatureCache: max_frames={max_frames}; expected >= 1")
        self.max_frames = max_frames
        self._frames: OrderedDict[int, dict[Hashable, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get_or_compute(self, index: int | None, name: Hashable, compute: Callable[[], Any]) -> Any:
        """The feature ``name`` of frame ``index``, computed (outside the lock) on a miss.

        ``index=None`` bypasses the cache (no frame identity). Two trackers missing the same
        entry at once both compute it; the values are equal, the first stored is kept.
        """
        if index is None:
            return compute()
        with self._lock:
            entry = self._frames.get(index)
            if entry is not None and name in entry:
                self.hits += 1
                self._frames.move_to_end(index)
                return entry[name]
            self.misses += 1
        value = compute()
        with self._lock:
            value = self._frames.setdefault(index, {}).setdefault(name, value)
            self._frames.move_to_end(index)
            while len(self._frames) > self.max_frames:
                self._frames.popitem(last=False)
        return value

    def clear(self) -> None:
        """Forget every frame (a stream restarted its indices)."""
        with self._lock:
            self._frames.clear()

    def __len__(self) -> int:
        return len(self._frames)
