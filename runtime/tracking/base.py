"""The tracker interface used by the CLI and the streaming runtime."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np


@dataclass
class TrackOutput:
    """A tracker's result for one frame."""

    prob: np.ndarray  # float32 [H,W] foreground probability at the frame size
    confidence: float  # in [0, 1]; low values ask the runtime for a new reasoning step

    @property
    def mask(self) -> np.ndarray:
        """uint8 [H,W] 0/1 mask (probability > 0.5)."""
        return (self.prob > 0.5).astype(np.uint8)


class Tracker(ABC):
    """Single-object mask tracker over RGB uint8 frames [H,W,3].

    ``step`` is called once per frame in temporal order; ``mask`` (uint8/bool [H,W]) given
    with a frame makes it a reference. ``anchor`` inserts a reference mask at any time
    (e.g. the reasoning result for a frame that was already tracked); the frames after it
    are then stepped again by the caller.
    """

    @abstractmethod
    def reset(self) -> None:
        """Forget every frame and reference."""

    @abstractmethod
    def step(self, frame: np.ndarray, mask: np.ndarray | None = None) -> TrackOutput:
        """Track into ``frame`` (or take ``mask`` as its reference) and return its probability map."""

    def anchor(self, frame: np.ndarray, mask: np.ndarray) -> TrackOutput:
        """Make ``mask`` the reference at ``frame``; later ``step`` calls propagate from it."""
        return self.step(frame, mask)
