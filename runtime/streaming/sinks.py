"""Where published masks go: PNG files, an overlay video, JSONL metadata, a callback."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from ..errors import InputError
from ..io import write_mask
from .scheduler import FrameResult

SOURCE_COLOURS = {"reasoning": (255, 80, 0), "tracked": (0, 200, 60), "none": (128, 128, 128), "paused": (128, 128, 128),
                  "dropped": (230, 200, 0)}


class PngSink:
    """``folder/<frame name>.png`` (0/255), the DAVIS layout for one sequence; ``per_query``:
    ``folder/<query id>/<frame name>.png`` for every current query instead (several queries)."""

    def __init__(self, folder: str | Path, per_query: bool = False):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.per_query = per_query

    def write(self, result: FrameResult) -> None:
        if not self.per_query:
            write_mask(self.folder / f"{result.frame.name}.png", result.mask)
            return
        for obj in result.objects:
            write_mask(self.folder / str(obj.id) / f"{result.frame.name}.png", result.labels == obj.id)

    def close(self) -> None:
        """Nothing buffered."""


class LabelSink:
    """``folder/<frame name>.png``: the frame's label image (uint8 grey, 0 background, k = query id k)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def write(self, result: FrameResult) -> None:
        path = self.folder / f"{result.frame.name}.png"
        if not cv2.imwrite(str(path), np.ascontiguousarray(result.labels, np.uint8)):
            raise InputError(f"{path}: could not write the label image")

    def close(self) -> None:
        """Nothing buffered."""


class JsonlSink:
    """One JSON object per frame (``FrameResult.metadata()`` plus ``extra()`` if given)."""

    def __init__(self, path: str | Path, extra: Callable[[], dict] | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("w")
        self.extra = extra

    def write(self, result: FrameResult) -> None:
        record = result.metadata()
        if self.extra is not None:
            record.update(self.extra())
        self._file.write(json.dumps(record) + "\n")

    def close(self) -> None:
        self._file.close()


def overlay(image: np.ndarray, mask: np.ndarray, source: str, caption: str = "") -> np.ndarray:
    """RGB frame with the mask tinted by its source (reasoning / tracked) and a caption line."""
    out = image.copy()
    colour = np.array(SOURCE_COLOURS.get(source, (255, 255, 255)), np.float32)
    m = mask > 0
    out[m] = (0.45 * out[m] + 0.55 * colour).astype(np.uint8)
    contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, tuple(int(c) for c in colour), 2)
    if caption:
        cv2.putText(out, caption, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(out, caption, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return out


class OverlayVideoSink:
    """An mp4 (MPEG-4 part 2 via OpenCV) of each frame with its mask and metadata drawn on it."""

    def __init__(self, path: str | Path, fps: float = 15.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fps = fps
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None  # (width, height) of the video
        self.frames = 0

    def write(self, result: FrameResult) -> None:
        img = result.frame.image
        if self._writer is None:
            self._size = (img.shape[1], img.shape[0])
            self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, self._size)
            if not self._writer.isOpened():
                raise InputError(f"{self.path}: could not open an mp4 writer")
        age = "" if result.anchor_age is None else f" age {result.anchor_age}"
        caption = f"#{result.frame.index} {result.mask_source}{age} conf {result.confidence:.2f}"
        if len(result.objects) > 1:  # every query's object, each tinted by its own source
            frame = img
            for i, obj in enumerate(result.objects):
                last = i == len(result.objects) - 1
                frame = overlay(frame, result.labels == obj.id, obj.mask_source, caption if last else "")
        else:
            frame = overlay(img, result.mask, result.mask_source, caption)
        if (frame.shape[1], frame.shape[0]) != self._size:  # the video keeps its first frame size
            frame = cv2.resize(frame, self._size, interpolation=cv2.INTER_AREA)
        self._writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        self.frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()


class CallbackSink:
    """Calls ``fn(result)`` for every frame (the ROS node publishes from here)."""

    def __init__(self, fn: Callable[[FrameResult], None]):
        self.fn = fn

    def write(self, result: FrameResult) -> None:
        self.fn(result)

    def close(self) -> None:
        """Nothing buffered."""
