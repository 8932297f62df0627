"""ONNX Runtime backend: provider selection without silent fallback, distribution conflicts, I/O handling."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import warnings

import onnxruntime
import pytest
import torch
from torch import nn

from visa_edge.runtime.backends import DimRange, Engine, EngineError
from visa_edge.runtime.backends import ort
from visa_edge.runtime.backends.ort import OrtEngine, resolve_providers, tensorrt_profile_options
from visa_edge.runtime.errors import InputError


class Scale(nn.Module):
    def forward(self, x):
        return 2 * x, x.sum(-1)


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    path = tmp_path_factory.mktemp("ort") / "scale.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Scale(), (torch.randn(2, 3),), str(path), input_names=["x"], output_names=["double", "total"],
                          opset_version=17, dynamo=False, dynamic_axes={"x": {0: "rows"}, "double": {0: "rows"}, "total": {0: "rows"}})
    return path


def test_runs_with_torch_tensors_and_casts_inputs(graph):
    engine = OrtEngine("scale", graph, shapes={"x": ("rows", 3)}, dims={"rows": DimRange(1, 2, 4)})
    assert isinstance(engine, Engine)
    assert (engine.input_names, engine.output_names, engine.providers) == (("x",), ("double", "total"), ("cpu",))
    x = torch.arange(12, dtype=torch.float64).reshape(4, 3)  # cast to the graph's float32
    out = engine.run({"x": x})
    assert out["double"].dtype == torch.float32
    assert torch.equal(out["double"], 2 * x.float())
    assert torch.equal(out["total"], torch.tensor([3.0, 12.0, 21.0, 30.0]))


def test_input_errors_name_the_engine(graph):
    engine = OrtEngine("scale", graph, shapes={"x": ("rows", 3)}, dims={"rows": DimRange(1, 2, 4)})
    with pytest.raises(InputError, match=r"engine 'scale': missing input 'x'; got \['y'\]"):
        engine.run({"y": torch.zeros(1, 3)})
    with pytest.raises(InputError, match=r"input 'x' has shape \[2, 4\]; expected \['rows', 3\]"):
        engine.run({"x": torch.zeros(2, 4)})
    with pytest.raises(InputError, match=r"rows=5; the engine was exported for rows in 1\.\.4"):
        engine.run({"x": torch.zeros(5, 3)})


def test_missing_execution_provider_is_an_error_not_a_fallback():
    with pytest.raises(EngineError, match=r"\['CUDAExecutionProvider'\] not available; .* Install onnxruntime-gpu"):
        resolve_providers(["cuda"], ["CPUExecutionProvider"])
    with pytest.raises(EngineError, match=r"expected one or more of \['cpu', 'cuda', 'tensorrt'\]"):
        resolve_providers(["gpu"], ["CPUExecutionProvider"])
    assert resolve_providers(["tensorrt", "cuda"], ["TensorrtExecutionProvider", "CUDAExecutionProvider"]) == [
        "TensorrtExecutionProvider", "CUDAExecutionProvider"]


def test_provider_listed_but_not_activated_is_an_error(graph, monkeypatch):
    """ONNX Runtime itself only warns and runs on the CPU when a listed provider fails to load."""
    available = onnxruntime.get_available_providers() + ["CUDAExecutionProvider"]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: available)
    with pytest.raises(EngineError, match=r"did not activate \['CUDAExecutionProvider'\]"):
        with pytest.warns(UserWarning, match="not in available provider names"):
            OrtEngine("scale", graph, providers=["cuda"])


@pytest.mark.skipif("CUDAExecutionProvider" in onnxruntime.get_available_providers(), reason="this onnxruntime has CUDA")
def test_cuda_device_without_cuda_provider(graph):
    with pytest.raises(EngineError, match=r"CUDAExecutionProvider'\] not available"):
        OrtEngine("scale", graph, device="cuda")


def test_both_onnxruntime_distributions_installed_is_refused(monkeypatch):
    real = importlib.metadata.distribution
    monkeypatch.setattr(importlib.metadata, "distribution", lambda name: real("onnxruntime") if name in ort.DISTRIBUTIONS else real(name))
    assert ort.installed_distributions() == ["onnxruntime", "onnxruntime-gpu"]
    with pytest.raises(EngineError, match=r"both onnxruntime and onnxruntime-gpu are installed; .*pip uninstall -y onnxruntime onnxruntime-gpu"):
        ort.import_onnxruntime()


def test_tensorrt_provider_profile_from_named_dims():
    options = tensorrt_profile_options({"image": (1, 3, 8, 8), "seg": ("queries", 256)}, {"queries": DimRange(1, 1, 8)})
    assert options == {"trt_profile_min_shapes": "seg:1x256", "trt_profile_opt_shapes": "seg:1x256", "trt_profile_max_shapes": "seg:8x256"}
    assert tensorrt_profile_options({"image": (1, 3, 8, 8)}, {}) == {}


def test_runtime_imports_neither_export_nor_optional_backends():
    code = ("import sys, visa_edge.runtime.backends, visa_edge.runtime.reasoning; "
            "print(sorted(m for m in sys.modules if m.startswith(('visa_edge.export', 'onnxruntime', 'tensorrt', 'onnx'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
