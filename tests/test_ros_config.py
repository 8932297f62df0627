"""The ROS node's ROS-free parts: parameters -> configs, diagnostics, mask conversions, the CLI
without rclpy, the launch file. (The node itself is tested over real ROS 2 in test_ros_node.py.)"""

from __future__ import annotations

import subprocess
import sys
from importlib.resources import files
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from visa_edge.ros_node.parameters import (
    DYNAMIC, PARAMETERS, STREAM_DYNAMIC, STREAM_PARAMS, NodeConfig, defaults, node_command, node_config, parse_queries,
    parameter_args, pipeline_config, stream_config, stream_values)
from visa_edge.ros_node.convert import box_corners, decode_image, mask_bbox, mono8, pixel_rays, scale_intrinsics
from visa_edge.ros_node.diagnostics import (
    ERROR, OK, WARN, NodeCounters, ResultInfo, mask_info, report, short, tracking_fps)
from visa_edge.runtime.errors import InputError
from visa_edge.runtime.streaming import Frame, FrameResult, RuntimeStats, StreamConfig
from visa_edge.runtime.streaming.images import RAW_ENCODINGS, decode_raw


def test_parameters_are_unique_described_and_typed():
    names = [p.name for p in PARAMETERS]
    assert len(names) == len(set(names)) == 37
    assert all(p.description and type(p.default) in (bool, int, float, str) for p in PARAMETERS)
    assert set(DYNAMIC) <= set(names) and STREAM_DYNAMIC == ("every_frames", "every_seconds", "min_confidence")


def test_stream_parameters_match_stream_config_fields_one_to_one():
    from dataclasses import fields

    assert [p.name for p in STREAM_PARAMS] == [f.name for f in fields(StreamConfig)]
    for p, f in zip(STREAM_PARAMS, fields(StreamConfig)):
        assert p.description.startswith(f.metadata["help"]), p.name
        assert p.default == (0 if f.default is None else f.default) and type(p.default) is not type(None), p.name
    values = {**defaults(), "every_frames": 0, "every_seconds": 2.5, "max_delay_periods": 0.0}
    cfg = stream_config(values)
    assert (cfg.every_frames, cfg.every_seconds, cfg.max_delay_periods) == (None, 2.5, 0.0)
    assert stream_values({"every_seconds": 0.0, "min_confidence": 0.5, "query": "x"}) == \
        {"every_seconds": None, "min_confidence": 0.5}
    with pytest.raises(InputError, match="min_confidence=1.5"):
        stream_config({**defaults(), "min_confidence": 1.5})


def test_defaults_map_to_the_runtime_defaults():
    values = defaults()
    assert stream_config(values) == StreamConfig()
    assert node_config(values) == NodeConfig()
    assert NodeConfig().input_qos == "sensor_data" and NodeConfig().output_qos == "reliable"
    with pytest.raises(InputError, match=r"parameter 'checkpoint' is not set .*-p checkpoint:=DIR"):
        pipeline_config(values)


def test_parameters_map_to_pipeline_and_stream_configs():
    values = {**defaults(), "checkpoint": "ckpt", "clip": "clip", "engines": "eng", "quantization": "nf4",
              "tracker": "xmem", "xmem": "XMem.pth", "every_frames": 0, "every_seconds": 2.5, "window": 8,
              "references": 4, "blocking": True}
    cfg = pipeline_config(values)
    assert (cfg.checkpoint, cfg.clip, cfg.engines, cfg.backend, cfg.quantization, cfg.tracker, cfg.xmem) == \
        ("ckpt", "clip", "eng", None, "nf4", "xmem", "XMem.pth")
    assert cfg.sam_checkpoint is None and cfg.device == "cpu" and cfg.dtype == "fp32"
    assert cfg.stream == StreamConfig(every_frames=None, every_seconds=2.5, window=8, references=4, blocking=True)


@pytest.mark.parametrize("key, value, message", [
    ("quantization", "int8", "expected none or nf4"),
    ("dtype", "fp8", "dtype='fp8'"),
    ("tracker", "sam2", "tracker='sam2'"),
    ("references", 12, "references in 1..11"),
    ("input_qos", "best_effort", "input_qos='best_effort': expected one of"),
    ("queue_size", 0, "queue_size=0: expected >= 1"),
    ("diagnostics_period", 0.0, "diagnostics_period=0.0"),
    ("queries", "the cup", "parameter queries 'the cup': not JSON"),
    ("queries", '{"q": "the cup"}', "a JSON dict; expected a JSON list of strings"),
    ("queries", '["the cup", 2]', "a JSON list with non-strings"),
])
def test_invalid_parameters_are_named(key, value, message):
    values = {**defaults(), "checkpoint": "c", "clip": "c", key: value}
    with pytest.raises(InputError, match=message):
        node_config(values)
        pipeline_config(values)


def test_start_up_queries_are_a_json_list_exclusive_with_query():
    values = {**defaults(), "queries": '["the cup", "the knife"]'}
    assert node_config(values).queries == '["the cup", "the knife"]'
    assert parse_queries(node_config(values).queries) == ["the cup", "the knife"]
    with pytest.raises(InputError, match="parameters query and queries are both set"):
        node_config({**values, "query": "the cup"})


def test_mask_bbox_and_mono8():
    mask = np.zeros((6, 8), np.uint8)
    assert mask_bbox(mask) == (0, 0, 0, 0)
    mask[2:5, 3:7] = 1
    assert mask_bbox(mask) == (3, 2, 4, 3)
    data = np.frombuffer(mono8(mask), np.uint8).reshape(6, 8)
    assert set(np.unique(data)) == {0, 255} and np.array_equal(data > 0, mask > 0)


def test_decode_image_dispatches_raw_and_compressed():
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    rows = np.pad(rgb[..., ::-1].reshape(2, 9), ((0, 0), (0, 1)))  # bgr8 rows of 9 bytes + 1 padding byte
    raw = SimpleNamespace(encoding="bgr8", height=2, width=3, step=10, is_bigendian=0, data=rows.tobytes())
    assert np.array_equal(decode_image(raw, compressed=False), rgb)
    with pytest.raises(InputError, match="not supported"):
        decode_image(SimpleNamespace(format="bmp", data=b"BM"), compressed=True)


def _stats(**kw) -> dict:
    stats = RuntimeStats(**kw)
    stats.reasoning_s.extend([0.5, 1.5, 1.0])
    return stats.snapshot()


def test_tracking_fps_uses_the_recent_horizon_and_a_minimum_span():
    assert tracking_fps([i / 10 for i in range(16)], now=1.5) == pytest.approx(10.0)
    assert tracking_fps([0.0, 0.1], now=5.0) == 0.0  # nothing in the last 2 s
    assert tracking_fps([1.0], now=1.0) == 0.0
    # a queued burst: 1 frame at 10 fps, then 31 results 1 ms apart: at most 31 per second, not 1000 fps
    burst = [0.0] + [0.9 + i / 1000 for i in range(31)]
    assert tracking_fps(burst, now=0.93) == pytest.approx(31 / 1.0)
    assert tracking_fps(burst[1:], now=0.93) == pytest.approx(30.0)


def test_diagnostics_report_values_and_levels():
    recent = [ResultInfo(ready=10 + i / 20, track_s=0.004, anchor_age=i, mask_source="tracked", confidence=0.8)
              for i in range(5)]
    counters = NodeCounters(received=9, rejected=0, published=5)
    rep = report(_stats(reasoning_completed=3), recent, counters, dropped=4, state="tracking", query="the mug",
                 now=10.2)
    v = rep.values
    assert rep.level == OK and rep.message == "tracking: 'the mug'"
    def get(*keys):
        return tuple(v[k] for k in keys)

    assert get("frames_received", "frames_published", "dropped_frames", "rejected_frames") == ("9", "5", "4", "0")
    assert get("reasoning_latency_ms", "reasoning_latency_p50_ms", "reasoning_completed") == ("1000.0", "1000.0", "3")
    assert get("tracking_fps", "tracker_ms_p50", "anchor_age", "mask_source") == ("4.00", "4.0", "4", "tracked")
    counters.rejected, counters.last_rejection = 2, "image encoding '16UC1' not supported"
    failed = _stats(reasoning_failed=1, last_error="RuntimeError: boom\ntraceback")
    warn = report(failed, recent, counters, 4, "tracking", "the mug", 10.2, previous=rep)
    assert warn.level == WARN and warn.message == "new rejected_frames, reasoning_failed"
    assert warn.values["last_error"] == "RuntimeError: boom" and "16UC1" in warn.values["last_rejection"]
    assert report(_stats(reasoning_failed=1), recent, counters, 4, "tracking", "q", 10.2, previous=warn).level == OK
    assert report(_stats(), [], NodeCounters(), 0, "paused", "", 0.0).message == "paused (no query)"
    assert report(_stats(), [], NodeCounters(), 0, "stopped", "q", 0.0).level == ERROR
    refused = NodeCounters(queries_refused=1, query_error="query of 9000 characters: expected at most 2048")
    rep = report(_stats(), [], refused, 0, "tracking", "the mug", 0.0)
    assert rep.level == ERROR and rep.values["queries_refused"] == "1"
    assert rep.message == "query refused (query of 9000 characters: expected at most 2048); still using 'the mug'"
    assert report(_stats(), [], NodeCounters(), 0, "tracking", "q" * 5000, 0.0).values["query"] == \
        "q" * 200 + "... (5000 chars)" == short("q" * 5000)


def test_mask_info_values_from_frame_metadata():
    frame = Frame(12, 101.5, np.zeros((4, 5, 3), np.uint8), "00012")
    mask = np.zeros((4, 5), np.uint8)
    mask[1:3, 1:3] = 1
    result = FrameResult(frame, mask, 0.87654, "tracked", 9, "the mug", arrival=5.0, ready=5.0125, track_s=0.004,
                         anchor_latency={"llm": 0.5, "reasoning": 0.75}, delay_s=0.02)
    assert mask_info(result.metadata(), query_id=3, anchor_age_s=0.25) == {
        "frame_index": "12", "mask_source": "tracked", "anchor_index": "9", "anchor_age_frames": "3",
        "anchor_age_s": "0.250", "confidence": "0.8765", "mask_fraction": "0.20000", "query": "the mug",
        "query_id": "3", "staleness_ms": "12.5", "delay_ms": "20.0", "track_ms": "4.0",
        "anchor_latency_llm_ms": "500.0", "anchor_latency_reasoning_ms": "750.0"}
    none = FrameResult(frame, mask * 0, 0.0, "none", None, "the mug", 5.0, 5.0, 0.0)
    v = mask_info(none.metadata(), query_id=1, anchor_age_s=None)
    assert (v["anchor_index"], v["anchor_age_frames"], v["anchor_age_s"], v["delay_ms"], v["mask_source"]) == \
        ("", "", "", "", "none")
    assert not any(k.startswith("anchor_latency") for k in v)


def test_box_geometry_and_intrinsics_scaling():
    assert box_corners((0, 0, 0, 0)) == []
    corners = box_corners((2, 3, 4, 5))
    assert corners == [(2, 3), (6, 3), (6, 8), (2, 8)]
    k = [100.0, 0, 50, 0, 80, 40, 0, 0, 1]
    p = [100.0, 0, 50, -10, 0, 80, 40, 0, 0, 0, 1, 0]
    k2, p2 = scale_intrinsics(k, p, 0.5, 0.25)
    assert k2 == [50.0, 0, 25, 0, 20, 10, 0, 0, 1] and p2 == [50.0, 0, 25, -5, 0, 20, 10, 0, 0, 0, 1, 0]
    assert pixel_rays([(50, 40), (150, 0)], k) == [(0.0, 0.0, 1.0), (1.0, -0.5, 1.0)]


def _grey_yuv(values: np.ndarray, order: str) -> bytes:
    """A grey image (rows of ``values``) as UYVY or YUYV bytes: U = V = 128, limited-range Y."""
    y = np.round(16 + values.astype(float) * 219 / 255).astype(np.uint8)
    out = np.full(y.shape[:1] + (y.shape[1] * 2,), 128, np.uint8)
    first_y = 1 if order == "uyvy" else 0
    out[:, first_y::2] = y
    return out.tobytes()


def test_decode_raw_camera_encodings():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    alpha = np.full((4, 6, 1), 7, np.uint8)
    assert np.array_equal(decode_raw("rgba8", 4, 6, 24, np.concatenate([rgb, alpha], 2).tobytes()), rgb)
    assert np.array_equal(decode_raw("bgra8", 4, 6, 24, np.concatenate([rgb[..., ::-1], alpha], 2).tobytes()), rgb)
    wide = rgb.astype(np.uint16) * 257 + 3  # 16-bit values whose two bytes differ
    for big_endian, dtype in ((False, "<u2"), (True, ">u2")):
        data = wide.astype(dtype).tobytes()
        assert np.array_equal(decode_raw("rgb16", 4, 6, 36, data, big_endian=big_endian), rgb)
        assert np.array_equal(decode_raw("bgr16", 4, 6, 36, wide[..., ::-1].astype(dtype).tobytes(), big_endian), rgb)
        assert np.array_equal(decode_raw("mono16", 4, 6, 12, wide[..., 0].astype(dtype).tobytes(), big_endian),
                              np.repeat(rgb[..., :1], 3, 2))
    swapped = decode_raw("rgb16", 4, 6, 36, wide.astype(">u2").tobytes(), big_endian=False)
    assert not np.array_equal(swapped, rgb)  # the byte order matters
    grey = np.tile(np.array([[30, 30, 128, 128, 220, 220]], np.uint8), (4, 1))
    for encoding, order in (("yuv422", "uyvy"), ("uyvy", "uyvy"), ("yuv422_yuy2", "yuyv"), ("yuyv", "yuyv")):
        out = decode_raw(encoding, 4, 6, 12, _grey_yuv(grey, order))
        assert np.abs(out.astype(int) - grey[..., None]).max() <= 1, encoding
    colour = np.array([200, 100, 30], np.uint8)
    flat = np.tile(colour, (6, 8, 1))
    for pattern in ("rggb", "bggr", "gbrg", "grbg"):
        mosaic = np.empty((6, 8), np.uint8)
        for n, c in enumerate(pattern):
            mosaic[n // 2::2, n % 2::2] = flat[n // 2::2, n % 2::2, "rgb".index(c)]
        out = decode_raw(f"bayer_{pattern}8", 6, 8, 8, mosaic.tobytes())
        assert np.array_equal(out[2:4, 2:6], np.tile(colour, (2, 4, 1))), pattern  # interior: exact
    assert len(RAW_ENCODINGS) == 16


@pytest.mark.parametrize("encoding, height, width, step, size, message", [
    ("32FC1", 2, 2, 8, 16, "image encoding '32FC1' not supported; expected one of"),
    ("yuv422", 2, 3, 6, 12, "image width 3 is odd: yuv422 .YUV 4:2:2. needs an even width"),
    ("rgb16", 2, 2, 6, 12, r"image step 6 < width\*bytes per pixel = 12 for rgb16"),
    ("mono16", 2, 2, 4, 6, r"image data has 6 bytes; expected step\*height = 4\*2 = 8"),
])
def test_decode_raw_rejects_with_a_reason(encoding, height, width, step, size, message):
    with pytest.raises(InputError, match=message):
        decode_raw(encoding, height, width, step, bytes(size))


def test_streaming_runtime_exposes_reasoning_busy():
    from visa_edge.runtime.streaming import StreamingRuntime

    with StreamingRuntime(lambda frames, query: None, lambda: None, StreamConfig()) as rt:
        assert rt.reasoning_busy is False


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_package_and_cli_work_without_rclpy():
    """With rclpy unimportable: the package and `visa-edge --help` work; `visa-edge ros` says what to install."""
    block = "import sys; sys.modules['rclpy'] = None\n"
    done = _python(block + "import visa_edge.ros_node, visa_edge.ros_node.command, visa_edge.ros_node.parameters\n"
                   "from visa_edge.runtime.cli import build_parser, main\n"
                   "a = build_parser().parse_args(['ros', '--ros-args', '-p', 'query:=the mug', '-r', 'image:=/cam'])\n"
                   "print(a.ros_args)\n"
                   "sys.exit(main(['ros', '--ros-args', '-p', 'checkpoint:=x']))")
    assert "['-p', 'query:=the mug', '-r', 'image:=/cam']" in done.stdout
    assert done.returncode == 2, done.stderr
    assert "the ROS 2 node needs rclpy" in done.stderr and "pip install 'visa-edge[ros]'" in done.stderr


def test_parameter_args_pass_only_the_given_parameters():
    assert parameter_args({"checkpoint": "/m/visa", "query": "the red mug", "engines": "", "unknown": "x"}) == \
        ["-p", "checkpoint:=/m/visa", "-p", "query:=the red mug"]


def test_node_command_of_the_launch_file():
    assert node_command({"checkpoint": "/m/visa", "every_frames": ""}) == \
        ["visa-edge", "ros", "--ros-args", "-r", "__node:=visa_edge", "-r", "image:=image", "--log-level", "info",
         "-p", "checkpoint:=/m/visa"]
    cmd = node_command({"query": "the mug"}, node_name="seg", namespace="/robot", image="/cam/image_raw",
                       params_file="p.yaml", log_level="debug", managed=True)
    assert cmd == ["visa-edge", "ros", "--managed", "--ros-args", "-r", "__node:=seg", "-r", "image:=/cam/image_raw",
                   "--log-level", "debug", "-r", "__ns:=/robot", "--params-file", "p.yaml", "-p", "query:=the mug"]
    from visa_edge.runtime.cli import build_parser

    args = build_parser().parse_args(cmd[1:])
    assert args.managed and args.ros_args == cmd[4:]


def test_readme_documents_every_parameter():
    readme = (Path(__file__).resolve().parents[1] / "ros_node" / "README.md").read_text()
    assert [p.name for p in PARAMETERS if f"| `{p.name}` |" not in readme] == []


def test_launch_file_is_package_data_and_compiles():
    launch = files("visa_edge.ros_node") / "launch" / "visa_edge.launch.py"
    source = launch.read_text()
    compile(source, str(launch), "exec")
    if not _python("import launch").returncode:  # a sourced ROS 2 install: check what it launches
        code = (f"import runpy; ld = runpy.run_path({str(launch)!r})['generate_launch_description']()\n"
                "print(sorted(a.name for a in ld.entities if hasattr(a, 'default_value')))")
        names = _python(code).stdout
        assert "'checkpoint'" in names and "'params_file'" in names and "'managed'" in names
