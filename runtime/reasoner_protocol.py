"""The reasoner interface of the streaming runtime and the offline mode: window frames + queries -> masks.

Implemented by ``VisaReasoner`` (the local reasoning step), ``RemoteReasoner`` (a ``visa-edge
serve`` server) and the oracle of the latency benchmark.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from .frames import Frame


@dataclass
class ReasonOutput:
    """What a reasoner returns for the target (last) frame."""

    mask: np.ndarray  # uint8 [H,W] 0/1
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    masks: np.ndarray | None = None  # uint8 [Q,H,W] one mask per query (reasoners given several queries); mask = masks[0]


class Reasoner(Protocol):
    """Reasons on ``frames`` (references in temporal order, then the target) for one query (a str) or
    several (a sequence; the result then has ``masks``). May also have ``check_query(q)`` (raises
    InputError for a query it cannot take) and ``reset()`` (a stream restarted its frame indices)."""

    def __call__(self, frames: Sequence[Frame], query: str | Sequence[str]) -> ReasonOutput: ...
