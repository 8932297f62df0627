"""The tracker interface used by the CLI and the streaming runtime.

A tracker carries one or several objects, each with a stable integer id (1..255; 0 is the
background). Single-object callers pass a 0/1 mask and read ``TrackOutput.prob``/``mask``
(object 1); multi-object callers pass a label image and read ``probs``/``labels``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MAX_OBJECT_ID = 255  # label images are uint8


@dataclass
class TrackOutput:
    """A tracker's result for one frame.

    ``probs`` [K,H,W] holds one foreground-probability plane per object, in ``objects``
    order, after the tracker's own competition between objects (they sum to at most 1 per
    pixel; the background is the rest). ``prob``/``confidence`` are those of the first object.
    """

    prob: np.ndarray  # float32 [H,W] foreground probability of objects[0] at the frame size
    confidence: float  # in [0, 1]; low values ask the runtime for a new reasoning step
    objects: tuple[int, ...] = (1,)  # object ids, the order of ``probs`` and ``confidences``
    probs: np.ndarray | None = None  # float32 [K,H,W]; None for a single object (then ``prob[None]``)
    confidences: tuple[float, ...] | None = None  # per object; None for a single object

    @property
    def mask(self) -> np.ndarray:
        """uint8 [H,W] 0/1 mask of the first object (probability > 0.5)."""
        return (self.prob > 0.5).astype(np.uint8)

    @property
    def object_probs(self) -> np.ndarray:
        """float32 [K,H,W], one plane per object in ``objects`` order."""
        return self.prob[None] if self.probs is None else self.probs

    @property
    def object_confidences(self) -> tuple[float, ...]:
        return (float(self.confidence),) if self.confidences is None else tuple(self.confidences)

    @property
    def labels(self) -> np.ndarray:
        """uint8 [H,W] label image: argmax over [background = 1 - sum(probs), objects...] -> 0 or an object id."""
        probs = self.object_probs
        if not self.objects:
            return np.zeros(self.prob.shape, np.uint8)
        background = 1.0 - probs.sum(0, keepdims=True)
        best = np.concatenate([background, probs], 0).argmax(0)
        lut = np.asarray((0, *self.objects), np.uint8)
        return lut[best]

    def object_mask(self, object_id: int) -> np.ndarray:
        """uint8 [H,W] 0/1 mask of one object (its pixels in ``labels``)."""
        return (self.labels == object_id).astype(np.uint8)


def mask_objects(mask: np.ndarray, objects: Sequence[int] | None) -> tuple[int, ...]:
    """The object ids a reference ``mask`` defines: ``objects`` if given, else its non-zero values
    (a 0/1 or boolean mask defines object 1)."""
    if objects is not None:
        return tuple(int(o) for o in objects)
    values = np.unique(np.asarray(mask))
    return tuple(int(v) for v in values if v != 0)


class Tracker(ABC):
    """Mask tracker over RGB uint8 frames [H,W,3], for one or several objects.

    ``step`` is called once per frame in temporal order. ``mask`` given with a frame makes it
    a reference: a label image [H,W] (0 = background, k = object k) or a 0/1 mask (object 1);
    ``objects`` lists the ids it defines (default: its non-zero values). Objects tracked
    before and not in ``objects`` keep their predicted planes (XMem's non-exhaustive
    semantics). ``index`` is the frame's stream index: trackers made by one factory share
    per-frame features that do not depend on the reference (e.g. consecutive-frame flow,
    XMem's key-encoder output) in a cache keyed by it, so a catch-up tracker re-stepping
    buffered frames does not recompute them; None disables the cache for that frame.
    ``anchor`` restarts from a reference at any time (e.g. the reasoning result for a frame
    that was already tracked); the frames after it are then stepped again by the caller, the
    older ones possibly with ``bridge`` (a cheaper propagation).
    """

    @abstractmethod
    def reset(self) -> None:
        """Forget every frame and reference."""

    @abstractmethod
    def step(
        self, frame: np.ndarray, mask: np.ndarray | None = None, *, objects: Sequence[int] | None = None,
        index: int | None = None,
    ) -> TrackOutput:
        """Track into ``frame`` (or take ``mask`` as its reference) and return per-object probabilities."""

    def anchor(
        self, frame: np.ndarray, mask: np.ndarray, *, objects: Sequence[int] | None = None, index: int | None = None,
    ) -> TrackOutput:
        """Restart from ``mask`` at ``frame``; later ``step`` calls propagate from it."""
        self.reset()
        return self.step(frame, mask, objects=objects, index=index)

    def bridge(self, frame: np.ndarray, *, index: int | None = None) -> TrackOutput:
        """Propagate into ``frame`` as cheaply as the tracker can, for a catch-up frame whose output
        is not published (the catch-up steps its newest frames in full). The default is a full ``step``;
        a tracker may reuse only its cached anchor-independent features and skip the rest."""
        return self.step(frame, index=index)
