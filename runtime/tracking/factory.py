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

from ..backends import Engine
from ..errors import InputError
from .base import Tracker
from .cache import FeatureCache

TRACKERS = ("flow", "xmem")
CACHE_FRAMES = 64  # frames of features kept: more than a catch-up re-steps after a slow reasoning step


class TrackerFactory:
    """A callable giving fresh trackers that share ``cache`` (read ``cache.hits``/``misses``)."""

    def __init__(self, make: Callable[[FeatureCache], Tracker], cache: FeatureCache):
        self._make = make
        self.cache = cache

    def __call__(self) -> Tracker:
        return self._make(self.cache)


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
