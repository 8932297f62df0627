"""TensorRT backend: a serialized engine run with torch CUDA tensors as bindings.

Written against the TensorRT 10 Python API (named I/O tensors, ``execute_async_v3``);
``tensorrt`` is imported only when an engine is loaded. Inputs and outputs are torch
tensors whose device pointers are bound with ``set_tensor_address``, and the engine is
enqueued on torch's current CUDA stream, so it is ordered with the surrounding torch
work without extra synchronisation (no pycuda).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path

import torch

from .base import DimRange, EngineError, Shape, check_inputs, require

_TORCH_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT32": torch.int32,
                 "INT64": torch.int64, "INT8": torch.int8, "UINT8": torch.uint8, "BOOL": torch.bool}


def import_tensorrt():
    """The ``tensorrt`` module, or an EngineError saying how to get it."""
    try:
        import tensorrt
    except ImportError as e:
        raise EngineError(
            "TensorRT is not installed: install TensorRT 10 for this machine's CUDA (`pip install tensorrt` on x86-64, "
            "JetPack on Jetson), or load the ONNX files with backend='onnxruntime'"
        ) from e
    return tensorrt


def torch_dtype(trt_dtype) -> torch.dtype:
    """torch dtype of a ``tensorrt.DataType``."""
    name = getattr(trt_dtype, "name", str(trt_dtype)).rsplit(".", 1)[-1]
    if name not in _TORCH_DTYPES:
        raise EngineError(f"TensorRT tensor type {name} has no torch equivalent; expected one of {sorted(_TORCH_DTYPES)}")
    return _TORCH_DTYPES[name]


def current_stream_handle(device: torch.device) -> int:
    """The raw ``cudaStream_t`` of torch's current stream on ``device``."""
    return torch.cuda.current_stream(device).cuda_stream


class TensorRTEngine:
    """A TensorRT engine behind the ``Engine`` interface.

    Inputs are moved to ``device``, cast to the engine's input dtypes and checked
    against ``shapes``/``dims`` (the exported profile, if given). Outputs are freshly
    allocated torch tensors. Each calling thread gets its own execution context: the
    streaming runtime steps two trackers that share engines (the published one and the
    one catching up) on two threads, and one context must not be enqueued concurrently.
    """

    backend = "tensorrt"

    def __init__(
        self,
        name: str,
        path: str | Path,
        device: str | torch.device = "cuda",
        shapes: Mapping[str, Shape] | None = None,
        dims: Mapping[str, DimRange] | None = None,
    ):
        trt = import_tensorrt()
        self.name = name
        self.device = torch.device(device)
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise EngineError(
                f"{path}: TensorRT {trt.__version__} could not deserialize the engine (see the TensorRT log); "
                "engines only load with the TensorRT version and GPU model they were built with"
            )
        self._contexts = threading.local()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = tuple(n for n in names if is_input[n])
        self.output_names = tuple(n for n in names if not is_input[n])
        self._dtypes = {n: torch_dtype(self.engine.get_tensor_dtype(n)) for n in names}
        self._shapes = dict(shapes or {})
        self._dims = dict(dims or {})

    @property
    def context(self):
        """This thread's execution context (created on first use)."""
        if not hasattr(self._contexts, "context"):
            self._contexts.context = self.engine.create_execution_context()
        return self._contexts.context

    def run(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        check_inputs(self.name, inputs, self._shapes, self._dims)
        context = self.context
        bound = {}  # keeps converted inputs alive until the engine is enqueued
        for n in self.input_names:
            t = require(inputs, n, self.name).to(self.device, self._dtypes[n]).contiguous()
            bound[n] = t
            if not context.set_input_shape(n, tuple(t.shape)):
                raise EngineError(f"engine {self.name!r}: input {n!r} shape {list(t.shape)} is outside the engine's profile")
            context.set_tensor_address(n, t.data_ptr())
        outputs = {}
        for n in self.output_names:
            shape = tuple(context.get_tensor_shape(n))
            if any(d < 0 for d in shape):
                raise EngineError(f"engine {self.name!r}: output {n!r} shape {list(shape)} is not determined by the inputs")
            outputs[n] = torch.empty(shape, dtype=self._dtypes[n], device=self.device)
            context.set_tensor_address(n, outputs[n].data_ptr())
        if not context.execute_async_v3(current_stream_handle(self.device)):
            raise EngineError(f"engine {self.name!r}: TensorRT execution failed (see the TensorRT log)")
        return outputs
