"""TensorRT build and runtime logic, checked against a small fake ``tensorrt`` module.

TensorRT is not installable on CPU machines, so the calls the builder and the engine make
(flags, fp32 pinning, profiles, timing cache, bindings, stream) are recorded by a fake
module injected into ``sys.modules``. Tests that need the real library and a GPU skip.
"""

from __future__ import annotations

import ctypes
import importlib.util
import io
import sys
import types
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from visa_edge.export.errors import ExportError
from visa_edge.export.tensorrt_build import TrtBuildOptions, build_engine, profile_shapes, reduction_scopes
from visa_edge.runtime.backends import DimRange, EngineError
from visa_edge.runtime.backends import trt as trt_backend
from visa_edge.runtime.backends.trt import TensorRTEngine, import_tensorrt, torch_dtype
from visa_edge.runtime.errors import InputError


@dataclass(frozen=True)
class DataType:
    name: str


FLOAT, HALF, INT32, INT64, BOOL = (DataType(n) for n in ("FLOAT", "HALF", "INT32", "INT64", "BOOL"))


@dataclass
class Tensor:
    name: str
    dtype: DataType = FLOAT


@dataclass
class Layer:
    name: str
    type: str
    inputs: list[Tensor]
    outputs: list[Tensor]
    precision: DataType | None = None
    output_types: dict[int, DataType] = field(default_factory=dict)

    num_inputs = property(lambda self: len(self.inputs))
    num_outputs = property(lambda self: len(self.outputs))

    def get_input(self, i):
        return self.inputs[i]

    def get_output(self, i):
        return self.outputs[i]

    def set_output_type(self, i, dtype):
        self.output_types[i] = dtype


class FakeTensorRT(types.ModuleType):
    """The parts of the TensorRT 10 Python API the backend uses, recording every call."""

    def __init__(self, layers=(), parse_errors=(), build_ok=True):
        super().__init__("tensorrt")
        self.__version__ = "10.9.0"
        self.calls: list[tuple] = []
        self.layers = list(layers)
        self.float32, self.float16, self.int32, self.int64, self.bool = FLOAT, HALF, INT32, INT64, BOOL
        self.BuilderFlag = types.SimpleNamespace(FP16="FP16", OBEY_PRECISION_CONSTRAINTS="OBEY", TF32="TF32")
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
        self.LayerType = types.SimpleNamespace(**{t: t for t in ("NORMALIZATION", "SOFTMAX", "REDUCE", "MATRIX_MULTIPLY",
                                                                 "ELEMENTWISE", "UNARY", "TOPK", "SHAPE", "CONVOLUTION")})
        self.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
        self.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda s, severity: None})
        fake = self

        class Network:
            num_layers = property(lambda s: len(fake.layers))

            def get_layer(self, i):
                return fake.layers[i]

        class Parser:
            num_errors = len(parse_errors)

            def __init__(self, network, logger):
                pass

            def parse_from_file(self, path):
                fake.calls.append(("parse", path))
                return not parse_errors

            def get_error(self, i):
                return parse_errors[i]

        class Profile:
            def set_shape(self, name, lo, opt, hi):
                fake.calls.append(("profile", name, lo, opt, hi))

        class Cache:
            def __init__(self, data):
                self.data = data

            def serialize(self):
                return b"timing cache v2"

        class Config:
            def set_flag(self, flag):
                fake.calls.append(("set_flag", flag))

            def clear_flag(self, flag):
                fake.calls.append(("clear_flag", flag))

            def set_memory_pool_limit(self, pool, size):
                fake.calls.append(("pool", pool, size))

            def add_optimization_profile(self, profile):
                fake.calls.append(("add_profile",))
                return 0

            def create_timing_cache(self, data):
                fake.calls.append(("timing_cache_in", bytes(data)))
                return Cache(data)

            def set_timing_cache(self, cache, ignore_mismatch):
                return True

            def get_timing_cache(self):
                return Cache(b"")

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                fake.calls.append(("create_network", flags))
                return Network()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                return b"serialized engine" if build_ok else None

        self.Builder, self.OnnxParser = Builder, Parser
        self.Runtime = FakeRuntime


def flags(fake) -> list[tuple]:
    return [c for c in fake.calls if c[0] in ("set_flag", "clear_flag")]


def vit_layers() -> list[Layer]:
    """A parsed SAM-like network: LayerNorm, attention, a hand-written LayerNorm2d scope, an int shape path."""
    f, i = Tensor("f"), Tensor("i", INT64)
    return [
        Layer("/blocks.0/norm1/LayerNormalization", "NORMALIZATION", [f], [Tensor("n")]),
        Layer("/blocks.0/attn/MatMul", "MATRIX_MULTIPLY", [f, f], [Tensor("qk")]),
        Layer("/blocks.0/attn/Softmax", "SOFTMAX", [f], [Tensor("p")]),
        Layer("/neck/neck.1/ReduceMean", "REDUCE", [f], [Tensor("u")]),
        Layer("/neck/neck.1/Pow", "ELEMENTWISE", [f, f], [Tensor("s")]),
        Layer("/neck/neck.1/Sqrt", "UNARY", [f], [Tensor("r")]),
        Layer("/neck/neck.1/Shape", "SHAPE", [f], [i]),
        Layer("/neck/neck.2/Conv", "CONVOLUTION", [f], [Tensor("c")]),
        Layer("/clustering/TopK", "TOPK", [f], [Tensor("v"), Tensor("idx", INT32)]),
        Layer("/clustering/Equal", "ELEMENTWISE", [i, i], [Tensor("eq", BOOL)]),
    ]


@pytest.fixture
def onnx_file(tmp_path):
    path = tmp_path / "net.onnx"
    path.write_bytes(b"onnx")
    return path


def test_fp16_build_pins_overflow_prone_layers_to_fp32(onnx_file, tmp_path, monkeypatch):
    fake = FakeTensorRT(vit_layers())
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"timing cache v1")
    options = TrtBuildOptions("fp16", workspace_bytes=2**30, timing_cache=cache)
    report = build_engine(onnx_file, tmp_path / "net.engine", {"seg": ("queries", 256), "image": (1, 256, 64, 64)},
                          {"queries": DimRange(1, 1, 8)}, options, fp32_scopes=("/neck/neck.1/", "/clustering/"))
    assert (tmp_path / "net.engine").read_bytes() == b"serialized engine"
    assert flags(fake) == [("set_flag", "FP16"), ("set_flag", "OBEY")]
    assert ("create_network", 0) in fake.calls and ("pool", "WORKSPACE", 2**30) in fake.calls
    assert ("profile", "seg", (1, 256), (1, 256), (8, 256)) in fake.calls and ("add_profile",) in fake.calls
    assert not any(c[0] == "profile" and c[1] == "image" for c in fake.calls)
    assert ("timing_cache_in", b"timing cache v1") in fake.calls and cache.read_bytes() == b"timing cache v2"
    assert report.fp32_layers == ["/blocks.0/norm1/LayerNormalization", "/blocks.0/attn/Softmax", "/neck/neck.1/ReduceMean",
                                  "/neck/neck.1/Pow", "/neck/neck.1/Sqrt", "/clustering/TopK"]
    layers = {layer.name: layer for layer in fake.layers}
    assert layers["/blocks.0/attn/MatMul"].precision is None and layers["/neck/neck.2/Conv"].precision is None
    assert layers["/neck/neck.1/Shape"].precision is None and layers["/clustering/Equal"].precision is None
    assert layers["/neck/neck.1/Sqrt"].precision == FLOAT and layers["/neck/neck.1/Sqrt"].output_types == {0: FLOAT}
    assert layers["/clustering/TopK"].output_types == {0: FLOAT}  # the int32 indices keep their type


def test_fp32_build_disables_tf32_and_pins_nothing(onnx_file, tmp_path, monkeypatch):
    fake = FakeTensorRT(vit_layers())
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    report = build_engine(onnx_file, tmp_path / "net.engine", {"image": (1, 3, 8, 8)}, {}, TrtBuildOptions("fp32"))
    assert flags(fake) == [("clear_flag", "TF32")]
    assert report.fp32_layers == [] and report.profile == {}
    assert not any(c[0] in ("add_profile", "pool", "timing_cache_in") for c in fake.calls)


def test_parser_and_builder_failures_are_reported(onnx_file, tmp_path, monkeypatch):
    errors = ["In node 12 (/clustering/TopK): UNSUPPORTED_NODE: K exceeds 3840", "In node 40: INVALID_GRAPH"]
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTensorRT(parse_errors=errors))
    with pytest.raises(ExportError, match=r"net\.onnx: TensorRT 10\.9\.0's ONNX parser rejected the graph:\n  - In node 12 \(/clustering/TopK\)"):
        build_engine(onnx_file, tmp_path / "net.engine", {}, {}, TrtBuildOptions())
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTensorRT(build_ok=False))
    with pytest.raises(ExportError, match=r"failed to build an engine"):
        build_engine(onnx_file, tmp_path / "net.engine", {}, {}, TrtBuildOptions())
    assert not (tmp_path / "net.engine").exists()


def test_profile_shapes_and_reduction_scopes():
    import onnx
    from onnx import helper

    assert profile_shapes({"x": ("frames", 3, 224, 224)}, {"frames": DimRange(1, 12, 12)}) == {
        "x": ((1, 3, 224, 224), (12, 3, 224, 224), (12, 3, 224, 224))}
    nodes = [helper.make_node("ReduceMean", ["x"], ["m"], name="/neck/neck.1/ReduceMean"),
             helper.make_node("Softmax", ["x"], ["s"], name="/blocks.0/attn/Softmax"),
             helper.make_node("ReduceSum", ["x"], ["t"], name="/clustering/ReduceSum")]
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 2])
    model = helper.make_model(helper.make_graph(nodes, "g", [x], []))
    assert reduction_scopes(model) == ("/clustering/", "/neck/neck.1/")


class FakeRuntime:
    """Deserializes what the fake builder writes into an engine computing y = 2 * x for x [rows<=4, 3]."""

    def __init__(self, logger):
        pass

    def deserialize_cuda_engine(self, data):
        return FakeEngine() if data == b"serialized engine" else None


class FakeEngine:
    num_io_tensors = 2

    def get_tensor_name(self, i):
        return ("x", "y")[i]

    def get_tensor_mode(self, name):
        return "INPUT" if name == "x" else "OUTPUT"

    def get_tensor_dtype(self, name):
        return FLOAT

    def create_execution_context(self):
        return FakeContext()


class FakeContext:
    def __init__(self):
        self.shapes, self.addresses, self.streams = {}, {}, []

    def set_input_shape(self, name, shape):
        self.shapes[name] = shape
        return shape[0] <= 4

    def get_tensor_shape(self, name):
        return self.shapes["x"]

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr

    def execute_async_v3(self, stream):
        self.streams.append(stream)
        n = int(np.prod(self.shapes["x"]))
        x = np.ctypeslib.as_array((ctypes.c_float * n).from_address(self.addresses["x"]))
        y = np.ctypeslib.as_array((ctypes.c_float * n).from_address(self.addresses["y"]))
        y[:] = 2 * x
        return True


@pytest.fixture
def fake_engine_file(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTensorRT())
    monkeypatch.setattr(trt_backend, "current_stream_handle", lambda device: 1234)
    path = tmp_path / "net.engine"
    path.write_bytes(b"serialized engine")
    return path


def test_engine_binds_tensor_addresses_and_enqueues_on_the_torch_stream(fake_engine_file):
    engine = TensorRTEngine("double", fake_engine_file, device="cpu")  # the fake "GPU" memory is host memory
    assert (engine.input_names, engine.output_names) == (("x",), ("y",))
    x = torch.arange(6, dtype=torch.float64).reshape(2, 3).t()  # non-contiguous, float64: made contiguous float32
    out = engine.run({"x": x})
    assert torch.equal(out["y"], 2 * x.float())
    assert engine.context.shapes["x"] == (3, 2)
    assert engine.context.addresses["y"] == out["y"].data_ptr()
    assert engine.context.streams == [1234]


def test_each_thread_runs_its_own_execution_context(fake_engine_file):
    import threading

    engine = TensorRTEngine("double", fake_engine_file, device="cpu")
    x = torch.ones(2, 3)
    engine.run({"x": x})
    other = {}
    thread = threading.Thread(target=lambda: other.update(out=engine.run({"x": 3 * x}), context=engine.context))
    thread.start()
    thread.join()
    assert torch.equal(other["out"]["y"], 6 * x)
    assert other["context"] is not engine.context and engine.context.streams == [1234]
    assert other["context"].streams == [1234]


def test_engine_errors(fake_engine_file, tmp_path):
    engine = TensorRTEngine("double", fake_engine_file, device="cpu")
    with pytest.raises(EngineError, match=r"input 'x' shape \[5, 3\] is outside the engine's profile"):
        engine.run({"x": torch.zeros(5, 3)})
    checked = TensorRTEngine("double", fake_engine_file, device="cpu", shapes={"x": ("rows", 3)}, dims={"rows": DimRange(1, 2, 4)})
    with pytest.raises(InputError, match=r"rows=5; the engine was exported for rows in 1\.\.4"):
        checked.run({"x": torch.zeros(5, 3)})
    bad = tmp_path / "bad.engine"
    bad.write_bytes(b"not an engine")
    with pytest.raises(EngineError, match=r"bad\.engine: TensorRT 10\.9\.0 could not deserialize the engine"):
        TensorRTEngine("double", bad, device="cpu")


class Double(torch.nn.Module):
    def forward(self, x):
        return 2 * x


def test_tensorrt_export_records_engines_and_loads_them(tmp_path, monkeypatch):
    """The pipeline's TensorRT path (fake library and GPU): engine files, versions, GPU, profile, loading."""
    from visa_edge.export import pipeline
    from visa_edge.export.registry import ExportNetwork
    from visa_edge.runtime.backends import load_engines, read_manifest
    from visa_edge.runtime.backends.manifest import SourceRecord, sha256_file
    from visa_edge.runtime.reasoning_networks import NetworkSpec

    monkeypatch.setitem(sys.modules, "tensorrt", FakeTensorRT())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA Jetson AGX Orin")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 7))
    monkeypatch.setattr(pipeline, "_tensorrt_check", lambda *args: 0.0)  # running needs the real GPU
    spec = NetworkSpec(("x",), ("y",), axes={"x": {0: "rows"}, "y": {0: "rows"}}, dims={"rows": DimRange(1, 2, 4)})
    net = ExportNetwork("double", Double(), spec, {"x": torch.randn(2, 3)}, ("checkpoint",))
    options = pipeline.ExportOptions("tensorrt", "fp16", workspace_bytes=2**30)
    pipeline.export_networks([net], tmp_path, options, {"checkpoint": SourceRecord("/ckpt", "ef" * 32)},
                             ["visa-edge", "export", "--backend", "tensorrt"], pipeline.Progress(5, io.StringIO()))
    record = read_manifest(tmp_path).networks["double"]
    assert set(record.files) == {"onnx", "engine"}
    assert record.files["engine"].sha256 == sha256_file(tmp_path / "double.engine")
    assert record.environment["tensorrt"] == "10.9.0" and record.environment["gpu"] == "NVIDIA Jetson AGX Orin"
    assert record.environment["compute_capability"] == "8.7" and record.precision == "fp16"
    assert record.build["profile"] == {"x": [[1, 3], [2, 3], [4, 3]]} and record.build["workspace_bytes"] == 2**30
    assert (tmp_path / "timing.cache").read_bytes() == b"timing cache v2"
    engine = load_engines(tmp_path, device="cuda")["double"]
    assert isinstance(engine, TensorRTEngine) and engine.input_names == ("x",)
    assert load_engines(tmp_path, backend="onnxruntime")["double"].backend == "onnxruntime"  # the fp32 ONNX stays usable


def test_missing_tensorrt_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(EngineError, match=r"TensorRT is not installed"):
        import_tensorrt()


def test_dtype_mapping():
    assert [torch_dtype(t) for t in (FLOAT, HALF, INT32, INT64, BOOL)] == [torch.float32, torch.float16, torch.int32, torch.int64, torch.bool]
    with pytest.raises(EngineError, match="FP8 has no torch equivalent"):
        torch_dtype(DataType("FP8"))


def _real_tensorrt_reason() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return "needs the real tensorrt package (not installable on this CPU-only machine)"
    if not torch.cuda.is_available():
        return "needs a CUDA GPU (none visible on this machine)"
    return None


@pytest.mark.skipif(_real_tensorrt_reason() is not None, reason=_real_tensorrt_reason() or "")
@pytest.mark.parametrize("precision, tol", [("fp32", 1e-3), ("fp16", 5e-2)])
def test_real_tensorrt_engines_match_torch(tiny_checkpoint, tmp_path, precision, tol):
    """Build the tiny networks with real TensorRT and compare the engines with PyTorch.

    In fp16 the CLIP features feeding the (fp32) clustering are rounded, which may move a
    token to another cluster; visual tokens are then only required to be finite.
    """
    from visa_edge.export.manifest_writer import hash_source
    from visa_edge.export.registry import reasoning_networks
    from visa_edge.export.onnx_export import torch_outputs
    from visa_edge.export.pipeline import ExportOptions, Progress, export_networks
    from visa_edge.runtime.backends import load_engines
    from visa_edge.runtime.model import VisaModel

    model = VisaModel.from_pretrained(tiny_checkpoint.checkpoint, clip=tiny_checkpoint.clip)
    networks = reasoning_networks(model)
    sources = {"checkpoint": hash_source(tiny_checkpoint.checkpoint), "clip": hash_source(tiny_checkpoint.clip)}
    export_networks(networks, tmp_path, ExportOptions("tensorrt", precision), sources, ["visa-edge", "export"], Progress(15, io.StringIO()))
    engines = load_engines(tmp_path, backend="tensorrt", device="cuda")
    for net in networks:
        got = engines[net.name].run({k: v.cuda() for k, v in net.example_inputs.items()})
        ref = torch_outputs(net)
        for name, r in ref.items():
            g = got[name].float().cpu()
            assert g.shape == r.shape and bool(torch.isfinite(g).all()), (net.name, name)
            if precision == "fp32" or net.name != "visual_tokens":
                assert float((g - r).abs().max()) <= tol * max(1.0, float(r.abs().max())), (net.name, name)
