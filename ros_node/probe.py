"""A peer of a running visa_edge node, for tests and smoke checks: publishes frames and queries,
collects each mask by its header stamp, calls ``reason_now`` and reads ``diagnostics``.

Frames are synthetic and self-describing: frame ``i`` has stamp ``(STAMP_SEC0 + i, i * 1000)``,
frame_id ``camera_<i % 3>`` and a red square at a position that depends on ``i``
(``square_box``), so a mask can be checked against the frame it claims to belong to.
``ProbeProcess`` runs a Probe in a separate (spawned) process and forwards calls to it.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections import deque
import time
from dataclasses import dataclass

import cv2
import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CompressedImage, Image, RegionOfInterest
from std_msgs.msg import String
from std_srvs.srv import Trigger

from .convert import mask_bbox

STAMP_SEC0 = 1000
BACKGROUND = (40, 90, 160)  # RGB: red channel below 128
SQUARE = (220, 30, 30)  # RGB: red channel above 128
POLL_S = 0.01


def stamp_of(index: int) -> tuple[int, int]:
    return STAMP_SEC0 + index, index * 1000


def index_of(sec: int, nanosec: int) -> int:
    """The frame index a stamp was made for (-1 if it was not made by ``stamp_of``)."""
    return sec - STAMP_SEC0 if nanosec == (sec - STAMP_SEC0) * 1000 else -1


def frame_id_of(index: int) -> str:
    return f"camera_{index % 3}"


def square_box(index: int, height: int, width: int) -> tuple[int, int, int, int]:
    """(x, y, w, h) of frame ``index``'s red square: side min(h, w) // 3, on an 8-pixel grid."""
    side = min(height, width) // 3
    xs, ys = range(0, width - side + 1, 8), range(0, height - side + 1, 8)
    return xs[index % len(xs)], ys[(index // len(xs)) % len(ys)], side, side


def probe_frame(index: int, height: int, width: int) -> np.ndarray:
    """RGB uint8 [H,W,3]: BACKGROUND with a SQUARE at ``square_box(index, ...)``."""
    img = np.empty((height, width, 3), np.uint8)
    img[:] = BACKGROUND
    x, y, w, h = square_box(index, height, width)
    img[y:y + h, x:x + w] = SQUARE
    return img


@dataclass(frozen=True)
class MaskInfo:
    """A received mask message, summarised."""

    frame_id: str
    encoding: str
    height: int
    width: int
    step: int
    values: tuple[int, ...]  # distinct pixel values
    area: int  # nonzero pixels
    box: tuple[int, int, int, int]  # (x, y, w, h) of the nonzero pixels


class ProbeTimeout(AssertionError):
    """A bounded wait ran out (the message says what was missing)."""


class Probe:
    """Endpoints matching a visa_edge node in ``namespace``, on its own context and executor thread."""

    def __init__(self, namespace: str = "/", compressed: bool = False, depth: int = 64):
        self.context = rclpy.Context()
        rclpy.init(context=self.context, signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node("visa_edge_probe", namespace=namespace, context=self.context)
        self.compressed = compressed
        qos = QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE)
        self.image_pub = self.node.create_publisher(CompressedImage if compressed else Image, "image", qos)
        self.query_pub = self.node.create_publisher(String, "query", 10)
        self._cond = threading.Condition()
        self.masks: dict[int, MaskInfo] = {}
        self.duplicates: list[int] = []
        self.rois: list[tuple[int, int, int, int]] = []
        self.overlays: dict[int, tuple[str, int, int]] = {}
        self._diagnostics: deque[tuple[float, dict[str, str]]] = deque(maxlen=1000)  # (arrival, values)
        self.subs = {
            "mask": self.node.create_subscription(Image, "mask", self._on_mask, qos),
            "mask_roi": self.node.create_subscription(RegionOfInterest, "mask_roi", self._on_roi, qos),
            "overlay": self.node.create_subscription(Image, "overlay", self._on_overlay, qos),
            "diagnostics": self.node.create_subscription(DiagnosticArray, "diagnostics", self._on_diagnostics, 10),
        }
        self.reason_client = self.node.create_client(Trigger, "reason_now")
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._spin = threading.Thread(target=self.executor.spin, daemon=True)
        self._spin.start()

    def close(self) -> None:
        self.executor.shutdown()
        self._spin.join()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)

    def _on_mask(self, msg: Image) -> None:
        index = index_of(msg.header.stamp.sec, msg.header.stamp.nanosec)
        pixels = np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.step)[:, :msg.width]
        info = MaskInfo(msg.header.frame_id, msg.encoding, msg.height, msg.width, msg.step,
                        tuple(int(v) for v in np.unique(pixels)), int(np.count_nonzero(pixels)), mask_bbox(pixels))
        with self._cond:
            if index in self.masks:
                self.duplicates.append(index)
            self.masks[index] = info
            self._cond.notify_all()

    def _on_roi(self, msg: RegionOfInterest) -> None:
        with self._cond:
            self.rois.append((msg.x_offset, msg.y_offset, msg.width, msg.height))
            self._cond.notify_all()

    def _on_overlay(self, msg: Image) -> None:
        with self._cond:
            index = index_of(msg.header.stamp.sec, msg.header.stamp.nanosec)
            self.overlays[index] = (msg.encoding, msg.height, msg.width)
            self._cond.notify_all()

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        values = {kv.key: kv.value for kv in msg.status[0].values}
        values["level"], values["message"] = str(msg.status[0].level[0]), msg.status[0].message
        with self._cond:
            self._diagnostics.append((time.monotonic(), values))
            self._cond.notify_all()

    def _wait(self, ready, timeout: float, what) -> None:
        """Wait (bounded) until ``ready()``; ``what()`` says what was missing."""
        with self._cond:
            if not self._cond.wait_for(ready, timeout):
                raise ProbeTimeout(f"after {timeout:.0f} s: {what()}")

    def _poll(self, ready, deadline: float, what) -> None:
        """Poll ``ready()`` until ``deadline`` (graph queries cannot be waited on); ``what()`` names what is missing."""
        while not ready():
            if time.monotonic() > deadline:
                raise ProbeTimeout(f"discovery timed out: {what()}")
            time.sleep(POLL_S)

    def wait_ready(self, timeout: float = 20.0) -> dict[str, str]:
        """Wait until discovery has matched both ways: our endpoints see the node's, the node's
        diagnostics report ours (image, query, mask, mask_roi, overlay if it publishes one), and
        the service is available. Returns those diagnostics."""
        deadline = time.monotonic() + timeout
        ours = {"image": self.image_pub.get_subscription_count, "query": self.query_pub.get_subscription_count,
                **{name: self.subs[name].get_publisher_count for name in ("mask", "mask_roi", "diagnostics")}}

        def unmatched() -> list[str]:
            return [name for name, count in ours.items() if count() < 1]

        self._poll(lambda: not unmatched(), deadline, lambda: f"no peer on {unmatched()}")
        theirs = ("image_publishers", "query_publishers", "mask_subscribers", "mask_roi_subscribers")
        values = self.wait_diagnostics(lambda v: all(int(v.get(k, "0")) >= 1 for k in theirs) and
                                       v.get("overlay_subscribers") != "0",
                                       deadline - time.monotonic(), what=f"node-side matches {theirs}")
        if "overlay_subscribers" in values:
            overlay = self.subs["overlay"].get_publisher_count
            self._poll(lambda: overlay() >= 1, deadline, lambda: "no peer on overlay")
        if not self.reason_client.wait_for_service(timeout_sec=max(0.0, deadline - time.monotonic())):
            raise ProbeTimeout(f"discovery timed out: service {self.reason_client.srv_name} not available")
        return values

    def publish_frames(self, first: int, count: int, height: int = 48, width: int = 64,
                       encodings: tuple[str, ...] = ("rgb8",)) -> list[int]:
        """Publish frames first..first+count-1 in ``encodings`` (cycled): rgb8, bgr8, mono8 (the red
        channel) for raw images, png or jpeg for compressed ones."""
        indices = list(range(first, first + count))
        for n, i in enumerate(indices):
            rgb, encoding = probe_frame(i, height, width), encodings[n % len(encodings)]
            if self.compressed:
                _, buf = cv2.imencode(f".{encoding}", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
                self.publish_compressed(i, encoding, buf.tobytes())
            else:
                pixels = {"rgb8": rgb, "bgr8": rgb[..., ::-1], "mono8": rgb[..., 0]}[encoding]
                self.publish_raw(i, encoding, height, width, width * (1 if encoding == "mono8" else 3),
                                 np.ascontiguousarray(pixels).tobytes())
        return indices

    def _header(self, msg, index: int):
        msg.header.stamp.sec, msg.header.stamp.nanosec = stamp_of(index)
        msg.header.frame_id = frame_id_of(index)
        return msg

    def publish_raw(self, index: int, encoding: str, height: int, width: int, step: int, data: bytes) -> None:
        msg = Image(encoding=encoding, height=height, width=width, step=step, data=data)
        self.image_pub.publish(self._header(msg, index))

    def publish_compressed(self, index: int, fmt: str, data: bytes) -> None:
        self.image_pub.publish(self._header(CompressedImage(format=fmt, data=data), index))

    def set_query(self, text: str) -> None:
        self.query_pub.publish(String(data=text))

    def wait_masks(self, indices: list[int], timeout: float = 20.0) -> dict[int, MaskInfo]:
        """The masks of ``indices`` (each must arrive within ``timeout``)."""

        def missing() -> list[int]:
            return sorted(set(indices) - set(self.masks))

        self._wait(lambda: not missing(), timeout, lambda: f"no mask for frames {missing()}")
        with self._cond:
            return {i: self.masks[i] for i in indices}

    def received(self) -> dict:
        """Everything received so far: mask indices (in arrival order), duplicates, ROIs, overlays."""
        with self._cond:
            return {"masks": list(self.masks), "duplicates": list(self.duplicates), "rois": list(self.rois),
                    "overlays": dict(self.overlays)}

    def wait_rois(self, count: int, timeout: float = 20.0) -> list[tuple[int, int, int, int]]:
        self._wait(lambda: len(self.rois) >= count, timeout, lambda: f"{len(self.rois)} of {count} mask_roi messages")
        with self._cond:
            return list(self.rois)

    def wait_diagnostics(self, until=None, timeout: float = 20.0, what: str = "") -> dict[str, str]:
        """The first diagnostics received from now on whose values satisfy ``until`` (a dict of exact
        values, or a predicate); any fresh one if None."""
        start = time.monotonic()
        ok = until if callable(until) else lambda v: all(v.get(k) == str(x) for k, x in (until or {}).items())

        def found() -> dict[str, str] | None:
            return next((v for t, v in self._diagnostics if t >= start and ok(v)), None)

        def last() -> dict[str, str] | str:
            return self._diagnostics[-1][1] if self._diagnostics else "none received"

        self._wait(lambda: found() is not None, timeout,
                   lambda: f"diagnostics never showed {what or until}; last: {last()}")
        with self._cond:
            return found()

    def reason_now(self, timeout: float = 20.0) -> tuple[bool, str]:
        future = self.reason_client.call_async(Trigger.Request())
        done = threading.Event()
        future.add_done_callback(lambda _: done.set())
        if not done.wait(timeout):
            raise ProbeTimeout(f"after {timeout:.0f} s: no response from {self.reason_client.srv_name}")
        return future.result().success, future.result().message


def serve(conn) -> None:
    """Run Probes in this process, driven over ``conn``: ("open", kwargs) makes a new Probe,
    (method, kwargs) calls it, None ends; each answer is ("ok", value) or ("error", text)."""
    probe: Probe | None = None
    try:
        while (request := conn.recv()) is not None:
            name, kwargs = request
            try:
                if name == "open":
                    if probe is not None:
                        probe.close()
                    probe = Probe(**kwargs)
                    conn.send(("ok", None))
                else:
                    conn.send(("ok", getattr(probe, name)(**kwargs)))
            except Exception as e:
                conn.send(("error", f"{name}: {type(e).__name__}: {e}"))
    finally:
        if probe is not None:
            probe.close()


class ProbeProcess:
    """A Probe in a spawned process (so that the node and its peer talk through DDS, not in-process)."""

    def __init__(self, start_timeout: float = 60.0):
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.process = ctx.Process(target=serve, args=(child,), name="visa_edge_probe", daemon=True)
        self.process.start()
        child.close()
        self.start_timeout = start_timeout

    def call(self, name: str, **kwargs):
        """Call Probe.``name``(**kwargs) in the probe process; AssertionError on error or silence."""
        self._conn.send((name, kwargs))
        limit = kwargs.get("timeout", 20.0) + (self.start_timeout if name == "open" else 5.0)
        if not self._conn.poll(limit):
            raise AssertionError(f"probe process gave no answer to {name} within {limit:.0f} s")
        status, value = self._conn.recv()
        if status != "ok":
            raise AssertionError(f"probe: {value}")
        return value

    def open(self, namespace: str, compressed: bool = False) -> None:
        self.call("open", namespace=namespace, compressed=compressed)

    def close(self) -> None:
        if self.process.is_alive():
            self._conn.send(None)
            self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
