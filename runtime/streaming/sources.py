"""Frame sources: image folder, video file, camera, rosbag2 and an in-process push API.

Every frame carries a monotonic index (0, 1, ...) and its capture timestamp in seconds
(the media/bag/header time for recorded sources, ``time.time()`` at capture for live ones).
Live sources (camera, push) can outrun the consumer; their queue is bounded and drops the
*oldest* frame when full (counted in ``dropped``), so the newest frame is always served.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..errors import InputError
from ..frames import Frame
from ..io import read_rgb
from ..validate import check_frame_size
from .images import decode_compressed, decode_raw

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm")
IMAGE_MSGTYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")


def check_rate(fps: float, what: str) -> float:
    """``fps`` if it is a positive finite frame rate, else InputError naming ``what``."""
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
        raise InputError(f"{what}: frame rate {fps!r}; expected a positive finite number of frames per second")
    return float(fps)


class FrameSource:
    """Iterable of Frames. ``live`` sources deliver in real time and may drop frames."""

    live = False
    dropped = 0

    def __iter__(self) -> Iterator[Frame]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the device or file."""


class FrameListSource(FrameSource):
    """Frames already in memory (generated clips, tests)."""

    def __init__(self, frames: list[Frame], fps: float = 30.0):
        self.frames, self.fps = frames, check_rate(fps, "frame list")

    def __iter__(self) -> Iterator[Frame]:
        return iter(self.frames)


class ImageFolderSource(FrameSource):
    """Images of a folder in name order; timestamps index/fps."""

    def __init__(self, folder: str | Path, fps: float = 30.0):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise InputError(f"{self.folder}: image folder not found")
        self.files = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise InputError(f"{self.folder}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
        self.fps = check_rate(fps, str(self.folder))

    def __iter__(self) -> Iterator[Frame]:
        for i, path in enumerate(self.files):
            yield Frame(i, i / self.fps, read_rgb(path), path.stem)


class VideoFileSource(FrameSource):
    """A video file decoded with PyAV (extra [video]); timestamps from the stream's pts."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"{self.path}: video file not found")
        try:
            import av
        except ImportError as e:
            raise InputError(f"{self.path}: reading video files needs PyAV (pip install 'visa-edge[video]')") from e
        self._av = av
        self.fps = self._probe_fps()

    def _probe_fps(self) -> float:
        try:
            with self._av.open(str(self.path)) as container:
                if not container.streams.video:
                    raise InputError(f"{self.path}: no video stream (streams: {_stream_kinds(container)}); expected a video")
                return float(container.streams.video[0].average_rate or 30)
        except InputError:
            raise
        except Exception as e:  # PyAV raises many types for corrupt, empty or truncated files
            raise InputError(f"{self.path}: not a readable video ({type(e).__name__}: {e})") from e

    def __iter__(self) -> Iterator[Frame]:
        try:
            container = self._av.open(str(self.path))
        except Exception as e:
            raise InputError(f"{self.path}: not a readable video ({type(e).__name__}: {e})") from e
        with container:
            frames = container.decode(video=0)
            i = 0
            while True:
                try:
                    frame = next(frames, None)
                    image = None if frame is None else frame.to_ndarray(format="rgb24")
                except Exception as e:
                    raise InputError(f"{self.path}: video data unreadable after {i} frames ({type(e).__name__}: {e})") from e
                if image is None:
                    break
                check_frame_size(image, f"{self.path} frame {i}")
                t = float(frame.time) if frame.time is not None else i / self.fps
                yield Frame(i, t, image, f"{i:05d}")
                i += 1
        if i == 0:
            raise InputError(f"{self.path}: video has no decodable frames")


def _stream_kinds(container) -> str:
    kinds = [s.type for s in container.streams]
    return ", ".join(kinds) if kinds else "none"


class RosbagSource(FrameSource):
    """sensor_msgs/Image or CompressedImage messages of one topic of a rosbag2 (mcap or sqlite3).

    ``topic`` may be omitted when the bag has exactly one image topic. Timestamps are the
    message header stamps. Messages that cannot be decoded raise InputError naming the topic.
    """

    def __init__(self, path: str | Path, topic: str | None = None):
        self.path = Path(path)
        if not self.path.exists():
            raise InputError(f"{self.path}: rosbag not found")
        try:
            from rosbags.highlevel import AnyReader
        except ImportError as e:
            raise InputError(f"{self.path}: reading rosbags needs rosbags (pip install 'visa-edge[bag]')") from e
        self._reader_cls = AnyReader
        with self._open() as reader:
            topics = {c.topic: c.msgtype for c in reader.connections if c.msgtype in IMAGE_MSGTYPES}
        if topic is None:
            if len(topics) != 1:
                raise InputError(f"{self.path}: {len(topics)} image topics {sorted(topics)}; choose one with --topic")
            topic = next(iter(topics))
        elif topic not in topics:
            raise InputError(f"{self.path}: no image topic {topic!r}; image topics are {sorted(topics)}")
        self.topic = topic

    def _bag_dir(self) -> Path:
        return self.path if self.path.is_dir() else self.path.parent

    @contextlib.contextmanager
    def _open(self) -> Iterator[Any]:
        """An opened AnyReader, or InputError naming the bag (rosbags raises many types for bad bags)."""
        try:
            reader = self._reader_cls([self._bag_dir()])
            reader.open()
        except Exception as e:
            raise InputError(f"{self.path}: not a readable rosbag2 ({type(e).__name__}: {e}); expected a folder with "
                             "metadata.yaml and its .mcap or .db3 files") from e
        try:
            yield reader
        finally:
            reader.close()

    def __iter__(self) -> Iterator[Frame]:
        with self._open() as reader:
            conns = [c for c in reader.connections if c.topic == self.topic]
            messages = reader.messages(connections=conns)
            i = 0
            while True:
                where = f"{self.path} {self.topic} message {i}"
                try:
                    item = next(messages, None)
                    if item is None:
                        break
                    conn, _, raw = item
                    msg = reader.deserialize(raw, conn.msgtype)
                    stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
                    if conn.msgtype.endswith("CompressedImage"):
                        image = decode_compressed(msg.format, msg.data)
                    else:
                        image = decode_raw(msg.encoding, msg.height, msg.width, msg.step, msg.data,
                                           big_endian=bool(msg.is_bigendian))
                    check_frame_size(image, "image")
                except InputError as e:
                    raise InputError(f"{where}: {e}") from e
                except Exception as e:
                    raise InputError(f"{where}: unreadable ({type(e).__name__}: {e})") from e
                yield Frame(i, stamp, image, f"{i:05d}")
                i += 1


class PushSource(FrameSource):
    """In-process source fed by ``push`` (e.g. from a ROS callback); bounded, drops the oldest.

    ``push`` never blocks and never raises on a race with the consumer: the frames sit in a
    deque guarded by one condition variable.
    """

    live = True

    def __init__(self, maxsize: int = 4):
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 1:
            raise InputError(f"queue size {maxsize!r}: expected an integer >= 1")
        self.maxsize = maxsize
        self._frames: deque[Frame] = deque()
        self._ready = threading.Condition()
        self._next = 0
        self._closed = threading.Event()
        self.dropped = 0

    def push(self, image: np.ndarray, timestamp: float | None = None, name: str | None = None) -> Frame:
        """Queue a frame; returns it with its assigned index."""
        with self._ready:
            frame = Frame(self._next, time.time() if timestamp is None else timestamp, image, name or f"{self._next:05d}")
            self._next += 1
            if len(self._frames) >= self.maxsize:
                self._frames.popleft()
                self.dropped += 1
            self._frames.append(frame)
            self._ready.notify()
            return frame

    def close(self) -> None:
        self._closed.set()
        with self._ready:
            self._ready.notify_all()

    def __iter__(self) -> Iterator[Frame]:
        while True:
            with self._ready:
                if not self._frames:
                    if self._closed.is_set():
                        return
                    self._ready.wait(timeout=0.05)
                    continue
                frame = self._frames.popleft()
            yield frame


class CameraSource(PushSource):
    """An OpenCV capture device (index or URL) read on its own thread into a bounded queue."""

    def __init__(self, device: int | str = 0, maxsize: int = 4):
        super().__init__(maxsize)
        with _quiet_opencv():  # its per-backend warnings would add lines to our one-line error
            self.capture = cv2.VideoCapture(device)
        if not self.capture.isOpened():
            raise InputError(f"camera {device!r}: could not be opened")
        self._thread = threading.Thread(target=self._read, name="camera", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            ok, bgr = self.capture.read()
            if not ok:
                break
            self.push(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        self._closed.set()

    def close(self) -> None:
        super().close()
        self._thread.join(timeout=1)
        self.capture.release()


@contextlib.contextmanager
def _quiet_opencv() -> Iterator[None]:
    """OpenCV's own log limited to errors while the block runs."""
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(level)


class Paced(FrameSource):
    """Plays a recorded source at camera rate (sleeps until each frame's due time), as if live."""

    def __init__(self, source: FrameSource, fps: float):
        self.source, self.period = source, 1.0 / check_rate(fps, "rate")

    def __iter__(self) -> Iterator[Frame]:
        start = time.monotonic()
        for frame in self.source:
            delay = start + frame.index * self.period - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            yield frame

    def close(self) -> None:
        self.source.close()


def open_source(spec: str, topic: str | None = None, fps: float = 30.0) -> FrameSource:
    """A source from a CLI spec: a folder of images, a video file, a rosbag2 (folder with
    metadata.yaml, .mcap or .db3), or ``camera:N`` / ``camera:URL``."""
    if spec.startswith("camera:"):
        dev = spec[len("camera:") :]
        return CameraSource(int(dev) if dev.isdigit() else dev)
    path = Path(spec)
    if path.suffix.lower() in (".mcap", ".db3") or (path / "metadata.yaml").is_file():
        return RosbagSource(path, topic)
    if path.is_dir():
        return ImageFolderSource(path, fps)
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return VideoFileSource(path)
    raise InputError(f"{spec}: unknown source; expected an image folder, a video file ({', '.join(VIDEO_SUFFIXES)}), "
                     "a rosbag2 (.mcap, .db3 or folder with metadata.yaml) or camera:N")
