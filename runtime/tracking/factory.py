"""Tracker factories by name: each call of the returned factory gives a fresh tracker.

The streaming runtime needs a fresh tracker per re-anchoring (the catch-up runs beside the
published one), so networks are loaded once and shared by every tracker of a factory, and so
is one :class:`~visa_edge.runtime.tracking.cache.FeatureCache`: per-frame features that do not
depend on the reference are computed once per stream index, whichever tracker sees it first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..backends import Engine
from ..errors import InputError
from .base import Tracker
from .cache import FeatureCache

TRACKERS = ("flow", "xmem")
CACHE_FRAMES = 64  # frames of features kept: more than a catch-up re-steps after a slow reasoning step


class TrackerFactory:
    """A callable giving fresh trackers that share ``cache`` (read ``cache.hits``/``misses``).

    ``precompute`` fills the cache for a frame before any tracker steps through it (the
    streaming runtime calls it for every frame it buffers, also while no tracker exists), so
    a catch-up after the first reasoning result gets cache hits too.
    """

    def __init__(self, make: Callable[[FeatureCache], Tracker], cache: FeatureCache):
        self._make = make
        self.cache = cache
        self._precomputer: Tracker | None = None  # made on first use; keeps the previous frame for its flow

    def __call__(self) -> Tracker:
        return self._make(self.cache)

    def precompute(self, frame: np.ndarray, index: int) -> None:
        """Compute and cache the anchor-independent features of frame ``index`` (the tracker's
        ``precompute``: what its ``step`` would compute, e.g. the flow to the previous frame
        precomputed). Call it for consecutive buffered frames, in index order, from one thread."""
        if self._precomputer is None:
            self._precomputer = self._make(self.cache)
        self._precomputer.precompute(frame, index)


def tracker_factory(
    kind: str,
    checkpoint: str | Path | None = None,
    device: str = "cpu",
    engines: Mapping[str, Engine] | None = None,
    cache_frames: int = CACHE_FRAMES,
    config: Any = None,
) -> TrackerFactory:
    """``flow`` (weight-free) or ``xmem`` (needs the XMem.pth ``checkpoint`` unless ``engines`` cover it).

    ``config``: the trackers' ``FlowTrackerConfig`` / ``XMemConfig`` (None: the defaults).
    """
    cache = FeatureCache(cache_frames)
    if kind == "flow":
        from .flow import FlowTracker

        return TrackerFactory(lambda shared: FlowTracker(config, cache=shared), cache)
    if kind == "xmem":
        from .xmem import XMemTracker
        from .xmem.networks import XMEM_NETWORKS

        given = {k: v for k, v in (engines or {}).items() if k in XMEM_NETWORKS}
        if checkpoint is None and set(XMEM_NETWORKS) - set(given):
            raise InputError("tracker xmem: needs --xmem PATH to XMem.pth (or engines for all its networks)")
        base = (XMemTracker.from_checkpoint(checkpoint, config, device=device, engines=given) if checkpoint
                else XMemTracker(given, config, device=device))
        return TrackerFactory(lambda shared: XMemTracker(base.engines, base.config, base.device, cache=shared), cache)
    raise InputError(f"tracker {kind!r}: expected one of {TRACKERS}")
