"""The node's ROS parameters and how they map to PipelineConfig, StreamConfig and NodeConfig.

Pure Python (no rclpy): the launch file, the CLI and tests use the same table. The
parameters in DYNAMIC can be changed while the node runs (validated, applied to the next
frame); every other one is read once at start-up (read-only). An empty string or 0 means
"not set" where noted.
"""

from __future__ import annotations

import json

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..runtime.errors import InputError
from .diagnostics import short
from ..runtime.remote_reasoner import read_token
from ..runtime.visa_config import DTYPES
from ..runtime.streaming.build import PipelineConfig
from ..runtime.streaming.scheduler import OPTIONAL_OFF, StreamConfig, stream_parameters

QOS_NAMES = ("sensor_data", "reliable")  # sensor_data: best effort, volatile; reliable: reliable, volatile
TRACKER_NAMES = ("flow", "xmem")


@dataclass(frozen=True)
class Param:
    """One ROS parameter: name, default (its type is the parameter type) and description."""

    name: str
    default: bool | int | float | str
    description: str


PIPELINE_PARAMS = (
    Param("checkpoint", "", "VISA checkpoint folder: config.json, tokenizer with [SEG], weight shards (required)"),
    Param("clip", "", "CLIP ViT-L/14 folder: Hugging Face CLIPVisionModel (required)"),
    Param("engines", "", "engine folder written by `visa-edge export` (empty: PyTorch networks only)"),
    Param("backend", "", "engine backend: onnxruntime | tensorrt (empty: what the engine folder was built for)"),
    Param("quantization", "none", "LLM weights: none | nf4 (bitsandbytes 4-bit)"),
    Param("device", "cpu", "torch device, e.g. cpu or cuda"),
    Param("dtype", "fp32", f"weights and activations dtype: {' | '.join(DTYPES)}"),
    Param("sam_checkpoint", "", "official SAM .pth whose tensors replace the checkpoint's (empty: none)"),
    Param("tracker", "flow", f"mask tracker between reasoning steps: {' | '.join(TRACKER_NAMES)}"),
    Param("xmem", "", "XMem.pth for tracker xmem (empty: engines must provide its networks)"),
    Param("reasoner_url", "", "reason on a `visa-edge serve` server, http://HOST:PORT (empty: load the model here; "
          "set: checkpoint and clip are not needed)"),
    Param("reasoner_token_file", "", "file holding the reasoning server's shared token (empty: none)"),
)

# Derived from StreamConfig's fields (name, default, help): one ROS parameter per field, 0 for "off".
STREAM_PARAMS = tuple(Param(p.name, p.default, p.help) for p in stream_parameters())
_OPTIONAL = {p.name for p in stream_parameters() if p.optional}  # None-able fields: OPTIONAL_OFF is None

NODE_PARAMS = (
    Param("query", "", "initial query (the `query` topic sets or replaces it; empty: paused)"),
    Param("queries", "", 'initial queries, a JSON list, e.g. \'["the cup", "the knife"]\' (the `queries` topic '
          'replaces them; empty: none; not with `query`)'),
    Param("compressed", False, "subscribe to `image` as sensor_msgs/CompressedImage (jpeg/png) instead of Image"),
    Param("input_qos", "sensor_data", f"QoS of the image and camera_info subscriptions: {' | '.join(QOS_NAMES)}"),
    Param("input_depth", 5, "history depth of the image and camera_info subscriptions"),
    Param("output_qos", "reliable", f"QoS of the per-frame outputs (mask, mask_info, mask_roi, ...): {' | '.join(QOS_NAMES)}"),
    Param("output_depth", 10, "history depth of the output publishers"),
    Param("queue_size", 2, "frames waiting for the tracker; when full the oldest is dropped (counted)"),
    Param("publish_overlay", False, "also publish `overlay` (rgb8 frame with the mask drawn on it)"),
    Param("publish_when_paused", True, "while paused (empty query) keep publishing one empty mask per frame, with "
          "mask_source 'paused' on mask_info (false: publish nothing per frame while paused)"),
    Param("diagnostics_period", 1.0, "seconds between two `diagnostics` messages"),
)

PARAMETERS = PIPELINE_PARAMS + STREAM_PARAMS + NODE_PARAMS
DESCRIPTIONS = {p.name: p.description for p in PARAMETERS}
DYNAMIC = ("every_frames", "every_seconds", "min_confidence", "publish_overlay", "publish_when_paused")
STREAM_DYNAMIC = tuple(name for name in DYNAMIC if name in {p.name for p in STREAM_PARAMS})
REQUIRED = ("checkpoint", "clip")  # unless the node is given a ready runtime or a reasoner_url


@dataclass(frozen=True)
class NodeConfig:
    """The node's own settings (topics, QoS, queueing, diagnostics)."""

    query: str = ""
    queries: str = ""  # JSON list of strings
    compressed: bool = False
    input_qos: str = "sensor_data"
    input_depth: int = 5
    output_qos: str = "reliable"
    output_depth: int = 10
    queue_size: int = 2
    publish_overlay: bool = False
    publish_when_paused: bool = True
    diagnostics_period: float = 1.0

    def __post_init__(self):
        for name in ("input_qos", "output_qos"):
            if getattr(self, name) not in QOS_NAMES:
                raise InputError(f"parameter {name}={getattr(self, name)!r}: expected one of {QOS_NAMES}")
        for name in ("input_depth", "output_depth", "queue_size"):
            if getattr(self, name) < 1:
                raise InputError(f"parameter {name}={getattr(self, name)}: expected >= 1")
        if self.diagnostics_period <= 0:
            raise InputError(f"parameter diagnostics_period={self.diagnostics_period}: expected > 0 seconds")
        if self.queries:
            if self.query:
                raise InputError("parameters query and queries are both set: set one (queries takes a JSON list)")
            parse_queries(self.queries, "parameter queries")


def parse_queries(text: str, what: str = "queries") -> list[str]:
    """A JSON list of query strings; InputError naming ``what``, the text and the expected form."""
    shown = short(text)
    try:
        queries = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{what} {shown!r}: not JSON ({e}); expected a JSON list of strings") from None
    if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
        kind = type(queries).__name__ if not isinstance(queries, list) else "list with non-strings"
        raise InputError(f"{what} {shown!r}: a JSON {kind}; expected a JSON list of strings")
    return queries


def node_config(values: Mapping[str, Any]) -> NodeConfig:
    return NodeConfig(**{p.name: values[p.name] for p in NODE_PARAMS})


def stream_config(values: Mapping[str, Any]) -> StreamConfig:
    """StreamConfig from the parameters (0 turns a None-able field off); InputError names a bad value."""
    return StreamConfig(**stream_values({p.name: values[p.name] for p in STREAM_PARAMS}))


def stream_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """The StreamConfig field values of the stream parameters in ``values`` (0 -> None where None-able)."""
    names = {p.name for p in STREAM_PARAMS}
    return {k: None if k in _OPTIONAL and v == OPTIONAL_OFF else v for k, v in values.items() if k in names}


def pipeline_config(values: Mapping[str, Any]) -> PipelineConfig:
    """PipelineConfig from the parameters; InputError names a missing or invalid one."""
    for name in REQUIRED:
        if not values[name] and not values["reasoner_url"]:
            raise InputError(f"parameter {name!r} is not set ({DESCRIPTIONS[name]}): pass `--ros-args -p {name}:=DIR`")
    if values["quantization"] not in ("none", "nf4"):
        raise InputError(f"parameter quantization={values['quantization']!r}: expected none or nf4")
    if values["dtype"] not in DTYPES:
        raise InputError(f"parameter dtype={values['dtype']!r}: expected one of {tuple(DTYPES)}")
    if values["tracker"] not in TRACKER_NAMES:
        raise InputError(f"parameter tracker={values['tracker']!r}: expected one of {TRACKER_NAMES}")
    return PipelineConfig(
        checkpoint=values["checkpoint"] or None,
        clip=values["clip"] or None,
        engines=values["engines"] or None,
        backend=values["backend"] or None,
        quantization=None if values["quantization"] == "none" else values["quantization"],
        device=values["device"],
        dtype=values["dtype"],
        sam_checkpoint=values["sam_checkpoint"] or None,
        tracker=values["tracker"],
        xmem=values["xmem"] or None,
        stream=stream_config(values),
        reasoner_url=values["reasoner_url"] or None,
        reasoner_token=read_token(values["reasoner_token_file"]) if values["reasoner_token_file"] else None,
    )


def defaults() -> dict[str, Any]:
    """Every parameter at its default value."""
    return {p.name: p.default for p in PARAMETERS}


def parameter_args(values: Mapping[str, str]) -> list[str]:
    """``-p name:=value`` ROS arguments for the node parameters given (non-empty) in ``values``."""
    args: list[str] = []
    for p in PARAMETERS:
        if values.get(p.name):
            args += ["-p", f"{p.name}:={values[p.name]}"]
    return args


def node_command(values: Mapping[str, str], node_name: str = "visa_edge", namespace: str = "",
                 image: str = "image", params_file: str = "", log_level: str = "info",
                 managed: bool = False) -> list[str]:
    """The `visa-edge ros` command line the launch file runs (node parameters given in ``values``)."""
    ros_args = ["-r", f"__node:={node_name}", "-r", f"image:={image}", "--log-level", log_level]
    if namespace:
        ros_args += ["-r", f"__ns:={namespace}"]
    if params_file:
        ros_args += ["--params-file", params_file]
    return ["visa-edge", "ros", *(["--managed"] if managed else []), "--ros-args", *ros_args,
            *parameter_args(values)]
