"""The ROS 2 node over real rclpy + Fast DDS: the node runs in this process (with a small test
runtime) or as `visa-edge ros` (tiny checkpoint), its peer (ros_node/probe.py) in a spawned
process. DDS stays on 127.0.0.1 (a Fast DDS profile with only a loopback UDP transport) in a
random domain; every wait is bounded and says what was missing."""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

try:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from rclpy.signals import SignalHandlerOptions

    from visa_edge.ros_node.node import ManagedVisaEdgeNode, VisaEdgeNode
    from visa_edge.ros_node.probe import (ProbeProcess, camera_k, frame_id_of, index_of, probe_frame, square_box,
                                          stamp_of)
except ImportError as e:
    pytest.skip(f"rclpy / ROS 2 message packages not importable ({e}); install them with pip install -e '.[ros]'",
                allow_module_level=True)

from visa_edge.runtime.errors import InputError
from visa_edge.runtime.streaming import ReasonOutput, StreamConfig, StreamingRuntime
from visa_edge.runtime.streaming.scheduler import label_image
from visa_edge.runtime.tracking import Tracker, TrackOutput

# rclpy's type support imports rosidl_parser -> lark, which imports the deprecated sre_* modules.
pytestmark = pytest.mark.filterwarnings("ignore:module 'sre_:DeprecationWarning")

H, W = 48, 64
SIDE = min(H, W) // 3
SQUARE_QUERY, BACKGROUND_QUERY = "the red square", "the background"

LOOPBACK_PROFILE = """<?xml version="1.0" encoding="UTF-8"?>
<dds xmlns="http://www.eprosima.com/XMLSchemas/fastRTPS_Profiles">
  <profiles>
    <transport_descriptors>
      <transport_descriptor>
        <transport_id>loopback_udp</transport_id>
        <type>UDPv4</type>
        <sendBufferSize>4194304</sendBufferSize>
        <receiveBufferSize>4194304</receiveBufferSize>
        <interfaceWhiteList><address>127.0.0.1</address></interfaceWhiteList>
      </transport_descriptor>
    </transport_descriptors>
    <participant profile_name="visa_edge_tests_loopback" is_default_profile="true">
      <rtps>
        <useBuiltinTransports>false</useBuiltinTransports>
        <userTransports><transport_id>loopback_udp</transport_id></userTransports>
        <sendSocketBufferSize>4194304</sendSocketBufferSize>
        <listenSocketBufferSize>4194304</listenSocketBufferSize>
        <builtin>
          <avoid_builtin_multicast>true</avoid_builtin_multicast>
          <metatrafficUnicastLocatorList>
            <locator><udpv4><address>127.0.0.1</address></udpv4></locator>
          </metatrafficUnicastLocatorList>
          <initialPeersList><locator><udpv4><address>127.0.0.1</address></udpv4></locator></initialPeersList>
        </builtin>
        <defaultUnicastLocatorList>
          <locator><udpv4><address>127.0.0.1</address></udpv4></locator>
        </defaultUnicastLocatorList>
      </rtps>
    </participant>
  </profiles>
</dds>
"""
# Variables that would widen discovery beyond the profile (LOCALHOST range, for one, re-enables
# Fast DDS's builtin transports on every interface).
WIDENING_VARS = ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_STATIC_PEERS", "ROS_LOCALHOST_ONLY", "ROS_DISCOVERY_SERVER",
                 "FASTDDS_DEFAULT_PROFILES_FILE", "RMW_FASTRTPS_USE_QOS_FROM_XML")


@pytest.fixture(scope="module")
def ros_env(tmp_path_factory):
    """Loopback-only Fast DDS in a random domain, for this process and every process it starts."""
    profile = tmp_path_factory.mktemp("dds") / "loopback.xml"
    profile.write_text(LOOPBACK_PROFILE)
    with pytest.MonkeyPatch.context() as mp:
        for name in WIDENING_VARS:
            mp.delenv(name, raising=False)
        mp.setenv("ROS_DOMAIN_ID", str(random.SystemRandom().randint(1, 100)))
        mp.setenv("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
        mp.setenv("FASTRTPS_DEFAULT_PROFILES_FILE", str(profile))
        yield dict(os.environ)


@pytest.fixture(scope="module")
def context(ros_env):
    ctx = rclpy.Context()
    rclpy.init(context=ctx, signal_handler_options=SignalHandlerOptions.NO)
    yield ctx
    rclpy.try_shutdown(context=ctx)


@pytest.fixture(scope="module")
def probe(ros_env):
    p = ProbeProcess()
    yield p
    p.close()


QUERY_LIMIT = 64  # characters RedReasoner.check_query accepts


class RedReasoner:
    """Segments the red square (query mentions "square") or the rest; records the target frames."""

    def __init__(self, gate: threading.Event | None = None):
        self.calls: list[int] = []
        self.gate = gate

    def check_query(self, query: str) -> None:
        if len(query) > QUERY_LIMIT:
            raise InputError(f"query of {len(query)} characters: expected at most {QUERY_LIMIT}")

    def __call__(self, frames, query):
        if self.gate is not None:
            assert self.gate.wait(30), "test gate never opened"
        self.calls.append(frames[-1].index)
        red = frames[-1].image[..., 0] > 128
        return ReasonOutput((red if "square" in query else ~red).astype(np.uint8))


class PolarityTracker(Tracker):
    """Keeps segmenting what the anchor mask covered: the red pixels, or the others."""

    def reset(self) -> None:
        self.red = None

    def step(self, frame, mask=None, *, objects=None, index=None) -> TrackOutput:
        red = frame[..., 0] > 128
        if mask is not None:
            self.red = bool(red[mask > 0].all())
        return TrackOutput((red if self.red else ~red).astype(np.float32), 0.9)


def make_runtime(gate=None, **stream) -> tuple[StreamingRuntime, RedReasoner]:
    reasoner = RedReasoner(gate)
    cfg = StreamConfig(**{"window": 4, "references": 2, "every_frames": 10, "buffer_frames": 64, "blocking": True,
                          **stream})
    return StreamingRuntime(reasoner, PolarityTracker, cfg), reasoner


_namespaces = (f"/t{n}_{random.SystemRandom().randrange(16**6):06x}" for n in itertools.count())  # unique per run


@contextmanager
def running_node(context, probe, runtime, compressed=False, latched_query="", node_class=None, ready=True,
                 **params):
    """The node (spun on a thread here) and the probe, in a fresh namespace, matched both ways.

    ``latched_query``: the probe publishes it (transient-local) before the node starts.
    ``node_class``: VisaEdgeNode or ManagedVisaEdgeNode (``runtime`` is then a factory);
    ``ready``: wait for discovery (a managed node is matched only once active)."""
    namespace = next(_namespaces)
    params = {"input_qos": "reliable", "input_depth": 64, "queue_size": 64, "diagnostics_period": 0.1,
              "compressed": compressed, **params}
    if latched_query:
        probe.open(namespace, compressed=compressed, latched_query=latched_query)
    overrides = [Parameter(k, value=v) for k, v in params.items()]
    if node_class is ManagedVisaEdgeNode:
        node = node_class(runtime_factory=runtime, namespace=namespace, context=context, parameter_overrides=overrides)
    else:
        node = VisaEdgeNode(runtime, namespace=namespace, context=context, parameter_overrides=overrides)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()
    try:
        if not latched_query:
            probe.open(namespace, compressed=compressed)
        if ready:
            probe.call("wait_ready", timeout=20.0)
        yield node
    finally:
        executor.shutdown()
        spin.join(10)
        node.destroy_node()
        if node_class is not ManagedVisaEdgeNode:
            runtime.close()


def set_query(probe, text: str) -> None:
    """Publish a query and wait until the node's diagnostics show it (topics are not ordered with each other)."""
    probe.call("set_query", text=text)
    probe.call("wait_diagnostics", until={"query": text}, timeout=20.0)


def assert_square_masks(masks: dict, height: int = H, width: int = W) -> None:
    for i, m in masks.items():
        assert (m.frame_id, m.encoding, m.height, m.width, m.step) == (frame_id_of(i), "mono8", height, width, width), i
        assert m.values == (0, 255), (i, m.values)
        assert m.box == square_box(i, height, width) and m.area == SIDE * SIDE, (i, m.box, m.area)


def assert_frame_metadata(probe, sent: list[int]) -> None:
    """mask_info, mask_polygon, mask/camera_info and mask_markers of each frame (every_frames=10, blocking)."""
    infos = probe.call("wait_received", kind="mask_infos", indices=sent)
    for i in sent:
        age = i % 10
        v = infos[i]
        assert (v["frame_id"], v["frame_index"], v["message"], v["mask_source"]) == \
            (frame_id_of(i), str(i), v["mask_source"], "tracked" if age else "reasoning"), (i, v)
        assert (v["anchor_index"], v["anchor_age_frames"], v["anchor_age_s"]) == \
            (str(i - age), str(age), f"{age * 1.000001:.3f}"), (i, v)  # stamps: (1000 + i) s + i us
        assert (v["confidence"], v["query"], v["query_id"], v["mask_fraction"]) == \
            ("0.9000", SQUARE_QUERY, "1", f"{SIDE * SIDE / (H * W):.5f}"), (i, v)
        assert float(v["staleness_ms"]) >= 0 and float(v["anchor_latency_reasoning_ms"]) >= 0, v
    polygons = probe.call("wait_received", kind="polygons", indices=sent)
    cams = probe.call("wait_received", kind="camera_infos", indices=sent)
    markers = probe.call("wait_received", kind="markers", indices=sent)
    for i in sent:
        x, y, w, h = square_box(i, H, W)
        corners = [(x, y), (x + w, y), (x + w, y + h), (x, y + h)]
        assert polygons[i] == (frame_id_of(i), corners), (i, polygons[i])
        # camera_info published for a 2x size: K and P scaled by 1/2 to the mask's size
        k = camera_k(W, H)
        assert cams[i] == {"frame_id": frame_id_of(i), "width": W, "height": H, "k": k,
                           "p": [k[0], 0, k[2], 0, 0, k[4], k[5], 0, 0, 0, 1, 0]}, (i, cams[i])
        action, points = markers[i]
        rays = [((u - W / 2) / W, (v - H / 2) / W, 1.0) for u, v in corners]
        assert action == 0 and np.allclose(points, rays + rays[:1]), (i, points)


def udp_addresses(pid: int) -> set[str]:
    """Local IPv4 addresses of the UDP sockets process ``pid`` holds (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    addresses = set()
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[9] in inodes:
            addresses.add(".".join(str(b) for b in reversed(bytes.fromhex(fields[1].split(":")[0]))))
    return addresses


def test_every_frame_gets_its_mask_with_its_header(context, probe):
    runtime, reasoner = make_runtime()
    with running_node(context, probe, runtime, publish_overlay=True) as node:
        set_query(probe, SQUARE_QUERY)
        sent = probe.call("publish_frames", first=0, count=24, height=H, width=W, encodings=("rgb8", "bgr8", "mono8"),
                          camera_info=(2 * W, 2 * H))
        masks = probe.call("wait_masks", indices=sent, timeout=20.0)
        assert_square_masks(masks)
        rois = probe.call("wait_rois", count=24, timeout=20.0)
        assert rois == [square_box(i, H, W) for i in sent]
        assert_frame_metadata(probe, sent)
        diag = probe.call("wait_diagnostics", until={"frames_published": 24}, timeout=20.0)
        probe.call("wait_received", kind="overlays", indices=sent)
        got = probe.call("received")
        assert got["masks"] == sent and got["duplicates"] == []
        assert sorted(got["overlays"]) == sent and set(got["overlays"].values()) == {("rgb8", H, W)}
        assert (diag["frames_received"], diag["dropped_frames"], diag["rejected_frames"], diag["failed_frames"]) == \
            ("24", "0", "0", "0")
        assert diag["reasoning_completed"] == "3" and diag["level"] == "0" and float(diag["tracking_fps"]) >= 0
        assert reasoner.calls == [0, 10, 20]  # every_frames=10, blocking
        assert udp_addresses(os.getpid()) == {"127.0.0.1"}
        assert udp_addresses(probe.process.pid) == {"127.0.0.1"}
        assert node.state() == "tracking"


def test_query_change_and_empty_query_pause(context, probe):
    runtime, reasoner = make_runtime(every_frames=1000)
    with running_node(context, probe, runtime):
        set_query(probe, SQUARE_QUERY)
        assert_square_masks(probe.call("wait_masks", indices=probe.call("publish_frames", first=0, count=3)))
        set_query(probe, BACKGROUND_QUERY)
        background = probe.call("wait_masks", indices=probe.call("publish_frames", first=3, count=3))
        assert all(m.box == (0, 0, W, H) and m.area == H * W - SIDE * SIDE for m in background.values())
        set_query(probe, "")
        paused = probe.call("wait_masks", indices=probe.call("publish_frames", first=6, count=3))
        assert all(m.values == (0,) and m.area == 0 for m in paused.values())
        assert probe.call("wait_rois", count=9)[6:] == [(0, 0, 0, 0)] * 3
        assert probe.call("wait_diagnostics", until={"state": "paused"})["message"] == "paused (no query)"
    assert reasoner.calls == [0, 3]  # one step per query, nothing while paused


def test_malformed_images_are_counted_and_survived(context, probe):
    runtime, _ = make_runtime()
    with running_node(context, probe, runtime):
        set_query(probe, SQUARE_QUERY)
        good = bytes(H * W * 3)
        bad = [  # (encoding, height, width, step, data)
            ("32FC1", H, W, W * 4, bytes(H * W * 4)),  # unsupported encoding
            ("16UC1", H, W, W * 2, bytes(H * W * 2)),  # unsupported encoding
            ("rgb8", H, W, W * 2, good),  # step < width * 3
            ("rgb8", H, W, W * 3, good[:-7]),  # truncated data
            ("bgr8", 0, W, W * 3, b""),  # empty image
        ]
        for n, (encoding, height, width, step, data) in enumerate(bad):
            probe.call("publish_raw", index=100 + n, encoding=encoding, height=height, width=width, step=step,
                       data=data)
        diag = probe.call("wait_diagnostics", until={"rejected_frames": 5, "frames_received": 5})
        assert diag["level"] == "1" and diag["message"] == "new rejected_frames"
        assert diag["last_rejection"] == "image size 64x0: expected positive width and height"
        sent = probe.call("publish_frames", first=0, count=4, encodings=("bgr8", "mono8"))
        assert_square_masks(probe.call("wait_masks", indices=sent))
        got = probe.call("received")
        assert got["masks"] == sent  # nothing for the rejected frames
        diag = probe.call("wait_diagnostics", until={"frames_published": 4})
        assert (diag["rejected_frames"], diag["failed_frames"], diag["level"]) == ("5", "0", "0")


def test_compressed_images(context, probe):
    runtime, _ = make_runtime()
    with running_node(context, probe, runtime, compressed=True):
        set_query(probe, SQUARE_QUERY)
        probe.call("publish_compressed", index=100, fmt="bmp", data=b"BM")
        probe.call("publish_compressed", index=101, fmt="png", data=b"\x89PNG not really")
        sent = probe.call("publish_frames", first=0, count=6, encodings=("png", "jpeg"))
        masks = probe.call("wait_masks", indices=sent)
        assert_square_masks({i: m for i, m in masks.items() if i % 2 == 0})  # png: lossless
        for i in sent[1::2]:  # jpeg: the square within a pixel
            assert all(abs(a - b) <= 1 for a, b in zip(masks[i].box, square_box(i, H, W))), (i, masks[i].box)
        diag = probe.call("wait_diagnostics", until={"frames_published": 6})
        assert (diag["rejected_frames"], diag["frames_received"]) == ("2", "8")
        assert "could not be decoded" in diag["last_rejection"]


def test_reason_now_service_forces_a_step(context, probe):
    runtime, reasoner = make_runtime(every_frames=1000)
    with running_node(context, probe, runtime, input_qos="sensor_data", input_depth=5, queue_size=2):
        assert probe.call("reason_now") == (False, "no query: publish one on 'query' first")
        set_query(probe, SQUARE_QUERY)
        for i in range(3):  # lockstep: the default best-effort input gets one frame at a time
            assert_square_masks(probe.call("wait_masks", indices=probe.call("publish_frames", first=i, count=1)))
        assert reasoner.calls == [0]
        assert probe.call("reason_now") == (True, "reasoning requested on the next frame")
        assert_square_masks(probe.call("wait_masks", indices=probe.call("publish_frames", first=3, count=1)))
        assert reasoner.calls == [0, 3]
        assert probe.call("wait_diagnostics", until={"frames_published": 4})["anchor_age"] == "0"


def test_a_full_queue_drops_the_oldest_frames(context, probe):
    gate = threading.Event()
    runtime, reasoner = make_runtime(gate=gate)
    with running_node(context, probe, runtime, queue_size=1):
        set_query(probe, SQUARE_QUERY)
        probe.call("publish_frames", first=0, count=1)
        probe.call("wait_diagnostics", until={"state": "reasoning", "frames_received": 1})  # frame 0 holds the thread
        sent = probe.call("publish_frames", first=1, count=11)
        # 11 frames into a queue of 1: each pushes the previous one out, 1..10 are dropped
        diag = probe.call("wait_diagnostics", until={"frames_received": 12, "dropped_frames": 10})
        assert diag["state"] == "reasoning" and diag["frames_published"] == "0"
        gate.set()
        masks = probe.call("wait_masks", indices=[0, 11])
        assert_square_masks(masks)
        diag = probe.call("wait_diagnostics", until={"frames_published": 2})
        assert probe.call("received")["masks"] == [0, 11] and diag["dropped_frames"] == "10"
    assert reasoner.calls == [0, 11] and sent == list(range(1, 12))  # 11 is 10 frames after 0: every_frames


class SlowTracker(PolarityTracker):
    """PolarityTracker taking TRACK_S per frame."""

    def step(self, frame, mask=None, **kw) -> TrackOutput:
        time.sleep(TRACK_S)
        return super().step(frame, mask, **kw)


TRACK_S = 0.2


def test_late_frames_are_dropped_and_tracking_fps_does_not_spike(context, probe):
    """Live frames (non-blocking runtime): a burst queued behind a slow tracker is published at once
    as "dropped" (the previous mask) once late; the burst of quick results is no fps spike."""
    cfg = StreamConfig(window=4, references=2, every_frames=1000, buffer_frames=64, max_delay_periods=0.5)
    runtime = StreamingRuntime(RedReasoner(), SlowTracker, cfg)
    with running_node(context, probe, runtime):
        set_query(probe, SQUARE_QUERY)
        for i in range(10):  # one frame at a time, slower than the tracker, until the reasoning result is tracked
            probe.call("wait_masks", indices=probe.call("publish_frames", first=i, count=1))
            time.sleep(2 * TRACK_S)
            if probe.call("wait_received", kind="mask_infos", indices=[i])[i]["mask_source"] == "tracked":
                break
        else:
            raise AssertionError(f"no tracked frame within 10 frames: {probe.call('wait_diagnostics')}")
        sent = probe.call("publish_frames", first=i + 1, count=12)  # 12 frames arrive at once, stamps 1 s apart
        masks = probe.call("wait_masks", indices=sent)
        infos = probe.call("wait_received", kind="mask_infos", indices=sent)
        sources = [infos[j]["mask_source"] for j in sent]
        dropped = sources.count("dropped")
        # late (0.5 periods) once queued more than 0.5 s: after at most 3 tracked frames of 0.2 s
        assert 9 <= dropped <= 11 and set(sources) == {"tracked", "dropped"}, sources
        assert_square_masks({j: masks[j] for j in sent if infos[j]["mask_source"] == "tracked"})
        assert all(float(infos[j]["delay_ms"]) >= 0 for j in sent)
        diag = probe.call("wait_diagnostics", until={"frames_published": sent[-1] + 1})
        assert diag["dropped_late"] == str(dropped) and diag["dropped_frames"] == "0"
        assert float(diag["tracking_fps"]) <= len(sent) + i  # results of the last 2 s over at least 1 s


CAMERA_ENCODINGS = ("rgba8", "bgra8", "yuv422", "yuv422_yuy2", "bayer_rggb8", "bayer_bggr8", "bayer_gbrg8",
                    "bayer_grbg8", "rgb16", "bgr16", "mono16")


def test_camera_driver_encodings(context, probe):
    """rgba/bgra, YUV 4:2:2 (UYVY, YUYV), the four Bayer mosaics and 16-bit rgb/bgr/mono in both byte orders."""
    runtime, _ = make_runtime()
    with running_node(context, probe, runtime):
        set_query(probe, SQUARE_QUERY)
        sent = probe.call("publish_frames", first=0, count=len(CAMERA_ENCODINGS), encodings=CAMERA_ENCODINGS)
        sent += probe.call("publish_frames", first=len(sent), count=3, encodings=("rgb16", "bgr16", "mono16"),
                           big_endian=True)
        masks = probe.call("wait_masks", indices=sent)
        bayer = [i for i, e in enumerate(CAMERA_ENCODINGS) if e.startswith("bayer")]
        assert_square_masks({i: m for i, m in masks.items() if i not in bayer})
        for i in bayer:  # demosaicing blurs the square's edges by at most a pixel
            assert all(abs(a - b) <= 1 for a, b in zip(masks[i].box, square_box(i, H, W))), (i, masks[i].box)
        probe.call("publish_raw", index=100, encoding="32FC1", height=H, width=W, step=4 * W, data=bytes(4 * H * W))
        probe.call("publish_raw", index=101, encoding="yuv422", height=H, width=W - 1, step=2 * (W - 1),
                   data=bytes(2 * H * (W - 1)))
        diag = probe.call("wait_diagnostics", until={"rejected_frames": 2, "frames_published": len(sent)})
        assert diag["last_rejection"] == f"image width {W - 1} is odd: yuv422 (YUV 4:2:2) needs an even width"


def test_latched_query_published_before_the_node_starts(context, probe):
    runtime, reasoner = make_runtime()
    with running_node(context, probe, runtime, latched_query=SQUARE_QUERY):
        diag = probe.call("wait_diagnostics", until={"query": SQUARE_QUERY})
        assert (diag["query_id"], diag["state"]) == ("1", "tracking")
        assert_square_masks(probe.call("wait_masks", indices=probe.call("publish_frames", first=0, count=3)))
        set_query(probe, BACKGROUND_QUERY)  # a volatile publisher still works beside the latched one
        background = probe.call("wait_masks", indices=probe.call("publish_frames", first=3, count=2))
        assert all(m.area == H * W - SIDE * SIDE for m in background.values())
        probe.call("set_query", text=SQUARE_QUERY, latched=True)  # taken once, though both subscriptions match
        diag = probe.call("wait_diagnostics", until={"query": SQUARE_QUERY})
        assert diag["query_id"] == "3"
    assert reasoner.calls == [0, 3]


def test_an_over_long_query_is_refused_and_reported(context, probe):
    runtime, reasoner = make_runtime(every_frames=1000)
    with running_node(context, probe, runtime):
        set_query(probe, SQUARE_QUERY)
        assert_square_masks(probe.call("wait_masks", indices=probe.call("publish_frames", first=0, count=2)))
        probe.call("set_query", text="x" * 100_000)
        diag = probe.call("wait_diagnostics", until={"queries_refused": 1})
        error = f"query of 100000 characters: expected at most {QUERY_LIMIT} (100000 chars)"
        assert (diag["level"], diag["query"], diag["query_id"], diag["query_error"]) == ("2", SQUARE_QUERY, "1", error)
        assert diag["message"] == f"query refused ({error}); still using {SQUARE_QUERY!r}"
        level, line = probe.call("wait_rosout", text="query refused")
        assert level == 30 and line == f"query refused: {error}; still using {SQUARE_QUERY!r}"  # 30: WARN
        masks = probe.call("wait_masks", indices=probe.call("publish_frames", first=2, count=2))
        assert_square_masks(masks)  # the previous query stays active
        assert {v["query_id"] for v in probe.call("wait_received", kind="mask_infos", indices=[2, 3]).values()} == {"1"}
        set_query(probe, BACKGROUND_QUERY)
        diag = probe.call("wait_diagnostics", until={"query": BACKGROUND_QUERY})
        assert (diag["level"], diag["query_error"], diag["queries_refused"]) == ("0", "", "1")
    assert reasoner.calls == [0]  # the refused query never reached the reasoner


def test_dynamic_parameters_and_publishing_while_paused(context, probe):
    runtime, reasoner = make_runtime(every_frames=1000)
    with running_node(context, probe, runtime) as node:
        window = node.describe_parameter("window")
        assert window.read_only and window.description.endswith("(read-only: set at start-up)")
        assert not any(node.describe_parameter(n).read_only for n in
                       ("every_frames", "every_seconds", "min_confidence", "publish_overlay", "publish_when_paused"))
        assert node.get_parameter("every_frames").value == 1000  # a ready runtime's config is shown
        assert probe.call("set_parameters", values={"every_frames": 2, "min_confidence": 0.5}) == [(True, "")] * 2
        assert (runtime.config.every_frames, runtime.config.min_confidence, runtime.config.window) == (2, 0.5, 4)
        refused = probe.call("set_parameters", values={"min_confidence": 1.5})
        assert refused == [(False, "stream parameter min_confidence=1.5: expected min_confidence in 0..1 "
                                   "(a finite number)")]
        assert probe.call("set_parameters", values={"every_seconds": -1.0})[0] == \
            (False, "stream parameter every_seconds=-1.0: expected a finite number > 0, or None/0 (off)")
        ok, reason = probe.call("set_parameters", values={"window": 8})[0]
        assert not ok and "read-only" in reason.lower() and runtime.config.window == 4
        set_query(probe, SQUARE_QUERY)
        assert_square_masks(probe.call("wait_masks", indices=probe.call("publish_frames", first=0, count=5)))
        assert reasoner.calls == [0, 2, 4]  # every_frames=2 applied to the running stream
        assert probe.call("set_parameters", values={"publish_overlay": True, "publish_when_paused": False}) == \
            [(True, "")] * 2
        set_query(probe, "")
        probe.call("publish_frames", first=5, count=3)
        deadline = time.monotonic() + 20
        while runtime.stats.frames < 8:  # frames 5..7 processed, paused (no message counts them)
            assert time.monotonic() < deadline, f"{runtime.stats.frames} of 8 frames processed"
            time.sleep(0.01)
        set_query(probe, SQUARE_QUERY)
        assert_square_masks(probe.call("wait_masks", indices=probe.call("publish_frames", first=8, count=2)))
        probe.call("wait_received", kind="overlays", indices=[8, 9])
        got = probe.call("received")
        assert got["masks"] == [0, 1, 2, 3, 4, 8, 9] and sorted(got["overlays"]) == [8, 9]
        diag = probe.call("wait_diagnostics", until={"frames_received": 10, "frames_published": 7})
        assert diag["failed_frames"] == "0"


def test_python_logging_goes_to_rosout(context, probe):
    runtime, _ = make_runtime()
    with running_node(context, probe, runtime):
        logging.getLogger("visa_edge.runtime.test").warning("disk %s almost full", "/data")
        assert probe.call("wait_rosout", text="almost full") == (30, "[visa_edge.runtime.test] disk /data almost full")
        warnings.warn("frame resized", RuntimeWarning)
        level, line = probe.call("wait_rosout", text="frame resized")
        assert level == 30 and line.startswith("[py.warnings] ") and "RuntimeWarning: frame resized" in line
    assert not logging.getLogger("py.warnings").handlers  # detached with the node


def test_managed_node_lifecycle_over_services(context, probe):
    """configure builds the runtime, activate starts the topics, deactivate stops them, cleanup frees the runtime."""
    built: list[StreamingRuntime] = []

    def factory() -> StreamingRuntime:
        built.append(make_runtime()[0])
        return built[-1]

    with running_node(context, probe, factory, node_class=ManagedVisaEdgeNode, ready=False,
                      query=SQUARE_QUERY) as node:
        assert probe.call("get_state") == "unconfigured" and built == [] and node.runtime is None
        assert probe.call("change_state", transition="configure")
        assert probe.call("get_state") == "inactive" and len(built) == 1 and node.runtime is built[0]
        assert probe.call("wait_diagnostics", until={"state": "inactive"})["query"] == SQUARE_QUERY
        assert probe.call("change_state", transition="activate")
        probe.call("wait_ready")
        assert_square_masks(probe.call("wait_masks", indices=probe.call("publish_frames", first=0, count=3)))
        assert probe.call("change_state", transition="deactivate")
        assert probe.call("get_state") == "inactive" and node.pubs == {} and node.subs == {}
        probe.call("publish_frames", first=3, count=2)
        assert probe.call("wait_diagnostics", until={"state": "inactive"})["frames_received"] == "3"
        assert probe.call("change_state", transition="cleanup")
        assert probe.call("get_state") == "unconfigured" and node.runtime is None
        assert built[0]._worker.is_alive() is False  # closed
        assert probe.call("change_state", transition="configure") and probe.call("change_state", transition="activate")
        probe.call("wait_ready")
        assert_square_masks(probe.call("wait_masks", indices=probe.call("publish_frames", first=5, count=2)))
        assert len(built) == 2 and probe.call("received")["masks"] == [0, 1, 2, 5, 6]


def _node_command(*ros_args: str, managed: bool = False) -> list[str]:
    return [sys.executable, "-m", "visa_edge.runtime.cli", "ros", *(["--managed"] if managed else []),
            "--ros-args", *ros_args]


def test_cli_passes_ros_args_and_reports_bad_parameters(ros_env):
    done = subprocess.run(_node_command("-p", "checkpoint:=/nonexistent/visa", "-p", "clip:=/nonexistent/clip"),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "/nonexistent/visa/config.json: not found" in done.stderr, done.stderr
    done = subprocess.run(_node_command("-p", "window:=1.5"), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "'window'" in done.stderr and "INTEGER" in done.stderr, done.stderr


def test_cli_managed_node_with_the_tiny_checkpoint(ros_env, probe, tiny_checkpoint):
    """`visa-edge ros --managed` loads the runtime from its parameters (tiny VISA + flow tracker) on
    configure, serves masks once active, and routes Python warnings (the tracker's resize) to /rosout."""
    namespace = next(_namespaces)
    proc = subprocess.Popen(_node_command(
        "-r", f"__ns:={namespace}", "-p", f"checkpoint:={tiny_checkpoint.checkpoint}",
        "-p", f"clip:={tiny_checkpoint.clip}", "-p", "tracker:=flow", "-p", "window:=4", "-p", "references:=2",
        "-p", "every_frames:=4", "-p", "blocking:=true",
        "-p", f"query:={SQUARE_QUERY}", "-p", "input_qos:=reliable", "-p", "input_depth:=16", "-p", "queue_size:=16",
        "-p", "diagnostics_period:=0.1", managed=True), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        probe.open(namespace)
        assert probe.call("get_state", timeout=60.0) == "unconfigured"
        assert probe.call("change_state", transition="configure", timeout=60.0)  # loads the checkpoint
        assert probe.call("wait_rosout", text="loaded ")[1].startswith(f"loaded {tiny_checkpoint.checkpoint}")
        assert probe.call("change_state", transition="activate")
        probe.call("wait_ready", timeout=60.0)
        sent = probe.call("publish_frames", first=0, count=8, height=2 * H, width=2 * W)
        masks = probe.call("wait_masks", indices=sent, timeout=60.0)
        assert all(m.frame_id == frame_id_of(i) and m.encoding == "mono8" and (m.height, m.width) == (2 * H, 2 * W)
                   and set(m.values) <= {0, 255} for i, m in masks.items())
        diag = probe.call("wait_diagnostics", until={"frames_published": 8}, timeout=20.0)
        assert int(diag["reasoning_completed"]) >= 2 and diag["query"] == SQUARE_QUERY and diag["failed_frames"] == "0"
        probe.call("publish_frames", first=8, count=1, height=2 * H, width=2 * W)  # reasoning (every_frames=4)
        probe.call("wait_masks", indices=probe.call("publish_frames", first=9, count=1, height=H, width=W))  # tracked
        level, line = probe.call("wait_rosout", text="FlowTracker")
        assert level == 30 and line.startswith(f"[py.warnings] ") and \
            f"frame of size {W}x{H} in a session of {2 * W}x{2 * H}" in line, line
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert proc.returncode == 0, out


TOP_QUERY = "the top rows"


def query_masks(image: np.ndarray, queries) -> np.ndarray:
    """One mask per query: the red square, the rest, or the top half of the frame."""
    red = image[..., 0] > 128
    top = np.zeros(red.shape, bool)
    top[: red.shape[0] // 2] = True
    kinds = {SQUARE_QUERY: red, BACKGROUND_QUERY: ~red, TOP_QUERY: top}
    return np.stack([kinds[q] for q in ([queries] if isinstance(queries, str) else queries)]).astype(np.uint8)


class QueriesReasoner(RedReasoner):
    def __call__(self, frames, queries):
        self.calls.append((frames[-1].index, queries))
        masks = query_masks(frames[-1].image, queries)
        return ReasonOutput(masks[0], masks=masks)


class KindTracker(Tracker):
    """Keeps segmenting each object's kind (red / top / rest, told apart by its anchor pixels) in every frame."""

    def reset(self) -> None:
        self.kinds = ()

    def step(self, frame, mask=None, *, objects=None, index=None) -> TrackOutput:
        if mask is not None:
            red, top = query_masks(frame, (SQUARE_QUERY, TOP_QUERY)) > 0
            self.objects = tuple(objects)
            self.kinds = tuple(SQUARE_QUERY if red[mask == k].all() else TOP_QUERY if top[mask == k].all() else
                               BACKGROUND_QUERY for k in self.objects)
        labels = label_image(query_masks(frame, self.kinds))
        probs = np.stack([(labels == k + 1).astype(np.float32) for k in range(len(self.kinds))])
        return TrackOutput(probs[0], 0.9, self.objects, probs, (0.9,) * len(self.objects))


def expected_labels(index: int, ids: dict[int, str], removed=()) -> np.ndarray:
    """Frame ``index``'s label image for queries ``ids`` (in slot order), ``removed`` ids blanked."""
    labels = label_image(query_masks(probe_frame(index, H, W), list(ids.values())))
    lut = np.array([0, *(0 if k in removed else k for k in ids)], np.uint8)
    return lut[labels]


class LabelsPeer:
    """An in-process rclpy peer: takes ``labels``, publishes ``queries`` (latched), reads the latched ``query_ids``."""

    def __init__(self, context, namespace: str):
        from rclpy.node import Node
        from sensor_msgs.msg import Image
        from std_msgs.msg import String

        from visa_edge.ros_node.node import QUERY_QOS, qos_profile

        self.String, self.qos = String, QUERY_QOS
        self.node = Node("labels_peer", namespace=namespace, context=context)
        self.labels: dict[int, tuple] = {}
        self.cond = threading.Condition()
        self.node.create_subscription(Image, "labels", self._on_labels, qos_profile("reliable", 64))
        self.queries_pub = self.node.create_publisher(String, "queries", QUERY_QOS)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _on_labels(self, msg) -> None:
        index = index_of(msg.header.stamp.sec, msg.header.stamp.nanosec)
        pixels = np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.step)[:, :msg.width].copy()
        with self.cond:
            self.labels[index] = ((msg.header.stamp.sec, msg.header.stamp.nanosec), msg.header.frame_id,
                                  msg.encoding, pixels)
            self.cond.notify_all()

    def wait_labels(self, indices, timeout=20.0) -> dict:
        with self.cond:
            assert self.cond.wait_for(lambda: all(i in self.labels for i in indices), timeout), \
                f"labels of frames {sorted(set(indices) - set(self.labels))} never arrived"
            return {i: self.labels[i] for i in indices}

    def latched_query_ids(self, expected: dict, timeout=20.0) -> None:
        """Assert that a subscriber joining now gets ``expected`` first on ``query_ids`` (the latched
        message; fresh subscribers are tried until then, the node may still be publishing the change)."""
        deadline, seen = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            got, event = [], threading.Event()
            sub = self.node.create_subscription(self.String, "query_ids",
                                                lambda m: (got.append(m.data), event.set()), self.qos)
            try:
                if event.wait(max(0.0, deadline - time.monotonic())):
                    seen = json.loads(got[0])
                    if seen == expected:
                        return
            finally:
                self.node.destroy_subscription(sub)
            time.sleep(0.05)
        raise AssertionError(f"query_ids: a late subscriber got {seen}; expected {expected}")

    def close(self) -> None:
        self.executor.shutdown()
        self.thread.join(10)
        self.node.destroy_node()


def test_start_up_queries_parameter_sets_several_queries(context, probe):
    runtime = StreamingRuntime(QueriesReasoner(), KindTracker, StreamConfig(every_frames=None, blocking=True))
    with running_node(context, probe, runtime, queries=json.dumps([SQUARE_QUERY, TOP_QUERY])) as node:
        peer = LabelsPeer(context, node.get_namespace())
        try:
            peer.latched_query_ids({"1": SQUARE_QUERY, "2": TOP_QUERY})
            assert node.runtime.queries == {1: SQUARE_QUERY, 2: TOP_QUERY}
        finally:
            peer.close()


def test_three_queries_labels_and_the_latched_id_map(context, probe):
    reasoner = QueriesReasoner()
    runtime = StreamingRuntime(reasoner, KindTracker, StreamConfig(window=4, references=2, every_frames=None,
                                                                     buffer_frames=64, blocking=True))
    with running_node(context, probe, runtime) as node:
        peer = LabelsPeer(context, node.get_namespace())
        try:
            queries = [SQUARE_QUERY, BACKGROUND_QUERY, TOP_QUERY]
            peer.queries_pub.publish(peer.String(data=json.dumps(queries)))
            probe.call("wait_diagnostics", until={"query": SQUARE_QUERY}, timeout=20.0)
            ids = {1: SQUARE_QUERY, 2: BACKGROUND_QUERY, 3: TOP_QUERY}
            peer.latched_query_ids({str(k): v for k, v in ids.items()})
            sent = probe.call("publish_frames", first=0, count=4, height=H, width=W)
            assert_square_masks(probe.call("wait_masks", indices=sent))  # the first query's, on `mask`
            for i, (stamp, frame_id, encoding, labels) in peer.wait_labels(sent).items():
                assert (stamp, frame_id, encoding) == (stamp_of(i), frame_id_of(i), "mono8"), i
                assert np.array_equal(labels, expected_labels(i, ids)), i
                assert set(np.unique(labels)) == {1, 2, 3}, i
            peer.queries_pub.publish(peer.String(data=json.dumps([SQUARE_QUERY, TOP_QUERY])))
            probe.call("wait_diagnostics", until={"query_id": "2"}, timeout=20.0)
            peer.latched_query_ids({"1": SQUARE_QUERY, "3": TOP_QUERY})  # republished on change
            sent = probe.call("publish_frames", first=4, count=2, height=H, width=W)
            for i, (_, _, _, labels) in peer.wait_labels(sent).items():  # 2 gone at once, no new step
                assert np.array_equal(labels, expected_labels(i, ids, removed=(2,))), i
            peer.queries_pub.publish(peer.String(data=json.dumps([SQUARE_QUERY, TOP_QUERY, BACKGROUND_QUERY])))
            probe.call("wait_diagnostics", until={"query_id": "3"}, timeout=20.0)
            peer.latched_query_ids({"1": SQUARE_QUERY, "3": TOP_QUERY, "4": BACKGROUND_QUERY})
            sent = probe.call("publish_frames", first=6, count=2, height=H, width=W)
            later = {1: SQUARE_QUERY, 3: TOP_QUERY, 4: BACKGROUND_QUERY}
            for i, (_, _, _, labels) in peer.wait_labels(sent).items():  # the re-added query has a new id
                assert np.array_equal(labels, expected_labels(i, later)), i
            assert [c[0] for c in reasoner.calls] == [0, 6]
            assert reasoner.calls[1][1] == [SQUARE_QUERY, TOP_QUERY, BACKGROUND_QUERY]
            peer.queries_pub.publish(peer.String(data='{"not": "a list"}'))
            diag = probe.call("wait_diagnostics", until={"queries_refused": "1"}, timeout=20.0)
            assert "expected a JSON list of strings" in diag["message"]
        finally:
            peer.close()
