"""ONNX -> TensorRT engine with the TensorRT 10 Python API (imported lazily).

fp16 policy: ViT/SAM activations overflow fp16 in normalisations (the variance of
large activations) and softmax/reduction accumulators; the known symptom is NaN or
garbage masks. With ``precision="fp16"`` the builder gets ``FP16`` +
``OBEY_PRECISION_CONSTRAINTS`` and these layers are pinned to fp32 (precision and
output types):

- every NORMALIZATION (ONNX LayerNormalization), SOFTMAX and REDUCE layer;
- every layer of an ONNX scope (node-name prefix, i.e. one torch module call) that
  contains a reduction node: hand-written norms such as SAM's LayerNorm2d
  (mean -> pow -> mean -> sqrt -> div) and the token clustering, whose discrete
  top-k/argmin decisions must match the fp32 reference.

``precision="fp32"`` also clears TF32, so fp32 engines stay within fp32 rounding of
the PyTorch reference. Dynamic axes get one optimisation profile from their named
``DimRange``s; a timing cache file is read before and written after each build.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from visa_edge.runtime.backends.base import DimRange, Shape
from visa_edge.runtime.backends.trt import import_tensorrt

from .errors import ExportError

FP32_LAYER_TYPES = ("NORMALIZATION", "SOFTMAX", "REDUCE")
REDUCTION_OPS = ("ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceMax", "ReduceMin", "ReduceL2", "ReduceProd")
PRECISIONS = ("fp32", "fp16")


@dataclass(frozen=True)
class TrtBuildOptions:
    precision: str = "fp16"
    workspace_bytes: int | None = None  # None: TensorRT's default (the device memory)
    timing_cache: Path | None = None


@dataclass
class TrtBuildReport:
    """What a build did: the layers pinned to fp32 and the profile used."""

    fp32_layers: list[str] = field(default_factory=list)
    profile: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)


def reduction_scopes(model: onnx.ModelProto) -> tuple[str, ...]:
    """ONNX scopes (node-name prefixes up to the last '/') that contain a reduction node."""
    return tuple(sorted({_scope(n.name) for n in model.graph.node if n.op_type in REDUCTION_OPS and "/" in n.name}))


def profile_shapes(
    inputs: Mapping[str, Shape], dims: Mapping[str, DimRange]
) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """(min, opt, max) shapes of every input with a named dynamic dim."""
    out = {}
    for name, shape in inputs.items():
        if any(isinstance(d, str) for d in shape):
            out[name] = tuple(tuple(getattr(dims[d], k) if isinstance(d, str) else d for d in shape) for k in ("min", "opt", "max"))
    return out


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    inputs: Mapping[str, Shape],
    dims: Mapping[str, DimRange],
    options: TrtBuildOptions,
    fp32_scopes: tuple[str, ...] = (),
) -> TrtBuildReport:
    """Parse ``onnx_path``, build with ``options`` and write the serialized engine to ``engine_path``."""
    if options.precision not in PRECISIONS:
        raise ExportError(f"precision {options.precision!r}: expected one of {PRECISIONS}")
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "\n".join(f"  - {parser.get_error(i)}" for i in range(parser.num_errors))
        raise ExportError(f"{onnx_path}: TensorRT {trt.__version__}'s ONNX parser rejected the graph:\n{errors}")
    config = builder.create_builder_config()
    report = TrtBuildReport()
    if options.workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_bytes))
    if options.precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        report.fp32_layers = pin_fp32_layers(trt, network, fp32_scopes)
    else:
        config.clear_flag(trt.BuilderFlag.TF32)
    report.profile = profile_shapes(inputs, dims)
    if report.profile:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in report.profile.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
    if options.timing_cache is not None:
        _load_timing_cache(config, options.timing_cache)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"{onnx_path}: TensorRT {trt.__version__} failed to build an engine (see the TensorRT log above)")
    engine_path.write_bytes(bytes(serialized))
    if options.timing_cache is not None:
        options.timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return report


def pin_fp32_layers(trt, network, scopes: tuple[str, ...]) -> list[str]:
    """Force fp32 compute and float outputs on the layers of the fp16 policy; their names.

    Layers without float inputs or outputs, and Shape layers (they read only dims), are left alone.
    Comparisons on float inputs are pinned too: in fp16 they could flip discrete decisions.
    """
    forced_types = {getattr(trt.LayerType, t) for t in FP32_LAYER_TYPES}
    floats = (trt.float32, trt.float16)
    pinned = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type == trt.LayerType.SHAPE or (layer.type not in forced_types and _scope(layer.name) not in scopes):
            continue
        ins = [layer.get_input(j) for j in range(layer.num_inputs)]
        outs = [j for j in range(layer.num_outputs) if layer.get_output(j).dtype in floats]
        if not outs and not any(t is not None and t.dtype in floats for t in ins):
            continue  # integer-only layers have no float precision to pin
        layer.precision = trt.float32
        for j in outs:
            layer.set_output_type(j, trt.float32)
        pinned.append(layer.name)
    return pinned


def _load_timing_cache(config, path: Path) -> None:
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    if not config.set_timing_cache(cache, False):
        raise ExportError(f"{path}: TensorRT rejected the timing cache (built by another TensorRT version or GPU?); delete it to rebuild")


def _scope(name: str) -> str:
    return name[: name.rfind("/") + 1]
