"""The visa_edge ROS 2 node: camera frames in, one mask per frame out (plain or managed).

Topics (relative names, remap as usual) are listed in ros_node/README.md: ``image``,
``camera_info``, ``query`` and ``queries`` (several, a JSON list) in; ``mask`` (the first
query's), ``labels`` (every query's: label image of query ids), ``query_ids`` (latched: JSON
ids -> queries), ``mask_info``, ``mask_roi``, ``mask_polygon``, ``mask_markers``,
``mask/camera_info``, ``overlay`` (and ``detections`` where vision_msgs is installed) out;
``/diagnostics``; service ``reason_now``.

Threads: the executor runs the callbacks, none of which blocks (the image callback decodes
and pushes into a bounded drop-oldest queue); one processing thread runs
StreamingRuntime.process on the queued frames and publishes each result (rclpy publishers
may be used from any thread); the reasoning step runs on the runtime's own worker.

Life cycle (the managed node's transitions; the plain node runs configure and activate in its
constructor, deactivate and cleanup in destroy_node): configure builds the runtime (loads the
models), starts the processing thread and ``diagnostics``; activate creates the subscriptions,
publishers and service; deactivate destroys them (the frames already queued are published
first); cleanup stops the thread and frees the runtime.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point, Point32, Polygon, PolygonStamped
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.executors import ExternalShutdownException
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSPolicyKind, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, RegionOfInterest
from std_msgs.msg import Header, String
from std_srvs.srv import Trigger
from visualization_msgs.msg import Marker, MarkerArray

from ..runtime.errors import InputError, VisaEdgeError
from ..runtime.streaming import FrameResult, PushSource, StreamingRuntime
from ..runtime.streaming.sinks import overlay
from .parameters import (DYNAMIC, PARAMETERS, STREAM_DYNAMIC, node_config, parse_queries, pipeline_config, stream_config,
                         stream_values)
from .convert import box_corners, decode_image, mask_bbox, mono8, pixel_rays, scale_intrinsics
from .diagnostics import NodeCounters, Report, ResultInfo, mask_info, report, short

try:  # optional: vision_msgs is not on PyPI
    from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose
except ImportError:
    Detection2DArray = None

WARN_PERIOD_S = 5.0  # throttle of the per-message warnings (rejected frames, failing frames)
RECENT_RESULTS = 64  # results kept for diagnostics
CAMERA_INFOS = 32  # camera_info messages kept for pairing by stamp
DRAIN_TIMEOUT_S = 10.0  # deactivate waits this long for the queued frames to be published
DIAGNOSTICS_TOPIC = "/diagnostics"  # absolute, where diagnostic aggregators listen (remappable)
LOGGERS = ("visa_edge", "py.warnings")  # Python loggers routed to /rosout (py.warnings: the warnings module)
QUERY_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                       durability=DurabilityPolicy.TRANSIENT_LOCAL)
# A transient-local subscription does not match volatile publishers: a second, volatile one takes
# theirs (a latched publisher matches both; its messages are taken once).
VOLATILE_QUERY_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
                                durability=DurabilityPolicy.VOLATILE)


def qos_profile(name: str, depth: int) -> QoSProfile:
    """``sensor_data``: best effort; ``reliable``: reliable; both volatile, keep last ``depth``."""
    reliability = ReliabilityPolicy.BEST_EFFORT if name == "sensor_data" else ReliabilityPolicy.RELIABLE
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=reliability,
                      durability=DurabilityPolicy.VOLATILE)


class RosoutHandler(logging.Handler):
    """Forwards Python log records (the project's loggers, the warnings module) to a node's rclpy logger."""

    def __init__(self, logger):
        super().__init__()
        self.logger = logger

    def emit(self, record: logging.LogRecord) -> None:
        text = f"[{record.name}] {record.getMessage()}"
        if record.levelno >= logging.ERROR:
            self.logger.error(text)
        elif record.levelno >= logging.WARNING:
            self.logger.warning(text)
        elif record.levelno >= logging.INFO:
            self.logger.info(text)
        else:
            self.logger.debug(text)


_routing_lock = threading.Lock()
_routing: list[logging.Handler] = []  # handlers of the live nodes; warnings are captured while any is


def route_python_logs(handler: logging.Handler, on: bool) -> None:
    """Attach (``on``) or detach a node's handler to LOGGERS; the warnings module goes through logging
    (``py.warnings``) while at least one node routes."""
    with _routing_lock:
        if on == (handler in _routing):
            return
        for name in LOGGERS:
            (logging.getLogger(name).addHandler if on else logging.getLogger(name).removeHandler)(handler)
        (_routing.append if on else _routing.remove)(handler)
        logging.captureWarnings(bool(_routing))


class _VisaEdge:
    """The node's behaviour, shared by the plain (VisaEdgeNode) and managed (ManagedVisaEdgeNode) nodes.

    ``runtime``: a ready StreamingRuntime (the caller owns and closes it); ``runtime_factory``:
    builds one at configure (the node closes it at cleanup); neither: built from the parameters.
    """

    def _setup(self, runtime: StreamingRuntime | None, runtime_factory: Callable[[], StreamingRuntime] | None) -> None:
        self.values = self._declare_parameters()
        self.config = node_config(self.values)
        self._given_runtime, self._runtime_factory = runtime, runtime_factory
        self.runtime: StreamingRuntime | None = None
        self.counters = NodeCounters()
        self.query_id = 0  # queries accepted so far
        self.source: PushSource | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # guards _headers: a frame's header is recorded before it can be dequeued
        self._pub_lock = threading.Lock()  # guards the publishers against deactivation while publishing
        self._headers: dict[int, tuple[Header, float]] = {}  # frame index -> (input header, arrival), in flight
        self._camera_infos: OrderedDict[tuple[int, int], CameraInfo] = OrderedDict()  # by stamp
        self._seen_queries: deque[tuple[str, int, int]] = deque(maxlen=16)  # (topic, source time, sequence) taken
        self._recent: deque[ResultInfo] = deque(maxlen=RECENT_RESULTS)
        self._last_report: Report | None = None
        self._active = False
        self.subs: dict = {}
        self.pubs: dict = {}
        self.reason_srv = None
        self.diagnostics_pub = self.diagnostics_timer = None
        self.add_on_set_parameters_callback(self._check_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)
        self._log_handler = RosoutHandler(self.get_logger())
        route_python_logs(self._log_handler, True)

    # --- parameters ----------------------------------------------------------------------

    def _declare_parameters(self) -> dict:
        try:
            return {p.name: self.declare_parameter(p.name, p.default, ParameterDescriptor(
                description=p.description + ("" if p.name in DYNAMIC else " (read-only: set at start-up)"),
                read_only=p.name not in DYNAMIC)).value for p in PARAMETERS}
        except (InvalidParameterTypeException, InvalidParameterValueException) as e:
            raise InputError(str(e)) from e

    def _check_parameters(self, params) -> SetParametersResult:
        """Accept a change of the dynamic parameters only if the runtime's StreamConfig would accept it."""
        try:
            base = self.runtime.config if self.runtime is not None else stream_config(self.values)
            dataclasses.replace(base, **stream_values({p.name: p.value for p in params}))
        except VisaEdgeError as e:
            return SetParametersResult(successful=False, reason=str(e))
        return SetParametersResult(successful=True)

    def _apply_parameters(self, params) -> None:
        new = {p.name: p.value for p in params if p.name in DYNAMIC and p.value != self.values[p.name]}
        self.values.update(new)
        self.config = node_config(self.values)
        if self.runtime is not None:
            self._apply_stream_parameters()
        if new:
            self.get_logger().info(f"parameters changed: {new}")

    def _show_stream_parameters(self) -> None:
        """Set the dynamic stream parameters to the runtime's values (a ready runtime's config wins)."""
        kinds = {p.name: type(p.default) for p in PARAMETERS}
        self.set_parameters_atomically([Parameter(n, value=kinds[n](getattr(self.runtime.config, n) or 0))
                                        for n in STREAM_DYNAMIC])

    def _apply_stream_parameters(self) -> None:
        """Replace the runtime's (frozen) StreamConfig: it is read on every frame."""
        self.runtime.config = dataclasses.replace(self.runtime.config,
                                                  **stream_values({n: self.values[n] for n in STREAM_DYNAMIC}))

    # --- life cycle ----------------------------------------------------------------------

    def _configure(self) -> None:
        if self._given_runtime is not None:
            self.runtime = self._given_runtime
        elif self._runtime_factory is not None:
            self.runtime = self._runtime_factory()
        else:
            self.runtime = self._build_runtime()
        self._show_stream_parameters()
        if self.config.queries:
            self._set_queries(self.config.queries)
        elif self.config.query:
            self._set_query(self.config.query)
        self.source = PushSource(maxsize=self.config.queue_size)
        self._thread = threading.Thread(target=self._process, args=(self.source,), name="visa_edge_process",
                                        daemon=True)
        self._thread.start()
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, 10)
        self.diagnostics_timer = self.create_timer(self.config.diagnostics_period, self._publish_diagnostics)

    def _build_runtime(self) -> StreamingRuntime:
        from ..runtime.streaming.build import build_runtime

        cfg = pipeline_config(self.values)
        t0 = time.perf_counter()
        runtime = build_runtime(cfg)
        self.get_logger().info(f"loaded {cfg.checkpoint} ({cfg.device}, {cfg.dtype}, engines {cfg.engines or 'none'}, "
                               f"tracker {cfg.tracker}) in {time.perf_counter() - t0:.1f} s")
        return runtime

    def _activate(self) -> None:
        cfg = self.config
        out_qos = qos_profile(cfg.output_qos, cfg.output_depth)
        with self._pub_lock:
            self.pubs = {
                "mask": self.create_publisher(Image, "mask", out_qos),
                "mask_info": self.create_publisher(DiagnosticArray, "mask_info", out_qos),
                "mask_roi": self.create_publisher(RegionOfInterest, "mask_roi", out_qos),
                "mask_polygon": self.create_publisher(PolygonStamped, "mask_polygon", out_qos),
                "mask_markers": self.create_publisher(MarkerArray, "mask_markers", out_qos),
                "camera_info": self.create_publisher(CameraInfo, "mask/camera_info", out_qos),
                "overlay": self.create_publisher(Image, "overlay", out_qos),
                "labels": self.create_publisher(Image, "labels", out_qos),
                "query_ids": self.create_publisher(String, "query_ids", QUERY_QOS),
            }
            if Detection2DArray is not None:
                self.pubs["detections"] = self.create_publisher(Detection2DArray, "detections", out_qos)
            self._active = True
        self.subs = {
            "image": self.create_subscription(CompressedImage if cfg.compressed else Image, "image", self._on_image,
                                              qos_profile(cfg.input_qos, cfg.input_depth)),
            "camera_info": self.create_subscription(CameraInfo, "camera_info", self._on_camera_info,
                                                    qos_profile(cfg.input_qos, cfg.input_depth)),
            "query": self.create_subscription(String, "query", self._on_query, QUERY_QOS, event_callbacks=(
                SubscriptionEventCallbacks(incompatible_qos=self._on_incompatible_query_qos))),
            "query_volatile": self.create_subscription(String, "query", self._on_query, VOLATILE_QUERY_QOS),
            "queries": self.create_subscription(String, "queries", self._on_queries, QUERY_QOS, event_callbacks=(
                SubscriptionEventCallbacks(incompatible_qos=self._on_incompatible_query_qos))),
            "queries_volatile": self.create_subscription(String, "queries", self._on_queries, VOLATILE_QUERY_QOS),
        }
        self._publish_query_ids()
        self.reason_srv = self.create_service(Trigger, "reason_now", self._on_reason_now)
        kind = "compressed" if cfg.compressed else "raw"
        self.get_logger().info(f"active: {kind} images on {self.subs['image'].topic_name} ({cfg.input_qos}), "
                               f"query {short(self.runtime.query)!r}")

    def _deactivate(self) -> None:
        for sub in self.subs.values():
            self.destroy_subscription(sub)
        self.subs = {}
        if self.reason_srv is not None:
            self.destroy_service(self.reason_srv)
            self.reason_srv = None
        self._drain()
        with self._pub_lock:
            self._active = False
            for pub in self.pubs.values():
                self.destroy_publisher(pub)
            self.pubs = {}

    def _drain(self) -> None:
        """Wait (bounded) until the frames already queued have been processed."""
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while self._headers and self._thread is not None and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)

    def _cleanup(self) -> None:
        if self.source is not None:
            self.source.close()
        if self._thread is not None:
            self._thread.join()
        self.source = self._thread = None
        if self.diagnostics_timer is not None:
            self.destroy_timer(self.diagnostics_timer)
            self.destroy_publisher(self.diagnostics_pub)
            self.diagnostics_timer = self.diagnostics_pub = None
        if self.runtime is not None and self.runtime is self._given_runtime:
            self.runtime.reset()  # a later configure starts a new stream (frame indices restart)
        elif self.runtime is not None:
            self.runtime.close()
        self.runtime = None
        self._headers.clear()
        self._camera_infos.clear()
        self._recent.clear()

    def _shutdown(self) -> None:
        """Deactivate and clean up what is still active or configured; detach the log handler."""
        if self._active:
            self._deactivate()
        if self.runtime is not None:
            self._cleanup()
        route_python_logs(self._log_handler, False)

    # --- callbacks -----------------------------------------------------------------------

    def _on_image(self, msg) -> None:
        arrival = time.monotonic()
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
            self._headers[frame.index] = msg.header, arrival

    def _on_camera_info(self, msg: CameraInfo) -> None:
        with self._lock:
            self._camera_infos[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = msg
            while len(self._camera_infos) > CAMERA_INFOS:
                self._camera_infos.popitem(last=False)

    def _on_incompatible_query_qos(self, event) -> None:
        """A volatile query publisher does not match the transient-local subscription (the volatile one
        takes it): only other mismatches are worth a warning."""
        if event.last_policy_kind != QoSPolicyKind.DURABILITY:
            self.get_logger().warning(f"a query publisher offers an incompatible QoS ({event.last_policy_kind.name})")

    def _first_take(self, topic: str, info) -> bool:
        """Whether a query message is new: a latched publisher's matches both subscriptions of a topic."""
        key = (topic, info["source_timestamp"], info["publication_sequence_number"])
        if key in self._seen_queries:
            return False
        self._seen_queries.append(key)
        return True

    def _on_query(self, msg: String, info) -> None:
        if self._first_take("query", info):
            self._set_query(msg.data)

    def _on_queries(self, msg: String, info) -> None:
        if self._first_take("queries", info):
            self._set_queries(msg.data)

    def _set_query(self, query: str) -> None:
        """Apply a query, unless the reasoner refuses it (logged, reported; the previous one stays)."""
        try:
            self.runtime.set_query(query)  # the reasoner's check_query, if it has one, may refuse it
        except InputError as e:
            self._refuse(f"{e} ({len(query)} chars)")
            return
        self._accepted()

    def _set_queries(self, text: str) -> None:
        """Apply a JSON list of queries (ids kept for those already current), unless it is refused
        (not a JSON list of strings, or a query the reasoner refuses: logged, reported, nothing changes)."""
        try:
            self.runtime.set_queries(parse_queries(text))
        except InputError as e:
            self._refuse(str(e))
            return
        self._accepted()

    def _refuse(self, error: str) -> None:
        self.counters.queries_refused += 1
        self.counters.query_error = error
        queries = self.runtime.queries
        using = repr(short(self.runtime.query)) if len(queries) <= 1 else f"{len(queries)} queries {queries}"
        self.get_logger().warning(f"query refused: {error}; still using {using}")

    def _accepted(self) -> None:
        self.counters.query_error = ""
        self.query_id += 1
        queries = self.runtime.queries
        if len(queries) > 1:
            self.get_logger().info(f"queries: {({k: short(v) for k, v in queries.items()})}")
        else:
            self.get_logger().info(f"query: {short(self.runtime.query)!r}" if queries else "query empty: paused")
        self._publish_query_ids()

    def _publish_query_ids(self) -> None:
        """The current ids -> queries on the latched ``query_ids`` topic (JSON object, ids as keys)."""
        with self._pub_lock:
            if self._active:
                text = json.dumps({str(k): v for k, v in self.runtime.queries.items()})
                self.pubs["query_ids"].publish(String(data=text))

    def _on_reason_now(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        if not self.runtime.query:
            response.success, response.message = False, "no query: publish one on 'query' first"
        else:
            self.runtime.request_reasoning()
            response.success, response.message = True, "reasoning requested on the next frame"
        return response

    # --- processing ----------------------------------------------------------------------

    def _take_header(self, index: int) -> tuple[Header, float]:
        """The header and arrival time of frame ``index``; forgets those of older (dropped) frames."""
        with self._lock:
            for old in [i for i in self._headers if i < index]:
                del self._headers[old]
            return self._headers[index]

    def _process(self, source: PushSource) -> None:
        """Track the queued frames. Unless the runtime blocks on reasoning (offline replay), frames
        are live: one the runtime receives too late is dropped (mask_source "dropped", the last mask)."""
        for frame in source:
            header, arrival = self._take_header(frame.index)
            try:
                result = self.runtime.process(frame, arrival, live=not self.runtime.config.blocking)
                self.runtime.stats.dropped = source.dropped
                self._publish(result, header)
            except Exception as e:  # reported; the next frame is processed
                self.counters.failed += 1
                self.get_logger().error(f"frame {frame.index} failed ({self.counters.failed} so far): "
                                        f"{type(e).__name__}: {e}", throttle_duration_sec=WARN_PERIOD_S)
            finally:
                with self._lock:
                    self._headers.pop(frame.index, None)

    def _camera_info_for(self, header: Header) -> CameraInfo | None:
        """The camera_info with the frame's stamp, else the newest one received (intrinsics rarely change)."""
        with self._lock:
            exact = self._camera_infos.get((header.stamp.sec, header.stamp.nanosec))
            return exact or (next(reversed(self._camera_infos.values())) if self._camera_infos else None)

    def _publish(self, result: FrameResult, header: Header) -> None:
        if result.mask_source == "paused" and not self.config.publish_when_paused:
            return
        h, w = result.mask.shape
        box = mask_bbox(result.mask)
        info = self._camera_info_for(header)
        if info is not None:
            info = camera_info_for_mask(info, header, h, w)
        anchor = None if result.anchor_index is None else self.runtime.buffer.get(result.anchor_index)
        values = mask_info(result.metadata(), self.query_id,
                           None if anchor is None else result.frame.timestamp - anchor.timestamp)
        with self._pub_lock:
            if not self._active:
                return
            pubs = self.pubs
            pubs["mask"].publish(Image(header=header, height=h, width=w, encoding="mono8", step=w,
                                       data=mono8(result.mask)))
            pubs["labels"].publish(Image(header=header, height=h, width=w, encoding="mono8", step=w,
                                         data=np.ascontiguousarray(result.labels, np.uint8).tobytes()))
            pubs["mask_info"].publish(DiagnosticArray(header=header, status=[DiagnosticStatus(
                level=DiagnosticStatus.OK, name="visa_edge mask", message=result.mask_source,
                hardware_id=self.get_fully_qualified_name(),
                values=[KeyValue(key=k, value=v) for k, v in values.items()])]))
            x, y, bw, bh = box
            pubs["mask_roi"].publish(RegionOfInterest(x_offset=x, y_offset=y, width=bw, height=bh))
            corners = box_corners(box)
            pubs["mask_polygon"].publish(PolygonStamped(header=header, polygon=Polygon(
                points=[Point32(x=u, y=v, z=0.0) for u, v in corners])))
            if info is not None:
                pubs["camera_info"].publish(info)
                pubs["mask_markers"].publish(markers(header, pixel_rays(corners, info.k), self.runtime.query))
            if self.config.publish_overlay:
                age = "" if result.anchor_age is None else f" age {result.anchor_age}"
                img = overlay(result.frame.image, result.mask, result.mask_source, f"{result.mask_source}{age}")
                pubs["overlay"].publish(Image(header=header, height=h, width=w, encoding="rgb8", step=3 * w,
                                              data=img.tobytes()))
            if "detections" in pubs:
                pubs["detections"].publish(detections(header, box, result))
        self.counters.published += 1
        self._recent.append(ResultInfo.of(result))

    # --- diagnostics ---------------------------------------------------------------------

    def state(self) -> str:
        """stopped | inactive | paused | reasoning | tracking."""
        if self._thread is None or not self._thread.is_alive():
            return "stopped"
        if not self._active:
            return "inactive"
        if not self.runtime.query:
            return "paused"
        return "reasoning" if self.runtime.reasoning_busy else "tracking"

    def connections(self) -> dict[str, str]:
        """Matched peers of each topic as this node sees them (peers wait on these)."""
        with self._pub_lock:
            counts = {f"{name}_subscribers": p.get_subscription_count() for name, p in self.pubs.items()}
        subs = dict(self.subs)
        for name in ("image", "camera_info"):
            if name in subs:
                counts[f"{name}_publishers"] = subs[name].get_publisher_count()
        if "query" in subs:
            counts["query_publishers"] = max(subs["query"].get_publisher_count(),
                                             subs["query_volatile"].get_publisher_count())
        return {k: str(v) for k, v in counts.items()}

    def _publish_diagnostics(self) -> None:
        rep = report(self.runtime.stats.snapshot(), list(self._recent), self.counters, self.source.dropped,
                     self.state(), self.runtime.query, time.monotonic(), self._last_report)
        self._last_report = rep
        values = {**rep.values, "query_id": str(self.query_id), **self.connections()}
        status = DiagnosticStatus(level=bytes([rep.level]), name=f"visa_edge: {self.get_fully_qualified_name()}",
                                  message=rep.message, hardware_id=self.get_fully_qualified_name(),
                                  values=[KeyValue(key=k, value=v) for k, v in values.items()])
        stamp = self.get_clock().now().to_msg()
        self.diagnostics_pub.publish(DiagnosticArray(header=Header(stamp=stamp), status=[status]))


class VisaEdgeNode(_VisaEdge, Node):
    """The plain node: configured and active from construction until destroy_node.

    ``node_kwargs`` go to rclpy's Node (namespace, context, parameter_overrides, ...).
    """

    def __init__(self, runtime: StreamingRuntime | None = None, node_name: str = "visa_edge",
                 runtime_factory: Callable[[], StreamingRuntime] | None = None, **node_kwargs):
        Node.__init__(self, node_name, **node_kwargs)
        self._setup(runtime, runtime_factory)
        try:
            self._configure()
            self._activate()
        except BaseException:
            self._shutdown()
            raise

    def destroy_node(self) -> None:
        """Stop taking frames, publish the queued ones, stop the runtime (if built here), then destroy."""
        self._shutdown()
        super().destroy_node()


class ManagedVisaEdgeNode(_VisaEdge, LifecycleNode):
    """The managed (lifecycle) node: starts unconfigured; see the module docstring for the transitions.

    A transition that fails (e.g. a checkpoint that does not load) is logged and returns FAILURE.
    """

    def __init__(self, runtime: StreamingRuntime | None = None, node_name: str = "visa_edge",
                 runtime_factory: Callable[[], StreamingRuntime] | None = None, **node_kwargs):
        LifecycleNode.__init__(self, node_name, **node_kwargs)
        self._setup(runtime, runtime_factory)

    def _transition(self, name: str, step: Callable[[], None]) -> TransitionCallbackReturn:
        try:
            step()
        except VisaEdgeError as e:
            self.get_logger().error(f"{name} failed: {e}")
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._transition("configure", self._configure)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._transition("activate", self._activate)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._transition("deactivate", self._deactivate)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._transition("cleanup", self._cleanup)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._transition("shutdown", self._shutdown)

    def destroy_node(self) -> None:
        self._shutdown()
        super().destroy_node()


def camera_info_for_mask(info: CameraInfo, header: Header, height: int, width: int) -> CameraInfo:
    """``info`` with the mask's header and size; K and P scaled if the mask size differs from the info's."""
    out = CameraInfo(header=header, height=height, width=width, distortion_model=info.distortion_model,
                     d=list(info.d), r=list(info.r), k=list(info.k), p=list(info.p),
                     binning_x=info.binning_x, binning_y=info.binning_y, roi=info.roi)
    if info.width and info.height and (info.width, info.height) != (width, height):
        out.k, out.p = scale_intrinsics(info.k, info.p, width / info.width, height / info.height)
    return out


def markers(header: Header, rays: list[tuple[float, float, float]], query: str) -> MarkerArray:
    """RViz: the mask's box as a closed line strip at depth 1 m in the camera frame; DELETE when empty."""
    marker = Marker(header=header, ns="visa_edge", id=0, type=Marker.LINE_STRIP, text=short(query))
    if not rays:
        marker.action = Marker.DELETE
        return MarkerArray(markers=[marker])
    marker.action = Marker.ADD
    marker.pose.orientation.w = 1.0
    marker.scale.x = 0.01
    marker.color.r, marker.color.g, marker.color.a = 1.0, 0.2, 1.0
    marker.points = [Point(x=x, y=y, z=z) for x, y, z in rays + rays[:1]]
    return MarkerArray(markers=[marker])


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


def main(args: list[str] | None = None, managed: bool = False) -> int:
    """Run the node until shutdown (Ctrl-C / SIGTERM); ``args`` go to rclpy.init (``--ros-args ...``).

    ``managed``: a lifecycle node, unconfigured until a lifecycle manager (or ``ros2 lifecycle set``)
    configures and activates it.
    """
    rclpy.init(args=args)
    try:
        node = ManagedVisaEdgeNode() if managed else VisaEdgeNode()
        try:
            rclpy.spin(node)
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        finally:
            node.destroy_node()
    finally:
        rclpy.try_shutdown()
    return 0
