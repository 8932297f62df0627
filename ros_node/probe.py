"""A peer of a running visa_edge node, for tests and smoke checks: publishes frames, camera_info
and queries (volatile or latched), collects each mask and its mask_info, mask_polygon,
mask/camera_info and mask_markers by header stamp, calls ``reason_now``, sets parameters,
drives lifecycle transitions and reads ``/diagnostics`` (the node's status) and ``/rosout``.

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
from geometry_msgs.msg import PolygonStamped
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.msg import Log
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.parameter_client import AsyncParameterClient
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, RegionOfInterest
from std_msgs.msg import String
from std_srvs.srv import Trigger
from visualization_msgs.msg import MarkerArray

from .convert import mask_bbox

STAMP_SEC0 = 1000
BACKGROUND = (40, 90, 160)  # RGB: red channel below 128
SQUARE = (220, 30, 30)  # RGB: red channel above 128
POLL_S = 0.01
NODE_NAME = "visa_edge"
TRANSITIONS = {"configure": Transition.TRANSITION_CONFIGURE, "activate": Transition.TRANSITION_ACTIVATE,
               "deactivate": Transition.TRANSITION_DEACTIVATE, "cleanup": Transition.TRANSITION_CLEANUP}


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


def camera_k(width: int, height: int) -> list[float]:
    """The probe camera's K (row-major 3x3) at ``width`` x ``height``: f = width, centred."""
    return [float(width), 0.0, width / 2, 0.0, float(width), height / 2, 0.0, 0.0, 1.0]


def probe_frame(index: int, height: int, width: int) -> np.ndarray:
    """RGB uint8 [H,W,3]: BACKGROUND with a SQUARE at ``square_box(index, ...)``."""
    img = np.empty((height, width, 3), np.uint8)
    img[:] = BACKGROUND
    x, y, w, h = square_box(index, height, width)
    img[y:y + h, x:x + w] = SQUARE
    return img


def _yuv(rgb: np.ndarray) -> np.ndarray:
    """BT.601 limited-range Y, U, V planes (float) of an RGB image."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    return np.stack([16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255,
                     128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255,
                     128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255], axis=-1)


def encode(rgb: np.ndarray, encoding: str, big_endian: bool = False) -> np.ndarray:
    """An RGB uint8 image as the pixel rows of a sensor_msgs/Image in ``encoding`` ([H, row bytes] uint8)."""
    h, w, _ = rgb.shape
    if encoding in ("rgb8", "bgr8", "rgba8", "bgra8"):
        px = rgb[..., ::-1] if encoding.startswith("bgr") else rgb
        if encoding.endswith("a8"):
            px = np.concatenate([px, np.full((h, w, 1), 255, np.uint8)], axis=2)
        return np.ascontiguousarray(px).reshape(h, -1)
    if encoding == "mono8":
        return np.ascontiguousarray(rgb[..., 0])
    if encoding in ("yuv422", "yuv422_yuy2"):  # UYVY / YUYV: U and V shared by each pixel pair
        yuv = _yuv(rgb)
        y, u, v = yuv[..., 0], (yuv[:, 0::2, 1] + yuv[:, 1::2, 1]) / 2, (yuv[:, 0::2, 2] + yuv[:, 1::2, 2]) / 2
        out = np.empty((h, w // 2, 4))
        order = (u, y[:, 0::2], v, y[:, 1::2]) if encoding == "yuv422" else (y[:, 0::2], u, y[:, 1::2], v)
        for i, plane in enumerate(order):
            out[..., i] = plane
        return np.clip(np.round(out), 0, 255).astype(np.uint8).reshape(h, -1)
    if encoding.startswith("bayer_"):
        pattern, out = encoding[6:10], np.empty((h, w), np.uint8)
        for n, colour in enumerate(pattern):
            out[n // 2::2, n % 2::2] = rgb[n // 2::2, n % 2::2, "rgb".index(colour)]
        return out
    if encoding in ("rgb16", "bgr16", "mono16"):
        px = {"rgb16": rgb, "bgr16": rgb[..., ::-1], "mono16": rgb[..., :1]}[encoding].astype(np.uint16) * 257
        return np.ascontiguousarray(px.astype(">u2" if big_endian else "<u2")).view(np.uint8).reshape(h, -1)
    raise ValueError(f"probe cannot encode {encoding!r}")


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

    def __init__(self, namespace: str = "/", compressed: bool = False, depth: int = 64, latched_query: str = ""):
        """``latched_query``: publish it at once on a transient-local (latched) query publisher."""
        self.context = rclpy.Context()
        rclpy.init(context=self.context, signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node("visa_edge_probe", namespace=namespace, context=self.context)
        self.target = f"{namespace.rstrip('/')}/{NODE_NAME}"  # the node's fully qualified name
        self.compressed = compressed
        qos = QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.image_pub = self.node.create_publisher(CompressedImage if compressed else Image, "image", qos)
        self.camera_info_pub = self.node.create_publisher(CameraInfo, "camera_info", qos)
        self.query_pub = self.node.create_publisher(String, "query", 10)
        self.latched_query_pub = self.node.create_publisher(String, "query", latched)
        if latched_query:
            self.latched_query_pub.publish(String(data=latched_query))
        self._cond = threading.Condition()
        self.masks: dict[int, MaskInfo] = {}
        self.duplicates: list[int] = []
        self.rois: list[tuple[int, int, int, int]] = []
        self.overlays: dict[int, tuple[str, int, int]] = {}
        self.labels: dict[int, tuple[int, ...]] = {}  # label values of each frame's label image
        self.query_ids: list[str] = []  # the id maps received (JSON)
        self.mask_infos: dict[int, dict[str, str]] = {}
        self.polygons: dict[int, tuple[str, list[tuple[float, float]]]] = {}
        self.camera_infos: dict[int, dict] = {}
        self.markers: dict[int, tuple[int, list[tuple[float, float, float]]]] = {}
        self.rosout: list[tuple[int, str]] = []  # (level, message) logged by the node
        self._diagnostics: deque[tuple[float, dict[str, str]]] = deque(maxlen=1000)  # (arrival, values)
        self.subs = {
            "mask": self.node.create_subscription(Image, "mask", self._on_mask, qos),
            "mask_info": self.node.create_subscription(DiagnosticArray, "mask_info", self._on_mask_info, qos),
            "mask_roi": self.node.create_subscription(RegionOfInterest, "mask_roi", self._on_roi, qos),
            "mask_polygon": self.node.create_subscription(PolygonStamped, "mask_polygon", self._on_polygon, qos),
            "mask_markers": self.node.create_subscription(MarkerArray, "mask_markers", self._on_markers, qos),
            "mask/camera_info": self.node.create_subscription(CameraInfo, "mask/camera_info", self._on_camera_info,
                                                              qos),
            "overlay": self.node.create_subscription(Image, "overlay", self._on_overlay, qos),
            "labels": self.node.create_subscription(Image, "labels", self._on_labels, qos),
            "query_ids": self.node.create_subscription(String, "query_ids", self._on_query_ids, latched),
            "diagnostics": self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10),
            "rosout": self.node.create_subscription(Log, "/rosout", self._on_rosout, QoSProfile(
                depth=1000, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)),
        }
        self.reason_client = self.node.create_client(Trigger, "reason_now")
        self.change_state_client = self.node.create_client(ChangeState, f"{self.target}/change_state")
        self.get_state_client = self.node.create_client(GetState, f"{self.target}/get_state")
        self.parameter_client = AsyncParameterClient(self.node, self.target)
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

    def _on_labels(self, msg: Image) -> None:
        pixels = np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.step)[:, :msg.width]
        with self._cond:
            self.labels[index_of(msg.header.stamp.sec, msg.header.stamp.nanosec)] = tuple(
                int(v) for v in np.unique(pixels))
            self._cond.notify_all()

    def _on_query_ids(self, msg: String) -> None:
        with self._cond:
            self.query_ids.append(msg.data)
            self._cond.notify_all()

    def _on_mask_info(self, msg: DiagnosticArray) -> None:
        index = index_of(msg.header.stamp.sec, msg.header.stamp.nanosec)
        values = {kv.key: kv.value for kv in msg.status[0].values}
        values["frame_id"], values["message"] = msg.header.frame_id, msg.status[0].message
        with self._cond:
            self.mask_infos[index] = values
            self._cond.notify_all()

    def _on_polygon(self, msg: PolygonStamped) -> None:
        index = index_of(msg.header.stamp.sec, msg.header.stamp.nanosec)
        with self._cond:
            self.polygons[index] = (msg.header.frame_id, [(p.x, p.y) for p in msg.polygon.points])
            self._cond.notify_all()

    def _on_camera_info(self, msg: CameraInfo) -> None:
        index = index_of(msg.header.stamp.sec, msg.header.stamp.nanosec)
        with self._cond:
            self.camera_infos[index] = {"frame_id": msg.header.frame_id, "width": msg.width, "height": msg.height,
                                        "k": [float(v) for v in msg.k], "p": [float(v) for v in msg.p]}
            self._cond.notify_all()

    def _on_markers(self, msg: MarkerArray) -> None:
        m = msg.markers[0]
        index = index_of(m.header.stamp.sec, m.header.stamp.nanosec)
        with self._cond:
            self.markers[index] = (m.action, [(p.x, p.y, p.z) for p in m.points])
            self._cond.notify_all()

    def _on_rosout(self, msg: Log) -> None:
        if msg.name == self.target.strip("/").replace("/", "."):
            with self._cond:
                self.rosout.append((int(msg.level), msg.msg))
                self._cond.notify_all()

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        status = next((s for s in msg.status if s.hardware_id == self.target), None)
        if status is None:  # another node's
            return
        values = {kv.key: kv.value for kv in status.values}
        values["level"], values["message"] = str(status.level[0]), status.message
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
        diagnostics report ours (image, camera_info, query, every output), and the service is
        available. Returns those diagnostics."""
        deadline = time.monotonic() + timeout
        ours = {"image": self.image_pub.get_subscription_count, "query": self.query_pub.get_subscription_count,
                "camera_info": self.camera_info_pub.get_subscription_count,
                **{name: sub.get_publisher_count for name, sub in self.subs.items() if name != "rosout"}}

        def unmatched() -> list[str]:
            return [name for name, count in ours.items() if count() < 1]

        self._poll(lambda: not unmatched(), deadline, lambda: f"no peer on {unmatched()}")

        def matched(v: dict[str, str]) -> bool:
            counts = [int(n) for k, n in v.items() if k.endswith(("_subscribers", "_publishers"))]
            return "image_publishers" in v and min(counts) >= 1

        values = self.wait_diagnostics(matched, deadline - time.monotonic(), what="node-side matches")
        if not self.reason_client.wait_for_service(timeout_sec=max(0.0, deadline - time.monotonic())):
            raise ProbeTimeout(f"discovery timed out: service {self.reason_client.srv_name} not available")
        return values

    def publish_frames(self, first: int, count: int, height: int = 48, width: int = 64,
                       encodings: tuple[str, ...] = ("rgb8",), big_endian: bool = False,
                       camera_info: tuple[int, int] | None = None) -> list[int]:
        """Publish frames first..first+count-1 in ``encodings`` (cycled; see ``encode``, mono: the red
        channel) for raw images, png or jpeg for compressed ones; with ``camera_info`` (width,
        height) also a CameraInfo of that size (``camera_k``) with each frame's stamp, first."""
        indices = list(range(first, first + count))
        for n, i in enumerate(indices):
            rgb, encoding = probe_frame(i, height, width), encodings[n % len(encodings)]
            if camera_info is not None:
                self.publish_camera_info(i, *camera_info)
            if self.compressed:
                _, buf = cv2.imencode(f".{encoding}", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
                self.publish_compressed(i, encoding, buf.tobytes())
            else:
                rows = encode(rgb, encoding, big_endian)
                self.publish_raw(i, encoding, height, width, rows.shape[1], rows.tobytes(), big_endian)
        return indices

    def publish_camera_info(self, index: int, width: int, height: int) -> None:
        k = camera_k(width, height)
        msg = CameraInfo(width=width, height=height, distortion_model="plumb_bob", d=[0.0] * 5, k=k,
                         r=[1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0], p=[k[0], 0, k[2], 0, 0, k[4], k[5], 0, 0, 0, 1.0, 0])
        self.camera_info_pub.publish(self._header(msg, index))

    def _header(self, msg, index: int):
        msg.header.stamp.sec, msg.header.stamp.nanosec = stamp_of(index)
        msg.header.frame_id = frame_id_of(index)
        return msg

    def publish_raw(self, index: int, encoding: str, height: int, width: int, step: int, data: bytes,
                    big_endian: bool = False) -> None:
        msg = Image(encoding=encoding, height=height, width=width, step=step, data=data, is_bigendian=int(big_endian))
        self.image_pub.publish(self._header(msg, index))

    def publish_compressed(self, index: int, fmt: str, data: bytes) -> None:
        self.image_pub.publish(self._header(CompressedImage(format=fmt, data=data), index))

    def set_query(self, text: str, latched: bool = False) -> None:
        (self.latched_query_pub if latched else self.query_pub).publish(String(data=text))

    def wait_masks(self, indices: list[int], timeout: float = 20.0) -> dict[int, MaskInfo]:
        """The masks of ``indices`` (each must arrive within ``timeout``)."""

        def missing() -> list[int]:
            return sorted(set(indices) - set(self.masks))

        self._wait(lambda: not missing(), timeout, lambda: f"no mask for frames {missing()}")
        with self._cond:
            return {i: self.masks[i] for i in indices}

    def received(self) -> dict:
        """Everything received so far: mask indices (in arrival order), duplicates, ROIs, overlays,
        mask_info values, polygons, camera_infos, markers and label values by frame index, /rosout lines,
        the query_ids maps."""
        with self._cond:
            return {"masks": list(self.masks), "duplicates": list(self.duplicates), "rois": list(self.rois),
                    "overlays": dict(self.overlays), "mask_infos": dict(self.mask_infos),
                    "polygons": dict(self.polygons), "camera_infos": dict(self.camera_infos),
                    "markers": dict(self.markers), "rosout": list(self.rosout), "labels": dict(self.labels),
                    "query_ids": list(self.query_ids)}

    def wait_received(self, kind: str, indices: list[int], timeout: float = 20.0) -> dict:
        """``received()[kind]`` (overlays, mask_infos, polygons, camera_infos, markers) once it has all ``indices``."""
        def missing() -> list[int]:
            return sorted(set(indices) - set(getattr(self, kind)))

        self._wait(lambda: not missing(), timeout, lambda: f"no {kind} for frames {missing()}")
        with self._cond:
            return {i: getattr(self, kind)[i] for i in indices}

    def wait_rosout(self, text: str, timeout: float = 20.0) -> tuple[int, str]:
        """The first /rosout line of the node containing ``text``."""
        def found():
            return next((line for line in self.rosout if text in line[1]), None)

        self._wait(lambda: found() is not None, timeout,
                   lambda: f"no /rosout line with {text!r} from {self.target}; got {self.rosout[-5:]}")
        with self._cond:
            return found()

    def _call(self, client, request, timeout: float):
        if not client.wait_for_service(timeout_sec=timeout):
            raise ProbeTimeout(f"service {client.srv_name} not available after {timeout:.0f} s")
        return self._result(client.call_async(request), timeout, client.srv_name)

    def _result(self, future, timeout: float, what: str):
        done = threading.Event()
        future.add_done_callback(lambda _: done.set())
        if not done.wait(timeout):
            raise ProbeTimeout(f"after {timeout:.0f} s: no response from {what}")
        return future.result()

    def change_state(self, transition: str, timeout: float = 20.0) -> bool:
        """Trigger a lifecycle transition (configure, activate, deactivate, cleanup) over its service."""
        request = ChangeState.Request()
        request.transition.id = TRANSITIONS[transition]
        return bool(self._call(self.change_state_client, request, timeout).success)

    def get_state(self, timeout: float = 20.0) -> str:
        return self._call(self.get_state_client, GetState.Request(), timeout).current_state.label

    def set_parameters(self, values: dict, timeout: float = 20.0) -> list[tuple[bool, str]]:
        """Set the node's parameters (one request); (successful, reason) per parameter."""
        if not self.parameter_client.wait_for_services(timeout_sec=timeout):
            raise ProbeTimeout(f"parameter services of {self.target} not available after {timeout:.0f} s")
        future = self.parameter_client.set_parameters([Parameter(k, value=v) for k, v in values.items()])
        return [(r.successful, r.reason) for r in self._result(future, timeout, "set_parameters").results]

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
        result = self._result(self.reason_client.call_async(Trigger.Request()), timeout, self.reason_client.srv_name)
        return result.success, result.message


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

    def open(self, namespace: str, compressed: bool = False, latched_query: str = "") -> None:
        self.call("open", namespace=namespace, compressed=compressed, latched_query=latched_query)

    def close(self) -> None:
        if self.process.is_alive():
            self._conn.send(None)
            self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
