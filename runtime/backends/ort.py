"""ONNX Runtime backend: one ``InferenceSession`` per network, on the CPU, CUDA or TensorRT EP.

Two PyPI distributions, ``onnxruntime`` (CPU) and ``onnxruntime-gpu`` (CUDA and TensorRT
execution providers), install the same ``onnxruntime`` module; with both installed the
one installed last silently wins. :func:`check_distributions` refuses that state. A
requested execution provider that this build lacks (:func:`resolve_providers`) or that
the session did not activate (:class:`OrtEngine`) is an error: ONNX Runtime itself
falls back to the CPU with only a warning.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .base import DimRange, EngineError, Shape, check_inputs, require, resolve_shape

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu")
_TORCH = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16, "tensor(double)": torch.float64,
          "tensor(int64)": torch.int64, "tensor(int32)": torch.int32, "tensor(uint8)": torch.uint8, "tensor(bool)": torch.bool}


def installed_distributions() -> list[str]:
    """Which of the distributions providing the ``onnxruntime`` module are installed."""
    found = []
    for dist in DISTRIBUTIONS:
        try:
            importlib.metadata.distribution(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
        found.append(dist)
    return found


def check_distributions() -> None:
    """Raise if both ``onnxruntime`` and ``onnxruntime-gpu`` are installed (they overwrite each other)."""
    found = installed_distributions()
    if len(found) > 1:
        raise EngineError(
            f"both {' and '.join(found)} are installed; they provide the same `onnxruntime` module, so which one "
            "is imported depends on install order. Keep one: `pip uninstall -y onnxruntime onnxruntime-gpu` then "
            "`pip install onnxruntime-gpu` (CUDA/TensorRT) or `pip install onnxruntime` (CPU)."
        )


def import_onnxruntime():
    """The ``onnxruntime`` module, after the distribution check; a clear error if missing."""
    check_distributions()
    try:
        import onnxruntime
    except ImportError as e:
        raise EngineError(
            "onnxruntime is not installed: `pip install onnxruntime` (CPU) or `pip install onnxruntime-gpu` (CUDA/TensorRT)"
        ) from e
    return onnxruntime


def default_providers(device: torch.device) -> tuple[str, ...]:
    return ("cuda",) if device.type == "cuda" else ("cpu",)


def resolve_providers(requested: Sequence[str], available: Sequence[str]) -> list[str]:
    """ONNX Runtime provider names for ``requested`` short names; raise if one is missing."""
    unknown = [p for p in requested if p not in PROVIDERS]
    if unknown or not requested:
        raise EngineError(f"providers {list(requested)}: expected one or more of {sorted(PROVIDERS)}")
    names = [PROVIDERS[p] for p in requested]
    missing = [n for n in names if n not in available]
    if missing:
        dists = installed_distributions() or ["none found"]
        hint = " Install onnxruntime-gpu (and uninstall onnxruntime) for CUDA/TensorRT." if "CPUExecutionProvider" not in missing else ""
        raise EngineError(
            f"ONNX Runtime execution provider(s) {missing} not available; this onnxruntime "
            f"({', '.join(dists)}) has {list(available)}.{hint}"
        )
    return names


def tensorrt_profile_options(inputs: Mapping[str, Shape], dims: Mapping[str, DimRange]) -> dict[str, str]:
    """TensorRT EP explicit-profile options (``name:1x3x224x224,...``) from named dims."""
    dynamic = {n: s for n, s in inputs.items() if any(isinstance(d, str) for d in s)}
    if not dynamic:
        return {}

    def spec(pick) -> str:
        return ",".join(f"{n}:" + "x".join(str(pick(dims[d]) if isinstance(d, str) else d) for d in s) for n, s in dynamic.items())

    return {
        "trt_profile_min_shapes": spec(lambda r: r.min),
        "trt_profile_opt_shapes": spec(lambda r: r.opt),
        "trt_profile_max_shapes": spec(lambda r: r.max),
    }


class OrtEngine:
    """An ONNX graph run by ONNX Runtime behind the ``Engine`` interface.

    Inputs are cast to the graph's input dtypes and checked against ``shapes``/``dims``
    (if given); outputs are torch tensors on ``device``. With the CUDA or TensorRT EP and
    CUDA tensors, inputs and outputs are bound in place through IOBinding (no host copy).
    Intra-op threads do not spin-wait after a run (``spin=False``): the pipeline runs the
    tracker and the reasoning step side by side, and spinning threads steal their CPU
    (measured on 2 cores: an XMem step after an ORT run 64 ms without spinning, 120-134 ms with).
    """

    backend = "onnxruntime"

    def __init__(
        self,
        name: str,
        path: str | Path,
        device: str | torch.device = "cpu",
        providers: Sequence[str] | None = None,
        shapes: Mapping[str, Shape] | None = None,
        output_shapes: Mapping[str, Shape] | None = None,
        dims: Mapping[str, DimRange] | None = None,
        provider_options: Mapping[str, Mapping[str, Any]] | None = None,
        threads: int = 0,
        spin: bool = False,
    ):
        ort = import_onnxruntime()
        self.name = name
        self.device = torch.device(device)
        requested = tuple(providers) if providers else default_providers(self.device)
        names = resolve_providers(requested, ort.get_available_providers())
        options = [dict((provider_options or {}).get(p, {})) for p in requested]
        for short, opts in zip(requested, options):
            if short in ("cuda", "tensorrt") and self.device.type == "cuda":
                opts.setdefault("device_id", self.device.index or 0)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        so.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), sess_options=so, providers=list(zip(names, options)))
        except Exception as e:  # onnxruntime raises its own exception types
            raise EngineError(f"{path}: ONNX Runtime could not load the graph ({type(e).__name__}: {e})") from e
        inactive = [n for n in names if n not in self.session.get_providers()]
        if inactive:
            raise EngineError(
                f"{path}: ONNX Runtime did not activate {inactive} (active: {self.session.get_providers()}); "
                "check the CUDA/TensorRT libraries it needs (no fallback to another provider)"
            )
        self.providers = tuple(requested)
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        self._dtypes = {t.name: _torch_dtype(t.type, f"{path} ({t.name})") for t in (*self.session.get_inputs(), *self.session.get_outputs())}
        self._shapes = dict(shapes or {})
        self._output_shapes = dict(output_shapes or {})
        self._dims = dict(dims or {})
        self._bind = self.device.type == "cuda" and requested[0] in ("cuda", "tensorrt")

    def run(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        sizes = check_inputs(self.name, inputs, self._shapes, self._dims)
        where = self.device if self._bind else torch.device("cpu")
        tensors = {n: require(inputs, n, self.name).detach().to(where, self._dtypes[n]).contiguous() for n in self.input_names}
        if self._bind:
            return self._run_bound(tensors, sizes)
        feeds = {n: t.numpy() for n, t in tensors.items()}
        outs = self.session.run(list(self.output_names), feeds)
        return {n: torch.from_numpy(o).to(self.device) for n, o in zip(self.output_names, outs)}

    def _run_bound(self, tensors: dict[str, torch.Tensor], sizes: dict[str, int]) -> dict[str, torch.Tensor]:
        """Bind CUDA tensors in place; outputs whose shape follows from the input sizes are preallocated."""
        binding = self.session.io_binding()
        index = self.device.index or 0
        for n, t in tensors.items():
            binding.bind_input(n, "cuda", index, _numpy_type(t.dtype), tuple(t.shape), t.data_ptr())
        outputs: dict[str, torch.Tensor] = {}
        for n in self.output_names:
            shape = resolve_shape(self._output_shapes[n], sizes) if n in self._output_shapes else None
            if shape is None:
                binding.bind_output(n, "cuda", index)
                continue
            outputs[n] = torch.empty(shape, dtype=self._dtypes[n], device=self.device)
            binding.bind_output(n, "cuda", index, _numpy_type(self._dtypes[n]), shape, outputs[n].data_ptr())
        torch.cuda.current_stream(self.device).synchronize()  # ONNX Runtime runs on its own stream
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        rest = [n for n in self.output_names if n not in outputs]
        if rest:
            values = dict(zip(self.output_names, binding.copy_outputs_to_cpu()))
            outputs.update({n: torch.from_numpy(values[n]).to(self.device) for n in rest})
        return {n: outputs[n] for n in self.output_names}


def _torch_dtype(ort_type: str, where: str) -> torch.dtype:
    if ort_type not in _TORCH:
        raise EngineError(f"{where}: unsupported tensor type {ort_type}; expected one of {sorted(_TORCH)}")
    return _TORCH[ort_type]


def _numpy_type(dtype: torch.dtype) -> type:
    """numpy scalar type (``np.float32``, ...) of a torch dtype, as IOBinding takes it."""
    return torch.empty(0, dtype=dtype).numpy().dtype.type
