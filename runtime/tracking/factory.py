"""Tracker factories by name: each call of the returned function gives a fresh tracker.

The streaming runtime needs a fresh tracker per re-anchoring (the catch-up runs beside the
published one), so networks are loaded once and shared by every tracker of a factory.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from ..backends import Engine
from ..errors import InputError
from .base import Tracker

TRACKERS = ("flow", "xmem")


def tracker_factory(
    kind: str,
    checkpoint: str | Path | None = None,
    device: str = "cpu",
    engines: Mapping[str, Engine] | None = None,
) -> Callable[[], Tracker]:
    """``flow`` (weight-free) or ``xmem`` (needs the XMem.pth ``checkpoint`` unless ``engines`` cover it)."""
    if kind == "flow":
        from .flow import FlowTracker

        return FlowTracker
    if kind == "xmem":
        from .xmem import XMemTracker
        from .xmem.networks import XMEM_NETWORKS

        given = {k: v for k, v in (engines or {}).items() if k in XMEM_NETWORKS}
        if checkpoint is None and set(XMEM_NETWORKS) - set(given):
            raise InputError("tracker xmem: needs --xmem PATH to XMem.pth (or engines for all its networks)")
        base = XMemTracker.from_checkpoint(checkpoint, device=device, engines=given) if checkpoint else XMemTracker(given, device=device)
        return lambda: XMemTracker(base.engines, base.config, base.device)
    raise InputError(f"tracker {kind!r}: expected one of {TRACKERS}")
