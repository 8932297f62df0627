"""The visa_edge ROS 2 node (plain rclpy): camera frames in, one mask per frame out.

Topics (relative names, remap as usual): subscribes ``image`` (sensor_msgs/Image, or
CompressedImage with ``compressed:=true``) and ``query`` (std_msgs/String; "" pauses);
publishes ``mask`` (mono8 0/255 with the input frame's header), ``mask_roi``
(RegionOfInterest of the mask), ``overlay`` (rgb8, with ``publish_overlay:=true``),
``detections`` (vision_msgs/Detection2DArray, only where vision_msgs is installed) and
``diagnostics`` (DiagnosticArray, every ``diagnostics_period`` s). Service ``reason_now``
(std_srvs/Trigger) forces a reasoning step on the next frame.

Threads: the executor runs the callbacks, none of which blocks (the image callback decodes
and pushes into a bounded drop-oldest queue); one processing thread runs
StreamingRuntime.process on the queued frames and publishes each result (rclpy publishers
may be used from any thread); the reasoning step runs on the runtime's own worker.
"""

from __future__ import annotations

import threading
import time
from collections import deque

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image, RegionOfInterest
from std_msgs.msg import Header, String
from std_srvs.srv import Trigger

from ..runtime.errors import InputError
from ..runtime.streaming import FrameResult, PushSource, StreamingRuntime
from ..runtime.streaming.sinks import overlay
from .config import PARAMETERS, node_config, pipeline_config
from .convert import decode_image, mask_bbox, mono8
from .diagnostics import NodeCounters, Report, ResultInfo, report

try:  # optional: vision_msgs is not a dependency
    from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose
except ImportError:
    Detection2DArray = None

WARN_PERIOD_S = 5.0  # throttle of the per-message warnings (rejected frames, failing frames)
RECENT_RESULTS = 64  # results kept for diagnostics


def qos_profile(name: str, depth: int) -> QoSProfile:
    """``sensor_data``: best effort; ``reliable``: reliable; both volatile, keep last ``depth``."""
    reliability = ReliabilityPolicy.BEST_EFFORT if name == "sensor_data" else ReliabilityPolicy.RELIABLE
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=reliability,
                      durability=DurabilityPolicy.VOLATILE)


class VisaEdgeNode(Node):
    """Publishes a VISA mask for every received frame.

    ``runtime``: a ready StreamingRuntime to use instead of building one from the pipeline
    and stream parameters (the caller then owns it and closes it). ``node_kwargs`` go to
    rclpy's Node (namespace, context, parameter_overrides, ...).
    """

    def __init__(self, runtime: StreamingRuntime | None = None, node_name: str = "visa_edge", **node_kwargs):
        super().__init__(node_name, **node_kwargs)
        values = self._declare_parameters()
        self.config = cfg = node_config(values)
        self._owns_runtime = runtime is None
        self.runtime = self._build_runtime(values) if runtime is None else runtime
        if cfg.query:
            self.runtime.set_query(cfg.query)
        self.counters = NodeCounters()
        self.source = PushSource(maxsize=cfg.queue_size)
        self._lock = threading.Lock()  # guards _headers: a frame's header is recorded before it can be dequeued
        self._headers: dict[int, Header] = {}  # frame index -> input header, for the frames in flight
        self._recent: deque[ResultInfo] = deque(maxlen=RECENT_RESULTS)
        self._last_report: Report | None = None

        out_qos = qos_profile(cfg.output_qos, cfg.output_depth)
        self.image_sub = self.create_subscription(CompressedImage if cfg.compressed else Image, "image", self._on_image,
                                                  qos_profile(cfg.input_qos, cfg.input_depth))
        self.query_sub = self.create_subscription(String, "query", self._on_query, 10)
        self.mask_pub = self.create_publisher(Image, "mask", out_qos)
        self.roi_pub = self.create_publisher(RegionOfInterest, "mask_roi", out_qos)
        self.overlay_pub = self.create_publisher(Image, "overlay", out_qos) if cfg.publish_overlay else None
        self.detections_pub = (self.create_publisher(Detection2DArray, "detections", out_qos)
                               if Detection2DArray is not None else None)
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "diagnostics", 10)
        self.reason_srv = self.create_service(Trigger, "reason_now", self._on_reason_now)
        self.diagnostics_timer = self.create_timer(cfg.diagnostics_period, self._publish_diagnostics)
        self._thread = threading.Thread(target=self._process, name="visa_edge_process", daemon=True)
        self._thread.start()
        self.get_logger().info(f"ready: {'compressed' if cfg.compressed else 'raw'} images on "
                               f"{self.image_sub.topic_name} ({cfg.input_qos}), query {self.runtime.query!r}")

    def _declare_parameters(self) -> dict:
        try:
            return {p.name: self.declare_parameter(
                p.name, p.default, ParameterDescriptor(description=p.description, read_only=True)).value
                for p in PARAMETERS}
        except (InvalidParameterTypeException, InvalidParameterValueException) as e:
            raise InputError(str(e)) from e

    def _build_runtime(self, values: dict) -> StreamingRuntime:
        from ..runtime.streaming.build import build_runtime

        cfg = pipeline_config(values)
        t0 = time.perf_counter()
        runtime = build_runtime(cfg)
        self.get_logger().info(f"loaded {cfg.checkpoint} ({cfg.device}, {cfg.dtype}, engines {cfg.engines or 'none'}, "
                               f"tracker {cfg.tracker}) in {time.perf_counter() - t0:.1f} s")
        return runtime

    def _on_image(self, msg) -> None:
        self.counters.received += 1
        try:
            image = decode_image(msg, self.config.compressed)
        except Exception as e:  # a malformed message is counted and skipped, never fatal
            self.counters.rejected += 1
            self.counters.last_rejection = str(e) if isinstance(e, InputError) else f"{type(e).__name__}: {e}"
            self.get_logger().warning(f"rejected image ({self.counters.rejected} so far): "
                                      f"{self.counters.last_rejection}", throttle_duration_sec=WARN_PERIOD_S)
            return
        stamp = msg.header.stamp
        with self._lock:
            frame = self.source.push(image, timestamp=stamp.sec + stamp.nanosec * 1e-9)
            self._headers[frame.index] = msg.header

    def _on_query(self, msg: String) -> None:
        self.runtime.set_query(msg.data)
        self.get_logger().info(f"query: {self.runtime.query!r}" if self.runtime.query else "query empty: paused")

    def _on_reason_now(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        if not self.runtime.query:
            response.success, response.message = False, "no query: publish one on 'query' first"
        else:
            self.runtime.request_reasoning()
            response.success, response.message = True, "reasoning requested on the next frame"
        return response

    def _take_header(self, index: int) -> Header:
        """The header of frame ``index``; forgets the headers of older (dropped) frames."""
        with self._lock:
            for old in [i for i in self._headers if i < index]:
                del self._headers[old]
            return self._headers.pop(index)

    def _process(self) -> None:
        for frame in self.source:
            header = self._take_header(frame.index)
            try:
                result = self.runtime.process(frame)
                self.runtime.stats.dropped = self.source.dropped
                self._publish(result, header)
            except Exception as e:  # reported; the next frame is processed
                self.counters.failed += 1
                self.get_logger().error(f"frame {frame.index} failed ({self.counters.failed} so far): "
                                        f"{type(e).__name__}: {e}", throttle_duration_sec=WARN_PERIOD_S)

    def _publish(self, result: FrameResult, header: Header) -> None:
        h, w = result.mask.shape
        self.mask_pub.publish(Image(header=header, height=h, width=w, encoding="mono8", step=w,
                                    data=mono8(result.mask)))
        box = mask_bbox(result.mask)
        x, y, bw, bh = box
        self.roi_pub.publish(RegionOfInterest(x_offset=x, y_offset=y, width=bw, height=bh))
        if self.overlay_pub is not None:
            age = "" if result.anchor_age is None else f" age {result.anchor_age}"
            img = overlay(result.frame.image, result.mask, result.mask_source, f"{result.mask_source}{age}")
            self.overlay_pub.publish(Image(header=header, height=h, width=w, encoding="rgb8", step=3 * w,
                                           data=img.tobytes()))
        if self.detections_pub is not None:
            self.detections_pub.publish(detections(header, box, result))
        self.counters.published += 1
        self._recent.append(ResultInfo.of(result))

    def state(self) -> str:
        """stopped | paused | reasoning | tracking."""
        if not self._thread.is_alive():
            return "stopped"
        if not self.runtime.query:
            return "paused"
        return "reasoning" if self.runtime.reasoning_busy else "tracking"

    def connections(self) -> dict[str, str]:
        """Matched peers of each topic as this node sees them (peers wait on these)."""
        pubs = {"mask": self.mask_pub, "mask_roi": self.roi_pub, "overlay": self.overlay_pub,
                "detections": self.detections_pub}
        counts = {f"{name}_subscribers": p.get_subscription_count() for name, p in pubs.items() if p is not None}
        counts["image_publishers"] = self.image_sub.get_publisher_count()
        counts["query_publishers"] = self.query_sub.get_publisher_count()
        return {k: str(v) for k, v in counts.items()}

    def _publish_diagnostics(self) -> None:
        rep = report(self.runtime.stats.snapshot(), list(self._recent), self.counters, self.source.dropped,
                     self.state(), self.runtime.query, time.monotonic(), self._last_report)
        self._last_report = rep
        values = {**rep.values, **self.connections()}
        status = DiagnosticStatus(level=bytes([rep.level]), name=f"visa_edge: {self.get_fully_qualified_name()}",
                                  message=rep.message, hardware_id=self.get_fully_qualified_name(),
                                  values=[KeyValue(key=k, value=v) for k, v in values.items()])
        stamp = self.get_clock().now().to_msg()
        self.diagnostics_pub.publish(DiagnosticArray(header=Header(stamp=stamp), status=[status]))

    def destroy_node(self) -> None:
        """Stop taking frames, publish the queued ones, stop the runtime (if built here), then destroy."""
        self.source.close()
        self._thread.join()
        if self._owns_runtime:
            self.runtime.close()
        super().destroy_node()


def detections(header: Header, box: tuple[int, int, int, int], result: FrameResult):
    """vision_msgs/Detection2DArray: one detection (the mask's box, the query as class) or none."""
    out = Detection2DArray(header=header)
    x, y, w, h = box
    if w:
        det = Detection2D(header=header, id="0")
        det.bbox.center.position.x, det.bbox.center.position.y = x + w / 2, y + h / 2
        det.bbox.size_x, det.bbox.size_y = float(w), float(h)
        hypothesis = ObjectHypothesisWithPose()
        hypothesis.hypothesis.class_id, hypothesis.hypothesis.score = result.query, float(result.confidence)
        det.results.append(hypothesis)
        out.detections.append(det)
    return out


def main(args: list[str] | None = None) -> int:
    """Run the node until shutdown (Ctrl-C / SIGTERM); ``args`` go to rclpy.init (``--ros-args ...``)."""
    rclpy.init(args=args)
    try:
        node = VisaEdgeNode()
        try:
            rclpy.spin(node)
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        finally:
            node.destroy_node()
    finally:
        rclpy.try_shutdown()
    return 0
