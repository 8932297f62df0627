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

from visa_edge.ros_node.config import (
    PARAMETERS, NodeConfig, defaults, node_config, parameter_args, pipeline_config, stream_config)
from visa_edge.ros_node.convert import decode_image, mask_bbox, mono8
from visa_edge.ros_node.diagnostics import ERROR, OK, WARN, NodeCounters, ResultInfo, report, tracking_fps
from visa_edge.runtime.errors import InputError
from visa_edge.runtime.streaming import RuntimeStats, StreamConfig


def test_parameters_are_unique_described_and_typed():
    names = [p.name for p in PARAMETERS]
    assert len(names) == len(set(names)) == 28
    assert all(p.description and type(p.default) in (bool, int, float, str) for p in PARAMETERS)


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
])
def test_invalid_parameters_are_named(key, value, message):
    values = {**defaults(), "checkpoint": "c", "clip": "c", key: value}
    with pytest.raises(InputError, match=message):
        node_config(values)
        pipeline_config(values)


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


def test_tracking_fps_uses_the_recent_horizon():
    assert tracking_fps([0.0, 0.1, 0.2, 0.3], now=0.3) == pytest.approx(10.0)
    assert tracking_fps([0.0, 0.1], now=5.0) == 0.0  # nothing in the last 2 s
    assert tracking_fps([1.0], now=1.0) == 0.0


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
    assert get("tracking_fps", "tracker_ms_p50", "anchor_age", "mask_source") == ("20.00", "4.0", "4", "tracked")
    counters.rejected, counters.last_rejection = 2, "image encoding '16UC1' not supported"
    failed = _stats(reasoning_failed=1, last_error="RuntimeError: boom\ntraceback")
    warn = report(failed, recent, counters, 4, "tracking", "the mug", 10.2, previous=rep)
    assert warn.level == WARN and warn.message == "new rejected_frames, reasoning_failed"
    assert warn.values["last_error"] == "RuntimeError: boom" and "16UC1" in warn.values["last_rejection"]
    assert report(_stats(reasoning_failed=1), recent, counters, 4, "tracking", "q", 10.2, previous=warn).level == OK
    assert report(_stats(), [], NodeCounters(), 0, "paused", "", 0.0).message == "paused (no query)"
    assert report(_stats(), [], NodeCounters(), 0, "stopped", "q", 0.0).level == ERROR


def test_streaming_runtime_exposes_reasoning_busy():
    from visa_edge.runtime.streaming import StreamingRuntime

    with StreamingRuntime(lambda frames, query: None, lambda: None, StreamConfig()) as rt:
        assert rt.reasoning_busy is False


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_package_and_cli_work_without_rclpy():
    """With rclpy unimportable: the package and `visa-edge --help` work; `visa-edge ros` says what to install."""
    block = "import sys; sys.modules['rclpy'] = None\n"
    done = _python(block + "import visa_edge.ros_node, visa_edge.ros_node.cli, visa_edge.ros_node.config\n"
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
        assert "'checkpoint'" in names and "'params_file'" in names
